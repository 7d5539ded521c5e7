import DequeModule
internal import CMultiprocessingShims

/// One parked thread or suspended task, waiting in one of a `Monitor`'s wait lists.
///
/// Its mutable fields are guarded by the owning monitor's mutex.
final class Waiter: @unchecked Sendable {
    let parker: Parker?
    var continuation: UnsafeContinuation<Void, Never>?
    var cancelled = false
    var queued = false

    init(thread: Void) { parker = Parker() }
    init(task: Void) { parker = nil }

    /// Called after the monitor's lock is released.
    func wake(_ continuation: UnsafeContinuation<Void, Never>?) {
        if let parker { parker.unpark() } else { continuation?.resume() }
    }
}

/// Wake-ups requested while the monitor's lock is held, performed after it is released.
struct Wakes {
    fileprivate var requests: [(list: Int, count: Int)] = []
    /// Wakes up to `count` waiters of `list` (`Int.max`: all of them).
    mutating func wake(_ list: Int, _ count: Int = 1) { requests.append((list, count)) }
    mutating func wakeAll(_ list: Int) { requests.append((list, .max)) }
    var isEmpty: Bool { requests.isEmpty }
}

/// A mutex-protected `State` with wait lists, the engine behind Event, Semaphore, the blocking queues,
/// futures and the thread pool.
///
/// It follows the condition-variable model: a waiter re-runs its `attempt` after each wake-up, always
/// before it gives up on a timeout or a cancellation, so a wake-up is never lost; the lock is held only to
/// run `attempt`, and threads are unparked / continuations resumed after it is released.
final class Monitor<State>: @unchecked Sendable {  // all state behind `mutex`
    private struct Inner {
        var state: State
        var lists: [Deque<Waiter>]
    }

    private let mutex: InternalMutex<Inner>

    init(_ state: State, lists: Int) {
        mutex = InternalMutex(Inner(state: state, lists: Array(repeating: [], count: lists)))
    }

    /// Runs `body` on the state with the lock held, then performs the wake-ups it asked for.
    @inline(__always)
    func update<R, E: Error>(_ body: (inout State, inout Wakes) throws(E) -> R) throws(E) -> R {
        var wakes = Wakes()
        let result = try mutex.withLock { (inner: inout Inner) throws(E) -> R in try body(&inner.state, &wakes) }
        if !wakes.isEmpty { perform(wakes) }
        return result
    }

    /// Reads the state with the lock held.
    @inline(__always)
    func read<R>(_ body: (borrowing State) -> R) -> R {
        mutex.withLock { inner in body(inner.state) }
    }

    private func perform(_ wakes: Wakes) {
        var woken: [(Waiter, UnsafeContinuation<Void, Never>?)] = []
        mutex.withLock { inner in
            for request in wakes.requests {
                var n = request.count
                while n > 0, let w = inner.lists[request.list].popFirst() {
                    w.queued = false
                    woken.append((w, w.continuation))
                    w.continuation = nil
                    n -= 1
                }
            }
        }
        for (w, c) in woken { w.wake(c) }
    }

    /// Blocks the calling thread until `attempt` returns a value, or until `deadline` (then `nil`).
    ///
    /// `attempt` runs with the lock held; it may throw to end the wait with an error.
    func wait<R>(
        on list: Int,
        until deadline: Deadline?,
        _ attempt: (inout State, inout Wakes) throws -> R?
    ) throws -> R? {
        var waiter: Waiter?
        while true {
            var wakes = Wakes()
            let step: Result<WaitStep<R>, any Error> = mutex.withLock { inner in
                if let w = waiter, w.queued {
                    // Timed out or woke spuriously: leave the list before deciding.
                    if let i = inner.lists[list].firstIndex(where: { $0 === w }) { inner.lists[list].remove(at: i) }
                    w.queued = false
                }
                do {
                    if let r = try attempt(&inner.state, &wakes) { return .success(.done(r)) }
                } catch {
                    return .failure(error)
                }
                if let deadline, deadline.hasPassed { return .success(.timedOut) }
                let w = waiter ?? Waiter(thread: ())
                w.parker!.reset()
                w.queued = true
                inner.lists[list].append(w)
                return .success(.park(w))
            }
            if !wakes.isEmpty { perform(wakes) }
            switch try step.get() {
            case .done(let r): return r
            case .timedOut: return nil
            case .park(let w):
                waiter = w
                _ = w.parker!.park(until: deadline)
            }
        }
    }

    /// Suspends the calling task until `attempt` returns a value. Honours Task cancellation
    /// (throws `CancellationError`) and never blocks a thread.
    func waitAsync<R>(
        on list: Int,
        _ attempt: (inout State, inout Wakes) throws -> R?
    ) async throws -> R {
        let waiter = Waiter(task: ())
        while true {
            var result: Result<R, any Error>?
            await withTaskCancellationHandler {
                await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                    var wakes = Wakes()
                    let resumeNow: Bool = mutex.withLock { inner in
                        do {
                            if let r = try attempt(&inner.state, &wakes) {
                                result = .success(r)
                                return true
                            }
                        } catch {
                            result = .failure(error)
                            return true
                        }
                        if waiter.cancelled { return true }
                        waiter.continuation = continuation
                        waiter.queued = true
                        inner.lists[list].append(waiter)
                        return false
                    }
                    if !wakes.isEmpty { perform(wakes) }
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                let continuation: UnsafeContinuation<Void, Never>? = mutex.withLock { inner in
                    waiter.cancelled = true
                    guard waiter.queued else { return nil }
                    if let i = inner.lists[list].firstIndex(where: { $0 === waiter }) { inner.lists[list].remove(at: i) }
                    waiter.queued = false
                    defer { waiter.continuation = nil }
                    return waiter.continuation
                }
                continuation?.resume()
            }
            if let result { return try result.get() }
            if waiter.cancelled {
                // A last attempt: a wake-up that raced with the cancellation must not be lost.
                var wakes = Wakes()
                let last: Result<R, any Error>? = mutex.withLock { inner in
                    do { return try attempt(&inner.state, &wakes).map { .success($0) } } catch { return .failure(error) }
                }
                if !wakes.isEmpty { perform(wakes) }
                if let last { return try last.get() }
                throw CancellationError()
            }
        }
    }

    /// The number of waiters currently parked on `list`.
    func waiterCount(_ list: Int) -> Int { mutex.withLock { $0.lists[list].count } }
}

enum WaitStep<R> {
    case done(R)
    case timedOut
    case park(Waiter)
}

/// A futex mutex around a value that need not be `Sendable` (unlike `Synchronization.Mutex`, whose
/// `sending` rules reject the generic, reference-holding states of `Monitor`).
final class InternalMutex<Value>: @unchecked Sendable {  // `value` is only touched with `word` held
    private let word: UnsafeMutablePointer<UInt32>
    private var value: Value

    init(_ value: Value) {
        self.value = value
        word = .allocate(capacity: 1)
        word.initialize(to: 0)
    }

    deinit { word.deallocate() }

    @inline(__always)
    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        if !mp_atomic_cas_acquire_u32(word, 0, 1) { lockSlow() }
        defer { if mp_atomic_exchange_release_u32(word, 0) == 2 { _ = mp_futex_wake(word, 1) } }
        return try body(&value)
    }

    private func lockSlow() {
        var spins = 100
        while spins > 0 {
            if mp_atomic_load_u32(word) == 0 && mp_atomic_cas_u32(word, 0, 1) { return }
            mp_cpu_relax()
            spins -= 1
        }
        while mp_atomic_exchange_u32(word, 2) != 0 { _ = mp_futex_wait(word, 2, nil) }
    }
}
