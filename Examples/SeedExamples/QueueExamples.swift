// The tutorial's master/worker, made durable: the tasks and results live in an SQLite file instead of
// the master's memory, so a worker (or the producer) can die and nothing is lost.

import Glibc
public import Multiprocessing
public import MultiprocessingJobQueue
import MultiprocessingSQL

/// The tutorial's task as a queued job: `'n * n = n²'`.
public struct SquareTask: Job {
    /// The number to square.
    public let n: Int
    /// A pause before answering, as the tutorial's worker sleeps (0: none).
    public let pauseMs: Int
    /// The task for `n`, answered after `pauseMs` milliseconds (none by default).
    public init(n: Int, pauseMs: Int = 0) {
        self.n = n
        self.pauseMs = pauseMs
    }
    /// The tutorial's answer line, `'%d * %d = %d' % (n, n, n*n)`, after the pause; runs in a pool worker
    /// of whichever queue worker claimed it.
    public func run() -> String {
        if pauseMs > 0 { usleep(UInt32(pauseMs) * 1000) }
        return "\(n) * \(n) = \(n * n)"
    }
}

/// A report on a group of the tutorial's tasks, run once they have all ended (`mp queue enqueue
/// --report`): how many answered, and the last answer.
public struct SquareReport: DependentJob {
    /// The report for the group it is queued after.
    public init() {}
    /// `k of n tasks answered, the last: 'n * n = n²'`, from the outcomes of the tasks it waited for.
    public func run(after outcomes: JobOutcomes) -> String {
        let answers = outcomes.compactMap { try? $0.value(as: String.self) }
        return "\(answers.count) of \(outcomes.count) tasks answered" + (answers.last.map { ", the last: \($0)" } ?? "")
    }
}

/// The tutorial's pool function `f(x) = x*x`, answered after a pause as its `long_time_task` sleeps:
/// what `mp queue map` maps on the queue's workers.
public struct SquareAfterPause: TaskFunction {
    /// The pause before each answer, in milliseconds (0: none).
    public let pauseMs: Int
    /// The function, pausing `pauseMs` milliseconds per item.
    public init(pauseMs: Int = 0) { self.pauseMs = pauseMs }
    /// `x*x`, after the pause (a cancelled item stops pausing at once).
    public func callAsFunction(_ x: Int) async throws -> Int {
        if pauseMs > 0 { try await Task.sleep(for: .milliseconds(pauseMs)) }
        return x * x
    }
}

/// A worker process: its own pool, serving the queue until SIGTERM (then it finishes what it holds).
/// Returns how many jobs it finished.
public struct QueueWorkerProcess: Job {
    /// The path of the SQLite file that holds the queue.
    public let database: String
    /// The worker processes of its pool, which is as many jobs as it runs at once.
    public let workers: Int
    /// Told `serving` once the worker stops on SIGTERM (before that, SIGTERM would kill it outright).
    public let ready: Connection?
    /// A queue worker for the SQLite file at `database`, with a pool of `workers` processes; it says
    /// `serving` on `ready` (if given) once SIGTERM stops it cleanly.
    public init(database: String, workers: Int, ready: Connection? = nil) {
        self.database = database
        self.workers = workers
        self.ready = ready
    }
    /// Serves the queue, in the child process, until SIGTERM or Ctrl-C: its pool ignores Ctrl-C, so that
    /// the signal stops the queue worker (which finishes the jobs it holds) rather than the pool. Polls
    /// every 10 ms; names itself `worker-PID`.
    /// - Returns: the number of jobs it finished.
    /// - Throws: when the pool cannot start, the queue's database cannot be opened, or it stays
    ///   unreachable for longer than a lease.
    public func run() throws -> Int {
        let pool = try ProcessPool(workers: workers, options: ProcessPoolOptions(interrupt: .ignore))
        defer { pool.terminate() }
        let worker = try QueueWorker(
            DatabaseURL(sqlite: database),
            pool: pool,
            options: QueueWorkerOptions(pollInterval: .milliseconds(10), name: "worker-\(getpid())")
        )
        QueueWorker.stopOnSignals(worker)
        try ready?.send("serving")
        return try worker.run()
    }
}

/// A producer and two worker processes on one SQLite file: the producer queues ten tasks and reads the
/// results back by job id; each worker process runs jobs on its own pool. Then the tutorial's pool `map`
/// runs on the same workers through a ``QueuePool`` (its four chunks are four more jobs).
public func durableQueue() throws {
    let path = "/tmp/mp-queue-demo-\(getpid()).sqlite"
    defer { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
    let queue = try JobQueue(DatabaseURL(sqlite: path))
    let pipes = try (0..<2).map { _ in try makePipe() }
    let workers = pipes.map { ChildProcess(job: QueueWorkerProcess(database: path, workers: 2, ready: $0.1)) }
    for w in workers { try w.start() }
    // Each worker says when it is serving: from then on SIGTERM stops it cleanly (it finishes its jobs).
    for (mine, theirs) in pipes {
        theirs.close()
        _ = try mine.recv(String.self, timeout: .seconds(30))
    }
    var handles: [JobHandle<SquareTask>] = []
    for n in [5, 17, 3, 88, 41, 9, 60, 2, 73, 14] {
        print("Put task \(n)...")
        handles.append(try queue.enqueue(SquareTask(n: n)))
    }
    print("Try get results...")
    for h in handles {
        print("Result: \(try h.result(timeout: .seconds(30)))")
    }
    // The pool's map, run by the same workers: `ProcessPool` changed for `QueuePool`, and nothing else.
    let pool = try QueuePool(queue)
    print("Pool map on the queue's workers: \(try pool.map(F(), Array(0..<10), chunksize: 3))")
    pool.close()
    for w in workers { w.terminate() }
    let finished = try workers.map { try $0.result(timeout: .seconds(30)) }
    // Which worker claims which job is a race, as in Python: one of the two may run them all.
    print(
        "\(workers.count) worker processes finished \(finished.reduce(0, +)) jobs between them "
            + "(\(finished.map(String.init).joined(separator: " and ")))"
    )
    print("queue: \(try queue.counts().map { "\($0.key.rawValue) \($0.value)" }.sorted().joined(separator: ", "))")
}
