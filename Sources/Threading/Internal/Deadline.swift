internal import CMultiprocessingShims
import Glibc

/// An absolute point on `CLOCK_MONOTONIC`, the clock every timeout in this module is measured on.
@usableFromInline
struct Deadline: Sendable, Comparable {
    @usableFromInline var nanoseconds: Int64

    @usableFromInline
    static func now() -> Deadline {
        var ts = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Deadline(nanoseconds: Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec))
    }

    /// `nil` timeout means "never"; a negative timeout is treated as zero (Python raises; we clamp).
    @usableFromInline
    static func after(_ timeout: Duration?) -> Deadline? {
        guard let timeout else { return nil }
        let (seconds, attos) = timeout.components
        let ns = seconds > Int64.max / 2_000_000_000 ? Int64.max / 2 : seconds &* 1_000_000_000 &+ attos / 1_000_000_000
        return Deadline(nanoseconds: now().nanoseconds &+ max(0, ns))
    }

    var timespec: Glibc.timespec {
        Glibc.timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    }

    @usableFromInline
    var hasPassed: Bool { Deadline.now() >= self }

    @usableFromInline
    var remaining: Duration { .nanoseconds(max(0, nanoseconds - Deadline.now().nanoseconds)) }

    @usableFromInline
    static func < (lhs: Deadline, rhs: Deadline) -> Bool { lhs.nanoseconds < rhs.nanoseconds }
}
