/// A process's standard error as it arrives (a pool worker's, a `ChildProcess`'s): the last 64 KiB kept
/// for its errors, and what to pass on to this program's — whole lines, until a crash report begins (the
/// report goes into the error, not onto the terminal). A line still open is passed on when more arrives,
/// past 4 KiB, or at the end.
struct StderrCapture {
    private(set) var tail: [UInt8] = []
    /// Bytes not yet passed on: the start of a line that has not ended.
    private var pending: [UInt8] = []
    /// A crash report has begun: the rest goes to the error only.
    private var inReport = false

    /// Takes what was read; returns what to pass on now (nothing when not `forwarding`).
    mutating func take(_ bytes: ArraySlice<UInt8>, forwarding: Bool) -> [UInt8] {
        tail += bytes
        if tail.count > 65536 { tail.removeFirst(tail.count - 65536) }
        guard forwarding, !inReport else { return [] }
        pending += bytes
        var out: [UInt8] = []
        while let nl = pending.firstIndex(of: 10) {
            let line = pending[...nl]
            if startsCrashReport(Substring(decoding: line, as: UTF8.self)) {
                inReport = true
                pending = []
                break
            }
            out += line
            pending.removeSubrange(...nl)
        }
        if !inReport, pending.count > 4096 {
            out += pending
            pending = []
        }
        return out
    }

    /// At the end of the stream: the unfinished line to pass on.
    mutating func end() -> [UInt8] {
        defer { pending = [] }
        return inReport ? [] : pending
    }

    /// At most `n` lines of it (see ``crashTail(_:lines:)``).
    func lines(_ n: Int) -> [String] { crashTail(String(decoding: tail, as: UTF8.self), lines: n) }

    /// The last crash report, whole (nil when there is none).
    var crashReport: String? {
        let text = String(decoding: tail, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let first = lines.lastIndex(where: { startsCrashReport($0) }) else { return nil }
        let from = first > 0 && startsCrashReport(lines[first - 1]) ? first - 1 : first
        return lines[from...].joined(separator: "\n")
    }
}

/// At most `n` lines of a dead worker's standard error: from the start of its crash report if there is
/// one (so that `Fatal error: …` and the frames nearest the crash are kept, not the bottom of the
/// stack), else the last lines. The report is the *last* one written (an earlier task may have printed
/// a line that looks like one); it starts at its `Fatal error:` line, or at `*** Signal` when the crash
/// was a signal, and the line before it is kept too (often what the program printed last).
func crashTail(_ text: String, lines n: Int) -> [String] {
    let lines = text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
    func starts(_ l: String) -> Bool { startsCrashReport(l[...]) }
    guard var first = lines.lastIndex(where: starts) else { return Array(lines.suffix(n)) }
    if first > 0 && starts(lines[first - 1]) { first -= 1 }  // `Fatal error:` just before `*** Signal`
    let from = max(0, first - 1)
    return Array(lines[from..<min(lines.count, from + n)])
}

/// Whether a line of standard error starts the runtime's or the backtracer's crash report.
func startsCrashReport(_ line: Substring) -> Bool {
    line.contains("Fatal error:") || line.contains("*** Signal ") || line.hasPrefix("💣 Program crashed")
}
