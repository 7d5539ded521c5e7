/// Why a pool task failed without an error of its own.
public struct PoolError: Error, CustomStringConvertible, Sendable {
    /// Why the task failed, as a value to compare with the static members.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        /// The code's name.
        public var description: String { raw }

        /// The worker running the task died (trap, signal, `exit`).
        public static let workerDied = Code("workerDied")
        /// The task ran past its timeout.
        public static let timedOut = Code("timedOut")
        /// The pool was terminated before the task finished.
        public static let terminated = Code("terminated")
        /// The pool is closed to new work.
        public static let closed = Code("closed")
        /// Too many workers died too quickly (or could not start): the pool stopped.
        public static let broken = Code("broken")
        /// Ctrl-C (SIGINT) tore the pool down.
        public static let interrupted = Code("interrupted")
    }

    /// Why the task failed.
    public let code: Code
    /// A sentence for people: what happened to which worker.
    public let message: String
    /// The worker's pid, when a worker was involved.
    public let pid: Int32?
    /// The worker's exit code, or minus the signal that killed it.
    public let exitCode: Int32?
    /// The last lines the worker wrote to standard error.
    public let stderrTail: [String]
    /// The worker's peak resident memory, in bytes.
    public let peakMemoryBytes: Int?
    /// How many times the task ran.
    public let attempts: Int
    /// The worker's crash report, whole (the runtime's message and stack, or the backtracer's report),
    /// when it wrote one. It is kept here rather than printed on the parent's standard error; the
    /// ``message`` leads with its first line and the first frame in the program's own code.
    public let crashReport: String?

    package init(
        _ code: Code,
        _ message: String,
        pid: Int32? = nil,
        exitCode: Int32? = nil,
        stderrTail: [String] = [],
        peakMemoryBytes: Int? = nil,
        attempts: Int = 1,
        crashReport: String? = nil
    ) {
        self.crashReport = crashReport
        self.code = code
        self.message = message
        self.pid = pid
        self.exitCode = exitCode
        self.stderrTail = stderrTail
        self.peakMemoryBytes = peakMemoryBytes
        self.attempts = attempts
    }

    /// The signal that killed the worker, if one did.
    public var signal: Int32? { exitCode.flatMap { $0 < 0 ? -$0 : nil } }

    /// The code and message with the worker's peak memory, then its standard error's last lines — up to
    /// its crash report, which is summed up in the message and kept whole in ``crashReport``.
    public var description: String {
        var s = "PoolError.\(code): \(message)"
        if let peakMemoryBytes { s += " (peak memory \(peakMemoryBytes / 1024) KiB)" }
        var lines = stderrTail
        if crashReport != nil, let start = lines.firstIndex(where: { startsCrashReport($0[...]) }) {
            lines = Array(lines[..<start])
        }
        if !lines.isEmpty { s += "\n  stderr: " + lines.joined(separator: "\n  stderr: ") }
        if let crashReport {
            s += "\n  (crash report: \(crashReport.split(separator: "\n").count) lines in `crashReport`)"
        }
        return s
    }

    func with(attempts: Int) -> PoolError {
        PoolError(
            code,
            message,
            pid: pid,
            exitCode: exitCode,
            stderrTail: stderrTail,
            peakMemoryBytes: peakMemoryBytes,
            attempts: attempts,
            crashReport: crashReport
        )
    }
}
