import Glibc
import Synchronization
import Threading

/// A pool of worker processes — Python's `multiprocessing.Pool` and `ProcessPoolExecutor`, built so
/// that it never hangs.
///
/// ```swift
/// struct Square: SyncTaskFunction { func callAsFunction(_ x: Int) -> Int { x * x } }
/// struct LongTimeTask: Job {
///     let name: Int
///     func run() async throws -> Int { try await Task.sleep(for: .seconds(1)); return name }
/// }
///
/// let pool = try ProcessPool(workers: 4)
/// let squares = try pool.map(Square(), Array(0..<1000))                 // Pool.map
/// for try await y in try pool.imapUnordered(Square(), 0..<1000) { … }   // Pool.imap_unordered
/// let task = try pool.applyAsync(LongTimeTask(name: 0)) { print("done", $0) }   // apply_async
/// pool.close(); try pool.join()
/// ```
///
/// Failure semantics, beyond every Python pool:
/// - A worker that dies (trap, signal, `exit`) fails only the item it was running, at once, with a
///   ``PoolError`` carrying the exit code or signal, the tail of its stderr and its peak memory. Items
///   it had finished keep their results; the others are sent again. The worker is replaced.
/// - ``TaskOptions/timeout`` stops a worker whose task runs too long; ``TaskOptions/softTimeout`` first
///   cancels the task's Swift `Task` inside the worker.
/// - ``PoolTask/cancel()``, dropping a ``PoolResults``, or cancelling the Swift task awaiting a result stops
///   the work, cooperatively first.
/// - ``RetryPolicy`` retries by cause; a task that kills workers repeatedly is failed; too many deaths in
///   a short window fail the pool (``PoolError/Code/broken``) rather than respawn forever.
public final class ProcessPool: Sendable {
    let core: PoolCore
    /// How many workers the pool keeps.
    public let workerCount: Int

    /// Starts `workers` processes (default: the CPUs this process may use) — Python's `Pool(processes)`.
    ///
    /// - Throws: ``MultiprocessingError/Code/bootstrapRequired`` in a `main.swift` program that has not
    ///   called ``bootstrap()``; ``MultiprocessingError/Code/spawnFailed`` and others when a worker cannot
    ///   be started.
    public init(workers: Int? = nil, options: ProcessPoolOptions = ProcessPoolOptions()) throws {
        try WorkerStart.checkProgramIsReady()
        workerCount = max(1, workers ?? Processes.cpuCount)
        core = try PoolCore(size: workerCount, options: options, initializer: nil)
    }

    /// Starts the pool with an `initializer` job that each worker runs once before any task — Python's
    /// `Pool(processes, initializer, initargs)`. A worker whose initializer fails exits; if that keeps
    /// happening the pool is reported broken rather than respawning workers forever.
    public init<I: Job>(workers: Int? = nil, initializer: I, options: ProcessPoolOptions = ProcessPoolOptions()) throws
    {
        try WorkerStart.checkProgramIsReady()
        workerCount = max(1, workers ?? Processes.cpuCount)
        let name = try JobIdentity.name(of: I.self)
        let payload = try BinaryEncoder().encode(initializer)
        core = try PoolCore(size: workerCount, options: options, initializer: (name, payload))
    }

    deinit { core.terminate() }

    // MARK: - single tasks

    /// Submits one job — `ProcessPoolExecutor.submit` / `Pool.apply_async`.
    public func submit<J: Job>(_ job: J, options: TaskOptions = .default) throws -> PoolTask<J.Output> {
        try single(JobFunction<J>(), job, kind: .job, options: options)
    }

    /// Submits `f(input)`.
    public func submit<F: TaskFunction>(
        _ f: F,
        _ input: F.Input,
        options: TaskOptions = .default
    ) throws -> PoolTask<F.Output> {
        try single(f, input, kind: .function, options: options)
    }

    /// Submits a job with callbacks — Python's `Pool.apply_async(func, args, callback, error_callback)`.
    /// Callbacks run on the pool's callback thread, one at a time, as Python's result-handler thread.
    @discardableResult
    public func applyAsync<J: Job>(
        _ job: J,
        options: TaskOptions = .default,
        callback: (@Sendable (J.Output) -> Void)? = nil,
        errorCallback: (@Sendable (any Error) -> Void)? = nil
    ) throws -> PoolTask<J.Output> {
        let core = self.core
        return try submit(job, options: options).reporting(on: { core.callback($0) }, callback, errorCallback)
    }

    private func single<F: TaskFunction>(
        _ f: F,
        _ input: F.Input,
        kind: PoolWire.FunctionKind,
        options: TaskOptions
    ) throws -> PoolTask<F.Output> {
        let function = try functionRef(f, kind: kind)
        let call = SingleCall<F.Output>(
            options: options,
            trace: PoolTracing.start("ProcessPool.submit", pool: core.options.name, items: 1)
        )
        do {
            let payload = try encodeItems(one: input, ItemsCodec<F.Input>())
            let unit = Unit(call: call, function: function, base: 0, count: 1, payload: payload)
            try core.submit([unit])
        } catch {
            call.trace?.end(failure: "\(error)", error: error)
            throw error
        }
        let core = self.core
        return PoolTask(call: call) { core.cancel(call) }
    }

    private func functionRef<F: TaskFunction>(_ f: F, kind: PoolWire.FunctionKind) throws -> FunctionRef {
        switch kind {
        case .job:
            // Jobs travel as the items; the worker needs only the job's type.
            let name = try JobIdentity.name(of: F.Input.self)
            return core.function(kind: .job, name: name, payload: [])
        case .function:
            let name = try JobIdentity.name(of: F.self)
            return core.function(kind: .function, name: name, payload: try BinaryEncoder().encode(f))
        }
    }

    // MARK: - many items

    /// Applies `f` to every input and returns the results in order — Python's `Pool.map`.
    ///
    /// - Parameters:
    ///   - f: the function (a `Codable` value; its properties are arguments shared by every call).
    ///   - inputs: one call's input each.
    ///   - chunksize: items per message; by default Python's rule, `ceil(n / (4 × workers))`.
    ///   - timeout: for the whole call; when it expires the rest is cancelled and
    ///     ``MultiprocessingError/Code/timedOut`` thrown (Python: `map_async(...).get(timeout)`).
    ///   - options: per-call timeouts, retries and cancellation (``TaskOptions``).
    /// - Throws: the first failure to arrive (the rest of the call is cancelled).
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

    /// Like ``map(_:_:chunksize:options:timeout:)`` but every item's outcome is returned, failures included.
    public func mapResults<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int? = nil,
        options: TaskOptions = .default,
        timeout: Duration? = nil
    ) throws -> [Result<F.Output, any Error>] {
        try eagerMapResults(f, inputs, chunksize: chunksize, options: options, timeout: timeout)
    }

    /// Lazy, ordered results — Python's `Pool.imap`. Input is read on a background thread only while
    /// fewer than `maxInFlight` items are submitted and not yet read, so memory stays flat on huge inputs.
    ///
    /// - Parameters:
    ///   - f: the function.
    ///   - inputs: read lazily, as results are consumed.
    ///   - chunksize: items per message; by default chosen from the input's length when it is known
    ///     (Python's rule, capped by `maxInFlight`), else grown from 1 as item times are measured
    ///     (aiming at about 2 ms per chunk).
    ///   - maxInFlight: default 8192 items.
    ///   - options: per-call timeouts, retries and cancellation (``TaskOptions``).
    public func imap<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int? = nil,
        maxInFlight: Int? = nil,
        options: TaskOptions = .default
    ) throws -> PoolResults<F.Output> {
        try lazyMap(f, inputs, chunksize: chunksize, maxInFlight: maxInFlight, ordered: true, options: options)
    }

    /// Lazy results in completion order — Python's `Pool.imap_unordered`.
    public func imapUnordered<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int? = nil,
        maxInFlight: Int? = nil,
        options: TaskOptions = .default
    ) throws -> PoolResults<F.Output> {
        try lazyMap(f, inputs, chunksize: chunksize, maxInFlight: maxInFlight, ordered: false, options: options)
    }

    /// Units of `f` over `inputs`, cut and submitted by a ``Feeder``: eagerly on the caller's thread when
    /// the whole input fits in `maxInFlight`, else by a feeder thread within the call's credit.
    func stream<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        count: Int?,
        chunksize: Int?,
        maxInFlight: Int?,
        ordered: Bool,
        options: TaskOptions
    ) throws -> PoolResults<F.Output> {
        let function = try functionRef(f, kind: .function)
        let call = StreamCall<F.Output>(
            options: options,
            trace: PoolTracing.start(
                ordered ? "ProcessPool.map" : "ProcessPool.imapUnordered",
                pool: core.options.name,
                items: count
            )
        )
        if let count { call.totalItems.store(count, ordering: .relaxed) }
        if let display = options.progress {
            do {
                call.progress = try ProgressReporter.start(for: call, display)
            } catch {
                call.trace?.end(failure: "\(error)", error: error)
                throw error
            }
        }
        // Room for two chunks at least, so a large fixed chunk size cannot wait forever for permits.
        let credit = maxInFlight.map { Credit(Swift.max($0, 2 * (chunksize ?? 1), 1)) }
        let core = self.core
        let results = PoolResults(call: call, credit: credit, ordered: ordered) { core.cancel(call) }
        let workers = workerCount
        let feeder = Feeder<F>(
            core: core,
            call: call,
            function: function,
            credit: credit,
            fixed: chunksize.map { max(1, $0) },
            known: count,
            workers: workers,
            maxInFlight: maxInFlight
        )
        if let items = inputs as? [F.Input], maxInFlight.map({ $0 >= items.count }) ?? true {
            // Eager, on the caller's thread, so that an error is thrown here (after cancelling what went).
            do {
                try feeder.feed(items)
            } catch {
                call.trace?.end(failure: "\(error)", error: error)  // its own error, not "cancelled"
                core.cancel(call)
                throw error
            }
        } else {
            let t = OSThread(name: "mp-pool-feeder", daemon: true) {
                try? feeder.feed(inputs, reportErrors: true)
            }
            try t.start()
        }
        return results
    }

    // MARK: - lifecycle

    /// No more submissions; workers exit once the queued work is done — Python's `Pool.close()`.
    public func close() { core.close() }

    /// Fails queued and running work with ``PoolError/Code/terminated`` and stops the workers (SIGTERM, then
    /// SIGKILL) — Python's `Pool.terminate()`.
    public func terminate() { core.terminate() }

    /// Waits for the workers to exit after ``close()`` or ``terminate()`` — Python's `Pool.join()`.
    /// - Returns: `false` if `timeout` expired first.
    @discardableResult
    public func join(timeout: Duration? = nil) throws -> Bool { try core.join(timeout: timeout) }

    /// Suspends until the workers have exited after ``close()`` or ``terminate()``.
    public func join() async throws { try await core.join() }

    /// The live workers' pids.
    public var workerPIDs: [Int32] { core.workerPIDs }

    /// Progress and per-worker insights now.
    public var currentProgress: PoolProgress { core.progress() }

    /// Progress snapshots every `interval`, until the consuming task stops iterating. Their workers'
    /// ``WorkerInsight/peakMemory`` is nil (``currentProgress`` reads it): a read of `/proc` per worker on
    /// every tick is the parent's time taken from the workers.
    public func progress(every interval: Duration = .milliseconds(100)) -> AsyncStream<PoolProgress> {
        let core = self.core
        return PoolProgress.every(interval) { core.progress(peakMemory: false) }
    }
}

/// Encodes items for the wire.
func encodeItems<T: Encodable>(_ items: ArraySlice<T>, _ codec: ItemsCodec<T>) throws -> [UInt8] {
    do {
        return try codec.encode(items)
    } catch let e as MultiprocessingError {
        throw e
    } catch {
        throw MultiprocessingError(.encodingFailed, "cannot encode \(T.self): \(error)")
    }
}

/// Encodes one item for the wire, as a unit of one.
func encodeItems<T: Encodable>(one item: T, _ codec: ItemsCodec<T>) throws -> [UInt8] {
    do {
        return try codec.encode(one: item)
    } catch let e as MultiprocessingError {
        throw e
    } catch {
        throw MultiprocessingError(.encodingFailed, "cannot encode \(T.self): \(error)")
    }
}

/// Cuts a call's input into units and submits them, within the call's credit.
struct Feeder<F: TaskFunction>: Sendable {
    let core: PoolCore
    let call: StreamCall<F.Output>
    let function: FunctionRef
    let credit: Credit?
    let fixed: Int?
    let known: Int?
    let workers: Int
    let maxInFlight: Int?
    let codec = ItemsCodec<F.Input>()

    /// Chunk size: fixed, or Python's rule for a known length (capped so that a chunk fits twice per
    /// worker in `maxInFlight`), or grown from measured item times (about 2 ms per chunk).
    func chunkSize() -> Int {
        if let fixed { return fixed }
        let cap = maxInFlight.map { max(1, $0 / (2 * workers)) } ?? Int.max
        if let known { return max(1, min(cap, (known + 4 * workers - 1) / (4 * workers))) }
        let per = core.measuredItemNanos
        guard per > 0 else { return 1 }
        return max(1, min(cap, 4096, Int(2_000_000 / per)))
    }

    /// Feeds the whole input. An error (encoding, a closed pool) is thrown, or with `reportErrors`
    /// delivered to the consumer at the first item not submitted, which then ends the results.
    func feed<S: Sequence<F.Input>>(_ inputs: S, reportErrors: Bool = false) throws {
        var submitted = 0  // items of the units handed to the pool
        var batch: [Unit] = []
        func submitBatch() throws -> Int {
            if !batch.isEmpty {
                try core.submit(batch)
                submitted += batch.reduce(0) { $0 + $1.count }
                batch = []
            }
            return submitted
        }
        try feedChunks(
            inputs,
            into: call,
            reportErrors: reportErrors,
            size: chunkSize,
            emit: { items, base in
                if let credit, !credit.tryAcquire(items.count) {
                    // About to wait for the consumer: send what is batched first.
                    _ = try submitBatch()
                    if !credit.acquire(items.count) { throw CancellationError() }
                }
                if items.count == 1 {
                    // A unit of one is never split: no copy of its items is kept to encode parts again.
                    batch.append(
                        Unit(
                            call: call,
                            function: function,
                            base: base,
                            count: 1,
                            payload: try encodeItems(one: items[items.startIndex], codec)
                        )
                    )
                } else {
                    batch.append(
                        Unit(
                            call: call,
                            function: function,
                            base: base,
                            count: items.count,
                            payload: try encodeItems(items, codec),
                            // The slice, not a copy: it shares the caller's storage (a copy per chunk
                            // was a tenth of a tiny map's time in the caller's thread).
                            encodeRange: { [codec, items] r in
                                let at = items.startIndex
                                return try encodeItems(items[(at + r.lowerBound)..<(at + r.upperBound)], codec)
                            }
                        )
                    )
                }
                // Units go in batches of up to 64 (one lock round and one write per worker), and at once
                // whenever the feed would wait for the consumer or the workers are short of work.
                if batch.count >= 64 || (credit != nil && core.isHungry) { _ = try submitBatch() }
                return submitted
            },
            finish: submitBatch
        )
    }
}

/// Runs `body` with a pool, then drains it — Python's `with Pool() as pool:`, but draining on success
/// (Python terminates). On error or cancellation the pool is terminated, which takes at most the kill
/// grace (0.5 s) plus reaping.
public func withProcessPool<R>(
    workers: Int? = nil,
    options: ProcessPoolOptions = ProcessPoolOptions(),
    _ body: (ProcessPool) async throws -> R
) async throws -> R {
    let pool = try ProcessPool(workers: workers, options: options)
    do {
        let r = try await body(pool)
        pool.close()
        try await pool.join()
        return r
    } catch {
        pool.terminate()
        // Waited for even when this task is cancelled (that is how we got here), and bounded: the kill
        // grace, then reaping. The wait runs on its own thread, never on the cooperative pool.
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let t = OSThread(name: "mp-pool-teardown", daemon: true) {
                _ = try? pool.join(timeout: .seconds(5))
                done.resume()
            }
            do { try t.start() } catch { done.resume() }
        }
        throw error
    }
}
