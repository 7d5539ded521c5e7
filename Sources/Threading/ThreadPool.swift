import Atomics
internal import CMultiprocessingShims
import DequeModule

/// A pool of threads running closures — Python's `concurrent.futures.ThreadPoolExecutor`, and the
/// classic hand-written Python thread pool (a queue of `(func, args, callback)` served by worker threads)
/// with `run(job, callback)`, `close()` and `terminate()`.
///
/// Threads are started lazily, only when no idle thread can take the work, up to `maxWorkers`, and are
/// daemons (an idle pool never keeps the program from exiting).
///
/// ```swift
/// let pool = ThreadPool(maxWorkers: 4)
/// let f = try pool.submit { 6 * 7 }
/// print(try f.result(timeout: .seconds(1)))    // 42
/// for try await x in try pool.map(1...10, { $0 * $0 }) { print(x) }
/// pool.shutdown()
/// ```
public final class ThreadPool: Sendable {
    @usableFromInline
    struct WorkItem {
        /// Runs the work; returns what completes its future, which the worker calls once it counts itself
        /// idle again (so a submitter woken by the completion finds an idle worker instead of starting one).
        let run: @Sendable () -> (@Sendable () -> Void)?
        let cancel: @Sendable () -> Void

        @usableFromInline
        init(run: @escaping @Sendable () -> (@Sendable () -> Void)?, cancel: @escaping @Sendable () -> Void) {
            self.run = run
            self.cancel = cancel
        }
    }

    struct State {
        var queue = Deque<WorkItem>()
        var workers = 0
        var idle = 0
        var closing = false  // no new work; workers leave when the queue is empty
        var brokenReason: String?
    }

    private static var workAvailable: Int { 0 }
    private static var workersExited: Int { 1 }

    /// The most threads the pool runs at once.
    public let maxWorkers: Int
    /// Prefix of the worker threads' names (`PREFIX_0`, `PREFIX_1`, ...).
    public let threadNamePrefix: String
    private let initializer: (@Sendable () throws -> Void)?
    private let monitor = Monitor<State>(State(), lists: 2)
    /// Queued work, published for lock-free polling by idle workers.
    private let queueHint = ManagedAtomic<Int>(0)

    /// Creates a pool.
    ///
    /// - Parameters:
    ///   - maxWorkers: default `min(32, CPU count + 4)`, as Python.
    ///   - threadNamePrefix: names the threads.
    ///   - initializer: run first by each worker thread; if it throws, the pool is broken: queued and later
    ///     work fails with ``ThreadingError/Code/brokenPool`` (Python's `BrokenThreadPool`).
    public init(
        maxWorkers: Int? = nil,
        threadNamePrefix: String = "ThreadPool",
        initializer: (@Sendable () throws -> Void)? = nil
    ) {
        let n = maxWorkers ?? min(32, mp_cpu_count() + 4)
        precondition(n > 0, "maxWorkers must be greater than 0")
        self.maxWorkers = n
        self.threadNamePrefix = threadNamePrefix
        self.initializer = initializer
    }

    deinit {
        // Let idle workers leave; running work finishes on its own.
        monitor.update { s, wakes in
            s.closing = true
            wakes.wakeAll(Self.workAvailable)
        }
    }

    // MARK: - Submitting

    /// Schedules `body` and returns its future — Python's `Executor.submit(fn)`.
    ///
    /// - Throws: ``ThreadingError/Code/poolShutDown`` after shutdown/close/terminate, or
    ///   ``ThreadingError/Code/brokenPool`` if an initializer failed.
    @inlinable
    public func submit<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws(ThreadingError) -> Future<T> {
        let future = Future<T>()
        let item = WorkItem(
            run: {
                guard future.markRunning() else { return nil }
                let result = Result { try body() }
                return { future.complete(result) }
            },
            cancel: { future.cancel() }
        )
        try enqueue(item)
        return future
    }

    /// Runs `body` and reports to `callback(success, result)` — the hand-written Python pool's `pool.run(func, args, callback)`.
    ///
    /// The callback runs in the worker thread. Work dropped by ``terminate()`` is reported as
    /// `(false, .failure(ThreadingError .cancelled))`.
    public func run<T: Sendable>(
        _ body: @escaping @Sendable () throws -> T,
        callback: @escaping @Sendable (_ success: Bool, _ result: Result<T, any Error>) -> Void
    ) throws(ThreadingError) {
        let f = try submit(body)
        f.addDoneCallback { f in
            let r = Result { try f.result() }
            if case .success = r { callback(true, r) } else { callback(false, r) }
        }
    }

    @usableFromInline
    func enqueue(_ item: WorkItem) throws(ThreadingError) {
        let spawn: Int? = try monitor.update { (s: inout State, wakes: inout Wakes) throws(ThreadingError) -> Int? in
            if let reason = s.brokenReason { throw ThreadingError(.brokenPool, reason) }
            if s.closing { throw ThreadingError(.poolShutDown, "cannot submit work to a pool that is shut down") }
            s.queue.append(item)
            queueHint.store(s.queue.count, ordering: .relaxed)
            if s.idle >= s.queue.count {
                wakes.wake(Self.workAvailable)
                return nil
            }
            guard s.workers < maxWorkers else { return nil }
            s.workers += 1
            return s.workers - 1
        }
        if let index = spawn { startWorker(index) }
    }

    private func startWorker(_ index: Int) {
        let t = OSThread(name: "\(threadNamePrefix)_\(index)", daemon: true) { [self] in workerLoop() }
        do {
            try t.start()
        } catch {
            monitor.update { s, wakes in
                s.workers -= 1
                wakes.wakeAll(Self.workersExited)
            }
        }
    }

    private enum Next {
        case work(WorkItem)
        case stop
    }

    private func workerLoop() {
        if let initializer {
            do {
                try initializer()
            } catch {
                let dropped = monitor.update { s, wakes -> Deque<WorkItem> in
                    s.brokenReason = "a worker's initializer failed: \(error)"
                    s.workers -= 1
                    wakes.wakeAll(Self.workersExited)
                    wakes.wakeAll(Self.workAvailable)
                    defer { s.queue.removeAll() }
                    return s.queue
                }
                queueHint.store(0, ordering: .relaxed)
                for item in dropped { item.cancel() }
                return
            }
        }
        var counted = false
        let hasWork = { [queueHint] in queueHint.load(ordering: .relaxed) > 0 }
        while true {
            let next = try? monitor.wait(on: Self.workAvailable, until: nil, spinUntil: hasWork) { s, wakes -> Next? in
                if let item = s.queue.popFirst() {
                    queueHint.store(s.queue.count, ordering: .relaxed)
                    if counted { s.idle -= 1 }
                    counted = false
                    return .work(item)
                }
                if s.closing || s.brokenReason != nil {
                    if counted { s.idle -= 1 }
                    s.workers -= 1
                    wakes.wakeAll(Self.workersExited)
                    return .stop
                }
                if !counted {
                    s.idle += 1
                    counted = true
                }
                return nil
            }
            guard case .work(let item) = next else { return }
            let finish = item.run()
            monitor.update { s, _ in s.idle += 1 }
            counted = true
            finish?()
        }
    }

    // MARK: - Mapping

    /// Applies `transform` to every element on the pool's threads; results come back in input order —
    /// Python's `Executor.map(fn, iterable, timeout, buffersize)`.
    ///
    /// Input is consumed lazily: at most `bufferSize` (default `2 × maxWorkers`) calls are in flight
    /// ahead of the consumer. Iterate with `try next()` or `for try await`.
    ///
    /// - Parameters:
    ///   - elements: the inputs, read lazily.
    ///   - timeout: for the whole iteration, counted from this call; past it `next()` throws
    ///     ``ThreadingError/Code/timedOut``.
    ///   - bufferSize: how many calls may run ahead of the consumer (`nil`: twice the workers).
    ///   - transform: the function applied to each input.
    public func map<S: Sequence, T: Sendable>(
        _ elements: S,
        timeout: Duration? = nil,
        bufferSize: Int? = nil,
        _ transform: @escaping @Sendable (S.Element) throws -> T
    ) throws(ThreadingError) -> MapSequence<S, T> where S.Element: Sendable {
        try MapSequence(
            pool: self,
            elements: elements,
            deadline: Deadline.after(timeout),
            bufferSize: bufferSize ?? 2 * maxWorkers,
            transform: transform
        )
    }

    // MARK: - Stopping

    /// Stops accepting work — Python's `Executor.shutdown(wait, cancel_futures)`.
    ///
    /// - Parameters:
    ///   - wait: block until every worker has finished (the queue is drained first unless cancelled).
    ///   - cancelPending: cancel the work that has not started.
    public func shutdown(wait: Bool = true, cancelPending: Bool = false) {
        let dropped = monitor.update { s, wakes -> Deque<WorkItem> in
            s.closing = true
            wakes.wakeAll(Self.workAvailable)
            guard cancelPending else { return [] }
            queueHint.store(0, ordering: .relaxed)
            defer { s.queue.removeAll() }
            return s.queue
        }
        for item in dropped { item.cancel() }
        if wait { join() }
    }

    /// Stops accepting work; the queued work still runs, then the threads exit — that pool's `close()`.
    public func close() { shutdown(wait: false) }

    /// Drops the queued work (cancelling it) and lets the threads exit once their current work is done —
    /// that pool's `terminate()`.
    public func terminate() { shutdown(wait: false, cancelPending: true) }

    /// Waits until every worker thread has exited; call ``close()`` or ``terminate()`` first.
    ///
    /// - Returns: `false` if the timeout expired first.
    @discardableResult
    public func join(timeout: Duration? = nil) -> Bool {
        let r = try? monitor.wait(on: Self.workersExited, until: Deadline.after(timeout)) { s, _ in
            s.workers == 0 && (s.closing || s.brokenReason != nil) ? true : nil
        }
        return r ?? false
    }

    /// The worker threads alive now.
    public var workerCount: Int { monitor.read { $0.workers } }
    /// Work queued and not yet started.
    public var pendingCount: Int { monitor.read { $0.queue.count } }
}

/// The ordered results of ``ThreadPool/map(_:timeout:bufferSize:_:)``.
public final class MapSequence<S: Sequence, T: Sendable>: AsyncSequence, @unchecked Sendable
where S.Element: Sendable {  // the input iterator and buffer are used by one consumer at a time, under `lock`
    private let pool: ThreadPool
    private var input: S.Iterator
    private var inFlight = Deque<Future<T>>()
    private let deadline: Deadline?
    private let bufferSize: Int
    private let transform: @Sendable (S.Element) throws -> T
    private let lock = Lock()

    init(
        pool: ThreadPool,
        elements: S,
        deadline: Deadline?,
        bufferSize: Int,
        transform: @escaping @Sendable (S.Element) throws -> T
    ) throws(ThreadingError) {
        self.pool = pool
        self.input = elements.makeIterator()
        self.deadline = deadline
        self.bufferSize = Swift.max(1, bufferSize)
        self.transform = transform
        try fill()
    }

    private func fill() throws(ThreadingError) {
        while inFlight.count < bufferSize, let e = input.next() {
            let transform = self.transform
            inFlight.append(try pool.submit { try transform(e) })
        }
    }

    private func take() throws(ThreadingError) -> Future<T>? {
        try lock.withLock { () throws(ThreadingError) -> Future<T>? in
            try fill()
            return inFlight.popFirst()
        }
    }

    /// The next result in input order, or `nil` at the end.
    ///
    /// - Throws: the transform's error for that element, or ``ThreadingError/Code/timedOut``.
    public func next() throws -> T? {
        guard let f = try take() else { return nil }
        do {
            return try f.result(timeout: deadline?.remaining)
        } catch {
            cancelRest()
            throw error
        }
    }

    private func cancelRest() {
        lock.withLock {
            for f in inFlight { f.cancel() }
            inFlight.removeAll()
        }
    }

    deinit { for f in inFlight { f.cancel() } }

    /// Iterates the results in order, suspending between them.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let sequence: MapSequence
        /// The next result; `nil` after the last. Throws a task's error at its place.
        public mutating func next() async throws -> T? {
            guard let f = try sequence.take() else { return nil }
            do {
                return try await f.value
            } catch {
                sequence.cancelRest()
                throw error
            }
        }
    }

    /// An iterator over the results.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(sequence: self) }
}
