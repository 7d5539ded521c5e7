import Glibc
import Logging
import Multiprocessing
import MultiprocessingSQL
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingJobQueue

/// A job that runs until its marker file exists (a test's condition, never a sleep), up to a minute.
struct HoldUntil: Job {
    var marker: String
    func run() throws -> String {
        for _ in 0..<60_000 where access(marker, F_OK) != 0 { usleep(1000) }
        return "released"
    }
}

/// What the web console reads and does through `JobQueue`: counts by queue and state, throughput, filtered
/// and paged lists, a job's details, retry and discard, and the workers announcing themselves with their
/// pools' processes.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct JobQueueAdminTests {
    /// Sets a job's state as a worker would have left it (the tests of the queries need rows in every state).
    func set(_ c: any SQLConnection, _ id: Int64, _ state: JobState, attempt: Int = 1, errors: String? = nil) throws {
        let d = c.dialect
        try c.execute(
            "UPDATE mp_jobs SET state = \(d.parameter(1)), attempt = \(d.parameter(2)), finished_at = \(d.parameter(3)), errors = \(d.parameter(4)) WHERE id = \(d.parameter(5))",
            [
                .text(state.rawValue), .int(Int64(attempt)),
                [.completed, .discarded, .cancelled].contains(state)
                    ? .int(QueueTime.now.millisecondsSinceEpoch) : .null,
                errors.map { .text($0) } ?? .null, .int(id),
            ]
        )
    }

    @Test(arguments: TestBackend.enabled) func queuesAreCountedByStateAndThroughputByBucket(
        _ backend: TestBackend
    ) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let a = try queue.enqueue((1...7).map { Square(n: $0) }, options: JobOptions(queue: "alpha"))
            _ = try queue.enqueue(
                (1...3).map { Square(n: $0) },
                options: JobOptions(queue: "beta", delay: .seconds(3600))
            )
            let c = try db.connect()
            defer { c.close() }
            try set(c, a[0].id, .completed)
            try set(c, a[1].id, .completed)
            try set(c, a[2].id, .discarded, attempt: 3, errors: "attempt 3 at x on w: boom\n")
            try set(c, a[3].id, .cancelled)
            try set(c, a[4].id, .running)
            let summaries = try queue.queues()
            #expect(summaries.map(\.queue) == ["alpha", "beta"])
            #expect(summaries[0].counts == [.completed: 2, .discarded: 1, .cancelled: 1, .running: 1, .available: 2])
            #expect(summaries[0].scheduled == 0)
            #expect(summaries[1].counts == [.available: 3])
            #expect(summaries[1].scheduled == 3)
            let buckets = try queue.throughput(last: .seconds(60), bucket: .seconds(10))
            #expect(buckets.count == 6)
            #expect(buckets.reduce(0) { $0 + $1.completed } == 2)
            #expect(buckets.reduce(0) { $0 + $1.failed } == 2)
            #expect(zip(buckets, buckets.dropFirst()).allSatisfy { $1.start.since($0.start) == .seconds(10) })
            #expect(
                try queue.throughput(last: .seconds(60), queue: "beta").allSatisfy { $0.completed + $0.failed == 0 }
            )
        }
    }

    @Test(arguments: TestBackend.enabled) func jobListsFilterAndPageNewestFirst(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let squares = try queue.enqueue((1...5).map { Square(n: $0) }, options: JobOptions(queue: "q1"))
            let failing = try queue.enqueue([AlwaysThrows(), AlwaysThrows()], options: JobOptions(queue: "q2"))
            let c = try db.connect()
            defer { c.close() }
            try set(c, failing[0].id, .discarded)
            let all = try queue.jobs(matching: JobFilter(), limit: 100)
            #expect(all.map(\.id) == (squares.map(\.id) + failing.map(\.id)).sorted(by: >))
            #expect(try queue.jobs(matching: JobFilter(queue: "q1")).map(\.id) == squares.map(\.id).reversed())
            #expect(try queue.jobs(matching: JobFilter(state: .discarded)).map(\.id) == [failing[0].id])
            #expect(try queue.jobs(matching: JobFilter(kind: "AlwaysThrows")).count == 2)
            #expect(try queue.jobs(matching: JobFilter(kind: "Square")).count == 5)
            // LIKE's wildcards are literal: `%` matches nothing here.
            #expect(try queue.jobs(matching: JobFilter(kind: "%")).isEmpty)
            // Case counts, on every database (SQLite's LIKE would ignore it).
            #expect(try queue.jobs(matching: JobFilter(kind: "square")).isEmpty)
            let first = try queue.jobs(matching: JobFilter(queue: "q1"), limit: 2)
            let second = try queue.jobs(matching: JobFilter(queue: "q1", before: first.last!.id), limit: 2)
            let third = try queue.jobs(matching: JobFilter(queue: "q1", before: second.last!.id), limit: 2)
            #expect((first + second + third).map(\.id) == squares.map(\.id).reversed())
            #expect(first[0].createdAt <= QueueTime.now && first[0].finishedAt == nil)
        }
    }

    @Test(arguments: TestBackend.enabled) func detailsShowTheArgumentsAndTheErrorHistory(_ backend: TestBackend) throws
    {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let h = try queue.enqueue(
                Square(n: 12, log: "a \"quoted\" path"),
                options: JobOptions(
                    uniqueKey: "k-12",
                    timeout: .seconds(5),
                    maxAttempts: 4,
                    backoff: .milliseconds(250)
                )
            )
            let c = try db.connect()
            defer { c.close() }
            try set(c, h.id, .discarded, attempt: 4, errors: "attempt 1 at t on w: one\nattempt 4 at t on w: four\n")
            let d = try #require(try queue.details(h.id))
            #expect(d.info.state == .discarded)
            #expect(d.info.errors == ["attempt 1 at t on w: one", "attempt 4 at t on w: four"])
            #expect(d.uniqueKey == "k-12")
            #expect(d.timeout == .seconds(5))
            #expect(d.backoff == .milliseconds(250))
            #expect(d.finishedAt != nil && d.resultBytes == nil && !d.traced && !d.cancelRequested)
            #expect(BinaryFormat.describe(d.payload) == #"{"n": 12, "log": "a \"quoted\" path", "pauseMs": 0}"#)
            #expect(try queue.details(999_999) == nil)
        }
    }

    @Test(arguments: TestBackend.enabled) func retryQueuesAFinishedJobAgainAndDiscardDropsAWaitingOne(
        _ backend: TestBackend
    ) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let jobs = try queue.enqueue((1...4).map { Square(n: $0) })
            let c = try db.connect()
            defer { c.close() }
            try set(c, jobs[0].id, .discarded, attempt: 3, errors: "attempt 3 at t on w: boom\n")
            // Retried: due now, one more attempt than it used, its history kept.
            #expect(try queue.retry(jobs[0].id))
            let retried = try #require(try queue.info(jobs[0].id))
            #expect(retried.state == .available && retried.maxAttempts == 4 && retried.attempt == 3)
            #expect(retried.errors == ["attempt 3 at t on w: boom"] && retried.finishedAt == nil)
            // Not finished: nothing to retry.
            #expect(try !queue.retry(jobs[1].id))
            #expect(try !queue.retry(999_999))
            // Discard: a waiting job only.
            #expect(try queue.discard(jobs[1].id))
            #expect(try queue.info(jobs[1].id)?.state == .discarded)
            try set(c, jobs[2].id, .running)
            #expect(try !queue.discard(jobs[2].id))
            #expect(try queue.info(jobs[2].id)?.state == .running)
            // A completed job runs again (its stored result is dropped).
            try set(c, jobs[3].id, .completed)
            #expect(try queue.retry(jobs[3].id))
            #expect(try queue.details(jobs[3].id)?.info.state == .available)
        }
    }

    @Test(arguments: TestBackend.enabled) func retryRefusesWhenAnotherJobHoldsTheUniqueKey(
        _ backend: TestBackend
    ) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let old = try queue.enqueue(Square(n: 1), options: JobOptions(uniqueKey: "nightly"))
            let c = try db.connect()
            defer { c.close() }
            try set(c, old.id, .discarded)
            let new = try queue.enqueue(Square(n: 2), options: JobOptions(uniqueKey: "nightly"))
            #expect(new.id != old.id)
            let error = #expect(throws: JobQueueError.self) { try queue.retry(old.id) }
            #expect(error?.code == .conflict)
            #expect(try queue.info(old.id)?.state == .discarded)
            try set(c, new.id, .completed)
            #expect(try queue.retry(old.id))
        }
    }

    @Test(arguments: TestBackend.enabled) func workersAnnounceThemselvesWithTheirPoolsAndLeaveWhenTheyStop(
        _ backend: TestBackend
    ) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let marker = db.scratch + ".marker"
            let h = try queue.enqueue(HoldUntil(marker: marker))
            try withTestPool(workers: 2) { pool in
                // A lease of 600 ms: the worker announces itself every 200 ms.
                let w = try QueueWorker(
                    db.url,
                    pool: pool,
                    options: QueueWorkerOptions(lease: .milliseconds(600), pollInterval: .milliseconds(5))
                )
                let running = background { try w.run() }
                // Seen with the job held and one of its two processes on a running item.
                var seen: QueueWorkerRecord?
                try eventually("the worker announced with a busy process") {
                    seen = try queue.workers().first
                    return seen?.held == 1 && seen?.processes.filter(\.busy).count == 1
                }
                let record = try #require(seen)
                #expect(record.name == w.name)
                #expect(record.pid == getpid())
                #expect(record.queues == ["default"])
                #expect(record.heartbeat == .milliseconds(200))
                #expect(record.concurrency == 2 && !record.stopping)
                #expect(record.isLive(at: .now))
                #expect(Set(record.processes.map(\.pid)) == Set(pool.workerPIDs))
                #expect(record.processes.allSatisfy { ($0.peakMemory ?? 0) > 1_000_000 })
                // The item's age grows between announcements.
                let age = record.processes.compactMap(\.currentItemAge).first ?? .zero
                try eventually("the item's age grew") {
                    (try queue.workers().first?.processes.compactMap(\.currentItemAge).first ?? .zero) > age
                }
                close(open(marker, O_CREAT | O_WRONLY, 0o644))
                #expect(try h.result(timeout: .seconds(30)) == "released")
                w.stop()
                #expect(try running.result(timeout: .seconds(30)) == 1)
                #expect(try queue.workers().isEmpty)
            }
        }
    }

    @Test func aLostWorkersRowSaysSo() {
        let seen = QueueTime(millisecondsSinceEpoch: 1_000_000)
        let record = QueueWorkerRecord(
            name: "w",
            host: "h",
            pid: 1,
            queues: ["default"],
            startedAt: seen,
            lastSeen: seen,
            heartbeat: .seconds(10),
            held: 0,
            concurrency: 1,
            finished: 0,
            stopping: false,
            processes: []
        )
        #expect(record.isLive(at: QueueTime(millisecondsSinceEpoch: 1_030_000)))
        #expect(!record.isLive(at: QueueTime(millisecondsSinceEpoch: 1_030_001)))
    }

    @Test func processLinesRoundTrip() {
        let p = QueueWorkerRecord.Process(pid: 42, currentItemAge: .milliseconds(1500), peakMemory: 9_000_000, tasks: 7)
        #expect(QueueWorkerRecord.Process(line: p.line[...]) == p)
        let idle = QueueWorkerRecord.Process(pid: 43, currentItemAge: nil, peakMemory: nil, tasks: 0)
        #expect(QueueWorkerRecord.Process(line: idle.line[...]) == idle)
        #expect(QueueWorkerRecord.Process(line: "1 2 3") == nil)
        #expect(QueueWorkerRecord.Process(line: "x 2 3 4") == nil)
    }

    /// A database that refuses the worker's row (here a trigger; in production a role without rights on
    /// `mp_workers`) costs the jobs nothing: the worker says so in its log and runs them all.
    @Test(arguments: TestBackend.enabled) func aWorkerWhoseRowIsRefusedStillRunsItsJobs(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let c = try db.connect()
            defer { c.close() }
            // PostgreSQL: inserts and the upsert's updates; SQLite: the first insert is enough.
            try refuseRows(
                of: "mp_workers",
                on: c.dialect.notifies ? ["INSERT", "UPDATE"] : ["INSERT"],
                message: "no workers here",
                c
            )
            let handles = try queue.enqueue((1...20).map { Square(n: $0) })
            let messages = Locked<[String]>([])
            try withTestPool(workers: 2) { pool in
                let w = try QueueWorker(
                    db.url,
                    pool: pool,
                    options: QueueWorkerOptions(
                        lease: .milliseconds(600),
                        pollInterval: .milliseconds(5),
                        logger: Logger(label: "test") { _ in CollectingHandler(messages: messages) }
                    )
                )
                let running = background { try w.run() }
                for (i, h) in handles.enumerated() { #expect(try h.result(timeout: .seconds(30)) == (i + 1) * (i + 1)) }
                // Announcements are due every 200 ms: several were refused while the jobs ran.
                try eventually("the refusal was logged twice") {
                    messages.withLock {
                        $0.filter { $0.contains("cannot announce the worker in mp_workers") }.count >= 2
                    }
                }
                w.stop()
                #expect(try running.result(timeout: .seconds(30)) == 20)
            }
            #expect(try queue.workers().isEmpty)
            #expect(try queue.counts() == [.completed: 20])
        }
    }
}
