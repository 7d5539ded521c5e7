import Foundation
import Multiprocessing
import MultiprocessingSQL
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingJobQueue

struct Cube: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Int { x * x * x }
}

struct ItemError: Error, Codable, Equatable {
    let item: Int
}

/// Throws for `bad`, exits its worker process for `fatal`.
struct Picky: SyncTaskFunction {
    var bad: Int = -1
    var fatal: Int = -1
    func callAsFunction(_ x: Int) throws -> Int {
        if x == fatal { exit(3) }
        if x == bad { throw ItemError(item: x) }
        return x + 1000
    }
}

/// Items at and above `from` wait for the gate file (the others return at once); every item's run is
/// logged.
struct GatedItem: TaskFunction {
    var gate: String
    var from: Int = 0
    var log: String? = nil
    func callAsFunction(_ x: Int) async throws -> Int {
        if x >= from {
            while access(gate, F_OK) != 0 { try await Task.sleep(for: .milliseconds(2)) }
        }
        if let log { appendLine(log, "\(x)") }
        return x * 10
    }
}

/// Throws the first time it runs for an item (it leaves a marker file), succeeds the next.
struct FlakyItem: SyncTaskFunction {
    var marker: String
    func callAsFunction(_ x: Int) throws -> Int {
        let path = marker + ".\(x)"
        if access(path, F_OK) != 0 {
            close(Glibc.open(path, O_CREAT | O_WRONLY, 0o644))
            throw ItemError(item: x)
        }
        unlink(path)
        return x
    }
}

/// A caller that queues a map and dies before reading it (exit at once: no clean-up of its own runs).
struct DyingCaller: Job {
    let database: DatabaseURL
    func run() throws {
        let pool = try QueuePool(database, options: QueuePoolOptions(workers: 2))
        let results = try pool.imapUnordered(Cube(), Array(0..<40), chunksize: 4)
        withExtendedLifetime(results) { _exit(0) }
    }
}

/// A queue worker on a process pool of its own, serving a test's database on a thread of the test.
final class ServingWorker: Sendable {
    let processes: ProcessPool
    let worker: QueueWorker
    let running: Future<Int>

    init(_ url: DatabaseURL, workers: Int, options: QueueWorkerOptions) throws {
        processes = try ProcessPool(workers: workers)
        do {
            worker = try QueueWorker(url, pool: processes, options: options)
        } catch {
            processes.terminate()
            throw error
        }
        let worker = self.worker
        running = background { try worker.run() }
    }

    /// Stops the worker (it finishes what it holds) and waits for it; returns the jobs it finished.
    @discardableResult
    func stop() throws -> Int {
        worker.stop()
        return try running.result(timeout: .seconds(30))
    }

    /// Stops the worker's pool (after ``stop()``, or on a failure).
    func terminate() {
        worker.stop()
        processes.terminate()
    }
}

/// The blocking `map` of code written against any pool, from a thread that may block.
func blockingMap(_ pool: some TaskPool, _ inputs: [Int]) throws -> [Int] {
    try pool.map(Cube(), inputs, chunksize: nil, options: .default, timeout: nil)
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct QueuePoolTests {
    /// The pool's calls against a worker of the queue (here, on a process pool of two): the results are
    /// those of the local pool, every row is taken once read.
    @Test(arguments: TestBackend.enabled) func theProcessPoolsCallsRunAsQueueJobs(_ backend: TestBackend) async throws {
        try await withScratchDatabase(backend) { db in
            let serving = try ServingWorker(
                db.url,
                workers: 2,
                options: QueueWorkerOptions(pollInterval: .milliseconds(5))
            )
            defer { serving.terminate() }
            let pool = try QueuePool(db.url, options: QueuePoolOptions(workers: 2))
            let inputs = Array(0..<1000)
            let expected = inputs.map { $0 * $0 * $0 }
            #expect(try await Task.detached { try blockingMap(pool, inputs) }.value == expected)
            #expect(try await pool.map(Cube(), inputs, chunksize: 7) == expected)
            let results = try await Task.detached { try pool.mapResults(Cube(), inputs, chunksize: 50) }.value
            #expect(results.map { try? $0.get() } == expected)
            var ordered: [Int] = []
            for try await v in try pool.imap(Cube(), (0..<100).lazy.map { $0 }, chunksize: 3, maxInFlight: 10) {
                ordered.append(v)
            }
            #expect(ordered == Array(expected[0..<100]))
            var unordered: [Int] = []
            for try await v in try pool.imapUnordered(Cube(), inputs, chunksize: 1) { unordered.append(v) }
            #expect(unordered.sorted() == expected)
            #expect(try await pool.submit(Cube(), 5).value == 125)
            #expect(try await pool.run(Square(n: 3)) == 9)
            let called = Future<Int>()
            try pool.applyAsync(Square(n: 9), callback: { called.complete(.success($0)) })
            #expect(try called.result(timeout: .seconds(30)) == 81)
            #expect(try pool.submit(Square(n: 4)).get(timeout: .seconds(30)) == 16)
            #expect(pool.join(timeout: .seconds(30)))
            // Every end was read and its row deleted.
            let queue = try JobQueue(db.url)
            #expect(try queue.counts() == [:])
            try serving.stop()
        }
    }

    /// An item that throws fails alone (a `Codable` error comes back as itself); an item that kills its
    /// worker process fails alone too: its chunk fails as a whole and its items run again one job each.
    @Test(arguments: TestBackend.enabled) func anItemThatThrowsOrKillsItsWorkerFailsAlone(_ backend: TestBackend) throws
    {
        try withScratchDatabase(backend) { db in
            let serving = try ServingWorker(
                db.url,
                workers: 2,
                options: QueueWorkerOptions(pollInterval: .milliseconds(5))
            )
            defer { serving.terminate() }
            let pool = try QueuePool(db.url)
            let thrown = try pool.mapResults(Picky(bad: 7), Array(0..<20), chunksize: 5, timeout: .seconds(60))
            #expect(thrown.count == 20)
            for (i, r) in thrown.enumerated() {
                switch r {
                case .success(let v): #expect(i != 7 && v == i + 1000)
                case .failure(let e): #expect(i == 7 && (e as? ItemError) == ItemError(item: 7), "\(e)")
                }
            }
            let e = #expect(throws: ItemError.self) { try pool.map(Picky(bad: 3), Array(0..<10), chunksize: 2) }
            #expect(e == ItemError(item: 3))
            let killed = try pool.mapResults(Picky(fatal: 13), Array(0..<20), chunksize: 5, timeout: .seconds(60))
            #expect(killed.count == 20)
            for (i, r) in killed.enumerated() {
                switch r {
                case .success(let v): #expect(i != 13 && v == i + 1000)
                case .failure(let e):
                    #expect(i == 13 && (e as? JobQueueError)?.code == .failed, "\(e)")
                    #expect("\(e)".contains("discarded"), "\(e)")
                }
            }
            #expect(pool.join(timeout: .seconds(30)))
            #expect(try JobQueue(db.url).counts() == [:])
            try serving.stop()
        }
    }

    /// An item that runs past its timeout fails alone, with the worker's history saying so (its chunk timed
    /// out as a whole and its items ran one job each); an item that throws once is run again by a retry
    /// policy for errors, and succeeds.
    @Test(arguments: TestBackend.enabled) func timeoutsAndRetriesAreThePoolsPerItem(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let serving = try ServingWorker(
                db.url,
                workers: 2,
                options: QueueWorkerOptions(pollInterval: .milliseconds(5))
            )
            defer { serving.terminate() }
            let pool = try QueuePool(db.url)
            // Item 3 waits for a gate that never opens.
            let hung = try pool.mapResults(
                GatedItem(gate: db.scratch + ".never", from: 3),
                [0, 1, 2, 3],
                chunksize: 2,
                options: TaskOptions(timeout: .milliseconds(300)),
                timeout: .seconds(120)
            )
            #expect(hung.count == 4)
            #expect(hung.prefix(3).map { try? $0.get() } == [0, 10, 20])
            if case .failure(let e) = hung[3] {
                #expect((e as? JobQueueError)?.code == .failed && "\(e)".contains("timeout"), "\(e)")
            } else {
                Issue.record("the hung item succeeded")
            }
            let flaky = try pool.map(
                FlakyItem(marker: db.scratch),
                Array(0..<6),
                chunksize: 3,
                options: TaskOptions(retry: RetryPolicy(attempts: 2, backoff: .milliseconds(1), on: [.error])),
                timeout: .seconds(120)
            )
            #expect(flaky == Array(0..<6))
            #expect(pool.join(timeout: .seconds(30)))
            #expect(try JobQueue(db.url).counts() == [:])
            try serving.stop()
        }
    }

    /// `imapUnordered` hands out each result as its job's end is read: nine come while the tenth still
    /// waits for its gate.
    @Test(arguments: TestBackend.enabled) func unorderedResultsStreamBackAsTheyFinish(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let serving = try ServingWorker(
                db.url,
                workers: 2,
                options: QueueWorkerOptions(pollInterval: .milliseconds(5))
            )
            defer { serving.terminate() }
            let gate = db.scratch + ".marker"
            let pool = try QueuePool(db.url)
            let results = try pool.imapUnordered(GatedItem(gate: gate, from: 9), Array(0..<10), chunksize: 1)
            var first: [Int] = []
            for _ in 0..<9 { first.append(try #require(try results.next(timeout: .seconds(60)))) }
            #expect(first.sorted() == (0..<9).map { $0 * 10 })
            open(gate: gate)
            #expect(try results.next(timeout: .seconds(60)) == 90)
            #expect(try results.next(timeout: .seconds(60)) == nil)
            try serving.stop()
        }
    }

    /// PostgreSQL: the pool hears of each end at its commit. Its poll is an hour here: the result can only
    /// come back through the notification of the end (the pool had read and found nothing since the job
    /// started).
    @Test(
        .enabled(
            if: TestBackend.enabled.contains(.postgresql),
            "needs PostgreSQL (LISTEN/NOTIFY; on SQLite the pool polls)"
        )
    )
    func postgresNotifiesThePoolOfEachEnd() throws {
        try withScratchDatabase(.postgresql) { db in
            let serving = try ServingWorker(
                db.url,
                workers: 1,
                options: QueueWorkerOptions(pollInterval: .milliseconds(5))
            )
            defer { serving.terminate() }
            let gate = db.scratch + ".marker"
            let queue = try JobQueue(db.url)
            let pool = try QueuePool(queue, options: QueuePoolOptions(pollInterval: .seconds(3600)))
            let task = try pool.submit(GatedItem(gate: gate), 4)
            try eventually("the job running") { try queue.counts()[.running] == 1 }
            // Listening, it read once and found nothing: from then on it reads only when woken (or in an hour).
            try eventually("the pool listening, with nothing to read") {
                pool.core.isListening && pool.core.emptyReads > 0
            }
            open(gate: gate)
            #expect(try task.get(timeout: .seconds(120)) == 40)
            try serving.stop()
        }
    }

    /// Cancelling a call cancels its jobs: the queued ones at once, the running ones in their workers; no
    /// row is left, and no item runs after the gate opens.
    @Test(arguments: TestBackend.enabled) func cancellingACallCancelsItsJobs(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let serving = try ServingWorker(
                db.url,
                workers: 2,
                options: QueueWorkerOptions(lease: .seconds(3), pollInterval: .milliseconds(5))
            )
            defer { serving.terminate() }
            let gate = db.scratch + ".marker"
            let log = db.scratch + ".log"
            let queue = try JobQueue(db.url)
            let pool = try QueuePool(queue)
            // A running job hears of its cancel at the worker's next heartbeat (a third of its lease).
            let results = try pool.imapUnordered(GatedItem(gate: gate, log: log), Array(0..<30), chunksize: 1)
            try eventually("items running") { try queue.counts()[.running, default: 0] >= 2 }
            results.cancel()
            #expect(throws: CancellationError.self) { _ = try results.next(timeout: .seconds(10)) }
            try eventually("every job ended and taken") { try queue.counts() == [:] }
            open(gate: gate)
            #expect(readLines(log).isEmpty)
            #expect(pool.join(timeout: .seconds(30)))
            // The pool goes on after a cancelled call.
            #expect(try pool.map(Cube(), [2, 3]) == [8, 27])
            try serving.stop()
        }
    }

    /// Cancelling the task that awaits `run` cancels the job (queued on a thread of the queue's, awaited
    /// without holding one).
    @Test(arguments: TestBackend.enabled) func cancellingTheAwaitingTaskCancelsTheJob(
        _ backend: TestBackend
    ) async throws {
        try await withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let pool = try QueuePool(queue)
            let waiting = Task { try await pool.run(Gated(n: 2, gate: db.scratch + ".marker")) }
            try await eventually("the job queued") { try queue.counts()[.available] == 1 }
            waiting.cancel()
            await #expect(throws: CancellationError.self) { _ = try await waiting.value }
            try await eventually("the job cancelled and taken") { try queue.counts() == [:] }
        }
    }

    /// Dropping the results of a call cancels it, as a process pool's: an eager one (its jobs all queued)
    /// and a lazy one (its feeder waiting for credit) both have their jobs cancelled, and the pool ends.
    @Test(arguments: TestBackend.enabled) func droppingTheResultsCancelsTheCall(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let gate = db.scratch + ".marker"
            let queue = try JobQueue(db.url)
            let pool = try QueuePool(queue, options: QueuePoolOptions(workers: 2))
            do {
                let eager = try pool.imapUnordered(GatedItem(gate: gate), Array(0..<8), chunksize: 2)
                #expect(try queue.counts() == [.available: 4])
                _ = eager
            }
            try eventually("the eager call's jobs cancelled and taken") { try queue.counts() == [:] }
            do {
                let lazy = try pool.imap(
                    GatedItem(gate: gate),
                    (0..<1000).lazy.map { $0 },
                    chunksize: 1,
                    maxInFlight: 4
                )
                try eventually("the lazy call's credit spent") { try queue.counts()[.available] == 4 }
                _ = lazy
            }
            try eventually("the lazy call's jobs cancelled and taken") { try queue.counts() == [:] }
            pool.close()
            #expect(pool.join(timeout: .seconds(60)))
            #expect(pool.core.waitStopped(timeout: .seconds(60)))
        }
    }

    /// A `map` given a timeout cancels its jobs when it passes and throws `timedOut`; a terminated pool
    /// takes no calls and ends those it had (`PoolError` `.terminated`, as a process pool's); a closed
    /// one takes no calls and lets those it had finish.
    @Test(arguments: TestBackend.enabled) func aTimeoutClosingAndTerminatingEndTheCalls(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let gate = db.scratch + ".marker"
            let queue = try JobQueue(db.url)
            let pool = try QueuePool(queue)
            // No worker serves the queue: nothing can finish.
            let e = #expect(throws: MultiprocessingError.self) {
                try pool.map(Cube(), Array(0..<10), chunksize: 2, timeout: .milliseconds(200))
            }
            #expect(e?.code == .timedOut)
            try eventually("the timed-out call's jobs cancelled and taken") { try queue.counts() == [:] }
            let waiting = try pool.imapUnordered(GatedItem(gate: gate), Array(0..<4))
            let task = try pool.submit(GatedItem(gate: gate), 1)
            pool.terminate()
            let ended = #expect(throws: PoolError.self) { _ = try waiting.next(timeout: .seconds(30)) }
            #expect(ended?.code == .terminated)
            #expect((#expect(throws: PoolError.self) { _ = try task.get(timeout: .seconds(30)) })?.code == .terminated)
            #expect((#expect(throws: PoolError.self) { _ = try pool.submit(Cube(), 1) })?.code == .terminated)
            try eventually("the terminated pool's jobs cancelled and taken") { try queue.counts() == [:] }
            #expect(pool.core.waitStopped(timeout: .seconds(60)))

            let closing = try QueuePool(queue)
            let going = try closing.submit(GatedItem(gate: gate), 2)
            closing.close()
            #expect((#expect(throws: PoolError.self) { _ = try closing.submit(Cube(), 1) })?.code == .closed)
            #expect(!closing.join(timeout: .milliseconds(1)))
            let serving = try ServingWorker(
                db.url,
                workers: 1,
                options: QueueWorkerOptions(pollInterval: .milliseconds(5))
            )
            defer { serving.terminate() }
            open(gate: gate)
            #expect(try going.get(timeout: .seconds(60)) == 20)
            #expect(closing.join(timeout: .seconds(60)))
            #expect(closing.core.waitStopped(timeout: .seconds(60)))
            try serving.stop()
        }
    }

    /// A caller that dies leaves its jobs to run; their rows are then deleted by the workers' retention
    /// cleaner, as every finished job's.
    @Test(arguments: TestBackend.enabled) func aDeadCallersResultsAreCleanedByRetention(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let caller = ChildProcess(job: DyingCaller(database: db.url))
            try caller.start()
            try caller.join(timeout: .seconds(60))
            let queue = try JobQueue(db.url)
            #expect(try queue.counts() == [.available: 10])
            let processes = try ProcessPool(workers: 2)
            defer { processes.terminate() }
            let keeping = try QueueWorker(
                db.url,
                pool: processes,
                options: QueueWorkerOptions(pollInterval: .milliseconds(5), exitWhenDrained: true)
            )
            #expect(try keeping.run() == 10)
            #expect(try queue.counts() == [.completed: 10])
            // A worker cleans as it starts. A pool's rows stay ten minutes at least, whatever the retention
            // (a live pool takes them within milliseconds): the rows are made older, as time would.
            func clean() throws {
                let cleaning = try QueueWorker(
                    db.url,
                    pool: processes,
                    options: QueueWorkerOptions(
                        pollInterval: .milliseconds(5),
                        keepCompleted: .zero,
                        exitWhenDrained: true
                    )
                )
                _ = try cleaning.run()
            }
            try clean()
            #expect(try queue.counts() == [.completed: 10])
            let c = try db.connect()
            defer { c.close() }
            try c.execute("UPDATE mp_jobs SET finished_at = finished_at - 600001")
            try clean()
            #expect(try queue.counts() == [:])
        }
    }
}

@Suite struct QueuePoolStateTests {
    /// Ends are routed to the call and items of their job; a chunk that failed as a whole is split, a
    /// single item fails; an end read before its job was registered waits for it; a cancelled call's ends
    /// are dropped; unclaimed ends expire.
    @Test func endsAreRoutedSplitOrDropped() {
        var s = QueuePoolState(unclaimedLimit: 1000)
        #expect(s.registered(10, call: 1, base: 0, count: 4) == [])
        #expect(s.registered(11, call: 1, base: 4, count: 1) == [])
        #expect(s.isWaiting)
        #expect(s.ended(10, .completed([1]), now: 0) == [.deliver(call: 1, base: 0, count: 4, result: [1])])
        #expect(s.ended(11, .discarded("x"), now: 0) == [.fail(call: 1, base: 4, count: 1, end: .discarded("x"))])
        #expect(!s.isWaiting)
        _ = s.registered(12, call: 2, base: 0, count: 3)
        #expect(s.ended(12, .discarded("killed"), now: 0) == [.split(call: 2, base: 0, count: 3)])
        // One item whose worker was lost (its lease ran out on its last attempt) is queued again.
        let lost = "attempt 1 at 2026-12-08T00:00:00.000Z on w1: lease expired (the worker stopped renewing it)\n"
        _ = s.registered(17, call: 2, base: 5, count: 1)
        #expect(s.ended(17, .discarded(lost), now: 0) == [.requeue(call: 2, base: 5, history: lost)])
        #expect(
            QueuePoolState.leaseRanOut("attempt 1: lease expired (the worker stopped renewing it)\nattempt 2: boom\n")
                == false
        )
        // Read before registered.
        #expect(s.ended(13, .completed([2]), now: 5) == [])
        #expect(s.registered(13, call: 2, base: 3, count: 1) == [.deliver(call: 2, base: 3, count: 1, result: [2])])
        #expect(s.unclaimed.isEmpty)
        // Cancelled: its ends are dropped, a cancelled end of a chunk fails (is not split).
        _ = s.registered(14, call: 3, base: 0, count: 2)
        _ = s.registered(15, call: 3, base: 2, count: 2)
        _ = s.registered(16, call: 4, base: 0, count: 2)
        #expect(s.cancel(3, now: 0) == [14, 15])
        #expect(s.ended(14, .cancelled(""), now: 0) == [])
        #expect(s.ended(16, .cancelled("op"), now: 0) == [.fail(call: 4, base: 0, count: 2, end: .cancelled("op"))])
        #expect(s.dropped == [15: 0])
        #expect(s.isWaiting)  // job 15's row is still to be read and deleted
        // An end no call registers, and a cancelled job whose end never comes, are forgotten after the limit.
        _ = s.ended(99, .completed([]), now: 100)
        s.expire(now: 999)
        #expect(s.unclaimed.keys.contains(99))
        #expect(s.dropped == [15: 0])
        s.expire(now: 1100)
        #expect(s.unclaimed.isEmpty)
        #expect(s.dropped.isEmpty)
        #expect(!s.isWaiting)
    }
}

/// Why the pool cannot be tested across hosts here (nil when it can): a network namespace is made and
/// removed at once, and the relay that carries PostgreSQL's port into it (`socat`) must be installed.
let queuePoolHostsUnavailable: String? = {
    let (ns, why) = VethNamespace.make("qprobe")
    ns?.remove()
    if ns == nil { return why }
    return access("/usr/bin/socat", X_OK) == 0 ? nil : "socat is not installed (it relays PostgreSQL's port)"
}()

/// The queue pool with a worker on another "machine": a network namespace joined by a veth pair, whose
/// worker reaches PostgreSQL through a relay on the host's end of the link (the server listens on
/// 127.0.0.1 only). Skipped, with the reason, without PostgreSQL or network namespaces.
@Suite(
    .serialized,
    .timeLimit(.minutes(3)),
    .enabled(
        if: TestBackend.enabled.contains(.postgresql)
            && runs(needing: "netns", unavailable: queuePoolHostsUnavailable),
        Comment(rawValue: queuePoolHostsUnavailable ?? "needs PostgreSQL")
    )
)
struct QueuePoolAcrossHostsTests {
    func mp(_ arguments: [String], namespace: String? = nil) throws -> Foundation.Process {
        let p = Foundation.Process()
        let mp = try #require(builtExecutable("mp"))
        if let namespace {
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["ip", "netns", "exec", namespace, mp.path] + arguments
        } else {
            p.executableURL = mp
            p.arguments = arguments
        }
        p.standardOutput = Pipe()
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        return p
    }

    /// `mp queue map` here, its chunks run by `mp queue worker` in the other namespace, which is killed
    /// (SIGKILL: the machine is gone) while it runs some; a worker here takes them over once their lease
    /// runs out. Every result comes back, each once.
    @Test func aWorkerOnAnotherHostKilledMidMapLosesNothing() throws {
        let (made, why) = VethNamespace.make("qp")
        let ns = try #require(made, "\(why)")
        defer { ns.remove() }
        try withScratchDatabase(.postgresql) { db in
            // The relay: the namespace's end of the link reaches the server through the host's end.
            let relayPort = 20_000 + Int(getpid() % 20_000)
            let relay = Foundation.Process()
            relay.executableURL = URL(fileURLWithPath: "/usr/bin/socat")
            relay.arguments = [
                "TCP-LISTEN:\(relayPort),bind=\(ns.hostAddress),reuseaddr,fork", "TCP:127.0.0.1:\(db.url.port)",
            ]
            try relay.run()
            defer {
                // SIGKILL: the relay inherits this process's blocked signals (SIGTERM is among them).
                kill(relay.processIdentifier, SIGKILL)
                relay.waitUntilExit()
            }
            var remote = db.url
            remote.host = ns.hostAddress
            remote.port = relayPort
            let queue = try JobQueue(db.url)
            let c = try db.connect()
            defer { c.close() }
            let far = try mp(
                [
                    "queue", "worker", "--database", remote.text, "--concurrency", "2", "--lease", "2", "--poll-ms",
                    "10",
                ],
                namespace: ns.name
            )
            try far.run()
            defer {
                if far.isRunning { kill(far.processIdentifier, SIGKILL) }
                far.waitUntilExit()
            }
            try eventually("the far worker serving") {
                try c.scalar("SELECT count(*) FROM mp_workers WHERE pid = \(far.processIdentifier)")?.intValue == 1
            }
            let map = try mp(
                ["queue", "map", "--database", db.url.text, "--count", "40", "--chunksize", "1", "--pause-ms", "200"]
            )
            try map.run()
            defer { if map.isRunning { kill(map.processIdentifier, SIGKILL) } }
            try eventually("the far worker running the map's jobs") {
                try c.scalar(
                    """
                    SELECT count(*) FROM mp_jobs j JOIN mp_workers w ON j.worker = w.name
                    WHERE w.pid = \(far.processIdentifier) AND j.state = 'running'
                    """
                )?.intValue ?? 0 > 0
            }
            kill(far.processIdentifier, SIGKILL)
            far.waitUntilExit()
            let near = try mp(["queue", "worker", "--database", db.url.text, "--concurrency", "2", "--lease", "2"])
            try near.run()
            defer {
                if near.isRunning { kill(near.processIdentifier, SIGKILL) }
                near.waitUntilExit()
            }
            let data = (map.standardOutput as! Pipe).fileHandleForReading.readDataToEndOfFile()
            map.waitUntilExit()
            let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
            #expect(map.terminationStatus == 0, "\(lines)")
            #expect(lines.last == "40 results")
            #expect(lines.dropLast().compactMap { Int($0) }.sorted() == (0..<40).map { $0 * $0 })
            // The map read and deleted every row of its jobs, the rescued ones included.
            #expect(try queue.counts() == [:])
        }
    }
}
