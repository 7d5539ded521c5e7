import Glibc
import Logging
import Multiprocessing
import MultiprocessingSQL
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import MultiprocessingJobQueue

/// Adds one to the previous link's output; logs `add n`.
struct AddOne: ChainedJob {
    var log: String? = nil
    func run(_ input: Int) throws -> Int {
        if let log { appendLine(log, "add \(input)") }
        return input + 1
    }
}

/// The previous link's output as text; logs `text n`.
struct ToText: ChainedJob {
    var log: String? = nil
    func run(_ input: Int) throws -> String {
        if let log { appendLine(log, "text \(input)") }
        return "=\(input)"
    }
}

/// `n`, or a failure when `fails`; logs `member n`.
struct Member: Job {
    var n: Int
    var fails = false
    var log: String? = nil
    func run() throws -> Int {
        if let log { appendLine(log, "member \(n)") }
        if fails { throw Fails() }
        return n
    }
}

/// Each outcome it waited for as `id:state:value`; logs `summary`.
struct Summary: DependentJob {
    var log: String? = nil
    func run(after outcomes: JobOutcomes) throws -> String {
        if let log { appendLine(log, "summary") }
        return outcomes.map { o in
            "\(o.job):\(o.state.rawValue):\((try? o.value(as: Int.self)).map(String.init) ?? "-")"
        }
        .joined(separator: ",")
    }
}

/// n², once the file `gate` exists (the test creates it when it wants the job to end); logs `n`.
struct Gated: Job {
    var n: Int
    var gate: String
    var log: String? = nil
    func run() throws -> Int {
        while access(gate, F_OK) != 0 { usleep(2000) }
        if let log { appendLine(log, "\(n)") }
        return n * n
    }
}

/// Creates the file a ``Gated`` job waits for.
func open(gate: String) { close(Glibc.open(gate, O_CREAT | O_WRONLY, 0o644)) }

/// Waits until job `parent` has ended, reading it and `child` in one statement (one snapshot), and
/// expects `child` no longer waiting in that same snapshot: it was released in the transaction that
/// recorded the end (a sweep, later, would leave a snapshot with the parent ended and the child waiting).
func expectReleasedWithTheEnd(of parent: Int64, _ child: Int64, _ c: any SQLConnection) throws {
    var states: [Int64: String] = [:]
    try eventually("job \(parent) ended") {
        states = [:]
        try c.forEachRow("SELECT id, state FROM mp_jobs WHERE id IN (\(parent), \(child))", []) {
            states[$0[0].intValue ?? 0] = $0[1].textValue ?? ""
        }
        return ["completed", "discarded", "cancelled"].contains(states[parent] ?? "")
    }
    #expect(states[child] != "waiting", "job \(parent) ended (\(states)) while \(child) still waited")
}

/// The sum of the results it waited for.
struct Total: DependentJob {
    func run(after outcomes: JobOutcomes) throws -> Int { try outcomes.values(as: Int.self).reduce(0, +) }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct ChainTests {
    func startWorker(
        _ url: DatabaseURL,
        _ pool: ProcessPool,
        lease: Duration = .seconds(30)
    ) throws -> (
        QueueWorker, Future<Int>
    ) {
        let w = try QueueWorker(
            url,
            pool: pool,
            options: QueueWorkerOptions(lease: lease, pollInterval: .milliseconds(5))
        )
        return (w, background { try w.run() })
    }

    /// A chain runs its links in order, each once, each given the one before's output; links wait in the
    /// database until then.
    @Test(arguments: TestBackend.enabled) func aChainPassesEachResultToTheNextLink(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let log = db.scratch + ".log"
            let chain = try queue.chain(Square(n: 3, log: log)).then(AddOne(log: log)).then(ToText(log: log)).enqueue()
            #expect(chain.links.count == 3)
            #expect(try chain.links.map { try queue.info($0)?.state } == [.available, .waiting, .waiting])
            let pool = try ProcessPool(workers: 2)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool)
            let c = try db.connect()
            defer { c.close() }
            try expectReleasedWithTheEnd(of: chain.links[0], chain.links[1], c)
            try expectReleasedWithTheEnd(of: chain.links[1], chain.links[2], c)
            #expect(try chain.last.result(timeout: .seconds(30)) == "=10")
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            #expect(readLines(log) == ["3", "add 9", "text 10"])
            #expect(try queue.counts() == [.completed: 3])
        }
    }

    /// A link that fails stops every link after it (cancelled, saying which job failed); none of them runs.
    @Test(arguments: TestBackend.enabled) func aFailedLinkStopsTheRestOfTheChain(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let log = db.scratch + ".log"
            let chain = try queue.chain(Member(n: 1, fails: true, log: log), options: JobOptions(maxAttempts: 1))
                .then(AddOne(log: log)).then(ToText(log: log)).enqueue()
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool)
            let error = #expect(throws: JobQueueError.self) { try chain.last.result(timeout: .seconds(30)) }
            #expect(error?.code == .cancelled)
            #expect(
                error?.message.contains("job \(chain.links[1]), which it needs, was cancelled") == true,
                "\(String(describing: error))"
            )
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            #expect(readLines(log) == ["member 1"])
            let second = try #require(try queue.info(chain.links[1]))
            #expect(second.state == .cancelled)
            #expect(
                second.errors.first?.contains("job \(chain.links[0]), which it needs, was discarded") == true,
                "\(second.errors)"
            )
            #expect(try queue.counts() == [.discarded: 1, .cancelled: 2])
        }
    }

    /// A group's callback runs once every member has ended, and sees each one's outcome in order, failed
    /// ones included; with `.allSucceeded`, a failed member stops it instead.
    @Test(arguments: TestBackend.enabled) func aGroupsCallbackSeesEveryMembersOutcome(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let log = db.scratch + ".log"
            let members = (1...6).map { Member(n: $0, fails: $0 == 4, log: log) }
            let chord = try queue.group(members, options: JobOptions(maxAttempts: 1), then: Summary(log: log))
            let strict = try queue.group(
                members,
                options: JobOptions(maxAttempts: 1),
                then: Total(),
                policy: .allSucceeded
            )
            let sum = try queue.group((1...50).map { Member(n: $0) }, then: Total())
            #expect(try chord.callback.info()?.state == .waiting)
            let pool = try ProcessPool(workers: 2)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool)
            let expected = chord.members.enumerated().map { i, h in
                i == 3 ? "\(h.id):discarded:-" : "\(h.id):completed:\(i + 1)"
            }
            #expect(try chord.callback.result(timeout: .seconds(30)) == expected.joined(separator: ","))
            #expect(try sum.callback.result(timeout: .seconds(30)) == 1275)
            let error = #expect(throws: JobQueueError.self) { try strict.callback.result(timeout: .seconds(30)) }
            #expect(error?.code == .cancelled)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            let runs = readLines(log)
            #expect(runs.filter { $0 == "summary" }.count == 1, "the callback ran once: \(runs)")
            #expect(runs.filter { $0.hasPrefix("member") }.count == 12, "each member of both groups ran once: \(runs)")
        }
    }

    /// Waiting for jobs that have already ended: queued (or stopped) at once. Nothing to wait for, a unique
    /// key, a job that does not exist: refused, nothing queued.
    @Test(arguments: TestBackend.enabled) func waitingForJobsThatEndedAlreadyAndRefusals(_ backend: TestBackend) throws
    {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let done = try queue.enqueue(Member(n: 5))
            let failed = try queue.enqueue(Member(n: 6, fails: true), options: JobOptions(maxAttempts: 1))
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool)
            #expect(try done.result(timeout: .seconds(30)) == 5)
            #expect(throws: JobQueueError.self) { try failed.result(timeout: .seconds(30)) }
            let after = try queue.enqueue(Total(), after: [done.id])
            #expect(try after.result(timeout: .seconds(30)) == 5)
            let stopped = try queue.enqueue(Total(), after: [done.id, failed.id])
            #expect(try stopped.info()?.state == .cancelled, "stopped at once: a job it needs was discarded")
            let sees = try queue.enqueue(Summary(), after: [failed.id, done.id], policy: .allFinished)
            #expect(try sees.result(timeout: .seconds(30)) == "\(failed.id):discarded:-,\(done.id):completed:5")
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            let before = try queue.counts()
            for (options, after) in [(JobOptions.default, [Int64]()), (JobOptions(uniqueKey: "k"), [done.id])] {
                let e = #expect(throws: JobQueueError.self) {
                    try queue.enqueue(Total(), after: after, options: options)
                }
                #expect(e?.code == .invalidDependency)
            }
            let e = #expect(throws: JobQueueError.self) { try queue.enqueue(Total(), after: [done.id, 987_654]) }
            #expect(e?.code == .notFound)
            #expect(try queue.counts() == before, "a refused job queued nothing")
        }
    }

    /// Cancelling a link that waits for nothing yet stops its chain; cancelling a group's member lets the
    /// callback run and see the cancel; discarding a waiting job stops the jobs that need it.
    @Test(arguments: TestBackend.enabled) func cancellingAndDiscardingFlowDownTheLinks(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let later = JobOptions(delay: .seconds(3600))
            let chain = try queue.chain(Member(n: 1), options: later).then(AddOne()).then(ToText()).enqueue()
            #expect(try queue.cancel(chain.links[0]))
            #expect(try chain.links.map { try queue.info($0)?.state } == [.cancelled, .cancelled, .cancelled])
            let second = try queue.chain(Member(n: 1), options: later).then(AddOne()).then(ToText()).enqueue()
            #expect(try queue.discard(second.links[1]), "a waiting link can be discarded")
            #expect(try second.links.map { try queue.info($0)?.state } == [.available, .discarded, .cancelled])
            let group = try queue.group([Member(n: 1, fails: false), Member(n: 2)], options: later, then: Summary())
            #expect(try queue.cancel(group.members[0].id))
            #expect(try group.callback.info()?.state == .waiting)
            #expect(try queue.cancel(group.members[1].id))
            #expect(try group.callback.info()?.state == .available)
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool)
            #expect(
                try group.callback.result(timeout: .seconds(30))
                    == "\(group.members[0].id):cancelled:-,\(group.members[1].id):cancelled:-"
            )
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
        }
    }

    /// A member's outcome is copied when it ends: the retention cleaner (here, a DELETE) taking the member's
    /// row before the callback runs takes nothing from the callback. The edges of deleted callbacks go with
    /// them.
    @Test(arguments: TestBackend.enabled) func resultsOutliveTheJobsTheyCameFrom(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let c = try db.connect()
            defer { c.close() }
            let first = try queue.enqueue(Member(n: 40))
            let second = try queue.enqueue(Member(n: 2), options: JobOptions(delay: .seconds(3600)))
            let total = try queue.enqueue(Total(), after: [first.id, second.id])
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool)
            #expect(try first.result(timeout: .seconds(30)) == 40)
            _ = try c.execute("DELETE FROM mp_jobs WHERE id = \(first.id)")
            _ = try c.execute("UPDATE mp_jobs SET run_at = 0 WHERE id = \(second.id)")
            queue.wakeWorkers()
            #expect(try total.result(timeout: .seconds(30)) == 42)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            // A retention that has passed for every finished job.
            let statements = QueueStatements(
                worker: "t",
                queues: ["default"],
                lease: .seconds(30),
                keepCompleted: .seconds(-60),
                keepFailed: .seconds(-60),
                logger: Logger(label: "t")
            )
            #expect(try statements.clean(on: c) == 2)
            #expect(try queue.counts() == [:])
            #expect(try c.scalar("SELECT count(*) FROM mp_job_deps")?.intValue == 0)
        }
    }

    /// Members of one group ending at the same moment in separate transactions (cancelled from two
    /// threads, over and over): the callback is released every time, once — never left waiting because
    /// each saw the other's edge still open.
    @Test(arguments: TestBackend.enabled) func membersEndingTogetherReleaseTheCallbackOnce(
        _ backend: TestBackend
    ) throws {
        try withScratchDatabase(backend) { db in
            let setup = try JobQueue(db.url)
            let queues = try (0..<2).map { _ in try JobQueue(db.url) }
            let c = try db.connect()
            defer { c.close() }
            let later = JobOptions(delay: .seconds(3600))
            for round in 0..<40 {
                let group = try setup.group([Member(n: 1), Member(n: 2)], options: later, then: Summary())
                let start = Barrier(parties: 2)
                let cancels = (0..<2).map { i in
                    background {
                        _ = try start.wait(timeout: .seconds(30))
                        return try queues[i].cancel(group.members[i].id)
                    }
                }
                for f in cancels { #expect(try f.result(timeout: .seconds(30))) }
                #expect(try group.callback.info()?.state == .available, "round \(round): the callback was left waiting")
                let stillOpen = try c.scalar("SELECT waiting_on FROM mp_jobs WHERE id = \(group.callback.id)")?.intValue
                let resolved = try c.scalar(
                    "SELECT count(*) FROM mp_job_deps WHERE child_id = \(group.callback.id) AND parent_state IS NOT NULL"
                )?.intValue
                #expect(
                    stillOpen == 0 && resolved == 2,
                    "round \(round): \(String(describing: stillOpen)) open, \(String(describing: resolved)) resolved"
                )
            }
        }
    }

    /// A worker process killed while it runs a link: the link runs again after its lease, and the chain
    /// goes on to its end, every later link once.
    @Test(arguments: TestBackend.enabled) func aWorkerKilledMidChainLosesNoLink(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let log = db.scratch + ".log"
            let gate = db.scratch + ".gate"
            let chain = try queue.chain(Gated(n: 4, gate: gate, log: log)).then(AddOne(log: log)).then(
                ToText(log: log)
            )
            .enqueue()
            let child = ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 600, concurrency: 1))
            try child.start()
            try waitUntilRunning(JobHandle<Gated>(queue: queue, id: chain.links[0]))
            child.kill()
            _ = try child.join(timeout: .seconds(10))
            open(gate: gate)
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool, lease: .milliseconds(600))
            #expect(try chain.last.result(timeout: .seconds(30)) == "=17")
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            #expect(readLines(log) == ["4", "add 16", "text 17"])
            #expect(try queue.info(chain.links[0])?.attempt == 2)
        }
    }

    /// On PostgreSQL, a worker killed inside the transaction that records a link's end and releases the
    /// next (a trigger holds the release on a lock the test owns): both roll back, the link runs again
    /// after its lease, and the next link runs once.
    @Test(
        .enabled(
            if: TestBackend.enabled.contains(.postgresql),
            "needs PostgreSQL (a trigger holds the worker inside its transaction; SQLite has none that waits)"
        )
    )
    func aWorkerKilledInsideTheReleaseLosesNoLink() throws {
        try withScratchDatabase(.postgresql) { db in
            let queue = try JobQueue(db.url)
            let c = try db.connect()
            defer { c.close() }
            try holdInsideTransactions(on: "mp_job_deps", "UPDATE", key: 4343, c)
            let log = db.scratch + ".log"
            let chain = try queue.chain(Square(n: 5, log: log)).then(AddOne(log: log)).enqueue()
            let a = ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 1000, concurrency: 1))
            try a.start()
            defer { a.kill() }
            try waitUntilHeldInsideATransaction(c)
            let held = try #require(
                try c.scalar(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'advisory' AND datname = current_database()"
                )?
                .intValue
            )
            a.kill()
            _ = try a.join(timeout: .seconds(30))
            _ = try c.execute("SELECT pg_advisory_unlock(4343)")
            // Its session runs on, finds its client gone, and ends without a commit.
            try eventually("the killed worker's session ended") {
                try c.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = \(held)")?.intValue == 0
            }
            #expect(try queue.info(chain.links[0])?.state == .running, "the end rolled back with the release")
            #expect(try queue.info(chain.links[1])?.state == .waiting)
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool, lease: .milliseconds(1000))
            #expect(try chain.last.result(timeout: .seconds(60)) == 26)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            #expect(
                readLines(log) == ["5", "5", "add 25"],
                "the first link ran twice (killed before its end committed), the second once"
            )
        }
    }

    /// A waiting job whose parent ended through a path that did not release it (a worker of the previous
    /// version, SQL of the user's) is released by the next worker's sweep.
    @Test(arguments: TestBackend.enabled) func theSweepReleasesJobsWhoseParentEndedUnseen(_ backend: TestBackend) throws
    {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let c = try db.connect()
            defer { c.close() }
            let parent = try queue.enqueue(Member(n: 8), options: JobOptions(delay: .seconds(3600)))
            let child = try queue.enqueue(Total(), after: [parent.id])
            _ = try c.execute(
                "UPDATE mp_jobs SET state = 'completed', result = \(c.dialect.parameter(1)), finished_at = 1 WHERE id = \(parent.id)",
                [.blob(try BinaryEncoder().encode(8))]
            )
            #expect(try child.info()?.state == .waiting)
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool, lease: .seconds(1))
            #expect(try child.result(timeout: .seconds(30)) == 8)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
        }
    }

    /// A link whose worker died on its last attempt is discarded by another worker's rescue, and that end
    /// releases too: the next link is stopped, a job that only waits for the outcome sees it discarded.
    @Test(arguments: TestBackend.enabled) func aLinkDiscardedByTheRescueStopsItsChain(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let chain = try queue.chain(Square(n: 4, pauseMs: 60_000), options: JobOptions(maxAttempts: 1))
                .then(AddOne()).enqueue()
            let sees = try queue.enqueue(Summary(), after: [chain.links[0]], policy: .allFinished)
            let child = ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 600, concurrency: 1))
            try child.start()
            try waitUntilRunning(JobHandle<Square>(queue: queue, id: chain.links[0]))
            child.kill()
            _ = try child.join(timeout: .seconds(10))
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool, lease: .milliseconds(600))
            #expect(try sees.result(timeout: .seconds(30)) == "\(chain.links[0]):discarded:-")
            let error = #expect(throws: JobQueueError.self) { try chain.last.result(timeout: .seconds(30)) }
            #expect(
                error?.code == .cancelled && error?.message.contains("was discarded") == true,
                "\(String(describing: error))"
            )
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
        }
    }

    /// A running link cancelled (its worker stops it and records the cancel) stops the rest of its chain.
    @Test(arguments: TestBackend.enabled) func cancellingARunningLinkStopsTheChain(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let chain = try queue.chain(Square(n: 4, pauseMs: 60_000)).then(AddOne()).then(ToText()).enqueue()
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool, lease: .seconds(1))
            try waitUntilRunning(JobHandle<Square>(queue: queue, id: chain.links[0]))
            #expect(try queue.cancel(chain.links[0]))
            let error = #expect(throws: JobQueueError.self) { try chain.last.result(timeout: .seconds(30)) }
            #expect(error?.code == .cancelled)
            #expect(try chain.links.map { try queue.info($0)?.state } == [.cancelled, .cancelled, .cancelled])
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
        }
    }

    /// Two worker processes run a group's 300 members: their ends, recorded by both at once, release the
    /// callback once, after every member, with every result.
    @Test(arguments: TestBackend.enabled) func twoWorkerProcessesFinishAGroupOnce(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let log = db.scratch + ".log"
            let group = try queue.group((1...300).map { Member(n: $0, log: log) }, then: Total())
            let workers = (0..<2).map { _ in
                ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 10_000, concurrency: 2))
            }
            for w in workers { try w.start() }
            #expect(try group.callback.result(timeout: .seconds(60)) == 45150)
            for w in workers { w.terminate() }
            let finished = try workers.map { try $0.result(timeout: .seconds(30)) }
            #expect(finished.reduce(0, +) == 301)
            #expect(readLines(log).count == 300)
            #expect(try queue.counts() == [.completed: 301])
        }
    }

    /// A chained job cannot start a chain (it would have no output to take); a waiting job cancelled and
    /// retried before the jobs it waits for have ended waits for them again.
    @Test(arguments: TestBackend.enabled) func aChainedFirstLinkIsRefusedAndARetriedWaitingJobWaits(
        _ backend: TestBackend
    ) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let e = #expect(throws: JobQueueError.self) { try queue.chain(AddOne()).then(ToText()).enqueue() }
            #expect(e?.code == .invalidDependency)
            #expect(try queue.counts() == [:])
            let parent = try queue.enqueue(Member(n: 3), options: JobOptions(delay: .seconds(3600)))
            let child = try queue.enqueue(Total(), after: [parent.id])
            #expect(try child.cancel())
            #expect(try queue.retry(child.id))
            #expect(try child.info()?.state == .waiting)
            _ = try queue.retry(parent.id)  // not finished: nothing to do
            let c = try db.connect()
            defer { c.close() }
            _ = try c.execute("UPDATE mp_jobs SET run_at = 0 WHERE id = \(parent.id)")
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool)
            #expect(try child.result(timeout: .seconds(30)) == 3)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
        }
    }

    /// A job queued after one that is running (claimed before anything waited for it): the worker's next
    /// heartbeat tells it, and it records the end with the release, in one transaction.
    @Test(arguments: TestBackend.enabled) func aHeartbeatTellsTheWorkerOfAJobQueuedAfterItsRunningOne(
        _ backend: TestBackend
    ) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let c = try db.connect()
            defer { c.close() }
            let gate = db.scratch + ".gate"
            let parent = try queue.enqueue(Gated(n: 6, gate: gate))
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool, lease: .seconds(3))
            try waitUntilRunning(parent)
            let child = try queue.enqueue(AddOne(), after: [parent.id])
            let lease = try c.scalar("SELECT lease_until FROM mp_jobs WHERE id = \(parent.id)")?.intValue ?? 0
            try eventually("a heartbeat after the child was queued") {
                try c.scalar("SELECT lease_until FROM mp_jobs WHERE id = \(parent.id)")?.intValue ?? 0 > lease
            }
            open(gate: gate)
            try expectReleasedWithTheEnd(of: parent.id, child.id, c)
            #expect(try child.result(timeout: .seconds(30)) == 37)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
        }
    }

    /// A job queued after a running one that ends before its worker's next heartbeat: on SQLite the end,
    /// fenced by `dependents = 0`, sees it and releases it in the same transaction; on PostgreSQL (the
    /// claim-and-complete statement) the next sweep releases it.
    @Test(arguments: TestBackend.enabled) func aJobQueuedAfterARunningOneIsReleasedBeforeAnyHeartbeat(
        _ backend: TestBackend
    ) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let c = try db.connect()
            defer { c.close() }
            let gate = db.scratch + ".gate"
            let parent = try queue.enqueue(Gated(n: 6, gate: gate))
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            // Heartbeats every 20 s, sweeps every 15 s: neither comes before the end.
            let (worker, running) = try startWorker(db.url, pool, lease: .seconds(60))
            try waitUntilRunning(parent)
            let child = try queue.enqueue(AddOne(), after: [parent.id])
            open(gate: gate)
            if backend == .sqlite { try expectReleasedWithTheEnd(of: parent.id, child.id, c) }
            #expect(try child.result(timeout: .seconds(60)) == 37)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
        }
    }
}
