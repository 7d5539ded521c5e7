internal import CMultiprocessingShims
import Glibc

/// A primitive, non-reentrant lock — Python's `threading.Lock`.
///
/// Any thread may release it (as in Python), which makes it usable as a binary signal between threads.
/// It is a three-state futex word (Drepper's "mutex2"): an uncontended `acquire` + `release` is two atomic
/// instructions and no syscall; a contended acquire spins briefly, then sleeps in the kernel.
///
/// - Important: Unlike `Synchronization.Mutex`, this lock supports timeouts, non-blocking acquisition
///   and release by another thread; prefer `Mutex` for plain mutual exclusion of owned state.
public final class Lock: @unchecked Sendable {  // the futex word is only touched through atomics
    // 0 = unlocked, 1 = locked, 2 = locked and maybe contended.
    @usableFromInline let word: UnsafeMutablePointer<UInt32>

    /// Creates an unlocked lock.
    public init() {
        word = .allocate(capacity: 1)
        word.initialize(to: 0)
    }

    deinit { word.deallocate() }

    /// Acquires the lock — Python's `Lock.acquire(blocking, timeout)`.
    ///
    /// - Parameters:
    ///   - blocking: when `false`, returns at once whether the lock could be taken.
    ///   - timeout: the longest time to wait (`nil`: forever). Ignored when `blocking` is false.
    /// - Returns: `true` if the lock was acquired.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) -> Bool {
        if mp_atomic_cas_acquire_u32(word, 0, 1) { return true }
        guard blocking else { return false }
        return acquireSlow(deadline: Deadline.after(timeout))
    }

    private func acquireSlow(deadline: Deadline?) -> Bool {
        var spins = Parker.spinIterations / 4
        while spins > 0 {
            if mp_atomic_load_u32(word) == 0 && mp_atomic_cas_u32(word, 0, 1) { return true }
            mp_cpu_relax()
            spins -= 1
        }
        var ts = deadline?.timespec ?? Glibc.timespec()
        var c = mp_atomic_exchange_u32(word, 2)
        while c != 0 {
            let rc = deadline == nil ? mp_futex_wait(word, 2, nil) : mp_futex_wait(word, 2, &ts)
            if rc == -ETIMEDOUT {
                // One last try, so a release that raced with the timeout is not wasted.
                return mp_atomic_exchange_u32(word, 2) == 0
            }
            c = mp_atomic_exchange_u32(word, 2)
        }
        return true
    }

    /// Releases the lock — Python's `Lock.release()`. Any thread may release it.
    ///
    /// - Throws: ``ThreadingError/Code/releaseUnlocked`` if the lock is not locked.
    public func release() throws(ThreadingError) {
        let old = mp_atomic_exchange_release_u32(word, 0)
        if old == 2 {
            _ = mp_futex_wake(word, 1)
        } else if old == 0 {
            throw ThreadingError(.releaseUnlocked, "release of an unlocked Lock")
        }
    }

    /// Whether the lock is held by some thread — Python's `Lock.locked()`.
    public var isLocked: Bool { mp_atomic_load_u32(word) != 0 }

    /// Whether the lock is held and a thread has begun to wait in the kernel for it (the futex word's
    /// third state; it stays set until the next release). For tests that must see a waiter block.
    package var isContended: Bool { mp_atomic_load_u32(word) == 2 }

    /// Runs `body` with the lock held — Python's `with lock:`.
    @inlinable
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        acquire()
        defer { try? release() }
        return try body()
    }
}
