import Foundation
import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL

// The `queue` suite: the workload of ../shared/bench/queue (20,000 jobs computing i·i, results stored),
// on an SQLite file: enqueue one by one, enqueue in bulk, then process with one `QueueWorker` process
// running a pool of 2 workers (`mp queue worker --concurrency 2`), timed from the worker's spawn until
// every job is completed, as common.py times its peers.

struct BenchSquare: Job {
    let i: Int
    func run() -> Int { i * i }
}

struct BenchQueueWorker: Job {
    let path: String
    func run() throws -> Int {
        let pool = try ProcessPool(workers: 2, options: ProcessPoolOptions(interrupt: .ignore))
        defer { pool.terminate() }
        let w = try QueueWorker(
            DatabaseURL(sqlite: path),
            pool: pool,
            options: QueueWorkerOptions(pollInterval: .milliseconds(5), claimBatch: 64)
        )
        QueueWorker.stopOnSignals(w)
        return try w.run()
    }
}

func cpuSeconds(_ who: Int32) -> Double {
    var u = rusage()
    getrusage(__rusage_who_t(who), &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
}

func runQueueSuite(_ only: Set<String>) throws {
    let n = 20_000
    let path = NSTemporaryDirectory() + "mp-bench-queue-\(getpid()).sqlite"
    func reset() throws -> JobQueue {
        for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) }
        return try JobQueue(DatabaseURL(sqlite: path))
    }
    defer { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
    var single: [Double] = []
    var batch: [Double] = []
    var process: [Double] = []
    var processCPU: [Double] = []
    for _ in 0..<3 {
        var q = try reset()
        var t0 = now()
        for i in 0..<n { _ = try q.enqueue(BenchSquare(i: i)) }
        single.append(Double(n) / (now() - t0))
        q = try reset()
        t0 = now()
        _ = try q.enqueue((0..<n).map { BenchSquare(i: $0) })
        batch.append(Double(n) / (now() - t0))
        // Process: the queue holds n jobs; one worker process with a pool of 2.
        let cpu0 = cpuSeconds(RUSAGE_SELF.rawValue) + cpuSeconds(RUSAGE_CHILDREN.rawValue)
        t0 = now()
        let worker = ChildProcess(job: BenchQueueWorker(path: path))
        try worker.start()
        while try q.counts()[.completed] ?? 0 < n { usleep(20_000) }
        let t1 = now()
        worker.terminate()
        let ran = try worker.result(timeout: .seconds(30))
        precondition(ran == n, "the worker finished \(ran) jobs")
        let cpu1 = cpuSeconds(RUSAGE_SELF.rawValue) + cpuSeconds(RUSAGE_CHILDREN.rawValue)
        process.append(Double(n) / (t1 - t0))
        processCPU.append((cpu1 - cpu0) * 1e6 / Double(n))
    }
    report("queue_sqlite_enqueue_single_swift", single, "jobs/s", digits: 0)
    report("queue_sqlite_enqueue_batch_swift", batch, "jobs/s", digits: 0)
    report("queue_sqlite_process_swift", process, "jobs/s", digits: 0)
    report("queue_sqlite_process_cpu_swift", processCPU, "cpu-us/job", digits: 1)
}
