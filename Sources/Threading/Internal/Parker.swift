internal import CMultiprocessingShims
import Glibc

/// A one-shot wake-up for one thread: `park` blocks until `unpark` (or a deadline), on a private futex.
///
/// States: 0 = waiting (maybe spinning), 2 = asleep in the kernel, 1 = unparked. `unpark` makes a
/// `futex_wake` syscall only when the parked thread is really asleep, and `park` spins briefly first:
/// on this class of VM a cross-core wake-up through the kernel costs 20–25 µs, a spin hand-off < 1 µs.
@usableFromInline
final class Parker: @unchecked Sendable {  // the word is only touched through atomics
    private let word: UnsafeMutablePointer<UInt32>

    /// Iterations of the pre-sleep spin; about 2–4 µs on the machines we measured. Only used on
    /// multi-core machines: on one core, spinning just delays the thread that would wake us.
    @usableFromInline static let spinIterations: Int = mp_cpu_count() > 1 ? 400 : 0

    @usableFromInline
    init() {
        word = .allocate(capacity: 1)
        word.initialize(to: 0)
    }

    deinit { word.deallocate() }

    @usableFromInline
    var isUnparked: Bool { mp_atomic_load_u32(word) == 1 }

    /// Re-arms the parker for another wait (only by its owner, when nobody can unpark it).
    @usableFromInline
    func reset() { mp_atomic_store_u32(word, 0) }

    /// Blocks until unparked or until `deadline`; returns `true` when unparked.
    @usableFromInline
    func park(until deadline: Deadline?, spin: Bool = true) -> Bool {
        var spins = spin ? Parker.spinIterations : 0
        while spins > 0 {
            if mp_atomic_load_u32(word) == 1 { return true }
            mp_cpu_relax()
            spins -= 1
        }
        if !mp_atomic_cas_u32(word, 0, 2) { return true }  // it was 1
        if let deadline {
            var ts = deadline.timespec
            while mp_atomic_load_u32(word) == 2 {
                let rc = mp_futex_wait(word, 2, &ts)
                if rc == -ETIMEDOUT { break }
            }
        } else {
            while mp_atomic_load_u32(word) == 2 { _ = mp_futex_wait(word, 2, nil) }
        }
        return mp_atomic_load_u32(word) == 1
    }

    @usableFromInline
    func unpark() {
        if mp_atomic_exchange_u32(word, 1) == 2 { _ = mp_futex_wake(word, 1) }
    }
}
