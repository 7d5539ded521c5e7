import Glibc
import MetricsTestKit
import Multiprocessing
import MultiprocessingSQL
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import MultiprocessingJobQueue

/// n², and a line `tag n` appended to `log` (if any) each time it runs: runs are counted from the file.
struct Square: Job {
    var n: Int
    var log: String? = nil
    var pauseMs = 0
    func run() throws -> Int {
        if pauseMs > 0 { usleep(UInt32(pauseMs) * 1000) }
        if let log { appendLine(log, "\(n)") }
        return n * n
    }
}

/// SIGKILLs its pool worker: on its first run (while `marker` is absent), or every time.
struct Crash: Job {
    var marker: String? = nil
    func run() throws -> String {
        if let marker {
            if access(marker, F_OK) != 0 {
                close(open(marker, O_CREAT | O_WRONLY, 0o644))
                kill(getpid(), SIGKILL)
            }
            return "survived"
        }
        kill(getpid(), SIGKILL)
        return "unreachable"
    }
}

struct Fails: Error, Codable, CustomStringConvertible {
    var description: String { "this job always fails" }
}

/// A result of `bytes` bytes.
struct Big: Job {
    var bytes: Int
    func run() throws -> String { String(repeating: "x", count: bytes) }
}

struct AlwaysThrows: Job {
    func run() throws -> Int { throw Fails() }
}

/// Makes the database refuse the rows `events` (INSERT, UPDATE) write to `table` where `condition` (SQL
/// over `NEW`) holds: a trigger that raises `message`, as a user's own trigger or constraint would.
func refuseRows(
    of table: String,
    on events: [String] = ["INSERT"],
    where condition: String = "true",
    message: String,
    _ c: any SQLConnection
) throws {
    if c.dialect.notifies {
        try c.execute(
            """
            CREATE FUNCTION mp_test_refuse_\(table)() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF \(condition) THEN RAISE EXCEPTION '\(message)'; END IF; RETURN NEW; END $$
            """
        )
        try c.execute(
            """
            CREATE TRIGGER mp_test_refuse BEFORE \(events.joined(separator: " OR ")) ON \(table) FOR EACH ROW \
            EXECUTE FUNCTION mp_test_refuse_\(table)()
            """
        )
    } else {
        for event in events {
            try c.execute(
                """
                CREATE TRIGGER mp_test_refuse_\(event.lowercased()) BEFORE \(event) ON \(table) WHEN \(condition)
                BEGIN SELECT RAISE(ABORT, '\(message)'); END
                """
            )
        }
    }
}

func appendLine(_ path: String, _ line: String) {
    let fd = open(path, O_CREAT | O_WRONLY | O_APPEND, 0o644)
    var s = line + "\n"
    s.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

func readLines(_ path: String) -> [String] {
    guard let f = fopen(path, "r") else { return [] }
    defer { fclose(f) }
    var out: [String] = []
    var line: UnsafeMutablePointer<CChar>?
    var cap = 0
    while getline(&line, &cap, f) > 0 {
        out.append(String(cString: line!).trimmingCharacters(in: "\n"))
    }
    free(line)
    return out
}

extension String {
    func trimmingCharacters(in set: Character) -> String { hasSuffix(String(set)) ? String(dropLast()) : self }
}

/// PostgreSQL: makes every `event` (INSERT, UPDATE) on `table` wait inside its transaction until the test
/// releases advisory lock `key`, which it takes here: a worker can then be killed in the middle of the
/// transaction. Wait for it with ``waitUntilHeldInsideATransaction(_:)``; release with
/// `SELECT pg_advisory_unlock(key)`.
func holdInsideTransactions(on table: String, _ event: String, key: Int, _ c: any SQLConnection) throws {
    _ = try c.execute(
        """
        CREATE FUNCTION mp_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared(\(key)); RETURN NEW; END $$
        """
    )
    _ = try c.execute(
        "CREATE TRIGGER mp_test_hold BEFORE \(event) ON \(table) FOR EACH ROW EXECUTE FUNCTION mp_test_hold()"
    )
    _ = try c.execute("SELECT pg_advisory_lock(\(key))")
}

/// Waits until one session of the database waits on an advisory lock (``holdInsideTransactions(on:_:key:_:)``).
func waitUntilHeldInsideATransaction(_ c: any SQLConnection) throws {
    try eventually("a worker waits inside its transaction") {
        try c.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' AND datname = current_database()"
        )?.intValue == 1
    }
}

/// Waits until a worker holds the job (throws if none does).
func waitUntilRunning<J: Job>(_ h: JobHandle<J>) throws {
    try eventually("job \(h.id) running") { try h.info()?.state == .running }
}

/// A worker process: its own pool and QueueWorker, until SIGTERM or SIGKILL.
struct WorkerProcess: Job {
    let database: DatabaseURL
    let leaseMs: Int
    let concurrency: Int
    func run() throws -> Int {
        let pool = try ProcessPool(workers: concurrency, options: ProcessPoolOptions(interrupt: .ignore))
        defer { pool.terminate() }
        let w = try QueueWorker(
            database,
            pool: pool,
            options: QueueWorkerOptions(lease: .milliseconds(Int64(leaseMs)), pollInterval: .milliseconds(10))
        )
        QueueWorker.stopOnSignals(w)
        return try w.run()
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct JobQueueTests {
    func startWorker(
        _ url: DatabaseURL,
        _ pool: ProcessPool,
        _ options: QueueWorkerOptions = QueueWorkerOptions(pollInterval: .milliseconds(5))
    )
        throws -> (QueueWorker, Future<Int>)
    {
        let w = try QueueWorker(url, pool: pool, options: options)
        return (w, background { try w.run() })
    }

    @Test(arguments: TestBackend.enabled) func jobsRunAndTheirResultsComeBack(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let url = db.url
            let queue = try JobQueue(url)
            let single = try queue.enqueue(Square(n: 7))
            let many = try queue.enqueue((1...300).map { Square(n: $0) })
            let pool = try ProcessPool(workers: 2)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(url, pool)
            #expect(try single.result(timeout: .seconds(30)) == 49)
            for (i, h) in many.enumerated() { #expect(try h.result(timeout: .seconds(30)) == (i + 1) * (i + 1)) }
            worker.stop()
            #expect(try running.result(timeout: .seconds(30)) == 301)
            #expect(try queue.counts() == [.completed: 301])
            let info = try single.info()
            #expect(info?.attempt == 1)
            #expect(info?.worker == worker.name)
        }
    }

    /// PostgreSQL's `NOTIFY`, or SQLite's doorbell, wakes an idle worker: with its poll an hour away, a job
    /// queued after the worker went idle runs only if the wake-up reaches the loop. (A wake-up once
    /// travelled as a `nil` message that `try?` flattened into "no message": jobs then waited for the
    /// poll.)
    @Test(arguments: TestBackend.enabled)
    func aNotificationWakesAnIdleWorkerWhosePollIsAnHourAway(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool, QueueWorkerOptions(pollInterval: .seconds(3600)))
            // Idle: its first claim found nothing, and it listens.
            #expect(try queue.enqueue(Square(n: 1)).result(timeout: .seconds(60)) == 1)
            try eventually("the worker is idle again") { try queue.counts() == [.completed: 1] }
            #expect(try queue.enqueue(Square(n: 9)).result(timeout: .seconds(60)) == 81)
            worker.stop()
            #expect(try running.result(timeout: .seconds(30)) == 2)
        }
    }

    /// The worker's metrics: claimed, completed, retried, discarded.
    @Test(arguments: TestBackend.enabled) func theWorkerReportsMetrics(_ backend: TestBackend) throws {
        let metrics = sharedTestMetrics  // bootstrapped before any metric is made
        try withScratchDatabase(backend) { db in
            let url = db.url
            let queue = try JobQueue(url)
            let name = "metrics-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let jobs = try queue.enqueue((1...5).map { Square(n: $0) }, options: JobOptions(queue: name))
            let bad = try queue.enqueue(
                AlwaysThrows(),
                options: JobOptions(queue: name, maxAttempts: 2, backoff: .milliseconds(1))
            )
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(
                url,
                pool,
                QueueWorkerOptions(queues: [name], pollInterval: .milliseconds(5))
            )
            for h in jobs { _ = try h.result(timeout: .seconds(30)) }
            let failed = #expect(throws: JobQueueError.self) { try bad.result(timeout: .seconds(30)) }
            #expect(failed?.code == .failed, "\(String(describing: failed))")
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            let dims = [("queues", name)]
            #expect(metrics.counterTotal(label: "mp_queue_jobs_claimed_total", dimensions: dims) == 7)
            #expect(metrics.counterTotal(label: "mp_queue_jobs_completed_total", dimensions: dims) == 5)
            #expect(metrics.counterTotal(label: "mp_queue_attempts_failed_total", dimensions: dims) == 2)
            #expect(metrics.counterTotal(label: "mp_queue_jobs_retried_total", dimensions: dims) == 1)
            #expect(metrics.counterTotal(label: "mp_queue_jobs_discarded_total", dimensions: dims) == 1)
        }
    }

    /// `await handle.value` returns the result; cancelling the awaiting task ends the wait at once and
    /// leaves the job queued.
    @Test func awaitingAResultHonoursCancellation() async throws {
        let path = "/tmp/mp-queue-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { for suffix in [".db", ".db-wal", ".db-shm"] { unlink(path + suffix) } }
        let url = DatabaseURL(sqlite: path + ".db")
        let queue = try JobQueue(url)
        let waiting = try queue.enqueue(Square(n: 4), options: JobOptions(queue: "nobody-serves-this"))
        let awaiting = Event()
        let task = Task {
            awaiting.set()
            return try await waiting.value
        }
        try await awaiting.wait()  // the task is at its await
        let start = ContinuousClock.now
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        // Nobody serves the job, so without cancellation the await would never end. The bound is loose on
        // purpose: with the whole suite on two cores, Swift's pool can be busy for a second or more (CI
        // measured 1.6 s), and a timing test must not decide on scheduling.
        #expect(ContinuousClock.now - start < .seconds(20))
        #expect(try waiting.info()?.state == .available)
        let served = try queue.enqueue(Square(n: 6))
        let pool = try ProcessPool(workers: 1)
        defer { pool.terminate() }
        let w = try QueueWorker(url, pool: pool, options: QueueWorkerOptions(pollInterval: .milliseconds(5)))
        let running = background { try w.run() }
        #expect(try await served.value == 36)
        w.stop()
        _ = try await running.value
    }

    @Test(arguments: TestBackend.enabled) func aUniqueKeyGivesTheSameJob(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let a = try queue.enqueue(Square(n: 1), options: JobOptions(uniqueKey: "daily-report"))
            let b = try queue.enqueue(Square(n: 2), options: JobOptions(uniqueKey: "daily-report"))
            let c = try queue.enqueue(Square(n: 3), options: JobOptions(uniqueKey: "other"))
            #expect(a.id == b.id)
            #expect(a.id != c.id)
            #expect(try queue.counts() == [.available: 2])
            // Once the job is finished, the key is free again.
            #expect(try a.cancel())
            let d = try queue.enqueue(Square(n: 4), options: JobOptions(uniqueKey: "daily-report"))
            #expect(d.id != a.id)
        }
    }

    /// Jobs enqueued inside a producer's transaction exist only if it commits.
    @Test(arguments: TestBackend.enabled) func aRolledBackProducerQueuesNothing(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let c = try db.connect()
            try c.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
            struct Abort: Error {}
            #expect(throws: Abort.self) {
                try c.transaction(immediate: true) {
                    try c.execute("INSERT INTO orders VALUES (1)")
                    _ = try JobQueue.enqueue([Square(n: 1), Square(n: 2)], on: c)
                    throw Abort()
                }
            }
            #expect(try queue.counts() == [:])
            let kept = try c.transaction(immediate: true) {
                try c.execute("INSERT INTO orders VALUES (2)")
                return try JobQueue.enqueue([Square(n: 3)], on: c)
            }
            #expect(kept.count == 1)
            #expect(try queue.counts() == [.available: 1])
        }
    }

    /// A job that kills its pool worker once runs again and completes; one that always does, or always
    /// throws, ends discarded with its error history; the other jobs flow meanwhile.
    @Test(arguments: TestBackend.enabled) func crashesRetryAndPoisonJobsAreDiscarded(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let path = db.scratch
            let url = db.url
            let queue = try JobQueue(url)
            let fast = JobOptions(maxAttempts: 3, backoff: .milliseconds(10))
            let once = try queue.enqueue(Crash(marker: path + ".marker"), options: fast)
            let poison = try queue.enqueue(Crash(), options: fast)
            let throwing = try queue.enqueue(AlwaysThrows(), options: fast)
            let fine = try queue.enqueue((1...50).map { Square(n: $0) })
            let pool = try ProcessPool(workers: 2)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(url, pool)
            #expect(try once.result(timeout: .seconds(30)) == "survived")
            #expect(try once.info()?.attempt == 2)
            for h in fine { _ = try h.result(timeout: .seconds(30)) }
            do {
                _ = try poison.result(timeout: .seconds(30))
                Issue.record("the poison job did not fail")
            } catch let e as JobQueueError {
                #expect(e.code == .failed)
                #expect(e.message.contains("signal 9") || e.message.contains("killed"), "\(e.message)")
            }
            let info = try poison.info()
            #expect(info?.state == .discarded)
            #expect(info?.errors.count == 3)
            do {
                _ = try throwing.result(timeout: .seconds(30))
                Issue.record("no error")
            } catch let e as JobQueueError {
                #expect(e.message.contains("this job always fails"), "\(e.message)")
            }
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            #expect(try queue.counts() == [.completed: 51, .discarded: 2])
        }
    }

    /// A worker process SIGKILLed while it runs a job: after the lease the job runs again elsewhere and
    /// exactly one result is recorded.
    @Test(arguments: TestBackend.enabled) func aKilledWorkersJobRunsAgainAfterItsLease(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let path = db.scratch
            let url = db.url
            let queue = try JobQueue(url)
            let log = path + ".log"
            let handle = try queue.enqueue(Square(n: 12, log: log, pauseMs: 1500))
            let child = ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 600, concurrency: 1))
            try child.start()
            // Wait until the child's worker holds the job.
            try waitUntilRunning(handle)
            #expect(try handle.info()?.state == .running)
            child.kill()
            _ = try child.join(timeout: .seconds(10))
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(
                url,
                pool,
                QueueWorkerOptions(lease: .milliseconds(600), pollInterval: .milliseconds(5))
            )
            #expect(try handle.result(timeout: .seconds(30)) == 144)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            let info = try handle.info()
            #expect(info?.attempt == 2)
            #expect(info?.errors.first?.contains("lease expired") == true, "\(String(describing: info?.errors))")
            #expect(readLines(log) == ["12"], "the job ran to its end once (the killed run never logged)")
            #expect(try queue.counts() == [.completed: 1])
        }
    }

    /// Two worker processes take 400 jobs: each job runs exactly once, and all complete.
    @Test(arguments: TestBackend.enabled) func twoWorkerProcessesNeverRunAJobTwice(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let path = db.scratch
            let url = db.url
            let queue = try JobQueue(url)
            let log = path + ".log"
            let handles = try queue.enqueue((1...400).map { Square(n: $0, log: log, pauseMs: 2) })
            let workers = (0..<2).map { _ in
                ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 10_000, concurrency: 2))
            }
            for w in workers { try w.start() }
            for h in handles { _ = try h.result(timeout: .seconds(60)) }
            for w in workers { w.terminate() }
            let finished = try workers.map { try $0.result(timeout: .seconds(30)) }
            #expect(finished.reduce(0, +) == 400)
            #expect(finished.allSatisfy { $0 > 0 }, "both workers took jobs: \(finished)")
            let runs = readLines(log)
            #expect(runs.count == 400)
            #expect(Set(runs).count == 400)
            #expect(try queue.counts() == [.completed: 400])
        }
    }

    /// A stored job whose type this program lacks, or whose bytes are not its type, fails once and is
    /// discarded at once (running it again cannot help), with a message saying which; others flow.
    /// A malformed job is discarded at once; a job whose type this program does not define is handed
    /// back, its attempt not counted (another program's workers may define it), named readably, and not
    /// claimed again by this worker.
    @Test(arguments: TestBackend.enabled) func unknownJobsAreHandedBackAndMalformedOnesDiscarded(
        _ backend: TestBackend
    ) throws {
        let metrics = sharedTestMetrics  // bootstrapped before any metric is made
        try withScratchDatabase(backend) { db in
            let url = db.url
            let queue = try JobQueue(url)
            let name = "unknown-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let options = JobOptions(queue: name)
            let unknown = try queue.enqueue(Square(n: 1), options: options)
            let malformed = try queue.enqueue(Square(n: 2), options: options)
            let fine = try queue.enqueue(Square(n: 3), options: options)
            let c = try db.connect()
            let d = c.dialect
            // A type of another program (`app.Square`), as a queue shared by two programs holds.
            try c.execute("UPDATE mp_jobs SET kind = '3app6SquareV' WHERE id = \(d.parameter(1))", [.int(unknown.id)])
            try c.execute(
                "UPDATE mp_jobs SET payload = \(d.parameter(1)) WHERE id = \(d.parameter(2))",
                [.blob([0xFF, 0x01]), .int(malformed.id)]
            )
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(
                url,
                pool,
                QueueWorkerOptions(queues: [name], pollInterval: .milliseconds(5))
            )
            #expect(try fine.result(timeout: .seconds(30)) == 9)
            do {
                _ = try malformed.result(timeout: .seconds(30))
                Issue.record("no error")
            } catch let e as JobQueueError {
                #expect(e.code == .failed)
                #expect(e.message.contains("cannot be decoded"), "\(e.message)")
            }
            #expect(try malformed.info()?.state == .discarded)
            let dims = [("queues", name)]
            func handedBack() -> Int64 {
                metrics.counterTotal(label: "mp_queue_jobs_handed_back_total", dimensions: dims)
            }
            try eventually("the unknown job handed back") { handedBack() >= 1 }
            #expect(handedBack() == 1)
            // Jobs queued after it run, while it stays where it was, unclaimed by this worker.
            let later = try queue.enqueue(Square(n: 4), options: options)
            #expect(try later.result(timeout: .seconds(30)) == 16)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            #expect(handedBack() == 1)
            #expect(metrics.counterTotal(label: "mp_queue_jobs_claimed_total", dimensions: dims) == 4)
            let info = try unknown.info()
            #expect(info?.state == .available)
            #expect(info?.attempt == 0)
            #expect(info?.errors == [])
            #expect(info?.typeName == "app.Square")
        }
    }

    /// `exitWhenDrained`: the worker returns once nothing is waiting, due later or running — a delayed
    /// job is waited for, not left behind.
    @Test(arguments: TestBackend.enabled) func aDrainingWorkerReturnsOnceEveryJobIsDone(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let name = "drain-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let queue = try JobQueue(db.url)
            let now = try queue.enqueue((1...5).map { Square(n: $0) }, options: JobOptions(queue: name))
            let later = try queue.enqueue(Square(n: 9), options: JobOptions(queue: name, delay: .milliseconds(300)))
            let pool = try ProcessPool(workers: 2)
            defer { pool.terminate() }
            let worker = try QueueWorker(
                db.url,
                pool: pool,
                options: QueueWorkerOptions(queues: [name], pollInterval: .milliseconds(5), exitWhenDrained: true)
            )
            let finished = try background { try worker.run() }.result(timeout: .seconds(60))
            #expect(finished == 6)
            #expect(try later.info()?.state == .completed)
            for h in now { #expect(try h.info()?.state == .completed) }
        }
    }

    /// Error histories give times in ISO 8601 (UTC, milliseconds).
    @Test func errorHistoryTimesAreISO8601() {
        #expect(QueueSchema.iso8601(ms: 1_796_513_142_861) == "2026-12-05T23:25:42.861Z")
        #expect(QueueSchema.iso8601(ms: 5) == "1970-01-01T00:00:00.005Z")
    }

    @Test(arguments: TestBackend.enabled) func cancellingQueuedAndRunningJobs(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let url = db.url
            let queue = try JobQueue(url)
            let long = try queue.enqueue(Square(n: 5, pauseMs: 30_000))
            let later = try queue.enqueue(Square(n: 6), options: JobOptions(delay: .seconds(3600)))
            #expect(try later.cancel())
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(
                url,
                pool,
                QueueWorkerOptions(lease: .milliseconds(300), pollInterval: .milliseconds(5))
            )
            try waitUntilRunning(long)
            let start = ContinuousClock.now
            #expect(try long.cancel())
            do {
                _ = try long.result(timeout: .seconds(20))
                Issue.record("no error")
            } catch let e as JobQueueError {
                #expect(e.code == .cancelled)
            }
            // Within a heartbeat and the pool's grace; generously: not the job's own 30 s.
            #expect(ContinuousClock.now - start < .seconds(20), "stopped within a heartbeat and the pool's grace")
            let cancelled = #expect(throws: JobQueueError.self) { try later.result(timeout: .seconds(1)) }
            #expect(cancelled?.code == .cancelled, "\(String(describing: cancelled))")
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            #expect(try queue.counts() == [.cancelled: 2])
        }
    }

    /// `.finish` lets a running job end; `.handBack` returns it to the queue without counting the attempt.
    @Test(arguments: TestBackend.enabled) func stoppingFinishesOrHandsBack(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let url = db.url
            let queue = try JobQueue(url)
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let a = try queue.enqueue(Square(n: 2, pauseMs: 300))
            var (worker, running) = try startWorker(
                url,
                pool,
                QueueWorkerOptions(concurrency: 1, pollInterval: .milliseconds(5))
            )
            try waitUntilRunning(a)
            worker.stop(.finish)
            #expect(try running.result(timeout: .seconds(30)) == 1)
            #expect(try a.info()?.state == .completed)
            let b = try queue.enqueue(Square(n: 3, pauseMs: 30_000))
            (worker, running) = try startWorker(
                url,
                pool,
                QueueWorkerOptions(concurrency: 1, pollInterval: .milliseconds(5))
            )
            try waitUntilRunning(b)
            worker.stop(.handBack)
            _ = try running.result(timeout: .seconds(30))
            let info = try b.info()
            #expect(info?.state == .available)
            #expect(info?.attempt == 0)
        }
    }

    @Test(arguments: TestBackend.enabled) func aJobPastItsTimeoutFails(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let url = db.url
            let queue = try JobQueue(url)
            let h = try queue.enqueue(
                Square(n: 9, pauseMs: 20_000),
                options: JobOptions(timeout: .milliseconds(200), maxAttempts: 1)
            )
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(url, pool)
            do {
                _ = try h.result(timeout: .seconds(20))
                Issue.record("no error")
            } catch let e as JobQueueError {
                #expect(e.code == .failed)
                #expect(e.message.contains("timed out") || e.message.contains("timeout"), "\(e.message)")
            }
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
        }
    }

    @Test(arguments: TestBackend.enabled) func finishedJobsLeaveAfterTheirRetention(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let url = db.url
            let queue = try JobQueue(url)
            let h = try queue.enqueue(Square(n: 1))
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let w = try QueueWorker(url, pool: pool, options: QueueWorkerOptions(keepCompleted: .zero))
            let running = background { try w.run() }
            _ = try h.result(timeout: .seconds(30))
            w.stop()
            _ = try running.result(timeout: .seconds(30))
            let c = try db.connect()
            // Kept for `.zero`: until the clock (milliseconds) has moved past its finish.
            let finished = try #require(
                try c.scalar("SELECT finished_at FROM mp_jobs WHERE id = \(c.dialect.parameter(1))", [.int(h.id)])?
                    .intValue
            )
            try eventually("the clock past the job's finish") { QueueSchema.nowMs() > finished }
            #expect(try w.statements.clean(on: c) == 1)
            let gone = #expect(throws: JobQueueError.self) { try h.result(timeout: .seconds(1)) }
            #expect(gone?.code == .notFound, "\(String(describing: gone))")
        }
    }

    /// Short jobs run in chunks (one pool task for many). A job that kills its worker process inside a
    /// chunk fails the chunk, whose jobs then run again alone under the same attempt: none is charged for
    /// the crash (the crasher is charged only when it crashes alone). A job that throws is charged alone.
    /// Every job here completes on its first attempt, the crasher included (it crashes once).
    @Test(arguments: TestBackend.enabled)
    func aCrashInAChunkIsChargedToItsJobAlone(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let fast = JobOptions(maxAttempts: 3, backoff: .milliseconds(10))
            var handles = try queue.enqueue((1...3000).map { Square(n: $0) })
            let crash = try queue.enqueue(Crash(marker: db.scratch + ".marker"), options: fast)
            let throwing = try queue.enqueue(AlwaysThrows(), options: JobOptions(maxAttempts: 1))
            handles += try queue.enqueue((3001...6000).map { Square(n: $0) })
            let pool = try ProcessPool(workers: 2)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool)
            for h in handles { _ = try h.result(timeout: .seconds(60)) }
            #expect(try crash.result(timeout: .seconds(30)) == "survived")
            let failed = #expect(throws: JobQueueError.self) { try throwing.result(timeout: .seconds(30)) }
            #expect(failed?.code == .failed, "\(String(describing: failed))")
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
            #expect(access(db.scratch + ".marker", F_OK) == 0, "the crasher crashed once")
            #expect(try crash.info()?.attempt == 1, "crashed in a chunk: not charged")
            #expect(try queue.counts() == [.completed: 6001, .discarded: 1])
            let c = try db.connect()
            defer { c.close() }
            #expect(
                try c.scalar("SELECT count(*) FROM mp_jobs WHERE attempt = 1 AND state = 'completed'") == .int(6001)
            )
        }
    }

    /// A result over the worker's limit is not stored: the job is discarded at once (running it again
    /// would give the same result), saying why; a result under the limit is stored.
    @Test(arguments: TestBackend.enabled)
    func aResultOverTheLimitIsRefused(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let small = try queue.enqueue(Big(bytes: 500))
            let big = try queue.enqueue(Big(bytes: 5000), options: JobOptions(maxAttempts: 3))
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(
                db.url,
                pool,
                QueueWorkerOptions(pollInterval: .milliseconds(5), maxResultBytes: 1000)
            )
            #expect(try small.result(timeout: .seconds(30)).count == 500)
            do {
                _ = try big.result(timeout: .seconds(30))
                Issue.record("no error")
            } catch let e as JobQueueError {
                #expect(e.code == .failed)
                #expect(e.message.contains("the limit is 1000"), "\(e.message)")
            }
            #expect(try big.info()?.attempt == 1)
            worker.stop()
            _ = try running.result(timeout: .seconds(30))
        }
    }

    /// The local buffer follows the work: a worker whose jobs take 250 ms holds little more than what it
    /// runs, so it does not hoard slow jobs another worker could run (a fixed buffer of 32 would hold all).
    @Test func aWorkerDoesNotHoardSlowJobs() throws {
        try withScratchDatabase(.sqlite) { db in
            let queue = try JobQueue(db.url)
            let handles = try queue.enqueue((1...14).map { Square(n: $0, pauseMs: 250) })
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            let (worker, running) = try startWorker(db.url, pool)
            try eventually("half the jobs completed") { try queue.counts()[.completed] ?? 0 >= 7 }
            let held = try queue.counts()[.running] ?? 0
            #expect(held <= 3, "held \(held) jobs of 250 ms with one process")
            worker.stop(.handBack)
            _ = try running.result(timeout: .seconds(30))
            #expect(try handles.filter { try $0.info()?.state == .available }.count >= 14 - 7 - 3)
        }
    }

    /// PostgreSQL: a worker that polls only every 30 s starts a queued job at once (LISTEN/NOTIFY); with
    /// notifications off (poll-only, for connection poolers) it waits for its poll.
    @Test(arguments: TestBackend.enabled.filter { $0 == .postgresql })
    func notificationsWakeAnIdleWorker(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let pool = try ProcessPool(workers: 1)
            defer { pool.terminate() }
            for notifications in [true, false] {
                // Queued before the worker starts: its first poll claims it.
                let first = try queue.enqueue(Square(n: 2))
                let (worker, running) = try startWorker(
                    db.url,
                    pool,
                    QueueWorkerOptions(pollInterval: .seconds(30), notifications: notifications)
                )
                // The worker records the result and claims (nothing) in one transaction; from then on, its
                // next claim without a notification is its next poll, 30 s later.
                #expect(try first.result(timeout: .seconds(20)) == 4)
                let h = try queue.enqueue(Square(n: 3))
                if notifications {
                    #expect(try h.result(timeout: .seconds(10)) == 9, "woken by the notification, not the poll")
                } else {
                    // The wait is the subject: nothing happens within it.
                    let e = #expect(throws: JobQueueError.self, "poll-only: nothing before the next poll") {
                        try h.result(timeout: .seconds(2))
                    }
                    #expect(e?.code == .timedOut, "\(String(describing: e))")
                    #expect(try h.cancel())
                }
                worker.stop()
                _ = try running.result(timeout: .seconds(30))
            }
        }
    }

    /// PostgreSQL restarted mid-run (a server of the test's own, stopped with `-m fast`, which cuts every
    /// connection): the worker reconnects and carries on, producers' waits outlast the outage, and every
    /// job is completed, each run exactly once.
    @Test(
        .enabled(
            if: TestBackend.enabled.contains(.postgresql)
                && runs(needing: "private-postgres", unavailable: PrivatePostgres.unavailable),
            "needs the PostgreSQL tests enabled, Debian's server binaries and root"
        )
    )
    func aDatabaseRestartLosesNothing() throws {
        let server = try PrivatePostgres()
        defer { server.stop() }
        let log = server.directory + "/jobs.log"
        let queue = try JobQueue(server.url)
        let handles = try queue.enqueue((1...300).map { Square(n: $0, log: log, pauseMs: 10) })
        let pool = try ProcessPool(workers: 2)
        defer { pool.terminate() }
        let (worker, running) = try startWorker(
            server.url,
            pool,
            QueueWorkerOptions(pollInterval: .milliseconds(20))
        )
        try eventually("60 jobs run before the restart") { readLines(log).count >= 60 }
        try server.restart()
        for (i, h) in handles.enumerated() { #expect(try h.result(timeout: .seconds(60)) == (i + 1) * (i + 1)) }
        worker.stop()
        #expect(try running.result(timeout: .seconds(30)) == 300)
        let runs = readLines(log)
        #expect(runs.count == 300, "each job ran once")
        #expect(Set(runs).count == 300)
        #expect(try queue.counts() == [.completed: 300])
    }
}
