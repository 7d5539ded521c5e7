// `bench queuepool`: the process pool's calls through the job queue (QueuePool), against ProcessPool(2) on
// the same machine, as pool_tiny.py's rows (f(x) = x*x, results summed and checked). One queue worker
// process with a pool of 2 serves the queue; SQLite by default, `QUEUE_DB=postgres://…` for PostgreSQL.
// `QB_RUNS` rounds (default 3), medians. Rows: map of 200,000 items in automatic chunks (the pool plans
// 4 chunks per worker process: 8), map of 2,000 at chunk size 1, 1,000 submits each awaited in turn.
import Foundation
import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL

func runQueuePoolSuite(_ only: Set<String>) throws {
    let env = ProcessInfo.processInfo.environment
    let rounds = Int(env["QB_RUNS"] ?? "") ?? 3
    let path = NSTemporaryDirectory() + "mp-bench-queuepool-\(getpid()).sqlite"
    let url = try env["QUEUE_DB"].map { try DatabaseURL($0) } ?? DatabaseURL(sqlite: path)
    let tag = url.kind == .postgresql ? "pg" : "sqlite"
    defer { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
    if url.kind == .postgresql {
        let c = try Database.connect(url)
        for t in ["mp_job_deps", "mp_jobs", "mp_job_schema"] { try c.execute("DROP TABLE IF EXISTS \(t)") }
        c.close()
    }
    let queue = try JobQueue(url)
    let worker = ChildProcess(job: BenchQueueWorker(url: url))
    try worker.start()
    defer {
        worker.terminate()
        _ = try? worker.result(timeout: .seconds(30))
    }
    let pool = try QueuePool(queue, options: QueuePoolOptions(workers: 2))
    let local = try ProcessPool(workers: 2)
    defer { local.terminate() }
    func sumOfSquares(_ n: Int) -> Int { (0..<n).reduce(0) { $0 + $1 * $1 } }
    // Warm both (the worker's pool starts, the pool's collector listens).
    let warm = try pool.map(SquareTask(), Array(0..<100), chunksize: 1).reduce(0, +)
    let warmLocal = try local.map(SquareTask(), Array(0..<100), chunksize: 1).reduce(0, +)
    precondition(warm == sumOfSquares(100) && warmLocal == sumOfSquares(100))
    var rows: [String: [Double]] = [:]
    func time(_ name: String, _ n: Int, _ body: () throws -> Int) rethrows {
        let t0 = now()
        let s = try body()
        let t = now() - t0
        precondition(s == sumOfSquares(n), "\(name): wrong sum")
        rows[name, default: []].append(Double(n) / t)
    }
    let tiny = Array(0..<200_000)
    let c1 = Array(0..<2_000)
    for _ in 0..<rounds {
        try time("queuepool_\(tag)_map_tiny", tiny.count) { try pool.map(SquareTask(), tiny).reduce(0, +) }
        try time("processpool_map_tiny", tiny.count) { try local.map(SquareTask(), tiny).reduce(0, +) }
        try time("queuepool_\(tag)_map_c1", c1.count) { try pool.map(SquareTask(), c1, chunksize: 1).reduce(0, +) }
        try time("processpool_map_c1", c1.count) { try local.map(SquareTask(), c1, chunksize: 1).reduce(0, +) }
        try time("queuepool_\(tag)_submit", 1_000) {
            try (0..<1_000).reduce(0) { $0 + (try pool.submit(SquareTask(), $1).get(timeout: .seconds(60))) }
        }
    }
    for (name, values) in rows.sorted(by: { $0.key < $1.key }) { report(name, values, "tasks/s") }
    pool.close()
    _ = pool.join(timeout: .seconds(30))
}
