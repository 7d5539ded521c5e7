import Glibc
import Logging
import Multiprocessing
import MultiprocessingSQL
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingJobQueue

/// Appends `+` to `log` when it starts and `-` when it ends (after `pauseMs`), and its start time in
/// milliseconds (CLOCK_REALTIME, the queue's clock) to `log.starts`: the file's order is the order of
/// the events across every process.
struct Tracked: Job {
    var log: String
    var pauseMs = 0
    func run() throws -> Int {
        appendLine(log + ".starts", "\(QueueSchema.nowMs())")
        appendLine(log, "+")
        if pauseMs > 0 { usleep(UInt32(pauseMs) * 1000) }
        appendLine(log, "-")
        return pauseMs
    }
}

/// The most `+` lines not yet matched by a `-` at any point of `lines`.
func mostAtOnce(_ lines: [String]) -> Int {
    var now = 0
    var most = 0
    for l in lines {
        now += l == "+" ? 1 : -1
        most = max(most, now)
    }
    return most
}

/// Queue limits across workers (issue 30 item 3): the claim's arithmetic checked with a fake clock on
/// each database, then worker processes that together may not overshoot.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct QueueLimitTests {
    func statements(_ queues: [String] = ["default"]) -> QueueStatements {
        QueueStatements(
            worker: "test",
            queues: queues,
            lease: .seconds(60),
            keepCompleted: .seconds(3600),
            keepFailed: .seconds(3600),
            logger: Logger(label: "test")
        )
    }

    /// The rate is a sliding window over starts: a start counts until `period` has passed (times are
    /// the `now` given: a fake clock), so no interval of that length holds more than the rate.
    @Test(arguments: TestBackend.enabled) func aRateIsASlidingWindowOfStarts(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            _ = try queue.enqueue((1...20).map { Square(n: $0) })
            try queue.setLimit(QueueLimit(rate: .init(3, per: .seconds(1))), for: "default")
            let s = statements()
            let c = try Database.connect(db.url)
            defer { c.close() }
            func claim(_ n: Int, at now: Int64) throws -> Int {
                try s.claimLimited("default", n, skipping: [], clock: { now }, on: c).count
            }
            let t0 = QueueSchema.nowMs()
            #expect(try claim(2, at: t0) == 2)
            #expect(try claim(5, at: t0 + 400) == 1)  // 3 in the window
            #expect(try claim(5, at: t0 + 999) == 0)
            #expect(try claim(5, at: t0 + 1000) == 2)  // the two of t0 left the window; t0+400's did not
            #expect(try claim(5, at: t0 + 1399) == 0)
            #expect(try claim(5, at: t0 + 1400) == 1)
            // The ordinary claim leaves the limited queue alone.
            #expect(try s.settle([], claiming: 10, skipping: [], on: c).isEmpty)
            // Removed: the ordinary claim takes the rest, and the limited one finds no limit.
            try queue.setLimit(nil, for: "default")
            #expect(try claim(5, at: t0 + 5000) == 0)
            #expect(try s.settle([], claiming: 100, skipping: [], on: c).count == 20 - 6)
        }
    }

    /// Running jobs of the queue count against its concurrency, whoever holds them; a job recorded
    /// frees its place.
    @Test(arguments: TestBackend.enabled) func runningJobsCountAgainstTheConcurrency(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            _ = try queue.enqueue((1...10).map { Square(n: $0) })
            _ = try queue.enqueue((1...3).map { Square(n: $0) }, options: JobOptions(queue: "other"))
            try queue.setLimit(QueueLimit(concurrency: 2), for: "default")
            let c = try Database.connect(db.url)
            defer { c.close() }
            let a = statements(["default", "other"])
            let b = QueueStatements(
                worker: "b",
                queues: ["default"],
                lease: .seconds(60),
                keepCompleted: .seconds(3600),
                keepFailed: .seconds(3600),
                logger: Logger(label: "test")
            )
            #expect(try a.limitedQueues(on: c) == ["default"])
            // The ordinary claim takes the unlimited queue's jobs; the limited claim two of the other's.
            let first = try a.settle(
                [],
                claiming: 10,
                skipping: [],
                limited: .init(queues: ["default"], room: 10),
                on: c
            )
            #expect(first.count == 3 + 2)
            #expect(
                try b.settle([], claiming: 10, skipping: [], limited: .init(queues: ["default"], room: 10), on: c)
                    .isEmpty
            )
            // One recorded: one place.
            let done = try #require(first.first { j in try queue.info(j.id)?.queue == "default" })
            let record = QueueWorkerState.Record(
                id: done.id,
                attempt: done.attempt,
                kind: done.kind,
                resolution: .complete([]),
                ran: .zero,
                firstOfKind: false
            )
            #expect(try a.settle([record], claiming: 0, skipping: [], on: c).isEmpty)
            #expect(
                try b.settle([], claiming: 10, skipping: [], limited: .init(queues: ["default"], room: 10), on: c).count
                    == 1
            )
            #expect(
                try b.settle([], claiming: 10, skipping: [], limited: .init(queues: ["default"], room: 10), on: c)
                    .isEmpty
            )
            // Raised: room at once, up to the worker's free pool workers (`room`); the rest of the claim
            // goes to the unlimited queues.
            try queue.setLimit(QueueLimit(concurrency: 5), for: "default")
            #expect(
                try b.settle([], claiming: 10, skipping: [], limited: .init(queues: ["default"], room: 1), on: c).count
                    == 1
            )
            #expect(
                try b.settle([], claiming: 10, skipping: [], limited: .init(queues: ["default"], room: 10), on: c).count
                    == 2
            )
        }
    }

    /// A limited claim that fails after the results were recorded (a trigger refuses the start's row):
    /// the results stay recorded, the failure is logged, and no error reaches the worker (which would send
    /// the results again); with nothing recorded, the failure is the worker's to handle (thrown).
    @Test(arguments: TestBackend.enabled) func aLimitedClaimFailingAfterTheRecordsKeepsThem(
        _ backend: TestBackend
    ) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            _ = try queue.enqueue(Square(n: 1), options: JobOptions(queue: "other"))
            _ = try queue.enqueue((1...3).map { Square(n: $0) })
            try queue.setLimit(QueueLimit(rate: .init(10, per: .seconds(1))), for: "default")
            let c = try Database.connect(db.url)
            defer { c.close() }
            let messages = Locked<[String]>([])
            let a = QueueStatements(
                worker: "a",
                queues: ["default", "other"],
                lease: .seconds(60),
                keepCompleted: .seconds(3600),
                keepFailed: .seconds(3600),
                logger: Logger(label: "test") { _ in CollectingHandler(messages: messages) }
            )
            let running = try a.settle([], claiming: 1, skipping: [], on: c)  // the unlimited queue's job
            #expect(running.count == 1)
            try refuseRows(of: "mp_queue_starts", message: "no starts here", c)
            let limited = QueueWorkerState.LimitedClaim(queues: ["default"], room: 2)
            #expect(throws: (any Error).self) { try a.settle([], claiming: 2, skipping: [], limited: limited, on: c) }
            let record = QueueWorkerState.Record(
                id: running[0].id,
                attempt: running[0].attempt,
                kind: running[0].kind,
                resolution: .complete([]),
                ran: .zero,
                firstOfKind: false
            )
            #expect(try a.settle([record], claiming: 2, skipping: [], limited: limited, on: c).isEmpty)
            #expect(try queue.info(running[0].id)?.state == .completed)
            #expect(try queue.counts(queue: "default") == [.available: 3])  // the failed claim took none
            #expect(messages.withLock { $0 }.contains { $0.contains("a claim failed after the results were recorded") })
        }
    }

    /// What a claim could not keep is refused with a message; limits are listed, replaced and removed.
    @Test(arguments: TestBackend.enabled) func limitsAreValidatedListedAndRemoved(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            for bad in [
                QueueLimit(concurrency: 0), QueueLimit(rate: .init(0, per: .seconds(1))),
                QueueLimit(rate: .init(5, per: .microseconds(10))), QueueLimit(),
            ] {
                #expect(throws: JobQueueError.self) { try queue.setLimit(bad, for: "q") }
            }
            #expect(try queue.limits().isEmpty)
            let limit = QueueLimit(concurrency: 2, rate: .init(10, per: .seconds(60)))
            try queue.setLimit(limit, for: "q")
            try queue.setLimit(QueueLimit(concurrency: 1), for: "r")
            #expect(try queue.limits() == ["q": limit, "r": QueueLimit(concurrency: 1)])
            #expect(limit.description == "concurrency 2, rate 10/1m")
            try queue.setLimit(QueueLimit(concurrency: 3), for: "r")
            try queue.setLimit(nil, for: "q")
            #expect(try queue.limits() == ["r": QueueLimit(concurrency: 3)])
        }
    }

    /// Several connections set a first limit for one queue at the same moment: every call succeeds (an
    /// upsert; a delete-then-insert failed on the primary key for all but one on PostgreSQL) and one of
    /// the limits given stays.
    @Test(arguments: TestBackend.enabled) func concurrentFirstLimitsForOneQueueAllSucceed(_ backend: TestBackend) throws
    {
        try withScratchDatabase(backend) { db in
            _ = try JobQueue(db.url)  // the schema, before the racers
            let failures = TrackedMutex<[String]>([])
            let start = Barrier(parties: 4)
            try runThreads(4) { i in
                let queue = try JobQueue(db.url)
                _ = try start.wait(timeout: .seconds(60))
                do {
                    try queue.setLimit(QueueLimit(concurrency: i + 1), for: "fresh")
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
            #expect(failures.withLock { $0 } == [])
            let limit = try #require(try JobQueue(db.url).limits()["fresh"]?.concurrency)
            #expect((1...4).contains(limit))
        }
    }

    /// Three worker processes of two pool workers each (six places) run a queue limited to two at once:
    /// never more than two run, every job runs once.
    @Test(arguments: TestBackend.enabled)
    func threeWorkerProcessesKeepAConcurrencyLimit(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            try queue.setLimit(QueueLimit(concurrency: 2), for: "default")
            let log = db.scratch + ".log"
            let handles = try queue.enqueue((1...24).map { _ in Tracked(log: log, pauseMs: 30) })
            let workers = (0..<3).map { _ in
                ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 10_000, concurrency: 2))
            }
            for w in workers { try w.start() }
            for h in handles { _ = try h.result(timeout: .seconds(120)) }
            for w in workers { w.terminate() }
            let finished = try workers.map { try $0.result(timeout: .seconds(30)) }
            #expect(finished.reduce(0, +) == 24)
            let lines = readLines(log)
            #expect(lines.count == 48)
            #expect(mostAtOnce(lines) <= 2, "at most two at once: \(mostAtOnce(lines))")
            #expect(try queue.counts() == [.completed: 24])
        }
    }

    /// Three worker processes run a queue limited to 4 starts a second: in no stretch of 0.75 s do more
    /// than 4 jobs start (the quarter second absorbs the time from a claim to its job's start), and the
    /// 16 jobs take at least three periods.
    @Test(arguments: TestBackend.enabled)
    func threeWorkerProcessesKeepARateLimit(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            try queue.setLimit(QueueLimit(rate: .init(4, per: .seconds(1))), for: "default")
            let log = db.scratch + ".log"
            let handles = try queue.enqueue((1...16).map { _ in Tracked(log: log) })
            let workers = (0..<3).map { _ in
                ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 10_000, concurrency: 2))
            }
            for w in workers { try w.start() }
            for h in handles { _ = try h.result(timeout: .seconds(120)) }
            for w in workers { w.terminate() }
            _ = try workers.map { try $0.result(timeout: .seconds(30)) }
            let starts = readLines(log + ".starts").compactMap { Int64($0) }.sorted()
            #expect(starts.count == 16)
            for (i, t) in starts.enumerated() {
                let inWindow = starts[i...].prefix { $0 < t + 750 }.count
                #expect(inWindow <= 4, "\(inWindow) starts within 0.75 s of \(t - starts[0]) ms")
            }
            #expect(starts.last! - starts.first! >= 2750, "16 starts at 4 a second span three periods")
        }
    }
}
