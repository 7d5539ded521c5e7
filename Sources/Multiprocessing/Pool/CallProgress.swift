import Glibc
import Synchronization
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
    /// Items finished (with a result or an error).
    public var done: Int
    /// Of those, the failed ones.
    public var failed: Int
    /// Items in the call; nil while a lazy input is still being read.
    public var total: Int?
    /// Time since the call began.
    public var elapsed: Duration
    /// Whether every item is done, or the call was cancelled.
    public var isFinished: Bool

    /// A progress report (for progress of your own, drawn with ``TerminalBar``).
    public init(done: Int, failed: Int = 0, total: Int?, elapsed: Duration, isFinished: Bool) {
        self.done = done
        self.failed = failed
        self.total = total
        self.elapsed = elapsed
        self.isFinished = isFinished
    }

    /// Items per second so far.
    public var rate: Double {
        let s = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return s > 0 ? Double(done) / s : 0
    }

    /// The time left at the rate so far (nil until it can be told).
    public var eta: Duration? {
        guard let total, rate > 0 else { return nil }
        return .milliseconds(Int64(Double(total - done) / rate * 1000))
    }
}

/// Reports one call's progress from a thread of its own until the call is finished.
enum ProgressReporter {
    static func start(for call: CallCore, _ display: ProgressDisplay) throws {
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
        let thread = OSThread(name: "mp-progress", daemon: true) {  // holds the call until its last item is done
            while true {
                usleep(
                    UInt32(
                        clamping: interval.components.seconds * 1_000_000
                            + interval.components.attoseconds / 1_000_000_000_000
                    )
                )
                let total = call.totalItems.load(ordering: .relaxed)
                let done = call.finishedItems.load(ordering: .relaxed)
                let finished = (total >= 0 && done >= total) || call.isCancelled
                report(
                    CallProgress(
                        done: done,
                        failed: call.failedItems.load(ordering: .relaxed),
                        total: total >= 0 ? total : nil,
                        elapsed: ContinuousClock.now - started,
                        isFinished: finished
                    )
                )
                if finished { return }
            }
        }
        try thread.start()
    }
}

/// `[██████░░░░] 600/1000 (2 failed) 3,210 items/s ETA 0.1 s` on standard error: the bar of
/// ``ProgressDisplay/bar``, for progress of your own (the table pipeline counts rows with it).
public final class TerminalBar: Sendable {
    private let lastQuarter = Atomic<Int>(-1)
    private let isTerminal = isatty(2) == 1
    private let unit: String

    /// A bar whose rate is in `unit` per second.
    public init(unit: String = "items") { self.unit = unit }

    /// Draws `p`: in place on a terminal; elsewhere a line at each quarter, the last once.
    public func draw(_ p: CallProgress) {
        let width = 30
        let fraction = p.total.map { $0 == 0 ? 1 : Double(p.done) / Double($0) } ?? 0
        let filled = min(width, Int(fraction * Double(width)))
        var line = "[" + String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled) + "] "
        line += "\(p.done)/\(p.total.map(String.init) ?? "?")"
        if p.failed > 0 { line += " (\(p.failed) failed)" }
        line += " \(Int(p.rate)) \(unit)/s"
        if let eta = p.eta, !p.isFinished { line += " ETA \(eta.components.seconds) s" }
        if isTerminal {
            write("\r\(line)\u{1B}[K" + (p.isFinished ? "\n" : ""))
        } else {
            let quarter = Int(fraction * 4)
            if lastQuarter.exchange(quarter, ordering: .relaxed) != quarter { write(line + "\n") }
        }
    }

    private func write(_ s: String) {
        var s = s
        s.withUTF8 { p in _ = try? Syscall.writeAll(2, UnsafeRawBufferPointer(p)) }
    }
}
