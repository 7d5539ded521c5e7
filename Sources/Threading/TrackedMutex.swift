internal import CMultiprocessingShims
package import Synchronization

/// A `Synchronization.Mutex` whose acquisitions ThreadSanitizer sees: the library's mutex for state it
/// owns.
///
/// On Linux, `Mutex` takes its contended path (`FUTEX_LOCK_PI`) inside the standard library, which is not
/// instrumented, so under `-sanitize=thread` every value a contended `Mutex` guards is reported as raced.
/// This one tells the sanitizer that the lock was acquired and released (two weak calls that do nothing in
/// other builds), so its reports are about real races. Same API as `Mutex`: `withLock` and
/// `withLockIfAvailable`.
package final class TrackedMutex<Value>: @unchecked Sendable {  // the value is only reached under `mutex`
    package let mutex: Mutex<Value>

    /// A mutex guarding `initialValue`.
    @inlinable
    package init(_ initialValue: consuming sending Value) { mutex = Mutex(initialValue) }

    /// Runs `body` on the value with the lock held.
    @inlinable
    package func withLock<Result, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try mutex.withLock { (value: inout sending Value) throws(E) -> sending Result in
            mp_tsan_acquire(self.address)
            defer { mp_tsan_release(self.address) }
            return try body(&value)
        }
    }

    /// Runs `body` with the lock held if it can be taken at once; nil otherwise.
    @inlinable
    package func withLockIfAvailable<Result, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result? {
        try mutex.withLockIfAvailable { (value: inout sending Value) throws(E) -> sending Result in
            mp_tsan_acquire(self.address)
            defer { mp_tsan_release(self.address) }
            return try body(&value)
        }
    }

    /// The address the sanitizer's annotations name: this object's.
    @usableFromInline var address: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
}
