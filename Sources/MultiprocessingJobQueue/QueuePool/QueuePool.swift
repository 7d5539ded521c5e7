public import Logging
public import Multiprocessing
public import MultiprocessingSQL
import Threading

/// Options of a ``QueuePool``.
public struct QueuePoolOptions: Sendable {
    /// The queue its jobs go to: the workers that serve it run them (`mp queue worker --queues`).
    public var queue: String
    /// Its jobs' priority in that queue.
    public var priority: Int
    /// How many worker processes to plan chunks for, when a call gives no `chunksize` (Python's rule: four
    /// chunks per worker); nil: as many as the workers serving the database announced in the last minute,
    /// or this machine's CPUs when none did.
    public var workers: Int?
    /// The longest wait between two reads of the jobs' ends: SQLite's pace (reads back off from a
    /// millisecond to this while nothing ends), and PostgreSQL's fallback when its notifications are off
    /// or lost (then at least half a second).
    public var pollInterval: Duration
    /// Wake at each end, where the database can say so (PostgreSQL's `LISTEN`/`NOTIFY`).
    public var notifications: Bool
    /// Where the pool reports a database it cannot read (it keeps retrying) and cancels it could not make.
    public var logger: Logger

    /// Options: queue `default`, priority 0, chunks planned for the workers announced, reads every 20 ms
    /// at most on SQLite, a logger that discards everything.
    public init(
        queue: String = "default",
        priority: Int = 0,
        workers: Int? = nil,
        pollInterval: Duration = .milliseconds(20),
        notifications: Bool = true,
        logger: Logger = Logger(label: "swift-multiprocessing.queuepool", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.queue = queue
        self.priority = priority
        self.workers = workers
        self.pollInterval = pollInterval
        self.notifications = notifications
        self.logger = logger
    }
}

/// The process pool's API across machines: a `TaskPool` whose `map`, `imap`, `imapUnordered`,
/// `mapResults`, `submit` and `applyAsync` run as jobs of a ``JobQueue``, on whatever ``QueueWorker``s
/// serve its queue, on any machine that reaches the database; results come back as they finish
/// (PostgreSQL notifies the pool at each commit; on SQLite it reads every few milliseconds).
///
/// A program written against `ProcessPool` (or against `some TaskPool`) scales out by changing the line
/// that makes the pool:
///
/// ```swift
/// // let pool = try ProcessPool(workers: 4)
/// let pool = try QueuePool(DatabaseURL("postgres://app@db.internal/jobs"))
/// let squares = try pool.map(Square(), Array(0..<10_000))
/// ```
///
/// The workers run the same program (they find `Square` by its name, as a pool's workers do): start them
/// with ``QueueWorker`` in that program, or with its `mp queue worker`-style command.
///
/// Semantics, as the process pool's:
/// - An item that throws fails alone (its error comes back as itself when it is `Codable`, else as a
///   `RemoteError`); the others go on. `TaskOptions.retry` runs it again for the causes it lists.
/// - An item that kills its worker process, or runs past `TaskOptions.timeout`, fails alone
///   (``JobQueueError/Code/failed``, with the worker's error history): the chunk it was in fails as a
///   whole, and its items are queued again one job each. A worker *machine* that dies loses nothing: its
///   jobs run again elsewhere when their lease runs out (at least once, as every queue job).
/// - Cancelling a call (`PoolResults.cancel()`, dropping the results, cancelling the task awaiting them,
///   a `timeout`) cancels its jobs: queued ones at once, running ones asked to stop.
/// - A result is read once and its row deleted. A caller that dies leaves its jobs to finish; their rows
///   are then deleted by the workers' retention cleaner (``QueueWorkerOptions/keepCompleted``), never
///   kept for ever.
///
/// `TaskOptions.softTimeout`, `cancelGrace` and `killGrace` are the local pool's: the queue worker's own
/// settings apply instead.
public final class QueuePool: Sendable {
    /// The queue the pool's jobs go through.
    public let queue: JobQueue
    /// The pool's options.
    public let options: QueuePoolOptions
    let core: QueuePoolCore

    /// A pool over `queue`: its jobs go to the queue ``QueuePoolOptions/queue``.
    public init(_ queue: JobQueue, options: QueuePoolOptions = QueuePoolOptions()) throws {
        self.queue = queue
        self.options = options
        core = try QueuePoolCore(queue: queue, options: options)
        try core.start()
    }

    /// A pool over the queue in the database at `url` (its tables are created there when missing).
    public convenience init(_ url: DatabaseURL, options: QueuePoolOptions = QueuePoolOptions()) throws {
        try self.init(JobQueue(url), options: options)
    }

    deinit { core.close() }

    /// The worker processes the pool plans chunks for: ``QueuePoolOptions/workers``, or those the workers
    /// serving the database announced in the last minute, or this machine's CPUs when none did.
    public var workerCount: Int { max(1, options.workers ?? core.liveWorkerProcesses() ?? Processes.cpuCount) }

    // MARK: single tasks

    /// Submits one job — `ProcessPoolExecutor.submit` / `Pool.apply_async`.
    public func submit<J: Job>(_ job: J, options: TaskOptions = .default) throws -> PoolTask<J.Output> {
        try single(RunJob<J>(), job, options: options).task
    }

    /// Submits `f(input)`.
    public func submit<F: TaskFunction>(
        _ f: F,
        _ input: F.Input,
        options: TaskOptions = .default
    ) throws -> PoolTask<F.Output> {
        try single(f, input, options: options).task
    }

    /// Submits a job with callbacks — Python's `Pool.apply_async(func, args, callback, error_callback)`.
    /// Callbacks run on the pool's callback thread, one at a time.
    @discardableResult
    public func applyAsync<J: Job>(
        _ job: J,
        options: TaskOptions = .default,
        callback: (@Sendable (J.Output) -> Void)? = nil,
        errorCallback: (@Sendable (any Error) -> Void)? = nil
    ) throws -> PoolTask<J.Output> {
        let callbacks = core.callbacks
        return try single(RunJob<J>(), job, options: options).reporting(
            on: { body in _ = try? callbacks.submit(body) },
            callback,
            errorCallback
        )
    }

    private func single<F: TaskFunction>(
        _ f: F,
        _ input: F.Input,
        options: TaskOptions
    ) throws -> ExternalTask<F.Output> {
        var task: ExternalTask<F.Output>!
        let call = try QueuePoolCall(core: core, f: f, options: options) { cancel in
            task = ExternalTask(options: options, cancel: cancel)
            return .single(task)
        }
        do {
            try call.send([(0, [input])])
        } catch {
            call.cancel(error)
            throw error
        }
        core.count(total: 1)
        call.seal(total: 1)
        return task
    }

    // MARK: many items

    /// Applies `f` to every input and returns the results in order — Python's `Pool.map`.
    ///
    /// - Parameters:
    ///   - f: the function (a `Codable` value; its properties are arguments shared by every call).
    ///   - inputs: one call's input each.
    ///   - chunksize: items per job; by default Python's rule, `ceil(n / (4 × workers))` (``workerCount``).
    ///   - options: per-item timeout and retries, progress display (`TaskOptions`).
    ///   - timeout: for the whole call; when it expires its jobs are cancelled and
    ///     `MultiprocessingError` `.timedOut` thrown.
    /// - Throws: the first failure to arrive (the rest of the call is cancelled).
    @available(*, noasync, message: "this map blocks its thread; in async code write `try await pool.map(f, inputs)`")
    public func map<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int? = nil,
        options: TaskOptions = .default,
        timeout: Duration? = nil
    ) throws -> [F.Output] {
        try stream(f, Array(inputs), chunksize: chunksize, maxInFlight: nil, ordered: true, options: options)
            .collect(timeout: timeout)
    }

    /// ``map(_:_:chunksize:options:timeout:)``, awaited: its jobs are queued on a thread of the queue's
    /// (the database is never called from Swift's cooperative pool) and its results awaited without
    /// holding a thread; cancelling the task cancels the call.
    public func map<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int? = nil,
        options: TaskOptions = .default
    ) async throws -> [F.Output] {
        let items = Array(inputs)
        let results = try await JobQueue.blockingCalls.submit {
            try self.stream(f, items, chunksize: chunksize, maxInFlight: nil, ordered: true, options: options)
        }.value
        var out: [F.Output] = []
        out.reserveCapacity(items.count)
        for try await v in results { out.append(v) }
        return out
    }

    /// Runs one job and awaits its result: queued on a thread of the queue's, awaited without holding a
    /// thread; cancelling the task cancels the job.
    public func run<J: Job>(_ job: J, options: TaskOptions = .default) async throws -> J.Output {
        let queued = try JobQueue.blockingCalls.submit { try self.submit(job, options: options) }
        let task: PoolTask<J.Output>
        do {
            task = try await queued.value
        } catch is CancellationError {
            // Cancelled while the job was being queued: it is cancelled once it has been.
            queued.addDoneCallback { f in (try? f.result(timeout: .zero))?.cancel() }
            throw CancellationError()
        }
        if Task.isCancelled { task.cancel() }
        return try await task.value
    }

    /// Like ``map(_:_:chunksize:options:timeout:)`` but every item's outcome is returned, failures included.
    public func mapResults<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int? = nil,
        options: TaskOptions = .default,
        timeout: Duration? = nil
    ) throws -> [Result<F.Output, any Error>] {
        try stream(f, Array(inputs), chunksize: chunksize, maxInFlight: nil, ordered: true, options: options)
            .collectResults(timeout: timeout)
    }

    /// Lazy, ordered results — Python's `Pool.imap`. The input is read on a thread of the pool's only
    /// while fewer than `maxInFlight` items (default 8,192) are queued and not yet read.
    public func imap<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int? = nil,
        maxInFlight: Int? = nil,
        options: TaskOptions = .default
    ) throws -> PoolResults<F.Output> {
        try stream(f, inputs, chunksize: chunksize, maxInFlight: maxInFlight ?? 8192, ordered: true, options: options)
    }

    /// Lazy results in completion order — Python's `Pool.imap_unordered`: each item's outcome as soon as
    /// its job's end is read.
    public func imapUnordered<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int? = nil,
        maxInFlight: Int? = nil,
        options: TaskOptions = .default
    ) throws -> PoolResults<F.Output> {
        try stream(f, inputs, chunksize: chunksize, maxInFlight: maxInFlight ?? 8192, ordered: false, options: options)
    }

    /// `f` over `inputs` as chunk jobs: queued here when the input is an array that fits in `maxInFlight`
    /// (so that an error is thrown here), else by a feeder thread within the call's credit.
    private func stream<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int?,
        maxInFlight: Int?,
        ordered: Bool,
        options: TaskOptions
    ) throws -> PoolResults<F.Output> {
        let workers = workerCount
        let known = (inputs as? [F.Input])?.count ?? (inputs.underestimatedCount > 0 ? inputs.underestimatedCount : nil)
        let rule = known.map { ($0 + 4 * workers - 1) / (4 * workers) } ?? 1
        let size = max(1, chunksize ?? min(rule, maxInFlight.map { max(1, $0 / (2 * workers)) } ?? Int.max))
        let eager = (inputs as? [F.Input]).flatMap { items in
            maxInFlight.map { $0 >= items.count } ?? true ? items : nil
        }
        var results: PoolResults<F.Output>!
        let call = try QueuePoolCall(core: core, f: f, options: options) { cancel in
            let (stream, r) = try ExternalStream<F.Output>.make(
                options: options,
                maxInFlight: eager == nil ? maxInFlight : nil,
                chunksize: size,
                ordered: ordered,
                cancel: cancel
            )
            results = r
            return .stream(stream)
        }
        if let items = eager {
            do {
                try call.send(
                    stride(from: 0, to: items.count, by: size).map {
                        ($0, Array(items[$0..<min($0 + size, items.count)]))
                    }
                )
            } catch {
                call.cancel(error)
                throw error
            }
            core.count(total: items.count)
            call.seal(total: items.count)
            return results
        }
        guard case .stream(let counting) = call.receiver else { preconditionFailure("a map's call streams") }
        let core = self.core
        // The feeder holds the call's side, not the results nor the pool: dropping either ends the call.
        let feeder = OSThread(name: "mp-queuepool-feeder", daemon: true) {
            var base = 0
            var chunk: [F.Input] = []
            chunk.reserveCapacity(size)
            func send() throws {
                guard !chunk.isEmpty else { return }
                guard counting.acquire(chunk.count), !call.isDone else { throw CancellationError() }
                try call.send([(base, chunk)])
                core.count(total: chunk.count)
                base += chunk.count
                chunk.removeAll(keepingCapacity: true)
            }
            do {
                for x in inputs {
                    if call.isDone { throw CancellationError() }
                    chunk.append(x)
                    if chunk.count == size { try send() }
                }
                try send()
                call.seal(total: base)
            } catch is CancellationError {
                call.seal(total: base)  // what was queued has its outcomes (or failed with the cancel)
            } catch {
                // The input's end: the item that could not be queued fails with the error.
                counting.fail(index: base, error)
                call.seal(total: base, announcing: base + 1)
            }
        }
        do {
            try feeder.start()
        } catch {
            call.cancel(error)
            throw error
        }
        return results
    }

    // MARK: lifecycle

    /// No more calls; the calls made go on — Python's `Pool.close()`. The pool's collector stops once
    /// they have ended.
    public func close() { core.refuseCalls() }

    /// Stops the pool now — Python's `Pool.terminate()`: the calls not yet ended are cancelled (their jobs
    /// with them), and their items without an outcome fail with `PoolError` `.terminated`. The pool's
    /// thread that reads the ends takes those of the cancelled jobs for a few seconds more, then stops
    /// (what it leaves goes with the workers' retention cleaner).
    public func terminate() { core.close() }

    /// Waits until every call has ended (each item has its outcome) and, after ``close()`` or
    /// ``terminate()``, until the pool's thread that reads the ends has stopped, at most `timeout` —
    /// Python's `Pool.join()`.
    /// - Returns: whether they all had.
    public func join(timeout: Duration? = nil) -> Bool {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        guard core.waitIdle(timeout: timeout) else { return false }
        guard core.isClosing else { return true }
        return core.waitStopped(timeout: deadline.map { max(.zero, $0 - .now) } ?? .seconds(86_400 * 365))
    }

    // MARK: progress

    /// Items done, failed and submitted by this pool's calls, and the rate since the first.
    public var currentProgress: PoolProgress {
        let p = core.progress
        return PoolProgress.snapshot(done: p.done, failed: p.failed, total: p.total, since: p.first)
    }

    /// ``currentProgress`` every `interval`, until the consumer stops iterating.
    public func progress(every interval: Duration = .milliseconds(100)) -> AsyncStream<PoolProgress> {
        PoolProgress.every(interval) { [self] in currentProgress }
    }
}

extension QueuePool: TaskPool {}
