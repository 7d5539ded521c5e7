public import Atomics
internal import CMultiprocessingShims
import Glibc

/// A heap-allocated 32-bit word usable both with inlinable atomics (swift-atomics) and with the futex
/// syscalls; it never moves, as futexes require. The owner calls ``destroy()``.
@usableFromInline
struct FutexWord {
    @usableFromInline let storage: UnsafeMutablePointer<UInt32.AtomicRepresentation>

    @usableFromInline
    init(_ value: UInt32) {
        storage = .allocate(capacity: 1)
        storage.initialize(to: .init(value))
    }

    @usableFromInline
    func destroy() {
        storage.deinitialize(count: 1)
        storage.deallocate()
    }

    @inlinable
    var atomic: UnsafeAtomic<UInt32> { UnsafeAtomic(at: storage) }

    private var raw: UnsafeMutablePointer<UInt32> {
        UnsafeMutableRawPointer(storage).assumingMemoryBound(to: UInt32.self)
    }

    /// Sleeps while the word equals `expected`, until woken or `deadline`; returns `false` on timeout.
    @usableFromInline
    func wait(expected: UInt32, deadline: Deadline?) -> Bool {
        if let deadline {
            var ts = deadline.timespec
            return mp_futex_wait(raw, expected, &ts) != -ETIMEDOUT
        }
        _ = mp_futex_wait(raw, expected, nil)
        return true
    }

    @usableFromInline
    func wake(_ count: Int32) { _ = mp_futex_wake(raw, count) }

    @usableFromInline
    static func pause() { mp_cpu_relax() }
}
