import Glibc
import Multiprocessing

// The pool's promises as figures (issue 8): how late a timeout fires, and how long a crash takes to
// reach the caller. Run alone: `scripts/bench pool timeouts crash` (they are not in the default pool run).

/// Sleeps `ms` without looking at cancellation.
struct BlockingSleepTask: TaskFunction {
    func callAsFunction(_ ms: Int) -> Int {
        usleep(useconds_t(ms * 1000))
        return ms
    }
}

/// Traps (index out of range) on every input.
struct TrapTask: TaskFunction {
    func callAsFunction(_ x: Int) -> Int {
        let xs: [Int] = []
        return xs[x]
    }
}

func runPoolPromises(_ only: Set<String>) throws {
    if only.contains("timeouts") {
        // Lateness of a hard timeout: the time from submit to the timeout error, minus the timeout.
        let pool = try ProcessPool(workers: 1, options: benchPoolOptions)
        _ = try pool.map(BlockingSleepTask(), [1])
        for limit in [100, 200, 500] {
            var late: [Double] = []
            for _ in 0..<7 {
                let t0 = now()
                let task = try pool.submit(
                    BlockingSleepTask(),
                    5_000,
                    options: TaskOptions(timeout: .milliseconds(limit))
                )
                _ = try? task.get()
                late.append((now() - t0) * 1e3 - Double(limit))
            }
            report("timeout_\(limit)ms_lateness_swift", late, "ms", digits: 1)
        }
        pool.terminate()
    }
    if only.contains("crash") {
        for (name, mode) in [
            ("message", CrashReport.message), ("symbols", .symbols), ("full_backtrace", .fullBacktrace),
        ] {
            var options = benchPoolOptions
            options.crashReport = mode
            options.forwardStderr = false
            let pool = try ProcessPool(workers: 1, options: options)
            _ = try pool.map(BlockingSleepTask(), [1])
            var ms: [Double] = []
            for _ in 0..<5 {
                let t0 = now()
                _ = try pool.mapResults(TrapTask(), [1], chunksize: 1)
                ms.append((now() - t0) * 1e3)
            }
            report("crash_to_caller_\(name)_swift", ms, "ms", digits: 1)
            pool.terminate()
        }
    }
}
