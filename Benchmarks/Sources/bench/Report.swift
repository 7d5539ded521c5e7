import Foundation

/// Prints `RESULT name median unit` and `INFO name min= max= n= unit=` like the Python anchors.
func report(_ name: String, _ values: [Double], _ unit: String, digits: Int = 1) {
    let sorted = values.sorted()
    let n = sorted.count
    let median = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    func f(_ x: Double) -> String { String(format: "%.\(digits)f", x) }
    print("RESULT \(name) \(f(median)) \(unit)")
    print("INFO \(name) min=\(f(sorted.first!)) max=\(f(sorted.last!)) n=\(n) unit=\(unit)")
    fflush(nil)
}

func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Seconds on the monotonic clock.
@inline(__always)
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// Keeps the optimiser from deleting a loop whose result is unused.
@inline(never)
func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }

let REPS = 5
