public import Atomics
public import DequeModule

/// One parked thread or suspended task, waiting in one of a `Monitor`'s wait lists.
///
/// Its mutable fields are guarded by the owning monitor's mutex.
@usableFromInline
final class Waiter: @unchecked Sendable {
    @usableFromInline let parker: Parker?
    @usableFromInline var continuation: UnsafeContinuation<Void, Never>?
    @usableFromInline var cancelled = false
    @usableFromInline var queued = false

    @usableFromInline init(thread: Void) { parker = Parker() }
    @usableFromInline init(task: Void) { parker = nil }

    private static let cached = ThreadLocal<Waiter?>()

    /// This thread's reusable waiter. A thread is in at most one blocking wait at a time, and a late
    /// `unpark` from a previous wait is only a spurious wake-up, which `Monitor.wait` tolerates.
    @usableFromInline
    static func forCurrentThread() -> Waiter {
        if let w = cached.value { return w }
        let w = Waiter(thread: ())
        cached.value = w
        return w
    }

    /// Called after the monitor's lock is released.
    @usableFromInline
    func wake(_ continuation: UnsafeContinuation<Void, Never>?) {
        if let parker { parker.unpark() } else { continuation?.resume() }
    }
}

/// Wake-ups requested while the monitor's lock is held, performed after it is released.
@usableFromInline
struct Wakes {
    // Up to four wait lists per monitor; counts saturate at Int.max ("all").
    @usableFromInline var counts: (Int, Int, Int, Int) = (0, 0, 0, 0)
    @usableFromInline var any = false

    @inlinable init() {}

    /// Wakes up to `count` waiters of `list` (`Int.max`: all of them).
    @inlinable
    mutating func wake(_ list: Int, _ count: Int = 1) {
        any = true
        switch list {
        case 0: counts.0 = counts.0 &+ count < counts.0 ? .max : counts.0 &+ count
        case 1: counts.1 = counts.1 &+ count < counts.1 ? .max : counts.1 &+ count
        case 2: counts.2 = counts.2 &+ count < counts.2 ? .max : counts.2 &+ count
        default: counts.3 = counts.3 &+ count < counts.3 ? .max : counts.3 &+ count
        }
    }
    @inlinable
    mutating func wakeAll(_ list: Int) { wake(list, .max) }

    @inlinable
    func count(_ list: Int) -> Int {
        switch list {
        case 0: counts.0
        case 1: counts.1
        case 2: counts.2
        default: counts.3
        }
    }
}

/// The waiters taken off their lists under the lock, to be woken once it is released.
@usableFromInline
struct Woken {
    @usableFromInline var first: (Waiter, UnsafeContinuation<Void, Never>?)?
    @usableFromInline var rest: [(Waiter, UnsafeContinuation<Void, Never>?)] = []

    @inlinable init() {}

    @inlinable
    mutating func append(_ w: Waiter, _ c: UnsafeContinuation<Void, Never>?) {
        if first == nil { first = (w, c) } else { rest.append((w, c)) }
    }

    @inlinable
    func wakeAll() {
        guard let first else { return }
        first.0.wake(first.1)
        for (w, c) in rest { w.wake(c) }
    }
}

/// A mutex-protected `State` with wait lists, the engine behind Event, Semaphore, the blocking queues,
/// futures and the thread pool.
///
/// It follows the condition-variable model: a waiter re-runs its `attempt` after each wake-up, always
/// before it gives up on a timeout or a cancellation, so a wake-up is never lost; the lock is held only to
/// run `attempt`, and threads are unparked / continuations resumed after it is released.
@usableFromInline
final class Monitor<State>: @unchecked Sendable {  // all state behind `mutex`
    @usableFromInline
    struct Inner {
        @usableFromInline var state: State
        @usableFromInline var lists = WaitLists()

        @inlinable init(state: State) { self.state = state }

        /// Takes the requested waiters off their lists (lock held).
        @inlinable
        mutating func take(_ wakes: Wakes) -> Woken {
            var woken = Woken()
            guard wakes.any else { return woken }
            for list in 0..<4 {
                var n = wakes.count(list)
                while n > 0, let w = lists.popFirst(list) {
                    w.queued = false
                    woken.append(w, w.continuation)
                    w.continuation = nil
                    n -= 1
                }
            }
            return woken
        }
    }

    @usableFromInline let word = FutexWord(0)
    @usableFromInline var inner: Inner

    /// - Parameter lists: how many wait lists (at most 4).
    @inlinable
    init(_ state: State, lists: Int) {
        precondition(lists <= 4)
        inner = Inner(state: state)
    }

    deinit { word.destroy() }

    @inlinable
    func withLock<R, E: Error>(_ body: (inout Inner) throws(E) -> R) throws(E) -> R {
        if !word.atomic.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged {
            lockContended(word)
        }
        defer {
            if word.atomic.exchange(0, ordering: .releasing) == 2 { word.wake(1) }
        }
        return try body(&inner)
    }

    /// Runs `body` on the state with the lock held, then performs the wake-ups it asked for.
    @inlinable
    func update<R, E: Error>(_ body: (inout State, inout Wakes) throws(E) -> R) throws(E) -> R {
        var woken = Woken()
        let result = try withLock { (inner: inout Inner) throws(E) -> R in
            var wakes = Wakes()
            defer { woken = inner.take(wakes) }
            return try body(&inner.state, &wakes)
        }
        woken.wakeAll()
        return result
    }

    /// How many threads and tasks are queued on wait list `list` now (parked or suspended; one still
    /// spinning before it queues is not counted). For tests and diagnostics that must observe a waiter
    /// instead of guessing how long it takes to block.
    func waiterCount(on list: Int? = nil) -> Int {
        withLock { inner in
            if let list { return inner.lists.count(list) }
            return (0..<4).reduce(0) { $0 + inner.lists.count($1) }
        }
    }

    /// Reads the state with the lock held.
    @inlinable
    func read<R>(_ body: (borrowing State) -> R) -> R {
        withLock { inner in body(inner.state) }
    }

    /// Blocks the calling thread until `attempt` returns a value, or until `deadline` (then `nil`).
    ///
    /// `attempt` runs with the lock held; it may throw to end the wait with an error.
    @inlinable
    func wait<R>(
        on list: Int,
        until deadline: Deadline?,
        spinUntil probe: (() -> Bool)? = nil,
        parkSpin: Bool = true,
        _ attempt: (inout State, inout Wakes) throws -> R?
    ) throws -> R? {
        var waiter: Waiter?
        // Before queueing as a waiter (which makes the other side pay for a wake-up), poll a lock-free
        // hint for a few microseconds: producer and consumer then hand over without any wake-up.
        var spinBudget = probe == nil ? 0 : Parker.spinIterations
        while true {
            var woken = Woken()
            let step: Result<WaitStep<R>, any Error> = withLock { inner in
                var wakes = Wakes()
                defer { woken = inner.take(wakes) }
                if let w = waiter, w.queued {
                    // Timed out or woke spuriously: leave the list before deciding.
                    inner.lists.remove(list, w)
                    w.queued = false
                }
                do {
                    if let r = try attempt(&inner.state, &wakes) { return .success(.done(r)) }
                } catch {
                    return .failure(error)
                }
                if let deadline, deadline.hasPassed { return .success(.timedOut) }
                if spinBudget > 0 { return .success(.spin) }
                let w = waiter ?? Waiter.forCurrentThread()
                w.parker!.reset()
                w.queued = true
                inner.lists.append(list, w)
                return .success(.park(w))
            }
            woken.wakeAll()
            switch try step.get() {
            case .done(let r): return r
            case .timedOut: return nil
            case .spin:
                while spinBudget > 0 {
                    spinBudget -= 1
                    if probe!() { break }
                    FutexWord.pause()
                }
            case .park(let w):
                waiter = w
                _ = w.parker!.park(until: deadline, spin: parkSpin)
            }
        }
    }

    /// Suspends the calling task until `attempt` returns a value. Honours Task cancellation
    /// (throws `CancellationError`) and never blocks a thread.
    @inlinable
    func waitAsync<R>(
        on list: Int,
        _ attempt: (inout State, inout Wakes) throws -> R?
    ) async throws -> R {
        let waiter = Waiter(task: ())
        while true {
            var result: Result<R, any Error>?
            await withTaskCancellationHandler {
                await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                    var woken = Woken()
                    let resumeNow: Bool = withLock { inner in
                        var wakes = Wakes()
                        defer { woken = inner.take(wakes) }
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
                        inner.lists.append(list, waiter)
                        return false
                    }
                    woken.wakeAll()
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                let continuation: UnsafeContinuation<Void, Never>? = withLock { inner in
                    waiter.cancelled = true
                    guard waiter.queued else { return nil }
                    inner.lists.remove(list, waiter)
                    waiter.queued = false
                    defer { waiter.continuation = nil }
                    return waiter.continuation
                }
                continuation?.resume()
            }
            if let result { return try result.get() }
            if waiter.cancelled {
                // A last attempt: a wake-up that raced with the cancellation must not be lost.
                var woken = Woken()
                let last: Result<R, any Error>? = withLock { inner in
                    var wakes = Wakes()
                    defer { woken = inner.take(wakes) }
                    do { return try attempt(&inner.state, &wakes).map { .success($0) } } catch {
                        return .failure(error)
                    }
                }
                woken.wakeAll()
                if let last { return try last.get() }
                throw CancellationError()
            }
        }
    }
}

@usableFromInline
enum WaitStep<R> {
    case done(R)
    case timedOut
    case spin
    case park(Waiter)
}

/// The contended path of a three-state futex mutex (Drepper's "mutex2"): spin briefly, then sleep.
@usableFromInline
func lockContended(_ word: FutexWord) {
    var spins = 100
    while spins > 0 {
        if word.atomic.load(ordering: .relaxed) == 0
            && word.atomic.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged
        {
            return
        }
        FutexWord.pause()
        spins -= 1
    }
    while word.atomic.exchange(2, ordering: .acquiring) != 0 { _ = word.wait(expected: 2, deadline: nil) }
}

/// Up to four FIFO lists of waiters, each created on first use (most monitors never have a waiter).
@usableFromInline
struct WaitLists {
    @usableFromInline var lists: (Deque<Waiter>?, Deque<Waiter>?, Deque<Waiter>?, Deque<Waiter>?) = (nil, nil, nil, nil)

    @inlinable init() {}

    @inlinable
    func count(_ i: Int) -> Int {
        switch i {
        case 0: lists.0?.count ?? 0
        case 1: lists.1?.count ?? 0
        case 2: lists.2?.count ?? 0
        default: lists.3?.count ?? 0
        }
    }

    @inlinable
    mutating func with<R>(_ i: Int, _ body: (inout Deque<Waiter>) -> R) -> R {
        switch i {
        case 0:
            var d = lists.0 ?? Deque()
            lists.0 = nil
            defer { lists.0 = d }
            return body(&d)
        case 1:
            var d = lists.1 ?? Deque()
            lists.1 = nil
            defer { lists.1 = d }
            return body(&d)
        case 2:
            var d = lists.2 ?? Deque()
            lists.2 = nil
            defer { lists.2 = d }
            return body(&d)
        default:
            var d = lists.3 ?? Deque()
            lists.3 = nil
            defer { lists.3 = d }
            return body(&d)
        }
    }

    @inlinable
    mutating func append(_ i: Int, _ w: Waiter) { with(i) { $0.append(w) } }

    @inlinable
    mutating func popFirst(_ i: Int) -> Waiter? {
        guard count(i) > 0 else { return nil }
        return with(i) { $0.popFirst() }
    }

    @inlinable
    mutating func remove(_ i: Int, _ w: Waiter) {
        guard count(i) > 0 else { return }
        with(i) { d in
            if let k = d.firstIndex(where: { $0 === w }) { d.remove(at: k) }
        }
    }
}
