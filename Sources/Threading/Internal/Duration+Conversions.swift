/// A `Duration` as the numbers system calls, SQL columns and metrics take: the one copy for every module
/// of the package (Threading is the lowest they all import).
///
/// The integer conversions round toward zero (as `components` does: its seconds and attoseconds share the
/// duration's sign) and saturate at `Int64.min`/`Int64.max` instead of trapping, so a caller's
/// `.seconds(Int64.max)` ("no limit") cannot crash a process.
///
/// Not `milliseconds`/`nanoseconds`: the test support's `milliseconds` (a `Double`) would make every
/// unannotated use ambiguous in a file that imports both.
extension Duration {
    /// Whole nanoseconds, rounded toward zero; saturating.
    @inlinable
    package var wholeNanoseconds: Int64 { Self.saturating(components, scale: 1_000_000_000) }

    /// Whole milliseconds, rounded toward zero; saturating.
    @inlinable
    package var wholeMilliseconds: Int64 { Self.saturating(components, scale: 1_000) }

    /// Seconds, as a `Double` (fractional; never overflows).
    @inlinable
    package var seconds: Double {
        let (s, a) = components
        return Double(s) + Double(a) / 1e18
    }

    /// `seconds * scale + attoseconds / (10^18 / scale)`, or the bound of the duration's sign on overflow.
    @inlinable
    static func saturating(_ c: (seconds: Int64, attoseconds: Int64), scale: Int64) -> Int64 {
        let (whole, overflow) = c.seconds.multipliedReportingOverflow(by: scale)
        let (total, overflow2) = whole.addingReportingOverflow(c.attoseconds / (1_000_000_000_000_000_000 / scale))
        return overflow || overflow2 ? (c.seconds < 0 ? .min : .max) : total
    }
}
