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
    /// - Parameters:
    ///   - job: what to run.
    ///   - timeout: the longest wait for the result (`nil`: no limit).
    ///   - options: the job's timeouts, retries and cancellation (``TaskOptions``).
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
    ///   - f: the function, applied to each input in a worker.
    ///   - inputs: the inputs, read at once.
    ///   - chunksize: items sent to a worker at a time (`nil`: Python's rule, `ceil(n / (4 × workers))`).
    ///   - options: each item's timeouts, retries and cancellation (``TaskOptions``).
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
    ///   - f: the function, applied to each input in a worker.
    ///   - inputs: the inputs, read lazily.
    ///   - chunksize: items sent to a worker at a time (`nil`: chosen by the pool).
    ///   - maxInFlight: how many items may be submitted and not yet read (`nil`: 8192); the input is read
    ///     on a background thread only as far ahead as this allows, so memory stays flat on huge inputs.
    ///   - options: each item's timeouts, retries and cancellation (``TaskOptions``).
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
