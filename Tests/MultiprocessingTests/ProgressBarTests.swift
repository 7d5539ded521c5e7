import Foundation
import Multiprocessing
import MultiprocessingTestSupport
import Testing
import Threading

/// Issue 25: `pool.map(..., options: .progressBar)` draws its last frame (N/N, ended line) before it
/// returns, in a terminal and in a pipe; every bar uses one format.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct ProgressBarTests {
    static let fullBar = "[" + String(repeating: "█", count: 30) + "]"

    /// In a real terminal (a tmux pane): the final screen shows the full bar on a line of its own, with
    /// the time taken, and the program's next line below it. Skipped where tmux is not installed, unless
    /// the run requires it (`MP_TEST_REQUIRE=tmux`).
    @Test(
        .enabled(
            if: runs(needing: "tmux", unavailable: ProgressBarTests.noTmux),
            Comment(rawValue: ProgressBarTests.noTmux ?? "")
        )
    )
    func inATerminalTheBarEndsItsLineBeforeMapReturns() async throws {
        let tmux = try #require(Self.tmux, "this run requires tmux (MP_TEST_REQUIRE), which is not installed")
        guard let helper = testHelperExecutable() else { return }  // an issue is recorded
        let screen = try await background { try Self.finalScreen(tmux, helper.path, ["progress-bar", "200000"]) }.value
        let lines = screen.split(separator: "\n").map { String($0).trimmingSuffix(" ") }.filter { !$0.isEmpty }
        let barLine = try #require(lines.firstIndex { $0.contains("200,000/200,000") }, "\(screen)")
        #expect(lines[barLine].hasPrefix(Self.fullBar), "\(screen)")
        #expect(lines[barLine].contains(" items/s in "), "\(screen)")
        #expect(!lines[barLine].contains("ETA"), "\(screen)")
        #expect(barLine + 1 < lines.count && lines[barLine + 1] == "200000 results", "\(screen)")
    }

    /// Piped (a log): a frame per quarter, and the last frame, full, before the program's next line.
    @Test func inAPipeTheLastFrameIsTheFullBar() async throws {
        guard let helper = testHelperExecutable() else { return }  // an issue is recorded
        let run = try await background { try runToEnd(helper, ["progress-bar", "3000"]) }.value
        #expect(run.status == 0, "\(run.output)")
        let lines = run.output.split(separator: "\n").map(String.init)
        let bars = lines.filter { $0.hasPrefix("[") }
        #expect(bars.last?.hasPrefix(Self.fullBar + " 3,000/3,000 ") == true, "\(run.output)")
        #expect(bars.filter { $0.hasPrefix(Self.fullBar) }.count == 1, "\(run.output)")
        #expect(lines.last == "3000 results", "\(run.output)")
    }

    /// A handler's last report — finished, every item counted — comes before `map` returns, and once.
    @Test func theHandlersLastReportComesBeforeMapReturns() async throws {
        let reports = Collected<CallProgress>()
        let options = TaskOptions(progress: .handler(every: .milliseconds(20)) { reports.append($0) })
        let results = try await background { () throws -> [Int] in
            try withTestPool(workers: 2) { pool in
                try pool.map(SquareFn(), Array(0..<500), chunksize: 5, options: options)
            }
        }.value
        #expect(results.count == 500)
        let finished = reports.all.filter(\.isFinished)
        #expect(finished.count == 1)
        #expect(reports.all.last?.isFinished == true)
        #expect(reports.all.last?.done == 500 && reports.all.last?.total == 500)
    }

    /// A cancelled call's display draws its last report before `cancel()` returns: the items done so far,
    /// finished.
    @Test func aCancelledCallsLastReportComesBeforeCancelReturns() async throws {
        let reports = Collected<CallProgress>()
        // A grace longer than any load can delay cancel(): the running items are not killed (and so
        // counted) before the last report is drawn (with the default 1 s, a loaded machine did that once).
        let options = TaskOptions(
            cancelGrace: .seconds(600),
            progress: .handler(every: .seconds(3600)) { reports.append($0) }
        )
        // What was drawn by the time cancel() returned.
        let drawn = try await background { () throws -> [CallProgress] in
            try withTestPool(workers: 2) { pool in
                let results = try pool.imap(BlockingSleep(), [0] + Array(repeating: 60_000, count: 4), options: options)
                _ = try results.next(timeout: .seconds(30))
                results.cancel()
                return reports.all
            }
        }.value
        #expect(drawn.count == 1)
        let last = try #require(drawn.last)
        #expect(last.isFinished)
        #expect(last.done >= 1 && last.done < 5, "\(last)")
    }

    /// The one format: counts with separators, rate, ETA while running, time taken once finished, and the
    /// rows an earlier run did counted in the bar but not in the rate.
    @Test func everyBarSharesOneFormat() {
        let running = CallProgress(done: 1500, failed: 2, total: 10_000, elapsed: .milliseconds(500), isFinished: false)
        #expect(running.summary() == "1,500/10,000 (2 failed) 3,000 items/s ETA 2.8 s")
        let finished = CallProgress(done: 10_000, total: 10_000, elapsed: .milliseconds(1283), isFinished: true)
        #expect(finished.summary(unit: "rows") == "10,000/10,000 7,794 rows/s in 1.3 s")
        let resumed = CallProgress(
            done: 1000,
            total: 1000,
            elapsed: .milliseconds(100),
            isFinished: true,
            doneBefore: 1000
        )
        #expect(resumed.summary(unit: "rows") == "1,000/1,000 (1,000 done before) 0 rows/s in 0.1 s")
        #expect(ProgressFormat.duration(.seconds(42)) == "42 s")
        #expect(ProgressFormat.duration(.seconds(185)) == "3 min 05 s")
        #expect(ProgressFormat.duration(.seconds(7380)) == "2 h 03 min")
        #expect(ProgressFormat.count(-1_234_567) == "-1,234,567")
    }

    static let tmux: String? = ["/usr/bin/tmux", "/usr/local/bin/tmux", "/bin/tmux"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }
    /// Why the terminal test cannot run here, if it cannot.
    static let noTmux: String? = tmux == nil ? "tmux is not installed: the terminal test cannot run" : nil

    /// Runs `executable` in a detached tmux pane (160 columns, UTF-8) kept after it exits, waits until the
    /// program has exited, and returns the pane's screen.
    static func finalScreen(_ tmux: String, _ executable: String, _ arguments: [String]) throws -> String {
        let socket = "mp-bar-\(getpid())"
        let conf = FileManager.default.temporaryDirectory.appendingPathComponent("\(socket).conf")
        try "set -g remain-on-exit on\nset -g history-limit 100\n".write(to: conf, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: conf) }
        let base = "'\(tmux)' -u -L \(socket) -f '\(conf.path)'"
        let command = ([executable] + arguments).joined(separator: " ")
        // The tmux server keeps the descriptors it inherits: /dev/null, not a pipe that would never end.
        // The program waits for a key, sent once the session exists: output written while tmux is still
        // setting the pane up was seen lost (1 run in 3).
        _ = shell(
            "\(base) new-session -d -x 160 -y 40 -s bar \"sh -c 'read go; exec \(command)'\" </dev/null >/dev/null 2>&1"
        )
        defer { _ = shell("\(base) kill-server >/dev/null 2>&1") }
        _ = shell("\(base) send-keys -t bar Enter")
        do {
            // `#{pane_dead}` is 1 once the program has exited (the pane stays: remain-on-exit).
            try eventually(within: .seconds(90), "the program in the pane exited") {
                shell("\(base) display-message -p -t bar '#{pane_dead}'").hasPrefix("1")
            }
        } catch {
            throw PaneDidNotExit(description: "\(error); the pane shows:\n\(shell("\(base) capture-pane -p -t bar"))")
        }
        return shell("\(base) capture-pane -p -t bar")
    }

    struct PaneDidNotExit: Error, CustomStringConvertible { let description: String }

    /// Runs `command` with `/bin/sh` and returns its standard output (popen: waits for that one child).
    static func shell(_ command: String) -> String {
        guard let f = popen(command, "r") else { return "" }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        pclose(f)
        return String(decoding: out, as: UTF8.self)
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: Character) -> String {
        var s = Substring(self)
        while s.last == suffix { s.removeLast() }
        return String(s)
    }
}
