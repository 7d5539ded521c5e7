internal import CMultiprocessingShims
import Synchronization

/// A re-entrant lock — Python's `threading.RLock`.
///
/// The owning thread may acquire it again; it is released when `release()` has been called as often as
/// `acquire()`. Releasing it from a thread that does not own it is a thrown error, never a crash.
public final class RLock: @unchecked Sendable {  // `count` is only touched by the owner thread
    private let lock = Lock()
    private let owner = Atomic<UInt64>(0)
    private var count = 0

    /// Creates an unlocked re-entrant lock.
    public init() {}

    /// Acquires the lock, or increments its recursion level if this thread owns it.
    ///
    /// - Parameters:
    ///   - blocking: when `false`, returns at once whether the lock could be taken.
    ///   - timeout: the longest time to wait (`nil`: forever).
    /// - Returns: `true` if the lock was acquired.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) -> Bool {
        let me = mp_pthread_self()
        if owner.load(ordering: .relaxed) == me {
            count += 1
            return true
        }
        guard lock.acquire(blocking: blocking, timeout: timeout) else { return false }
        owner.store(me, ordering: .relaxed)
        count = 1
        return true
    }

    /// Decrements the recursion level; releases the lock when it reaches zero.
    ///
    /// - Throws: ``ThreadingError/Code/notOwner`` if the calling thread does not own the lock.
    public func release() throws(ThreadingError) {
        guard owner.load(ordering: .relaxed) == mp_pthread_self() else {
            throw ThreadingError(.notOwner, "cannot release an RLock not owned by this thread")
        }
        count -= 1
        if count == 0 {
            owner.store(0, ordering: .relaxed)
            try lock.release()
        }
    }

    /// Whether the calling thread owns the lock.
    public var isOwnedByCurrentThread: Bool { owner.load(ordering: .relaxed) == mp_pthread_self() }

    /// Whether the lock is held and another thread has begun to wait in the kernel for it (as
    /// ``Lock``'s). For tests that must see a waiter block.
    package var isContended: Bool { lock.isContended }

    /// Runs `body` with the lock held — Python's `with rlock:`.
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        acquire()
        defer { try? release() }
        return try body()
    }

    // For Condition: release completely, and restore later.
    func releaseSave() -> Int {
        let saved = count
        count = 0
        owner.store(0, ordering: .relaxed)
        try? lock.release()
        return saved
    }

    func acquireRestore(_ saved: Int) {
        lock.acquire()
        owner.store(mp_pthread_self(), ordering: .relaxed)
        count = saved
    }
}
