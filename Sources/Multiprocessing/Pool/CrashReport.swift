/// What a crashing worker writes about its crash, to its standard error and so to the task's error.
///
/// Measured with one worker, a trap (index out of range) and a SIGSEGV, five crashes each
/// (`BENCHMARKS.md`, "Crash reports"): the time from the crash to the caller's error.
public enum CrashReport: Sendable, Hashable {
    /// The runtime's fatal-error message and its unsymbolicated stack trace (Swift's backtracer off):
    /// the error reaches the caller in about 8 ms. The default: a pool's promise is that a crash fails
    /// its item at once, and the message (`Fatal error: Index out of range`) says what went wrong.
    case message
    /// Swift's backtracer, function names without line numbers: about 0.5 s per crash.
    case symbols
    /// Swift's backtracer with file and line of every frame, the crashed thread only: about 0.7 s per
    /// crash. For debugging a crash.
    case fullBacktrace

    var environment: String {
        switch self {
        case .message: "enable=no"
        case .symbols: "enable=yes,symbolicate=fast,threads=crashed,registers=none,images=none"
        case .fullBacktrace: "enable=yes,threads=crashed,registers=none,images=none"
        }
    }
}
