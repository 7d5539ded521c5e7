// The tutorial's Pool programs, ported to ProcessPool. Sleeps are a tenth of the tutorial's (the demo runs in
// CI); the structure and output follow the Python.

import Glibc
public import Multiprocessing
import Threading

/// ```python
/// def long_time_task(name):
///     print('Run task %s (%s)...' % (name, os.getpid()))
///     start = time.time()
///     time.sleep(random.random() * 3)
///     end = time.time()
///     print('Task %s runs %0.2f seconds.' % (name, (end - start)))
/// ```
public struct LongTimeTask: Job {
    /// The task's number, which it prints.
    public let name: Int
    /// Task number `name`.
    public init(name: Int) { self.name = name }
    /// Python's `long_time_task(name)`, in a pool worker: prints its number and the worker's pid, sleeps a
    /// random 0 to 0.3 s (the tutorial's 0 to 3 s), and prints how long it ran.
    public func run() async throws {
        print("Run task \(name) (\(getpid()))...")
        let start = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(Int.random(in: 0..<300)))
        let seconds =
            Double((ContinuousClock.now - start).components.attoseconds) / 1e18
            + Double((ContinuousClock.now - start).components.seconds)
        print("Task \(name) runs \(fixed(seconds, 2)) seconds.")
    }
}

/// ```python
/// p = Pool(4)
/// for i in range(5):
///     p.apply_async(long_time_task, args=(i,))
/// print('Waiting for all subprocesses done...')
/// p.close(); p.join()
/// print('All subprocesses done.')
/// ```
public func poolApplyAsync() throws {
    print("Parent process \(getpid()).")
    let p = try ProcessPool(workers: 4)
    for i in 0..<5 { try p.applyAsync(LongTimeTask(name: i)) }
    print("Waiting for all subprocesses done...")
    p.close()
    try p.join()
    print("All subprocesses done.")
}

/// ```python
/// def myFun(i):
///     time.sleep(2)
///     return i+100
/// def end_call(arg):
///     print("end_call", arg)
/// p = Pool(5)
/// for i in range(10):
///     p.apply_async(func=myFun, args=(i,), callback=end_call)
/// print("end"); p.close(); p.join()
/// ```
public struct MyFun: Job {
    /// The input.
    public let i: Int
    /// `myFun(i)`.
    public init(i: Int) { self.i = i }
    /// Python's `myFun(i)`, in a pool worker: sleeps 0.2 s (the tutorial's 2 s) and returns `i + 100`.
    public func run() async throws -> Int {
        try await Task.sleep(for: .milliseconds(200))
        return i + 100
    }
}

/// Runs the tutorial's `apply_async` program with a callback (the Python is on `MyFun`): ten `myFun` jobs
/// on `Pool(5)`, each result handed to `end_call` (a closure that prints `end_call` and the result) on the
/// pool's callback thread as it arrives. `end` prints first, since `applyAsync` does not wait; `close()`
/// and `join()` then wait for the jobs to finish. `mp demo pool-callback`.
public func poolCallback() throws {
    let p = try ProcessPool(workers: 5)
    for i in 0..<10 {
        try p.applyAsync(MyFun(i: i), callback: { arg in print("end_call", arg) })
    }
    print("end")
    p.close()
    try p.join()
}

/// `f(x) = x*x` of the tutorial's `with Pool(processes=4) as pool:` example.
public struct F: SyncTaskFunction {
    /// The function (it has no settings).
    public init() {}
    /// `x*x`, computed in a pool worker.
    public func callAsFunction(_ x: Int) -> Int { x * x }
}

/// `os.getpid` as a job.
public struct GetPid: Job {
    /// The job (it has no settings).
    public init() {}
    /// The process id of the pool worker that runs it.
    public func run() -> Int32 { getpid() }
}

/// `time.sleep(n)` as a job (cooperative: cancelling it ends it at once).
public struct SleepSeconds: Job {
    /// How long it sleeps, in seconds.
    public let seconds: Int
    /// `time.sleep(seconds)`.
    public init(seconds: Int) { self.seconds = seconds }
    /// Sleeps `seconds` in a pool worker; throws `CancellationError` when the task is cancelled first.
    public func run() async throws {
        try await Task.sleep(for: .seconds(seconds))
    }
}

/// ```python
/// with Pool(processes=4) as pool:
///     print(pool.map(f, range(10)))
///     for i in pool.imap_unordered(f, range(10)):
///         print(i)
///     res = pool.apply_async(f, (20,)); print(res.get(timeout=1))
///     res = pool.apply_async(os.getpid, ()); print(res.get(timeout=1))
///     multiple_results = [pool.apply_async(os.getpid, ()) for i in range(4)]
///     print([res.get(timeout=1) for res in multiple_results])
///     res = pool.apply_async(time.sleep, (10,))
///     try:
///         print(res.get(timeout=1))
///     except TimeoutError:
///         print("We lacked patience and got a multiprocessing.TimeoutError")
/// print("Now the pool is closed and no longer available")
/// ```
/// Python's `with` terminates the pool, killing the sleeper; here the scope drains the pool, so the
/// sleeper is cancelled instead — a running task can be stopped, which Python cannot do.
public func poolContextManager() async throws {
    try await withProcessPool(workers: 4) { pool in
        print(try await pool.map(F(), 0..<10))
        for try await i in try pool.imapUnordered(F(), 0..<10) { print(i) }
        print(try pool.submit(F(), 20).get(timeout: .seconds(1)))
        print(try pool.submit(GetPid()).get(timeout: .seconds(1)))
        let multiple = try (0..<4).map { _ in try pool.submit(GetPid()) }
        print(try multiple.map { try $0.get(timeout: .seconds(1)) })
        let res = try pool.submit(SleepSeconds(seconds: 10))
        do {
            _ = try res.get(timeout: .seconds(1))
        } catch let e as MultiprocessingError where e.code == .timedOut {
            print("We lacked patience and got a timeout (Python's multiprocessing.TimeoutError)")
        }
        res.cancel()
        print("For the moment, the pool remains available for more work: \(try pool.apply(SquareJob(x: 7)))")
    }
    print("Now the pool is closed and no longer available")
}

/// `f(x) = x*x` as a job: the one more task that shows the tutorial's closing line, "the pool remains
/// available for more work" (目前,池中还有其他的工作), after a task that timed out.
public struct SquareJob: Job {
    /// The number to square.
    public let x: Int
    /// The job for `x`.
    public init(x: Int) { self.x = x }
    /// `x*x`, computed in a pool worker.
    public func run() -> Int { x * x }
}

/// A CPU-bound function for the progress demo: the sum of i*i below n, by a loop.
public struct SumSquares: SyncTaskFunction {
    /// The function (it has no settings).
    public init() {}
    /// The sum of `i*i` for `i` below `n` (wrapping on overflow), by a loop, in a pool worker.
    public func callAsFunction(_ n: Int) -> Int {
        var s = 0
        for i in 0..<n { s &+= i &* i }
        return s
    }
}

/// The main job's pool demo: a map over 10,000 CPU-bound items (a second or two in a debug build) with a live progress bar and each worker's
/// start-up, waiting and working time; one item crashes its worker on purpose and fails alone.
public func poolWithProgress() async throws {
    let n = 10_000
    try await withProcessPool { pool in
        let started = ContinuousClock.now
        // The library's bar, on standard output (a line per quarter when piped).
        let terminalBar = TerminalBar(unit: "tasks", fileDescriptor: 1)
        let bar = Task { @Sendable in
            for await p in pool.progress(every: .milliseconds(100)) {
                if p.total > 0 && p.done == p.total { break }  // the finished frame is drawn below
                drawPoolProgress(terminalBar, p, elapsed: .now - started)
            }
        }
        let inputs = (0..<n).map { 150_000 + $0 % 500 }
        let results = try pool.mapResults(SumSquares(), inputs, chunksize: 50)
        _ = await bar.value
        let ok = results.filter { if case .success = $0 { true } else { false } }.count
        drawPoolProgress(terminalBar, pool.currentProgress, final: true, elapsed: .now - started)
        print("\(ok) of \(n) items done by \(pool.workerCount) workers")
        for w in pool.currentProgress.workers {
            print(
                "  worker \(w.pid): start-up \(ms(w.startup ?? .zero)), working \(ms(w.working)), waiting \(ms(w.waiting)), \(w.tasks) chunks"
            )
        }
        // A dead worker fails only its own item, at once, with its signal, stderr tail and peak memory.
        let crash = try pool.mapResults(CrashOn(bad: 3), Array(0..<8), chunksize: 1)
        for case .failure(let e as PoolError) in crash {
            print(
                "item 3 failed alone: \(e.message); exit code \(e.exitCode ?? 0), peak memory \((e.peakMemoryBytes ?? 0) >> 20) MiB"
            )
        }
        print("the other \(crash.count - 1) items: \(crash.compactMap { try? $0.get() })")
    }
}

/// Kills its worker with SIGKILL on the `bad` input; squares the others.
public struct CrashOn: SyncTaskFunction {
    /// The input that kills the worker.
    public let bad: Int
    /// A function that kills its worker on the input `bad`.
    public init(bad: Int) { self.bad = bad }
    /// `x*x`, in a pool worker; on `bad`, the worker kills itself with SIGKILL instead, so that the item
    /// fails with a `PoolError` and the pool replaces the worker.
    public func callAsFunction(_ x: Int) -> Int {
        if x == bad { kill(getpid(), SIGKILL) }
        return x * x
    }
}

func ms(_ d: Duration) -> String {
    let v = Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) / 1e15
    return v >= 1000 ? "\(fixed(v / 1000, 1)) s" : "\(fixed(v, 1)) ms"
}

/// `x` with `digits` decimals (no Foundation here).
func fixed(_ x: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let n = Int((x * scale).rounded())
    let whole = n / Int(scale)
    let frac = String(abs(n) % Int(scale))
    return digits == 0 ? "\(whole)" : "\(whole).\(String(repeating: "0", count: digits - frac.count))\(frac)"
}

/// Draws the whole pool's progress `p` on `bar` (nothing before the first item is submitted: no `0/0`
/// frame); `final` ends the bar.
func drawPoolProgress(_ bar: TerminalBar, _ p: PoolProgress, final: Bool = false, elapsed: Duration) {
    guard p.total > 0 else { return }
    fflush(nil)  // the demo's own prints first: the bar writes to standard output directly
    bar.draw(CallProgress(done: p.done, failed: p.failed, total: p.total, elapsed: elapsed, isFinished: final))
}
