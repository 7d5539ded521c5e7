/// The eventual result of work submitted to a pool — Python's `concurrent.futures.Future`.
///
/// Wait for it with ``result(timeout:)`` (blocking) or ``value`` (async); ``cancel()`` succeeds while the
/// work has not started; callbacks added with ``addDoneCallback(_:)`` run once it finishes.
public final class Future<Value: Sendable>: @unchecked Sendable {  // all state is inside `monitor`
    // The state does not depend on `Value` (the value is kept as `any Sendable` until it is read): code
    // that is generic over `Value` and not specialised (a pool's internals, for a user's result type)
    // would otherwise ask the runtime for the metadata of `Monitor<State>`, `Result<Value, Error>` and
    // their relatives on every operation — a third of a pool round trip's instructions.
    @usableFromInline let monitor: Monitor<FutureState>

    /// A pending future, to be completed with ``complete(_:)`` (Python's `Future()` for executor authors).
    @inlinable
    public init() { monitor = Monitor<FutureState>(FutureState(), lists: 1) }

    // MARK: state

    /// Threads and tasks waiting now for the outcome (for tests that must see a waiter block).
    package var waiterCount: Int { monitor.waiterCount() }

    /// Whether the future was cancelled — Python's `Future.cancelled()`.
    public var isCancelled: Bool { monitor.read { if case .cancelled = $0.status { true } else { false } } }
    /// Whether the work is running now — Python's `Future.running()`.
    public var isRunning: Bool { monitor.read { if case .running = $0.status { true } else { false } } }
    /// Whether the future finished or was cancelled — Python's `Future.done()`.
    public var isDone: Bool {
        monitor.read {
            switch $0.status {
            case .finished, .cancelled: true
            case .pending, .running: false
            }
        }
    }

    /// Cancels the work if it has not started — Python's `Future.cancel()`.
    ///
    /// - Returns: `true` if the future is cancelled now; `false` if it is running or finished.
    @discardableResult
    public func cancel() -> Bool {
        let (ok, callbacks) = monitor.update { s, wakes -> (Bool, [@Sendable (AnyObject) -> Void]) in
            switch s.status {
            case .running, .finished: return (false, [])
            case .cancelled: return (true, [])
            case .pending:
                s.status = .cancelled
                wakes.wakeAll(0)
                defer { s.callbacks = [] }
                return (true, s.callbacks)
            }
        }
        for cb in callbacks { cb(self) }
        return ok
    }

    /// Moves a pending future to running; `false` if it was cancelled (then the work must not run).
    @inlinable
    func markRunning() -> Bool { monitor.update { s, _ in s.markRunning() } }

    /// Completes the future (Python's `set_result` / `set_exception`); ignored if it is already done.
    @inlinable
    public func complete(_ result: Result<Value, any Error>) {
        let erased: Result<any Sendable, any Error>
        switch result {
        case .success(let v): erased = .success(v)
        case .failure(let e): erased = .failure(e)
        }
        let callbacks = monitor.update { s, wakes in s.finish(erased, &wakes) }
        for cb in callbacks { cb(self) }
    }

    /// Calls `callback` once the future is done (at once, in this thread, if it already is) — Python's
    /// `Future.add_done_callback(fn)`. Callbacks run in the thread that completes the future.
    public func addDoneCallback(_ callback: @escaping @Sendable (Future<Value>) -> Void) {
        // Called with the future rather than capturing it: a future that never finishes must not be kept
        // alive by its own callbacks.
        let runNow = monitor.update { s, _ -> Bool in
            switch s.status {
            case .finished, .cancelled: return true
            case .pending, .running:
                s.callbacks.append { future in callback(unsafeDowncast(future, to: Future<Value>.self)) }
                return false
            }
        }
        if runNow { callback(self) }
    }

    // MARK: waiting

    /// The value of a finished future's outcome, or its error.
    @inlinable
    static func unwrap(_ r: Result<any Sendable, any Error>) throws -> Value {
        switch r {
        case .success(let v): return v as! Value  // stored by `complete`, from a `Value`
        case .failure(let e): throw e
        }
    }

    /// Waits for the result — Python's `Future.result(timeout)`.
    ///
    /// - Throws: the work's own error; ``ThreadingError/Code/cancelled`` if cancelled;
    ///   ``ThreadingError/Code/timedOut`` if `timeout` expires first.
    @inlinable
    public func result(timeout: Duration? = nil) throws -> Value {
        guard let r = try monitor.wait(on: 0, until: Deadline.after(timeout), { s, _ in s.outcome }) else {
            throw ThreadingError(.timedOut, "the future did not finish within \(timeout!)")
        }
        return try Self.unwrap(r)
    }

    /// Waits and returns the work's error, or `nil` if it succeeded — Python's `Future.exception(timeout)`.
    ///
    /// - Throws: ``ThreadingError/Code/cancelled`` or ``ThreadingError/Code/timedOut``.
    public func error(timeout: Duration? = nil) throws -> (any Error)? {
        guard let r = try monitor.wait(on: 0, until: Deadline.after(timeout), { s, _ in s.outcome }) else {
            throw ThreadingError(.timedOut, "the future did not finish within \(timeout!)")
        }
        if case .failure(let e) = r {
            if let te = e as? ThreadingError, te.code == .cancelled { throw te }
            return e
        }
        return nil
    }

    /// The result, awaited without blocking a thread.
    ///
    /// - Important: Cancelling the awaiting task stops the wait (throwing `CancellationError`) but not the
    ///   work; call ``cancel()`` for that.
    @inlinable
    public var value: Value {
        get async throws {
            try Self.unwrap(try await monitor.waitAsync(on: 0) { s, _ in s.outcome })
        }
    }
}

/// A future's state, whatever its value type.
@usableFromInline
struct FutureState {
    @usableFromInline
    enum Status {
        case pending
        case running
        case finished(Result<any Sendable, any Error>)
        case cancelled
    }

    @usableFromInline var status: Status = .pending
    /// Called with the future (not capturing it, which would be a cycle until it finishes).
    @usableFromInline var callbacks: [@Sendable (AnyObject) -> Void] = []

    @inlinable init() {}

    @inlinable
    mutating func markRunning() -> Bool {
        guard case .pending = status else { return false }
        status = .running
        return true
    }

    /// Records the outcome unless already done; the callbacks to run.
    @inlinable
    mutating func finish(
        _ result: Result<any Sendable, any Error>,
        _ wakes: inout Wakes
    ) -> [@Sendable (AnyObject) -> Void] {
        switch status {
        case .finished, .cancelled: return []
        case .pending, .running:
            status = .finished(result)
            wakes.wakeAll(0)
            defer { callbacks = [] }
            return callbacks
        }
    }

    /// The outcome once done (a cancellation is an error); nil while pending or running.
    @inlinable
    var outcome: Result<any Sendable, any Error>? {
        switch status {
        case .finished(let r): r
        case .cancelled: .failure(ThreadingError(.cancelled, "the future was cancelled"))
        case .pending, .running: nil
        }
    }
}

/// What any future offers to ``Futures/wait(_:timeout:returnWhen:)`` and ``Futures/asCompleted(_:timeout:)``,
/// whatever its value type.
public protocol AnyFuture: AnyObject, Sendable {
    /// Whether the future finished or was cancelled.
    var isDone: Bool { get }
    /// Whether it finished with an error — not a cancellation, as Python's `FIRST_EXCEPTION` counts.
    var hasFailed: Bool { get }
    /// Calls `callback` once the future is done.
    func onDone(_ callback: @escaping @Sendable () -> Void)
}

extension Future: AnyFuture {
    /// Whether the future finished with an error (not a cancellation).
    public var hasFailed: Bool {
        monitor.read {
            switch $0.status {
            case .finished(.failure): true
            default: false
            }
        }
    }

    /// Calls `callback` once the future is done, at once if it already is.
    public func onDone(_ callback: @escaping @Sendable () -> Void) { addDoneCallback { _ in callback() } }
}

/// Waiting on several futures — Python's `concurrent.futures.wait` and `as_completed`.
public enum Futures {
    /// When ``wait(_:timeout:returnWhen:)`` returns.
    public enum ReturnCondition: Sendable {
        /// When any future finishes or is cancelled (`FIRST_COMPLETED`).
        case firstCompleted
        /// When any future fails, or when all are done (`FIRST_EXCEPTION`).
        case firstException
        /// When all are done (`ALL_COMPLETED`).
        case allCompleted
    }

    /// Waits for `futures` — Python's `concurrent.futures.wait(fs, timeout, return_when)`.
    ///
    /// - Returns: the futures done and not done when the condition held or the timeout expired.
    public static func wait<F: AnyFuture>(
        _ futures: [F],
        timeout: Duration? = nil,
        returnWhen: ReturnCondition = .allCompleted
    ) -> (done: [F], notDone: [F]) {
        let changed = Semaphore(0)
        for f in futures { f.onDone { try? changed.release() } }
        let deadline = Deadline.after(timeout)
        while true {
            let done = futures.filter { $0.isDone }
            let satisfied: Bool
            switch returnWhen {
            case .allCompleted: satisfied = done.count == futures.count
            case .firstCompleted: satisfied = !done.isEmpty || futures.isEmpty
            case .firstException: satisfied = done.count == futures.count || done.contains { $0.hasFailed }
            }
            if satisfied || (deadline?.hasPassed ?? false) {
                return (done, futures.filter { !$0.isDone })
            }
            changed.acquire(timeout: deadline?.remaining)
        }
    }

    /// The futures in the order they finish — Python's `concurrent.futures.as_completed(fs, timeout)`.
    ///
    /// Iterate with `try next()` (blocking) or `for try await` (async). Throws
    /// ``ThreadingError/Code/timedOut`` if `timeout` (counted from this call) expires first.
    public static func asCompleted<F: AnyFuture>(_ futures: [F], timeout: Duration? = nil) -> CompletionSequence<F> {
        CompletionSequence(futures, deadline: Deadline.after(timeout))
    }
}

/// The futures of ``Futures/asCompleted(_:timeout:)`` in completion order.
public final class CompletionSequence<F: AnyFuture>: AsyncSequence, Sendable {
    private let queue = BlockingQueue<Int>()
    private let futures: [F]
    private let deadline: Deadline?
    private let remaining: Semaphore

    init(_ futures: [F], deadline: Deadline?) {
        self.futures = futures
        self.deadline = deadline
        remaining = Semaphore(futures.count)
        for (i, f) in futures.enumerated() {
            let queue = self.queue
            f.onDone { try? queue.put(i) }
        }
    }

    /// The next future to finish, or `nil` when all have been returned.
    ///
    /// - Throws: ``ThreadingError/Code/timedOut`` when the deadline passes first.
    public func next() throws -> F? {
        guard remaining.acquire(blocking: false) else { return nil }
        do {
            return futures[try queue.get(timeout: deadline?.remaining)]
        } catch {
            try? remaining.release()
            throw ThreadingError(.timedOut, "futures unfinished at the deadline")
        }
    }

    /// Iterates the futures in the order they finish.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let sequence: CompletionSequence
        /// The next future to finish; `nil` when all have.
        public mutating func next() async throws -> F? {
            guard sequence.remaining.acquire(blocking: false) else { return nil }
            return sequence.futures[try await sequence.queue.get()]
        }
    }

    /// An iterator over the futures as they finish.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(sequence: self) }
}
