import Foundation
import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL

// The `queue` suite: the workload of ../shared/bench/queue (20,000 jobs computing i·i, results stored):
// enqueue one by one, enqueue in bulk, then process with one `QueueWorker` process running a pool of 2
// workers (`mp queue worker --concurrency 2`), timed from the worker's spawn until every job is completed
// (common.py starts its clock at the first completion: ours includes start-up). On an SQLite file by
// default; `QUEUE_DB=postgres://…` runs it on PostgreSQL (tables dropped and recreated), where it also
// measures enqueue-to-start latency with an idle worker. `QB_JOBS` and `QB_RUNS` as in common.py;
// `QB_SCHEDULES=0` turns the worker's periodic schedules off.
// CPU per job: this process, its children, and every process named `postgres` (as common.py counts).

struct BenchSquare: Job {
    let i: Int
    func run() -> Int { i * i }
}

/// Returns the wall-clock time it started at, in µs since the epoch.
struct StartStamp: Job {
    let i: Int
    func run() -> Int64 { wallMicroseconds() }
}

func wallMicroseconds() -> Int64 {
    var t = timespec()
    clock_gettime(CLOCK_REALTIME, &t)
    return Int64(t.tv_sec) * 1_000_000 + Int64(t.tv_nsec) / 1000
}

struct BenchQueueWorker: Job {
    let url: DatabaseURL
    func run() throws -> Int {
        let pool = try ProcessPool(workers: 2, options: ProcessPoolOptions(interrupt: .ignore))
        defer { pool.terminate() }
        let w = try QueueWorker(
            url,
            pool: pool,
            options: {
                // The library's defaults; QB_CLAIM and QB_BUFFER (the most jobs buffered) to explore.
                var o = QueueWorkerOptions(pollInterval: .milliseconds(5))
                let env = ProcessInfo.processInfo.environment
                if let n = env["QB_CLAIM"].flatMap({ Int($0) }) { o.claimBatch = n }
                if let n = env["QB_BUFFER"].flatMap({ Int($0) }) { o.localBuffer = n }
                // QB_SCHEDULES=0: the worker does not run periodic schedules (to measure what they cost).
                if env["QB_SCHEDULES"] == "0" { o.schedules = false }
                return o
            }()
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

/// CPU seconds (user + system, reaped children included) of every process named `postgres`.
func postgresServerCPU() -> Double {
    let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
    var total = 0.0
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int(name) != nil {
        guard let raw = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
            let open = raw.firstIndex(of: "("), let close = raw.lastIndex(of: ")"),
            raw[raw.index(after: open)..<close].hasPrefix("postgres")
        else { continue }
        let rest = raw[raw.index(close, offsetBy: 2)...].split(separator: " ")
        total += rest[11...14].compactMap { Double($0) }.reduce(0, +) / ticks
    }
    return total
}

func runQueueSuite(_ only: Set<String>) throws {
    let env = ProcessInfo.processInfo.environment
    let n = Int(env["QB_JOBS"] ?? "") ?? 20_000
    let rounds = Int(env["QB_RUNS"] ?? "") ?? 3
    let path = NSTemporaryDirectory() + "mp-bench-queue-\(getpid()).sqlite"
    let url = try env["QUEUE_DB"].map { try DatabaseURL($0) } ?? DatabaseURL(sqlite: path)
    let postgres = url.kind == .postgresql
    let tag = postgres ? "pg" : "sqlite"
    func reset() throws -> JobQueue {
        if postgres {
            let c = try Database.connect(url)
            try c.execute("DROP TABLE IF EXISTS mp_jobs")
            try c.execute("DROP TABLE IF EXISTS mp_job_schema")
            c.close()
        } else {
            for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) }
        }
        let q = try JobQueue(url)
        // QB_NO_REPLY_TRIGGER=1 (PostgreSQL): without the QueuePool's row trigger, to measure what it costs
        // the jobs that are not a pool's.
        if postgres && env["QB_NO_REPLY_TRIGGER"] == "1" {
            let c = try Database.connect(url)
            try c.execute("DROP TRIGGER IF EXISTS mp_jobs_reply ON mp_jobs")
            c.close()
        }
        return q
    }
    defer { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
    func allCPU() -> Double {
        cpuSeconds(RUSAGE_SELF.rawValue) + cpuSeconds(RUSAGE_CHILDREN.rawValue) + (postgres ? postgresServerCPU() : 0)
    }
    var single: [Double] = []
    var batch: [Double] = []
    var batchCPU: [Double] = []
    var process: [Double] = []
    var processCPU: [Double] = []
    var processWall: [Double] = []
    for _ in 0..<rounds {
        var q = try reset()
        var t0 = now()
        for i in 0..<n { _ = try q.enqueue(BenchSquare(i: i)) }
        single.append(Double(n) / (now() - t0))
        q = try reset()
        var cpu0 = allCPU()
        t0 = now()
        // In chunks of 1,000, each its own transaction, as common.py's enqueue_batch.
        for start in stride(from: 0, to: n, by: 1000) {
            _ = try q.enqueue((start..<min(n, start + 1000)).map { BenchSquare(i: $0) })
        }
        batch.append(Double(n) / (now() - t0))
        batchCPU.append((allCPU() - cpu0) * 1e6 / Double(n))
        // Process: the queue holds n jobs; one worker process with a pool of 2.
        cpu0 = allCPU()
        t0 = now()
        let worker = ChildProcess(job: BenchQueueWorker(url: url))
        try worker.start()
        // As common.py: the clock starts at the first poll that sees a finished job (start-up excluded)
        // and counts the jobs finished after it; the wall time from the spawn is reported too.
        var first: (t: Double, done: Int)?
        var done = 0
        while done < n {
            usleep(5_000)
            done = try q.counts()[.completed] ?? 0
            if first == nil && done > 0 { first = (now(), done) }
        }
        let t1 = now()
        let cpu1 = allCPU()
        worker.terminate()
        let ran = try worker.result(timeout: .seconds(30))
        precondition(ran == n, "the worker finished \(ran) jobs")
        if let first, t1 > first.t { process.append(Double(n - first.done) / (t1 - first.t)) }
        processWall.append(t1 - t0)
        processCPU.append((cpu1 - cpu0) * 1e6 / Double(n))
    }
    report("queue_\(tag)_enqueue_single_swift", single, "jobs/s", digits: 0)
    report("queue_\(tag)_enqueue_batch_swift", batch, "jobs/s", digits: 0)
    report("queue_\(tag)_enqueue_batch_cpu_swift", batchCPU, "cpu-us/job", digits: 1)
    report("queue_\(tag)_process_swift", process, "jobs/s", digits: 0)
    report("queue_\(tag)_process_cpu_swift", processCPU, "cpu-us/job", digits: 1)
    report("queue_\(tag)_process_wall_swift", processWall, "s", digits: 2)
    // Latency: an idle worker (default options: notifications where the database has them, 50 ms
    // polls), one job at a time; from just before the enqueue call to the job's first instruction.
    let q = try reset()
    let worker = ChildProcess(job: BenchQueueWorkerIdle(url: url))
    try worker.start()
    _ = try q.enqueue(StartStamp(i: -1)).result(timeout: .seconds(30))  // the worker is up
    var latencies: [Double] = []
    for i in 0..<200 {
        usleep(UInt32.random(in: 5_000...20_000))
        let t = wallMicroseconds()
        let started = try q.enqueue(StartStamp(i: i)).result(timeout: .seconds(30))
        latencies.append(Double(started - t) / 1000)
    }
    worker.terminate()
    _ = try worker.result(timeout: .seconds(30))
    latencies.sort()
    print("RESULT queue_\(tag)_latency_p50_swift \(String(format: "%.2f", latencies[latencies.count / 2])) ms")
    print("RESULT queue_\(tag)_latency_p99_swift \(String(format: "%.2f", latencies[latencies.count * 99 / 100])) ms")
}

/// A worker with the default options (notifications on, 50 ms polls), as a user would run it.
struct BenchQueueWorkerIdle: Job {
    let url: DatabaseURL
    func run() throws -> Int {
        let pool = try ProcessPool(workers: 2, options: ProcessPoolOptions(interrupt: .ignore))
        defer { pool.terminate() }
        let w = try QueueWorker(url, pool: pool)
        QueueWorker.stopOnSignals(w)
        return try w.run()
    }
}
