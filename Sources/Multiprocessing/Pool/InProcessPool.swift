import Glibc
import Synchronization
import Threading

/// The ``ProcessPool`` API on threads of this process — Python's `multiprocessing.pool.ThreadPool`
/// (`multiprocessing.dummy.Pool`), for work that needs no isolation: I/O-bound jobs, code that is
/// thread-safe, values that are expensive to encode.
///
/// The same jobs and functions, the same ``PoolTask`` and ``PoolResults``, so code can switch between
/// the two. Work runs on the Threading module's `ThreadPool` executor; nothing is encoded. What a
/// thread cannot offer: a crash ends the whole program, and a thread cannot be killed, so a hard
/// ``TaskOptions/timeout`` fails the task at its deadline while its thread runs on to the end of the item,
/// and cancellation is cooperative only (`async` jobs and functions see their Swift task cancelled).
/// An item's `async` code runs on its pool thread, its child tasks (`async let`, task groups) included,
/// one at a time: await rather than block between them.
public final class InProcessPool: Sendable {
    private let executor: ThreadPool
    /// How many threads the pool runs at most.
    public let workerCount: Int
    private let stats = TrackedMutex(Stats())

    private struct Stats {
        var done = 0
        var failed = 0
        var total = 0
        var first: ContinuousClock.Instant?
    }

    /// - Parameters:
    ///   - workers: default: the CPUs this process may use.
    ///   - initializer: run once by each thread before its first task (Python's `initializer`).
    public init(workers: Int? = nil, initializer: (@Sendable () throws -> Void)? = nil) {
        workerCount = max(1, workers ?? Processes.cpuCount)
        executor = ThreadPool(maxWorkers: workerCount, threadNamePrefix: "InProcessPool", initializer: initializer)
    }

    /// Runs `initializer` (a ``Job``) once in each thread before its first task.
    public convenience init<I: Job>(workers: Int? = nil, initializer: I) {
        self.init(workers: workers, initializer: { _ = try WorkerRuntime.runBlocking { try await initializer.run() } })
    }

    // MARK: - single tasks

    /// Runs `job` on a pool thread — Python's `ThreadPool.apply_async(f)`. See ``ProcessPool/submit(_:options:)``.
    public func submit<J: Job>(_ job: J, options: TaskOptions = .default) throws -> PoolTask<J.Output> {
        try single(options) { try await job.run() }
    }

    /// Runs `f(input)` on a pool thread. See ``ProcessPool/submit(_:_:options:)``.
    public func submit<F: TaskFunction>(
        _ f: F,
        _ input: F.Input,
        options: TaskOptions = .default
    ) throws -> PoolTask<F.Output> {
        try single(options) { try await f(input) }
    }

    /// Runs `job` and calls `callback` or `errorCallback` with its outcome on the pool's callback thread — Python's `apply_async(f, callback=, error_callback=)`.
    @discardableResult
    public func applyAsync<J: Job>(
        _ job: J,
        options: TaskOptions = .default,
        callback: (@Sendable (J.Output) -> Void)? = nil,
        errorCallback: (@Sendable (any Error) -> Void)? = nil
    ) throws -> PoolTask<J.Output> {
        try submit(job, options: options).reporting(on: { $0() }, callback, errorCallback)
    }

    private func single<T: Codable & Sendable>(
        _ options: TaskOptions,
        _ body: @escaping @Sendable () async throws -> T
    ) throws -> PoolTask<T> {
        let call = SingleCall<T>(options: options)
        let running = RunningTask()
        count(total: 1)
        try submitWork {
            guard !call.isCancelled else { return }
            let r = self.attempt(options, running: running) { try await body() }
            self.count(done: 1, failed: r.isFailure ? 1 : 0)
            call.future.complete(r)
        } dropped: {
            call.future.complete(.failure(PoolError(.terminated, "the pool was terminated")))
        }
        armTimeout(options) {
            call.future.complete(.failure(PoolError(.timedOut, "the task ran past its timeout of \(options.timeout!)")))
        }
        return PoolTask(call: call) {
            guard call.markCancelled() else { return }
            running.cancel()
            call.future.complete(.failure(CancellationError()))
        }
    }

    // MARK: - many items

    /// Applies `f` to every input, in order; throws the first failure — Python's `ThreadPool.map`.
    @available(
        *,
        noasync,
        message: "this map blocks its thread; in async code write `try await pool.map(f, inputs)` (it suspends)"
    )
    public func map<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int? = nil,
        options: TaskOptions = .default,
        timeout: Duration? = nil
    ) throws -> [F.Output] {
        try eagerMap(f, inputs, chunksize: chunksize, options: options, timeout: timeout)
    }

    /// Like ``map(_:_:chunksize:options:timeout:)`` but returns every item's outcome, failures included.
    public func mapResults<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int? = nil,
        options: TaskOptions = .default,
        timeout: Duration? = nil
    ) throws -> [Result<F.Output, any Error>] {
        try eagerMapResults(f, inputs, chunksize: chunksize, options: options, timeout: timeout)
    }

    /// Lazy, ordered results, reading the input only `maxInFlight` items ahead — Python's `ThreadPool.imap`.
    public func imap<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int? = nil,
        maxInFlight: Int? = nil,
        options: TaskOptions = .default
    ) throws -> PoolResults<F.Output> {
        try lazyMap(f, inputs, chunksize: chunksize, maxInFlight: maxInFlight, ordered: true, options: options)
    }

    /// Lazy results in completion order — Python's `ThreadPool.imap_unordered`.
    public func imapUnordered<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int? = nil,
        maxInFlight: Int? = nil,
        options: TaskOptions = .default
    ) throws -> PoolResults<F.Output> {
        try lazyMap(f, inputs, chunksize: chunksize, maxInFlight: maxInFlight, ordered: false, options: options)
    }

    /// Chunks of `f` over `inputs` for the executor, of a size fixed up front (Python's rule when `count` is
    /// known); fed on the caller's thread when there is no `maxInFlight`, else by a feeder thread within the
    /// call's credit.
    func stream<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        count itemCount: Int?,
        chunksize: Int?,
        maxInFlight: Int?,
        ordered: Bool,
        options: TaskOptions
    ) throws -> PoolResults<F.Output> {
        let call = StreamCall<F.Output>(options: options)
        if let display = options.progress { call.progress = try ProgressReporter.start(for: call, display) }
        let credit = maxInFlight.map { Credit(Swift.max($0, 2 * (chunksize ?? 1), 1)) }
        let results = PoolResults(call: call, credit: credit, ordered: ordered) {
            _ = call.markCancelled()
            credit?.cancel()
        }
        let known = itemCount ?? 0
        let size =
            chunksize.map { max(1, $0) }
            ?? Swift.max(
                1,
                Swift.min(
                    maxInFlight.map { $0 / (2 * workerCount) } ?? Int.max,
                    (known + 4 * workerCount - 1) / (4 * workerCount)
                )
            )
        // Feeds the whole input; an error is thrown, or with `report` delivered at the first item not
        // submitted, which then ends the results.
        let feed: @Sendable (_ report: Bool) throws -> Void = { [self] report in
            var submitted = 0
            try feedChunks(
                inputs,
                into: call,
                reportErrors: report,
                size: { size },
                emit: { slice, base in
                    let items = Array(slice)
                    if let credit, !credit.acquire(items.count) { throw CancellationError() }
                    count(total: items.count)
                    try submitWork {
                        self.runChunk(f, items, base: base, call: call, options: options)
                    } dropped: {
                        for i in base..<(base + items.count) {
                            call.fail(index: i, PoolError(.terminated, "the pool was terminated"))
                        }
                    }
                    submitted += items.count
                    return submitted
                },
                finish: { submitted }
            )
        }
        if maxInFlight == nil {
            do {
                try feed(false)
            } catch {
                _ = call.markCancelled()
                throw error
            }
        } else {
            let t = OSThread(name: "InProcessPool-feeder", daemon: true) { try? feed(true) }
            try t.start()
        }
        return results
    }

    private func runChunk<F: TaskFunction>(
        _ f: F,
        _ items: [F.Input],
        base: Int,
        call: StreamCall<F.Output>,
        options: TaskOptions
    ) {
        let running = RunningTask()
        var done: [F.Output] = []
        var first = base
        for (k, x) in items.enumerated() {
            if call.isCancelled {
                for j in k..<items.count { call.fail(index: base + j, CancellationError()) }
                break
            }
            let r: Result<F.Output, any Error>
            if let sync = f as? any SyncTaskFunction {
                r = callSync(sync, x, F.Output.self)
            } else {
                r = attempt(options, running: running) { try await f(x) }
            }
            switch r {
            case .success(let y):
                done.append(y)
                count(done: 1)
            case .failure(let e):
                if !done.isEmpty { call.deliverItems(start: first, done) }
                done = []
                first = base + k + 1
                count(done: 1, failed: 1)
                call.fail(index: base + k, e)
            }
        }
        if !done.isEmpty { call.deliverItems(start: first, done) }
    }

    /// A synchronous function, called directly (opened from the existential).
    private func callSync<G: SyncTaskFunction, Output>(_ g: G, _ x: Any, _: Output.Type) -> Result<Output, any Error> {
        Result { try g(x as! G.Input) as! Output }
    }

    /// Runs `body` with the options' soft timeout and retries for thrown errors; blocks this pool thread,
    /// which also runs the item's task (``CallerRunsExecutor``): an item's code never waits for a thread
    /// of the cooperative pool to run on, however busy that pool is. Its child tasks run on this thread
    /// too, one at a time.
    private func attempt<T: Sendable>(
        _ options: TaskOptions,
        running: RunningTask,
        _ body: @escaping @Sendable () async throws -> T
    ) -> Result<T, any Error> {
        var n = 1
        while true {
            var (r, timedOut) = CallerRunsExecutor.run(softTimeout: options.softTimeout, running: running.set, body)
            if timedOut, case .failure(let e) = r, e is CancellationError, let soft = options.softTimeout {
                r = .failure(PoolError(.timedOut, "the task passed its soft timeout of \(soft) and was cancelled"))
            }
            guard case .failure(let e) = r, !(e is CancellationError) else { return r }
            let cause: RetryPolicy.Cause = (e as? PoolError)?.code == .timedOut ? .timeout : .error
            guard options.retry.causes.contains(cause), n < options.retry.attempts else { return r }
            n += 1
            usleep(
                useconds_t(
                    max(
                        0,
                        options.retry.delay(beforeAttempt: n).components.seconds * 1_000_000
                            + options.retry.delay(beforeAttempt: n).components.attoseconds / 1_000_000_000_000
                    )
                )
            )
        }
    }

    private func armTimeout(_ options: TaskOptions, _ expire: @escaping @Sendable () -> Void) {
        guard let t = options.timeout else { return }
        let timer = ThreadTimer(after: t) { expire() }
        try? timer.start()
    }

    /// Queues `body`; `dropped` runs instead if ``terminate()`` drops it before it starts.
    private func submitWork(_ body: @escaping @Sendable () -> Void, dropped: @escaping @Sendable () -> Void) throws {
        let future: Future<Void>
        do {
            future = try executor.submit(body)
        } catch {
            throw PoolError(.closed, "the pool is closed")
        }
        future.onDone { if future.isCancelled { dropped() } }
    }

    private func count(total: Int = 0, done: Int = 0, failed: Int = 0) {
        stats.withLock { s in
            if s.first == nil { s.first = .now }
            s.total += total
            s.done += done
            s.failed += failed
        }
    }

    // MARK: - lifecycle

    /// No more submissions; queued work still runs — Python's `Pool.close()`.
    public func close() { executor.close() }
    /// Drops queued work (it fails with ``PoolError/Code/terminated``); running items run to their end.
    public func terminate() { executor.terminate() }
    /// Waits for the threads to finish after `close` or `terminate`.
    @discardableResult
    public func join(timeout: Duration? = nil) throws -> Bool { executor.join(timeout: timeout) }

    /// Progress now (no per-worker insights: threads have no start-up to speak of).
    public var currentProgress: PoolProgress {
        stats.withLock { s in PoolProgress.snapshot(done: s.done, failed: s.failed, total: s.total, since: s.first) }
    }

    /// A snapshot of the pool's progress every `interval`, until the pool is joined or the stream is dropped.
    public func progress(every interval: Duration = .milliseconds(100)) -> AsyncStream<PoolProgress> {
        PoolProgress.every(interval) { [self] in currentProgress }
    }
}

extension Result {
    var isFailure: Bool { if case .failure = self { true } else { false } }
}

/// The Swift task running an item, for cancellation from another thread. A cancellation asked for before
/// the task is known (while its first part runs, before it suspends) cancels it when it is.
final class RunningTask: Sendable {
    private let state = TrackedMutex<(task: Task<Void, Never>?, cancelled: Bool)>((nil, false))
    func set(_ t: Task<Void, Never>?) {
        let cancelled = state.withLock { s in
            s.task = t
            return s.cancelled
        }
        if cancelled { t?.cancel() }
    }
    func cancel() {
        let t = state.withLock { s in
            s.cancelled = true
            return s.task
        }
        t?.cancel()
    }
}
