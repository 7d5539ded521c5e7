internal import CMultiprocessingShims
package import Glibc

/// An absolute point on `CLOCK_MONOTONIC`, the clock every timeout in this module is measured on.
@usableFromInline
package struct Deadline: Sendable, Comparable {
    @usableFromInline package var nanoseconds: Int64

    @usableFromInline
    package init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    @usableFromInline
    package static func now() -> Deadline {
        var ts = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Deadline(nanoseconds: Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec))
    }

    /// `nil` timeout means "never"; a negative timeout is treated as zero (Python raises; we clamp).
    @usableFromInline
    package static func after(_ timeout: Duration?) -> Deadline? {
        guard let timeout else { return nil }
        let (seconds, attos) = timeout.components
        let ns = seconds > Int64.max / 2_000_000_000 ? Int64.max / 2 : seconds &* 1_000_000_000 &+ attos / 1_000_000_000
        return Deadline(nanoseconds: now().nanoseconds &+ max(0, ns))
    }

    package var timespec: Glibc.timespec {
        Glibc.timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    }

    @usableFromInline
    package var hasPassed: Bool { Deadline.now() >= self }

    @usableFromInline
    package var remaining: Duration { .nanoseconds(max(0, nanoseconds - Deadline.now().nanoseconds)) }

    @usableFromInline
    package static func < (lhs: Deadline, rhs: Deadline) -> Bool { lhs.nanoseconds < rhs.nanoseconds }
}

extension Deadline {
    /// Milliseconds left, for `poll(2)`: -1 when there is no deadline, 0 when it has passed.
    package static func pollTimeout(_ d: Deadline?) -> Int32 {
        guard let d else { return -1 }
        let ns = d.nanoseconds - Deadline.now().nanoseconds
        if ns <= 0 { return 0 }
        return Int32(clamping: (ns + 999_999) / 1_000_000)
    }
}
