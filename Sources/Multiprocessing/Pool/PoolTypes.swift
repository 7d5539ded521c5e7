public import Logging

/// A function a pool applies to many inputs in worker processes — what Python passes to `Pool.map` as `f`.
///
/// Like a ``Job``, it is a `Codable` value (its stored properties are fixed arguments shared by every
/// call), found in the worker by its type name; `callAsFunction` may be synchronous or `async`, and may
/// throw.
///
/// ```swift
/// struct Square: TaskFunction {
///     func callAsFunction(_ x: Int) -> Int { x * x }
/// }
/// let squares = try pool.map(Square(), Array(0..<10))
/// ```
public protocol TaskFunction: Codable, Sendable {
    /// What one call takes: one element of the inputs given to `map`, `imap` and the like (encoded on its
    /// way to a worker process).
    associatedtype Input: Codable & Sendable
    /// What one call returns (encoded on its way back from a worker process).
    associatedtype Output: Codable & Sendable
    /// Computes the result for one input on a pool worker (a process of a ``ProcessPool``, a thread of an
    /// ``InProcessPool``) — Python's `f` in `Pool.map(f, iterable)`.
    ///
    /// An error it throws fails that item only; the other items go on. From a ``ProcessPool``, an error
    /// that is `Codable` comes back as itself, any other as a ``RemoteError``. An `async` body sees its
    /// Swift task cancelled when the call is cancelled or passes its ``TaskOptions/softTimeout``.
    func callAsFunction(_ input: Input) async throws -> Output
}

/// A ``TaskFunction`` whose body is synchronous — the fast path for small items.
///
/// Declare this conformance when `callAsFunction` does not `await`: the worker then calls it directly
/// in a loop compiled for your type (no Swift task and no executor checks per item), which matters when
/// each item takes nanoseconds. Cancellation cannot reach synchronous code, so a soft timeout or a
/// cancel request stops such an item by stopping its worker after the grace period.
///
/// ```swift
/// struct Square: SyncTaskFunction {
///     func callAsFunction(_ x: Int) -> Int { x * x }
/// }
/// ```
public protocol SyncTaskFunction: TaskFunction {
    /// Computes the result for one input, synchronously, in a worker; it also satisfies the `async`
    /// requirement of ``TaskFunction``. An error it throws fails that item only.
    func callAsFunction(_ input: Input) throws -> Output
    /// Runs items `from...` of a chunk in the worker. Implemented by the library (the default below, which
    /// the compiler specialises for each conforming type); do not implement it.
    func _runChunk(_ inputs: [Input], from: Int, _ context: ChunkContext)
}

extension SyncTaskFunction {
    /// Runs items `from...` of a chunk in the worker. Library internals, public only so that the compiler specialises this loop for each conforming type; do not call or implement it.
    @inlinable
    public func _runChunk(_ inputs: [Input], from: Int, _ context: ChunkContext) {
        var done: [Output] = []
        done.reserveCapacity(inputs.count - from)
        var first = from
        var i = from
        while i < inputs.count {
            guard context.itemStarting(i) else { break }
            do {
                done.append(try self(inputs[i]))
            } catch {
                context.send(done, start: first)
                done.removeAll(keepingCapacity: true)
                first = i + 1
                context.fail(i, error)
            }
            i += 1
            if context.flushDue {
                context.send(done, start: first)
                done.removeAll(keepingCapacity: true)
                first = i
                context.flush()
            }
        }
        context.send(done, start: first)
        context.finished(at: i)
    }
}

/// The worker's side of a chunk, for `SyncTaskFunction._runChunk(_:from:_:)`. Library internals: public
/// only because that loop must be inlinable into each conforming type (an SPI would hide the default
/// implementation from the conformances that need it); do not use it.
public final class ChunkContext: @unchecked Sendable {  // used by the worker's main thread only
    let unit: UInt64
    let out: Replies
    let slot: SharedSlot
    var next = 0
    private var now: UInt64 = 0

    init(unit: UInt64, out: Replies, slot: SharedSlot) {
        self.unit = unit
        self.out = out
        self.slot = slot
    }

    /// Records that item `i` starts (for crash attribution and timeouts); `false` if the unit was cancelled.
    public func itemStarting(_ i: Int) -> Bool {
        let (t, unitCancelled) = slot.itemStarting(unit: unit, index: i)
        now = t
        return !unitCancelled
    }

    /// Whether finished results should be sent now (2 ms since the last write).
    public var flushDue: Bool { out.dueForPartialFlush(now: now) }

    /// Sends finished results `values`, the first being item `start` (library internals).
    public func send<T: Encodable>(_ values: [T], start: Int) { out.outputs(unit: unit, start: start, values) }
    /// Reports that item `index` threw `error` (library internals).
    public func fail(_ index: Int, _ error: any Error) { out.failure(unit: unit, index: index, error) }
    /// Writes what was sent so far to the parent (library internals).
    public func flush() { out.flush() }
    /// Records that the chunk ended before item `i` (cancelled) or at its end (library internals).
    public func finished(at i: Int) { next = i }
}

/// A function of two arguments, for `starmap(_:_:chunksize:options:)` (``ProcessPool``, ``InProcessPool``) — Python's
/// `Pool.starmap(f, [(a, b), ...])`.
public protocol TaskFunction2: Codable, Sendable {
    /// The type of the first argument (`a` in Python's `(a, b)` tuples).
    associatedtype First: Codable & Sendable
    /// The type of the second argument (`b` in Python's `(a, b)` tuples).
    associatedtype Second: Codable & Sendable
    /// What one call returns (encoded on its way back from a worker process).
    associatedtype Output: Codable & Sendable
    /// Computes the result for one pair of arguments, in a worker; an error it throws fails that pair only.
    func callAsFunction(_ first: First, _ second: Second) async throws -> Output
}

/// Two arguments travelling together (the element of a starmap).
public struct ArgumentPair<First: Codable & Sendable, Second: Codable & Sendable>: Codable, Sendable {
    /// The first argument.
    public var first: First
    /// The second argument.
    public var second: Second
    /// Pairs two arguments.
    public init(_ first: First, _ second: Second) {
        self.first = first
        self.second = second
    }
}

/// Adapts a ``TaskFunction2`` to a ``TaskFunction`` over ``ArgumentPair``s.
public struct Starred<F: TaskFunction2>: TaskFunction {
    /// The two-argument function.
    public let function: F
    /// Adapts `function`.
    public init(_ function: F) { self.function = function }
    /// Calls the function with the pair's two arguments.
    public func callAsFunction(_ input: ArgumentPair<F.First, F.Second>) async throws -> F.Output {
        try await function(input.first, input.second)
    }
}

/// A ``Job`` seen as a function of itself, so jobs and functions share one path through the pool.
struct JobFunction<J: Job>: TaskFunction {
    func callAsFunction(_ job: J) async throws -> J.Output { try await job.run() }
}

/// When to run a task again after it failed.
public struct RetryPolicy: Sendable, Hashable {
    /// A reason a task failed.
    public enum Cause: Sendable, Hashable {
        /// The worker running it died (a trap, a signal, `exit`).
        case crash
        /// It ran past its timeout.
        case timeout
        /// It threw an error.
        case error
    }

    /// How many times a task may run in all (1: never retried).
    public var attempts: Int
    /// The wait before the first retry; doubled (by `multiplier`) for each further one.
    public var backoff: Duration
    /// The factor the wait grows by before each further retry.
    public var multiplier: Double
    /// The causes that are retried.
    public var causes: Set<Cause>
    /// A task that has killed this many workers fails, whatever `attempts` says: it is not retried forever.
    public var maxWorkerKills: Int

    /// A policy: up to `attempts` runs in all, waiting `backoff` (times `multiplier` per further retry) for the causes listed; a task that killed `maxWorkerKills` workers is not run again.
    public init(
        attempts: Int = 3,
        backoff: Duration = .milliseconds(50),
        multiplier: Double = 2,
        on causes: Set<Cause> = [.crash, .timeout],
        maxWorkerKills: Int = 2
    ) {
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.multiplier = multiplier
        self.causes = causes
        self.maxWorkerKills = max(1, maxWorkerKills)
    }

    /// No retries (the default).
    public static let none = RetryPolicy(attempts: 1, on: [])

    func delay(beforeAttempt n: Int) -> Duration {
        var d = backoff
        if n > 2 { for _ in 2..<n { d = d * multiplier } }
        return d
    }
}

/// Per-call options: timeouts, cancellation grace and retries.
public struct TaskOptions: Sendable {
    /// Hard limit on one task's running time: past it the worker is stopped (SIGTERM, then SIGKILL after
    /// `killGrace`), the task fails with ``PoolError/Code/timedOut`` and the worker is replaced.
    public var timeout: Duration?
    /// Soft limit: past it the task's Swift `Task` is cancelled inside the worker (a cooperative job
    /// throws `CancellationError`, reported as ``PoolError/Code/timedOut``).
    public var softTimeout: Duration?
    /// How long a cancelled or soft-timed-out task may keep running before its worker is killed.
    public var cancelGrace: Duration
    /// Time between SIGTERM and SIGKILL when a worker is stopped.
    public var killGrace: Duration
    /// Which failures are run again, how often and after what wait.
    public var retry: RetryPolicy
    /// How a map-like call (`map`, `mapResults`, `imap`, `imapUnordered`, `starmap`) shows its progress:
    /// `.bar` for a terminal bar, `.handler` for your own code. Shown from a thread of its own, so a
    /// caller that blocks its thread (or the main actor) does not freeze it.
    public var progress: ProgressDisplay?

    /// Options for a call; every limit is off by default, as in Python.
    public init(
        timeout: Duration? = nil,
        softTimeout: Duration? = nil,
        cancelGrace: Duration = .seconds(1),
        killGrace: Duration = .milliseconds(500),
        retry: RetryPolicy = .none,
        progress: ProgressDisplay? = nil
    ) {
        self.progress = progress
        self.timeout = timeout
        self.softTimeout = softTimeout
        self.cancelGrace = cancelGrace
        self.killGrace = killGrace
        self.retry = retry
    }

    /// No timeouts, no retries.
    public static let `default` = TaskOptions()

    /// A terminal progress bar and no other option — mpire's `progress_bar=True`:
    /// `try pool.map(f, xs, options: .progressBar)`.
    public static let progressBar = TaskOptions(progress: .bar)
}

/// What the pool does on Ctrl-C (SIGINT) in this process. Workers always ignore SIGINT.
public enum InterruptBehavior: Sendable {
    /// Tear every pool down (pending and running tasks fail with ``PoolError/Code/interrupted``, workers
    /// are stopped and reaped), then end the program as SIGINT would. A second Ctrl-C kills at once.
    case tearDownAndExit
    /// Tear every pool down and let the program carry on; a second Ctrl-C kills at once.
    case tearDown
    /// Install nothing; SIGINT keeps whatever disposition the program gave it.
    case ignore
}

/// What a crashing worker writes about its crash, to its standard error and so to the task's error.
///
/// Measured with one worker, a trap (index out of range) and a SIGSEGV, five crashes each
/// (`BENCHMARKS.md`, "Crash reports"): the time from the crash to the caller's error.
public enum CrashReport: Sendable, Hashable {
    /// The runtime's fatal-error message and its unsymbolicated stack trace (Swift's backtracer off):
    /// the error reaches the caller in about 8 ms. The default: a pool's promise is that a crash fails
    /// its item at once, and the message (`Fatal error: Index out of range`) says what went wrong.
    case message
    /// Swift's backtracer, function names without line numbers: about 0.5 s per crash.
    case symbols
    /// Swift's backtracer with file and line of every frame, the crashed thread only: about 0.7 s per
    /// crash. For debugging a crash.
    case fullBacktrace

    var environment: String {
        switch self {
        case .message: "enable=no"
        case .symbols: "enable=yes,symbolicate=fast,threads=crashed,registers=none,images=none"
        case .fullBacktrace: "enable=yes,threads=crashed,registers=none,images=none"
        }
    }
}

/// Pool-wide settings.
public struct ProcessPoolOptions: Sendable {
    /// Python's `maxtasksperchild`: a worker is replaced after this many tasks (a chunk counts as one).
    public var maxTasksPerChild: Int?
    /// A worker whose resident memory exceeds this many bytes (checked between tasks) is replaced.
    public var memoryLimit: Int?
    /// More than `count` unexpected worker deaths within `window` fail the pool with
    /// ``PoolError/Code/broken`` instead of spawning workers forever.
    public var deathLimit: (count: Int, window: Duration)
    /// How many of the last lines of a dead worker's standard error its error carries.
    public var stderrLines: Int
    /// Forward workers' standard error to this process's (they are also kept for error reports).
    public var forwardStderr: Bool
    /// Where forwarded standard error goes (tests capture it; default: this process's fd 2).
    var stderrSink: (@Sendable ([UInt8]) -> Void)? = nil
    /// What Ctrl-C does to the pool and the program.
    public var interrupt: InterruptBehavior
    /// What a crashing worker reports (and how long its crash takes to reach the caller).
    public var crashReport: CrashReport
    /// The pool's name in logs and in its metrics' `pool` dimension.
    public var name: String
    /// Where the pool says what happens: workers started (debug), workers that died (warning, with the
    /// cause), the pool breaking (error). Default: nothing is logged. Metrics go to the program's
    /// swift-metrics backend, if it bootstrapped one (see the ``ProcessPool`` documentation).
    public var logger: Logger

    /// Pool-wide settings; the defaults suit most programs (see each property).
    public init(
        maxTasksPerChild: Int? = nil,
        memoryLimit: Int? = nil,
        deathLimit: (count: Int, window: Duration) = (20, .seconds(10)),
        stderrLines: Int = 20,
        forwardStderr: Bool = true,
        interrupt: InterruptBehavior = .tearDownAndExit,
        crashReport: CrashReport = .message,
        name: String = "pool",
        logger: Logger = Logger(label: "swift-multiprocessing.pool", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.crashReport = crashReport
        self.name = name
        self.logger = logger
        self.maxTasksPerChild = maxTasksPerChild
        self.memoryLimit = memoryLimit
        self.deathLimit = deathLimit
        self.stderrLines = stderrLines
        self.forwardStderr = forwardStderr
        self.interrupt = interrupt
    }
}

/// Why a pool task failed without an error of its own.
public struct PoolError: Error, CustomStringConvertible, Sendable {
    /// Why the task failed, as a value to compare with the static members.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        /// The code's name.
        public var description: String { raw }

        /// The worker running the task died (trap, signal, `exit`).
        public static let workerDied = Code("workerDied")
        /// The task ran past its timeout.
        public static let timedOut = Code("timedOut")
        /// The pool was terminated before the task finished.
        public static let terminated = Code("terminated")
        /// The pool is closed to new work.
        public static let closed = Code("closed")
        /// Too many workers died too quickly (or could not start): the pool stopped.
        public static let broken = Code("broken")
        /// Ctrl-C (SIGINT) tore the pool down.
        public static let interrupted = Code("interrupted")
    }

    /// Why the task failed.
    public let code: Code
    /// A sentence for people: what happened to which worker.
    public let message: String
    /// The worker's pid, when a worker was involved.
    public let pid: Int32?
    /// The worker's exit code, or minus the signal that killed it.
    public let exitCode: Int32?
    /// The last lines the worker wrote to standard error.
    public let stderrTail: [String]
    /// The worker's peak resident memory, in bytes.
    public let peakMemoryBytes: Int?
    /// How many times the task ran.
    public let attempts: Int
    /// The worker's crash report, whole (the runtime's message and stack, or the backtracer's report),
    /// when it wrote one. It is kept here rather than printed on the parent's standard error; the
    /// ``message`` leads with its first line and the first frame in the program's own code.
    public let crashReport: String?

    init(
        _ code: Code,
        _ message: String,
        pid: Int32? = nil,
        exitCode: Int32? = nil,
        stderrTail: [String] = [],
        peakMemoryBytes: Int? = nil,
        attempts: Int = 1,
        crashReport: String? = nil
    ) {
        self.crashReport = crashReport
        self.code = code
        self.message = message
        self.pid = pid
        self.exitCode = exitCode
        self.stderrTail = stderrTail
        self.peakMemoryBytes = peakMemoryBytes
        self.attempts = attempts
    }

    /// The signal that killed the worker, if one did.
    public var signal: Int32? { exitCode.flatMap { $0 < 0 ? -$0 : nil } }

    /// The code and message with the worker's peak memory, then its standard error's last lines — up to
    /// its crash report, which is summed up in the message and kept whole in ``crashReport``.
    public var description: String {
        var s = "PoolError.\(code): \(message)"
        if let peakMemoryBytes { s += " (peak memory \(peakMemoryBytes / 1024) KiB)" }
        var lines = stderrTail
        if crashReport != nil, let start = lines.firstIndex(where: { startsCrashReport($0[...]) }) {
            lines = Array(lines[..<start])
        }
        if !lines.isEmpty { s += "\n  stderr: " + lines.joined(separator: "\n  stderr: ") }
        if let crashReport {
            s += "\n  (crash report: \(crashReport.split(separator: "\n").count) lines in `crashReport`)"
        }
        return s
    }

    func with(attempts: Int) -> PoolError {
        PoolError(
            code,
            message,
            pid: pid,
            exitCode: exitCode,
            stderrTail: stderrTail,
            peakMemoryBytes: peakMemoryBytes,
            attempts: attempts,
            crashReport: crashReport
        )
    }
}

/// A snapshot of a pool's progress, from ``ProcessPool/progress(every:)``.
public struct PoolProgress: Sendable {
    /// Tasks finished (with a result or an error).
    public var done: Int
    /// Of those, the failed ones.
    public var failed: Int
    /// Tasks submitted so far (for a lazy `imap`, this grows as input is read).
    public var total: Int
    /// Tasks per second since the first submission.
    public var rate: Double
    /// Estimated time to finish what has been submitted, if any progress has been made.
    public var eta: Duration?
    /// One entry per live worker.
    public var workers: [WorkerInsight]

    /// `done / total`, from 0 to 1.
    public var fractionDone: Double { total == 0 ? 0 : Double(done) / Double(total) }
}

/// Where a worker's time went — mpire's "insights".
public struct WorkerInsight: Sendable {
    /// The worker's process id.
    public var pid: Int32
    /// From spawn to ready.
    public var startup: Duration?
    /// Time with no task assigned since it became ready.
    public var waiting: Duration
    /// Time spent running tasks (as the worker measured it).
    public var working: Duration
    /// Tasks (chunks) it has finished.
    public var tasks: Int
}

/// What ``ProcessPool`` and ``InProcessPool`` share: code written against `some TaskPool` runs on worker
/// processes or on threads unchanged.
public protocol TaskPool: Sendable {
    /// How many workers the pool runs: processes for a ``ProcessPool``, threads at most for an
    /// ``InProcessPool``.
    var workerCount: Int { get }
    /// Submits one job and returns at once with its ``PoolTask`` — Python's `Executor.submit(fn)` and
    /// `Pool.apply_async(func)`.
    ///
    /// - Throws: a ``PoolError`` once the pool takes no more work (after `close()` or `terminate()`, or
    ///   broken); from a ``ProcessPool``, a ``MultiprocessingError`` if the job's type cannot be found by
    ///   name in a worker (``MultiprocessingError/Code/unsupportedJob``) or the job cannot be encoded.
    func submit<J: Job>(_ job: J, options: TaskOptions) throws -> PoolTask<J.Output>
    /// Submits one call `f(input)` and returns at once with its ``PoolTask`` — Python's
    /// `Executor.submit(fn, arg)`. Throws as the job form does.
    func submit<F: TaskFunction>(_ f: F, _ input: F.Input, options: TaskOptions) throws -> PoolTask<F.Output>
    /// Runs one job and blocks the calling thread until its result — Python's `Pool.apply(func)`.
    ///
    /// - Parameter timeout: the longest wait for the result (`nil`: no limit).
    /// - Throws: the job's error; a ``PoolError`` (the worker died, the pool was terminated, ...);
    ///   ``MultiprocessingError/Code/timedOut`` if `timeout` expired first (the job keeps running).
    func apply<J: Job>(_ job: J, timeout: Duration?, options: TaskOptions) throws -> J.Output
    /// Runs one job, suspending the caller (not a thread) until its result; cancelling the Swift task
    /// cancels the job.
    ///
    /// - Throws: the job's error, a ``PoolError``, or `CancellationError` if the job was cancelled.
    func run<J: Job>(_ job: J, options: TaskOptions) async throws -> J.Output
    /// Submits one job and calls `callback` with its result or `errorCallback` with its error when it
    /// ends — Python's `Pool.apply_async(func, args, callback, error_callback)`.
    ///
    /// A ``ProcessPool`` runs the callbacks on its callback thread, one at a time (as Python's result
    /// handler thread); an ``InProcessPool`` runs them on the thread that completes the task. Keep them
    /// short. Throws as `submit` does.
    func applyAsync<J: Job>(
        _ job: J,
        options: TaskOptions,
        callback: (@Sendable (J.Output) -> Void)?,
        errorCallback: (@Sendable (any Error) -> Void)?
    ) throws -> PoolTask<J.Output>
    /// Applies `f` to every input and returns the results in input order, blocking the calling thread —
    /// Python's `Pool.map(f, iterable, chunksize)`. In `async` code, call the `async` `map` instead.
    ///
    /// - Parameters:
    ///   - chunksize: items sent to a worker at a time (`nil`: Python's rule, `ceil(n / (4 × workers))`).
    ///   - timeout: for the whole call (`nil`: no limit); when it expires the rest is cancelled.
    /// - Throws: the first failure to arrive (the rest of the call is then cancelled);
    ///   ``MultiprocessingError/Code/timedOut`` if `timeout` expired.
    func map<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int?,
        options: TaskOptions,
        timeout: Duration?
    ) throws -> [F.Output]
    /// Like `map`, but returns every item's outcome in input order, failures included, rather than
    /// throwing the first. Throws only ``MultiprocessingError/Code/timedOut`` (when `timeout` expires) or
    /// an error submitting the work.
    func mapResults<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int?,
        options: TaskOptions,
        timeout: Duration?
    ) throws -> [Result<F.Output, any Error>]
    /// Lazy results in input order — Python's `Pool.imap(f, iterable, chunksize)`. Returns without waiting
    /// for results; read the ``PoolResults`` with `next(timeout:)` or `for try await`.
    ///
    /// - Parameters:
    ///   - chunksize: items sent to a worker at a time (`nil`: chosen by the pool).
    ///   - maxInFlight: how many items may be submitted and not yet read (`nil`: 8192); the input is read
    ///     on a background thread only as far ahead as this allows, so memory stays flat on huge inputs.
    func imap<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int?,
        maxInFlight: Int?,
        options: TaskOptions
    ) throws -> PoolResults<F.Output>
    /// Lazy results in the order they finish — Python's `Pool.imap_unordered(f, iterable, chunksize)`.
    /// The parameters are those of `imap`.
    func imapUnordered<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int?,
        maxInFlight: Int?,
        options: TaskOptions
    ) throws -> PoolResults<F.Output>
    /// Takes no more work; what is queued still runs, then the workers exit — Python's `Pool.close()`.
    func close()
    /// Stops the pool now — Python's `Pool.terminate()`: queued work fails with
    /// ``PoolError/Code/terminated``. A ``ProcessPool`` also fails its running work and stops its workers
    /// (SIGTERM, then SIGKILL); an ``InProcessPool``'s running items run to their end, as threads cannot
    /// be killed.
    func terminate()
    /// Blocks until the workers have exited after `close()` or `terminate()` — Python's `Pool.join()`.
    ///
    /// - Parameter timeout: the longest wait (`nil`: no limit).
    /// - Returns: `false` if `timeout` expired first.
    /// - Throws: from a ``ProcessPool``, a ``PoolError`` (``PoolError/Code/closed``) if neither `close()` nor
    ///   `terminate()` was called first (Python raises `ValueError`).
    func join(timeout: Duration?) throws -> Bool
    /// A snapshot of the pool's progress now: items done, failed and submitted, the rate, an estimate of
    /// the time left and, for a ``ProcessPool``, per-worker insights.
    var currentProgress: PoolProgress { get }
    /// A snapshot of the pool's progress every `interval`, as an `AsyncStream`, until the consumer stops
    /// iterating (the stream is dropped or its task cancelled).
    func progress(every interval: Duration) -> AsyncStream<PoolProgress>
}

extension TaskPool {
    /// Runs one job and waits for its result — Python's `Pool.apply`.
    public func apply<J: Job>(_ job: J, timeout: Duration? = nil, options: TaskOptions = .default) throws -> J.Output {
        try submit(job, options: options).get(timeout: timeout)
    }

    /// `map`, suspending the caller (not a thread); cancelling the Swift task cancels the call.
    public func map<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int? = nil,
        options: TaskOptions = .default
    ) async throws -> [F.Output] {
        var out: [F.Output] = []
        for try await v in try imap(f, Array(inputs), chunksize: chunksize, maxInFlight: Int.max, options: options) {
            out.append(v)
        }
        return out
    }

    /// Applies a two-argument function to each pair — Python's `Pool.starmap`.
    public func starmap<F: TaskFunction2>(
        _ f: F,
        _ arguments: some Sequence<(F.First, F.Second)>,
        chunksize: Int? = nil,
        options: TaskOptions = .default,
        timeout: Duration? = nil
    ) throws -> [F.Output] {
        try map(
            Starred(f),
            arguments.map { ArgumentPair($0.0, $0.1) },
            chunksize: chunksize,
            options: options,
            timeout: timeout
        )
    }

    /// Runs one job, suspending the caller (not a thread); cancelling the Swift task cancels the job.
    public func run<J: Job>(_ job: J, options: TaskOptions = .default) async throws -> J.Output {
        try await submit(job, options: options).value
    }
}

extension ProcessPool: TaskPool {}
extension InProcessPool: TaskPool {}
