import Foundation
import MultiprocessingTestSupport
import Testing

/// `mp demo`, run as a user runs it (standard input not a terminal), checked against the seed notes'
/// output: line by line where the program is deterministic, as a set of lines where threads or
/// processes race (as they do in Python).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct DemoOutputTests {
    /// The demo's output, by program name.
    static func runDemo() throws -> [String: [String]] {
        guard let mp = builtExecutable("mp") else { return [:] }
        let p = Process()
        p.executableURL = mp
        p.arguments = ["demo"]
        p.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        var sections: [String: [String]] = [:]
        var current = ""
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("=== "), let colon = line.firstIndex(of: ":") {
                current = String(line[line.index(line.startIndex, offsetBy: 4)..<colon])
                sections[current] = []
            } else if !current.isEmpty && !line.isEmpty {
                sections[current, default: []].append(String(line))
            }
        }
        return sections
    }

    /// Process ids and ports vary from run to run.
    static func normalized(_ lines: [String]?) -> [String] {
        (lines ?? []).map { $0.replacing(/\d{3,}/, with: "N") }
    }

    @Test func theDemoPrintsWhatTheNotesPrint() throws {
        let s = try Self.runDemo()
        // Deterministic programs, line by line (the notes' lines; pids as N).
        #expect(
            Self.normalized(s["fork"]) == [
                "Process (N) start...", "I (N) just created a child process (N).",
                "I am child process (N) and my parent is N.",
            ]
        )
        #expect(
            Self.normalized(s["process"]) == [
                "Parent process N.", "child process will start.", "Run child process test (N)...", "child process end.",
            ]
        )
        #expect(s["subprocess"]?.contains("Exit code: 0") == true)
        // The writer and the reader race (in Python too); each value is got after it is put.
        let queue = Self.normalized(s["queue"])
        #expect(
            Set(queue.prefix(8)) == [
                "Process to write: N", "Put A to queue...", "Process to read: N", "Get A from queue.",
                "Put B to queue...", "Get B from queue.", "Put C to queue...", "Get C from queue.",
            ]
        )
        for v in ["A", "B", "C"] {
            #expect(queue.firstIndex(of: "Put \(v) to queue...")! < queue.firstIndex(of: "Get \(v) from queue.")!)
        }
        #expect(s["shared-value"] == ["3.1415927", "[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]"])
        #expect(s["manager"] == ["{1: '1', '2': 2, 0.25: None}", "[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]"])
        #expect(s["manager-foo"] == ["{0: 100}", "1", "{0: 100, 1: 101}", "2"])
        #expect(
            s["loop-thread"] == [
                "thread MainThread is running...", "thread LoopThread is running...",
                "thread LoopThread >>> 1", "thread LoopThread >>> 2", "thread LoopThread >>> 3",
                "thread LoopThread >>> 4", "thread LoopThread >>> 5", "thread LoopThread ended.",
                "thread MainThread ended.",
            ]
        )
        #expect(s["balance"]?.last == "balance with a lock: 0")
        #expect(s["balance"]?.first?.hasPrefix("balance without a lock: ") == true)
        #expect(s["thread-local"] == ["Hello, Alice (in Thread-A)", "Hello, Bob (in Thread-B)"])
        #expect(s["rlock-counter"] == (1...10).map { "\($0)" })
        #expect(
            s["event"]
                == Array(repeating: "start", count: 10)
                + ["input:true   (standard input is not a terminal: proceeding as if 'true' was typed)"]
                + Array(repeating: "execute", count: 10)
        )
        #expect(
            s["condition"] == [
                "consumer before wait", "consumer before wait", "producer before notifyAll",
                "producer after notifyAll", "consumer after wait", "consumer after wait",
            ]
        )
        #expect(s["greenlet"] == ["12", "56", "34", "78"])
        #expect(
            s["gevent"] == [
                "Running in foo", "Explicit context to bar", "Explicit context switch to foo again",
                "Implicit context switch back to bar",
            ]
        )
        // The durable queue: the master/worker's lines, every result by its job id, in order.
        let queued = s["durable-queue"] ?? []
        let numbers = [5, 17, 3, 88, 41, 9, 60, 2, 73, 14]
        #expect(
            Array(queued.prefix(21))
                == numbers.map { "Put task \($0)..." } + ["Try get results..."]
                + numbers.map { "Result: \($0) * \($0) = \($0 * $0)" }
        )
        #expect(queued.contains("Pool map on the queue's workers: \((0..<10).map { $0 * $0 })"))
        // The map's four chunks are four more jobs (read and deleted by the pool: the counts do not show them).
        #expect(queued.contains { $0.hasPrefix("2 worker processes finished 14 jobs between them (") })
        #expect(queued.last == "queue: completed 10")
        // The database job: every row copied once, a second run writes nothing.
        #expect(
            Self.normalized(s["database-job"]) == [
                "user: N rows in sqlite:/tmp/mp-demo-N.sqlite", "copied: N rows in 20 chunks",
                "user_copy xb=F: N rows", "user_copy xb=M: N rows", "run again: 0 rows written, 20 chunks already done",
            ]
        )
        // Racing threads: the notes' lines, in any order.
        #expect(Set(s["twenty-threads"] ?? []) == Set((0..<20).map { "Thread \($0)" }))
        #expect(s["twenty-threads"]?.count == 20)
        let lowb = s["lowb-pool"] ?? []
        #expect(Set(lowb.dropLast()) == Set((0..<100).map { "\($0)" }) && lowb.count == 101)
        #expect(lowb.last == "at most 10 threads ran at once")
        let io = Self.normalized(s["gevent-io"])
        #expect(
            io.prefix(3) == [
                "GET: http://N.0.0.1:N/www.python.org/", "GET: http://N.0.0.1:N/www.yahoo.com/",
                "GET: http://N.0.0.1:N/github.com/",
            ]
        )
        #expect(
            Set(io.dropFirst(3).prefix(3)) == [
                "N bytes received from http://N.0.0.1:N/www.python.org/.",
                "N bytes received from http://N.0.0.1:N/www.yahoo.com/.",
                "N bytes received from http://N.0.0.1:N/github.com/.",
            ]
        )
        #expect(io.last == "the three downloads ran on one thread: true")
        #expect(s["bounded-queue"]?.last == "the queue never held more than 10: true")
        // pool-progress: no 0/0 frame, and the last frame once.
        let bars = (s["pool-progress"] ?? []).filter { $0.hasPrefix("[") }
        #expect(!bars.isEmpty && !bars.contains { $0.contains(" 0/0 ") })
        #expect(Set(bars).count == bars.count)
        #expect(bars.last?.contains("] 10,000/10,000 ") == true)
        #expect(bars.last?.contains(" tasks/s in ") == true)
        #expect(bars.dropLast().allSatisfy { $0.contains(" ETA ") || !$0.contains("/s in ") })
    }
}
