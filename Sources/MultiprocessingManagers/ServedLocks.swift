import Threading

/// A lock whose owner is a client connection, not a thread: the server serves many connections on one
/// event-loop thread and runs the calls that wait on a pool of threads, so "the thread that acquired it"
/// means nothing to a served `RLock` or `Condition`. Python's `threading.Lock` (`reentrant: false`) or
/// `RLock` (`reentrant: true`), as a manager serves it: owner checks are by ``ServedCall/connection``.
final class ConnectionLock: @unchecked Sendable {  // `owner`, `depth` and `waiters` behind `guardLock`
    private let guardLock = Lock()
    /// Signalled (broadcast) whenever the lock is freed or a condition waiter is notified.
    private let changed: Threading.Condition
    /// The connection holding the lock; 0: free.
    private var owner: UInt64 = 0
    private var depth = 0
    /// Condition waiters not notified yet, oldest first.
    private var waiters: [Waiter] = []
    let reentrant: Bool

    /// One `Condition.wait`: set once a `notify` picked it.
    final class Waiter {
        var notified = false
    }

    init(reentrant: Bool) {
        self.reentrant = reentrant
        changed = Threading.Condition(guardLock)
    }

    /// Takes the lock for `who`, waiting at most `limit` (`nil`: no limit). A reentrant lock held by `who`
    /// is taken again at once.
    func acquire(_ who: UInt64, limit: Duration?) -> Bool {
        guardLock.withLock {
            if reentrant && owner == who {
                depth += 1
                return true
            }
            guard waitFree(limit) else { return false }
            owner = who
            depth = 1
            return true
        }
    }

    /// With `guardLock` held: waits until the lock is free, at most `limit`.
    private func waitFree(_ limit: Duration?) -> Bool {
        if owner == 0 { return true }
        if let limit, limit <= .zero { return false }
        let clock = ContinuousClock()
        let deadline = limit.map { clock.now + $0 }
        while owner != 0 {
            let left = deadline.map { $0 - clock.now }
            if let left, left <= .zero { return false }
            _ = try? changed.wait(timeout: left)
        }
        return true
    }

    /// Releases one level. A reentrant lock must be held by `who` (Python: "cannot release un-acquired
    /// lock"); a plain lock may be released by anyone holding a proxy, as Python's `Lock`.
    func release(_ who: UInt64) throws(ThreadingError) {
        try guardLock.withLock { () throws(ThreadingError) in
            guard owner != 0 else { throw ThreadingError(.notOwner, "release unlocked lock") }
            guard !reentrant || owner == who else { throw ThreadingError(.notOwner, "cannot release un-acquired lock") }
            depth -= 1
            if depth == 0 || !reentrant {
                owner = 0
                depth = 0
                try? changed.notifyAll()
            }
        }
    }

    /// Frees the lock if `who` holds it (its connection ended); whether it did.
    @discardableResult
    func releaseAll(_ who: UInt64) -> Bool {
        guardLock.withLock {
            guard owner == who else { return false }
            owner = 0
            depth = 0
            try? changed.notifyAll()
            return true
        }
    }

    /// Whether `who` holds the lock now.
    func isOwned(by who: UInt64) -> Bool { guardLock.withLock { owner == who } }

    // MARK: Condition support (the lock's owner waits to be notified)

    /// `Condition.wait`, first part: `who` must hold the lock; frees it entirely and queues a waiter.
    /// Returns the waiter and the depth to restore.
    func beginWait(_ who: UInt64) throws(ThreadingError) -> (Waiter, Int) {
        try guardLock.withLock { () throws(ThreadingError) -> (Waiter, Int) in
            guard owner == who else { throw ThreadingError(.notOwner, "cannot wait on un-acquired lock") }
            let saved = depth
            let w = Waiter()
            waiters.append(w)
            owner = 0
            depth = 0
            try? changed.notifyAll()
            return (w, saved)
        }
    }

    /// Waits at most `limit` for `w` to be notified; whether it was.
    func awaitNotify(_ w: Waiter, limit: Duration) -> Bool {
        guardLock.withLock {
            let clock = ContinuousClock()
            let deadline = clock.now + limit
            while !w.notified {
                let left = deadline - clock.now
                if left <= .zero { return false }
                _ = try? changed.wait(timeout: left)
            }
            return true
        }
    }

    /// Forgets a waiter that gave up (timed out, or its client is gone); whether it had been notified
    /// meanwhile (then it counts as woken).
    func abandonWait(_ w: Waiter) -> Bool {
        guardLock.withLock {
            if w.notified { return true }
            waiters.removeAll { $0 === w }
            return false
        }
    }

    /// `Condition.wait`, last part: takes the lock back for `who` at `depth`, waiting at most `limit`.
    func restore(_ who: UInt64, depth saved: Int, limit: Duration) -> Bool {
        guardLock.withLock {
            guard waitFree(limit) else { return false }
            owner = who
            depth = saved
            return true
        }
    }

    /// `Condition.notify(n)`: `who` must hold the lock; marks the `n` oldest waiters notified.
    func notify(_ who: UInt64, _ n: Int) throws(ThreadingError) {
        try guardLock.withLock { () throws(ThreadingError) in
            guard owner == who else { throw ThreadingError(.notOwner, "cannot notify on un-acquired lock") }
            let k = min(max(n, 0), waiters.count)
            guard k > 0 else { return }
            for w in waiters.prefix(k) { w.notified = true }
            waiters.removeFirst(k)
            try? changed.notifyAll()
        }
    }
}
