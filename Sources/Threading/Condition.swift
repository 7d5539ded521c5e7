import DequeModule

/// A condition variable over a ``Lock`` or an ``RLock`` — Python's `threading.Condition`.
///
/// The caller must hold the lock to `wait` and `notify`. `wait` releases the lock (completely, for an
/// RLock held recursively), sleeps until notified or timed out, and re-acquires it. Notifications are
/// never lost: a waiter that times out while being notified reports the notification.
public final class Condition: @unchecked Sendable {  // `waiters` is guarded by the condition's lock
    /// The lock the condition is bound to.
    public enum Underlying: Sendable {
        case lock(Lock)
        case rlock(RLock)
    }

    /// The lock the condition waits with.
    public let underlying: Underlying
    private var waiters = Deque<Parker>()

    /// Creates a condition over a new ``RLock`` (Python's default).
    public convenience init() { self.init(RLock()) }

    /// Creates a condition over `lock`.
    public init(_ lock: Lock) { underlying = .lock(lock) }

    /// Creates a condition over `rlock`.
    public init(_ rlock: RLock) { underlying = .rlock(rlock) }

    /// Acquires the underlying lock.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) -> Bool {
        switch underlying {
        case .lock(let l): l.acquire(blocking: blocking, timeout: timeout)
        case .rlock(let r): r.acquire(blocking: blocking, timeout: timeout)
        }
    }

    /// Releases the underlying lock.
    public func release() throws(ThreadingError) {
        switch underlying {
        case .lock(let l): try l.release()
        case .rlock(let r): try r.release()
        }
    }

    /// Runs `body` with the underlying lock held — Python's `with condition:`.
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        acquire()
        defer { try? release() }
        return try body()
    }

    private func checkOwned() throws(ThreadingError) {
        switch underlying {
        case .lock(let l):
            // As CPython: a plain Lock has no owner, so "owned" means "locked".
            if !l.isLocked { throw ThreadingError(.notOwner, "cannot wait on or notify an un-acquired Condition") }
        case .rlock(let r):
            if !r.isOwnedByCurrentThread {
                throw ThreadingError(.notOwner, "cannot wait on or notify an un-acquired Condition")
            }
        }
    }

    /// Threads waiting now to be notified (for tests that must see a waiter block). Takes the lock: call
    /// it without holding it.
    package var waiterCount: Int { withLock { waiters.count } }

    /// Waits until notified or until `timeout` passes — Python's `Condition.wait(timeout)`.
    ///
    /// - Returns: `false` if the timeout expired, `true` otherwise.
    /// - Throws: ``ThreadingError/Code/notOwner`` if the calling thread does not hold the lock.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws(ThreadingError) -> Bool {
        try wait(until: Deadline.after(timeout))
    }

    func wait(until deadline: Deadline?) throws(ThreadingError) -> Bool {
        try checkOwned()
        let parker = Parker()
        waiters.append(parker)
        let saved: Int
        switch underlying {
        case .lock(let l):
            saved = 0
            try l.release()
        case .rlock(let r):
            saved = r.releaseSave()
        }
        _ = parker.park(until: deadline)
        switch underlying {
        case .lock(let l): l.acquire()
        case .rlock(let r): r.acquireRestore(saved)
        }
        // With the lock held again: either a notifier removed us (and unparked us), or we timed out.
        if parker.isUnparked { return true }
        if let i = waiters.firstIndex(where: { $0 === parker }) { waiters.remove(at: i) }
        return false
    }

    /// Waits until `predicate` is true — Python's `Condition.wait_for(predicate, timeout)`.
    ///
    /// - Returns: the last value of `predicate` (`false` only if the timeout expired first).
    @discardableResult
    public func wait(for predicate: () throws -> Bool, timeout: Duration? = nil) throws -> Bool {
        let deadline = Deadline.after(timeout)
        var result = try predicate()
        while !result {
            if let deadline, deadline.hasPassed { break }
            _ = try wait(until: deadline)
            result = try predicate()
        }
        return result
    }

    /// Wakes up to `n` waiting threads — Python's `Condition.notify(n)`.
    ///
    /// - Throws: ``ThreadingError/Code/notOwner`` if the calling thread does not hold the lock.
    public func notify(_ n: Int = 1) throws(ThreadingError) {
        try checkOwned()
        var n = n
        while n > 0, let p = waiters.popFirst() {
            p.unpark()
            n -= 1
        }
    }

    /// Wakes all waiting threads — Python's `Condition.notify_all()`.
    public func notifyAll() throws(ThreadingError) { try notify(Int.max) }
}
