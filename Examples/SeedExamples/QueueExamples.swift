// The seed notes' master/worker, made durable: the tasks and results live in an SQLite file instead of
// the master's memory, so a worker (or the producer) can die and nothing is lost.

import Glibc
public import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL

/// The tutorial's task as a queued job: `'n * n = n²'`.
public struct SquareTask: Job {
    public let n: Int
    /// A pause before answering, as the tutorial's worker sleeps (0: none).
    public let pauseMs: Int
    public init(n: Int, pauseMs: Int = 0) {
        self.n = n
        self.pauseMs = pauseMs
    }
    public func run() -> String {
        if pauseMs > 0 { usleep(UInt32(pauseMs) * 1000) }
        return "\(n) * \(n) = \(n * n)"
    }
}

/// A worker process: its own pool, serving the queue until SIGTERM (then it finishes what it holds).
/// Returns how many jobs it finished.
public struct QueueWorkerProcess: Job {
    public let database: String
    public let workers: Int
    public init(database: String, workers: Int) {
        self.database = database
        self.workers = workers
    }
    public func run() throws -> Int {
        let pool = try ProcessPool(workers: workers, options: ProcessPoolOptions(interrupt: .ignore))
        defer { pool.terminate() }
        let worker = try QueueWorker(
            DatabaseURL(sqlite: database),
            pool: pool,
            options: QueueWorkerOptions(pollInterval: .milliseconds(10), name: "worker-\(getpid())")
        )
        QueueWorker.stopOnSignals(worker)
        return try worker.run()
    }
}

/// A producer and two worker processes on one SQLite file: the producer queues ten tasks and reads the
/// results back by job id; each worker process runs jobs on its own pool.
public func durableQueue() throws {
    let path = "/tmp/mp-queue-demo-\(getpid()).sqlite"
    defer { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
    let queue = try JobQueue(DatabaseURL(sqlite: path))
    let workers = (0..<2).map { _ in ChildProcess(job: QueueWorkerProcess(database: path, workers: 2)) }
    for w in workers { try w.start() }
    var handles: [JobHandle<SquareTask>] = []
    for n in [5, 17, 3, 88, 41, 9, 60, 2, 73, 14] {
        print("Put task \(n)...")
        handles.append(try queue.enqueue(SquareTask(n: n)))
    }
    print("Try get results...")
    var byWorker: [String: Int] = [:]
    for h in handles {
        print("Result: \(try h.result(timeout: .seconds(30)))")
        if let w = try h.info()?.worker { byWorker[w, default: 0] += 1 }
    }
    for w in workers { w.terminate() }
    let finished = try workers.map { try $0.result(timeout: .seconds(30)) }
    print("workers finished \(finished.reduce(0, +)) jobs; \(byWorker.count) worker(s) took part")
    print("queue: \(try queue.counts().map { "\($0.key.rawValue) \($0.value)" }.sorted().joined(separator: ", "))")
}
