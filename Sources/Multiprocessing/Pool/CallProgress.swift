import Glibc
import Synchronization
import SystemCalls
import Threading

/// How a map-like call shows its progress (``TaskOptions/progress``).
public enum ProgressDisplay: Sendable {
    /// A one-line bar on standard error — tqdm's, mpire's `progress_bar=True`: redrawn in place every
    /// 100 ms on a terminal; elsewhere (a log, a pipe) a line at each quarter, the last once.
    case bar
    /// `report` is called every `interval` while the call runs, and once more when it ends
    /// (``CallProgress/isFinished``), on a thread of the pool's.
    case handler(every: Duration = .milliseconds(100), @Sendable (CallProgress) -> Void)
}

/// A map-like call's progress: its own items, not the pool's.
public struct CallProgress: Sendable {
    /// Items finished (with a result or an error), those done before the call began included.
    public var done: Int
    /// Of those, the failed ones.
    public var failed: Int
    /// Items in the call; nil while a lazy input is still being read.
    public var total: Int?
    /// Time since the call began.
    public var elapsed: Duration
    /// Whether every item is done, or the call was cancelled.
    public var isFinished: Bool
    /// Items found done when the call began (a resumed copy's earlier chunks): counted in ``done`` and in
    /// the bar, not in ``rate``.
    public var doneBefore: Int

    /// A progress report (for progress of your own, drawn with ``TerminalBar``).
    public init(done: Int, failed: Int = 0, total: Int?, elapsed: Duration, isFinished: Bool, doneBefore: Int = 0) {
        self.done = done
        self.failed = failed
        self.total = total
        self.elapsed = elapsed
        self.isFinished = isFinished
        self.doneBefore = doneBefore
    }

    /// Items per second so far, this call's own.
    public var rate: Double {
        let s = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return s > 0 ? Double(done - doneBefore) / s : 0
    }

    /// The time left at the rate so far (nil until it can be told).
    public var eta: Duration? {
        guard let total, rate > 0 else { return nil }
        return .milliseconds(Int64(Double(max(0, total - done)) / rate * 1000))
    }

    /// The counts, rate and time in the one format every bar of the library uses:
    /// `600/1,000 (2 failed) 3,210 items/s ETA 4.1 s` while running, `1,000/1,000 3,210 items/s in 0.3 s`
    /// once finished.
    public func summary(unit: String = "items") -> String {
        var line = "\(ProgressFormat.count(done))/\(total.map(ProgressFormat.count) ?? "?")"
        if failed > 0 { line += " (\(ProgressFormat.count(failed)) failed)" }
        if doneBefore > 0 { line += " (\(ProgressFormat.count(doneBefore)) done before)" }
        line += " \(ProgressFormat.rate(rate, unit: unit))"
        if isFinished {
            line += " in \(ProgressFormat.duration(elapsed))"
        } else if let eta {
            line += " ETA \(ProgressFormat.duration(eta))"
        }
        return line
    }
}

/// How the library writes counts, rates and durations for people: one format in every bar and summary.
public enum ProgressFormat {
    /// `1,234,567`.
    public static func count(_ n: Int) -> String {
        let digits = String(n.magnitude)
        var out = ""
        for (i, c) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return n < 0 ? "-" + out : out
    }

    /// `3,210 items/s`.
    public static func rate(_ perSecond: Double, unit: String) -> String {
        "\(count(perSecond.isFinite ? Int(perSecond.rounded()) : 0)) \(unit)/s"
    }

    /// `0.4 s`, `4.1 s`, `42 s`, `3 min 05 s`, `2 h 03 min`.
    public static func duration(_ d: Duration) -> String {
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
        if ms < 10_000 {
            let tenths = (ms + 50) / 100
            return "\(tenths / 10).\(tenths % 10) s"
        }
        let s = (ms + 500) / 1000
        if s < 60 { return "\(s) s" }
        if s < 3600 { return "\(s / 60) min \(s % 60 < 10 ? "0" : "")\(s % 60) s" }
        let m = s / 60
        return "\(m / 60) h \(m % 60 < 10 ? "0" : "")\(m % 60) min"
    }
}

/// Reports one call's progress from a thread of its own. The last report (``CallProgress/isFinished``)
/// is drawn before the call returns its last result, is cancelled or is dropped: ``finish()`` asks for
/// it and waits until it is drawn.
final class ProgressReporter: Sendable {
    private let wake = Event()
    private let finalDrawn = Event()

    private init() {}

    static func start(for call: CallCore, _ display: ProgressDisplay) throws -> ProgressReporter {
        let reporter = ProgressReporter()
        let started = ContinuousClock.now
        let interval: Duration
        let report: @Sendable (CallProgress) -> Void
        switch display {
        case .bar:
            interval = .milliseconds(100)
            let bar = TerminalBar()
            report = { bar.draw($0) }
        case .handler(let every, let handler):
            interval = every
            report = handler
        }
        let thread = OSThread(name: "mp-progress", daemon: true) { [weak call] in
            while true {
                let asked = reporter.wake.wait(timeout: interval)
                guard let call else {
                    reporter.finalDrawn.set()
                    return
                }
                let total = call.totalItems.load(ordering: .relaxed)
                let done = call.finishedItems.load(ordering: .relaxed)
                let finished = asked || (total >= 0 && done >= total) || call.isCancelled
                report(
                    CallProgress(
                        done: done,
                        failed: call.failedItems.load(ordering: .relaxed),
                        total: total >= 0 ? total : nil,
                        elapsed: ContinuousClock.now - started,
                        isFinished: finished
                    )
                )
                if finished {
                    reporter.finalDrawn.set()
                    return
                }
            }
        }
        try thread.start()
        return reporter
    }

    /// Asks for the last report and waits until it is drawn (at most `timeout`).
    func finish(timeout: Duration? = nil) {
        wake.set()
        _ = finalDrawn.wait(timeout: timeout)
    }

    /// Asks for the last report and suspends until it is drawn.
    func finish() async {
        wake.set()
        try? await finalDrawn.wait()
    }
}

/// `[██████░░░░] 600/1,000 (2 failed) 3,210 items/s ETA 4.1 s` on standard error: the bar of
/// ``ProgressDisplay/bar``, for progress of your own (the table pipeline counts rows with it).
public final class TerminalBar: Sendable {
    private let lastQuarter = Atomic<Int>(-1)
    private let finished = Atomic<Bool>(false)
    private let fd: Int32
    private let isTerminal: Bool
    private let unit: String

    /// A bar whose rate is in `unit` per second, written to `fileDescriptor` (standard error by default).
    public init(unit: String = "items", fileDescriptor: Int32 = 2) {
        self.unit = unit
        fd = fileDescriptor
        isTerminal = isatty(fileDescriptor) == 1
    }

    /// Draws `p`: in place on a terminal, ending the line once `p` is finished; elsewhere (a log, a pipe)
    /// a line at each new quarter, and the finished one always. Nothing is drawn after a finished report.
    public func draw(_ p: CallProgress) {
        guard !finished.load(ordering: .relaxed) else { return }
        if p.isFinished { guard !finished.exchange(true, ordering: .relaxed) else { return } }
        let width = 30
        let fraction = p.total.map { $0 == 0 ? 1 : Double(p.done) / Double($0) } ?? 0
        let filled = max(0, min(width, Int(fraction * Double(width))))
        let line =
            "[" + String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled) + "] "
            + p.summary(unit: unit)
        if isTerminal {
            write("\r\(line)\u{1B}[K" + (p.isFinished ? "\n" : ""))
        } else {
            // The full bar is left to the finished report, so that it is printed once.
            if !p.isFinished && fraction >= 1 { return }
            let quarter = p.isFinished ? 4 : Int(fraction * 4)
            if lastQuarter.exchange(quarter, ordering: .relaxed) != quarter || p.isFinished { write(line + "\n") }
        }
    }

    private func write(_ s: String) {
        var s = s
        s.withUTF8 { p in SystemCall.writeDiagnostic(fd, UnsafeRawBufferPointer(p)) }
    }
}
