import Foundation
import Multiprocessing
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

/// The package of programs in `Examples/Programs`, written as users write them (a package that depends on
/// this one by path, each program a `main.swift`): built once, by `swift build`, then run one by one.
enum ExamplePrograms {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let package = root.appendingPathComponent("Examples/Programs")
    private static let built = TrackedMutex<Result<URL, BuildFailure>?>(nil)

    struct BuildFailure: Error, CustomStringConvertible {
        let description: String
    }

    /// Builds the package (once per test run; `.ci/run` builds it before the suite, so this is then an
    /// up-to-date check) and returns its products' directory.
    static func products() throws -> URL {
        try built.withLock { cached in
            if let cached { return try cached.get() }
            let result: Result<URL, BuildFailure>
            let swift = URL(fileURLWithPath: "/usr/bin/env")
            let run = try runToEnd(swift, ["swift", "build", "--package-path", package.path])
            if run.status == 0 {
                let bin = try runToEnd(swift, ["swift", "build", "--package-path", package.path, "--show-bin-path"])
                result = .success(URL(fileURLWithPath: bin.output.trimmingCharacters(in: .whitespacesAndNewlines)))
            } else {
                result = .failure(BuildFailure(description: "swift build of Examples/Programs failed:\n\(run.output)"))
            }
            cached = result
            return try result.get()
        }
    }

    /// Runs one program of the package to its end, in a directory of its own (the files it makes are
    /// removed): its exit status and everything it wrote.
    static func run(_ name: String, _ arguments: [String] = []) throws -> (status: Int32, output: String) {
        let exe = try products().appendingPathComponent(name)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mp-example-\(getpid())-\(name)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try runToEnd(exe, arguments, environment: ["SWIFT_BACKTRACE": "enable=no"], directory: dir)
        return (r.status, r.output)
    }

    /// Runs a program that listens (its first line ends with `:PORT`) with a CPython peer, `client` (run
    /// with the port as its argument): the program's exit status and output, and the peer's.
    static func runWithPythonClient(
        _ name: String,
        _ arguments: [String] = [],
        client: String
    ) throws -> (Int32, String, String) {
        let p = Foundation.Process()
        // Line-buffered (stdbuf), as on a terminal: the port reaches the pipe when printed.
        p.executableURL = URL(fileURLWithPath: "/usr/bin/stdbuf")
        p.arguments = ["-oL", try products().appendingPathComponent(name).path] + arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        // A program that hangs (before its port, or after) is killed: its pipe then ends and nothing waits.
        let ended = Event()
        let pid = p.processIdentifier
        let watchdog = OSThread(name: "example-watchdog", daemon: true) {
            if !ended.wait(timeout: .seconds(120)) { kill(pid, SIGKILL) }
        }
        try watchdog.start()
        defer { ended.set() }
        var text = firstLine(out.fileHandleForReading)
        let (_, clientOutput) = try runPython(client, [port(in: text)])
        text += String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text, clientOutput)
    }

    /// Runs a CPython program that listens (its first line is its port) with this package's program
    /// `name` as its client (`arguments` then the port): the Python program's output, and the client's
    /// exit status and output.
    static func runWithPythonServer(
        _ server: String,
        client name: String,
        _ arguments: [String]
    ) throws -> (String, Int32, String) {
        let peer = try PythonPeer(server)
        let first = firstLine(peer.out.fileHandleForReading)
        let run = try runToEnd(try products().appendingPathComponent(name), arguments + [port(in: first)])
        let (_, rest) = peer.finish(timeout: 60)
        return (first + rest, run.status, run.output)
    }

    /// Reads up to the end of the first line (or of the stream).
    static func firstLine(_ reader: FileHandle) -> String {
        var text = ""
        while !text.contains("\n") {
            let chunk = reader.availableData  // blocks until data or the end
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        return text
    }

    /// The digits after the first line's last colon (`serving on 127.0.0.1:PORT`), or the line's digits.
    static func port(in text: String) -> String {
        let line = text.split(separator: "\n").first.map(String.init) ?? ""
        return String((line.split(separator: ":").last ?? "").prefix { $0.isNumber })
    }
}

/// Issue 25: a newcomer's `main.swift` that reads its own top-level variables from a job is right with
/// `bootstrap()` and refused loudly without it — never a silent `0` or `""`, never a bare crash.
@Suite(.serialized, .timeLimit(.minutes(20)))
struct NewcomerProgramTests {
    /// Each program of the issue, and what it prints once `bootstrap()` is in place.
    static let programs: [(name: String, right: String, wrong: [String])] = [
        ("pool-int-and-short-string", #"["item-3", "item-6", "item-9"]"#, [#"["0", "0", "0"]"#, #"["", "", ""]"#]),
        (
            "pool-long-string",
            #"["a string far too long to be stored inline in a String value #1", "#
                + #""a string far too long to be stored inline in a String value #2"]"#,
            [#"[" #1", " #2"]"#]
        ),
        ("pool-dictionary", "[3, 5, 7]", ["[-1, -1, -1]"]),
        ("child-process-string", "hello from the top level", []),
        ("apply-async-class", "callback: 40\n40", ["callback: 0"]),
    ]

    @Test(arguments: programs.map(\.name))
    func withoutBootstrapTheProgramIsRefusedAndSaysWhereTheCallGoes(_ name: String) async throws {
        let program = Self.programs.first { $0.name == name }!
        let (status, output) = try await background { try ExamplePrograms.run(name) }.value
        #expect(status != 0, "\(output)")
        #expect(output.contains("MultiprocessingError.bootstrapRequired"), "\(output)")
        #expect(output.contains("Add the line `bootstrap()` to main.swift after the declarations"), "\(output)")
        #expect(!output.contains("Signal 11"), "\(output)")
        for wrong in program.wrong { #expect(!output.contains(wrong), "\(output)") }
    }

    @Test(arguments: programs.map(\.name))
    func withBootstrapTheProgramPrintsTheRightAnswer(_ name: String) async throws {
        let program = Self.programs.first { $0.name == name }!
        let (status, output) = try await background { try ExamplePrograms.run(name, ["--bootstrap"]) }.value
        #expect(status == 0, "\(output)")
        // Lines in any order: a callback runs on the pool's callback thread, beside the main thread's print.
        let lines = output.split(separator: "\n").map(String.init).sorted()
        #expect(lines == program.right.split(separator: "\n").map(String.init).sorted(), "\(output)")
    }
}

/// Issue 25: a crashed `ChildProcess` reports its cause and the program's own frame first, as the pool
/// does; the whole crash report is on the error (and the process), not on the parent's standard error.
@Suite(.timeLimit(.minutes(3)))
struct ChildProcessCrashTests {
    @Test func aCrashLeadsWithItsCauseAndTheReportStaysOffTheTerminal() async throws {
        guard let helper = testHelperExecutable() else { return }
        let (_, out, err) = try await background { try runTestHelper(helper, ["child-crash"]) }.value
        #expect(out.contains("message: Fatal error: bad item 4242"), "\(out)")
        #expect(out.contains(", in mp_test_helper.CrashingJob.run()"), "\(out)")
        #expect(out.contains("was killed by signal"), "\(out)")
        #expect(!out.contains("report lines: 0"), "\(out)")
        #expect(out.contains("report on the process: true"), "\(out)")
        // The child's own line is passed on; its crash report is not.
        #expect(err.contains("before the crash"), "\(err)")
        #expect(!err.contains("Fatal error"), "\(err)")
    }
}

/// Issue 25: README's code blocks are these programs (`scripts/check-doc-blocks` holds them equal); each
/// builds and runs to its end, as pasted into a `main.swift`.
@Suite(.serialized, .timeLimit(.minutes(20)))
struct ReadmeProgramTests {
    @Test func theChildProcessExampleRuns() async throws {
        let (status, output) = try await background { try ExamplePrograms.run("readme-child-process") }.value
        #expect(status == 0, "\(output)")
        #expect(output.split(separator: "\n") == ["49", "0"], "\(output)")
    }

    @Test func thePoolExampleRuns() async throws {
        let (status, output) = try await background { try ExamplePrograms.run("readme-pool") }.value
        #expect(status == 0, "\(output)")
        #expect(output.hasPrefix("[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n"), "\(output)")
    }

    @Test func theTourRuns() async throws {
        let (status, output) = try await background { try ExamplePrograms.run("readme-tour") }.value
        #expect(status == 0, "\(output)")
        for line in ["locked", "all arrived", "500500", "true success(20)", #"["any", "Codable"]"#, "A", "5"] {
            #expect(output.split(separator: "\n").contains { $0 == line }, "\(line): \(output)")
        }
    }

    @Test(arguments: ["readme-threads"])
    func theThreadingExamplesRun(_ name: String) async throws {
        let (status, output) = try await background { try ExamplePrograms.run(name) }.value
        #expect(status == 0, "\(output)")
    }
}

/// Issue 25: every code block of the DocC articles is one of these programs (`scripts/check-doc-blocks`
/// holds them equal); each runs to its end and prints what its article says.
@Suite(.serialized, .timeLimit(.minutes(20)))
struct DocProgramTests {
    static let expected: [(name: String, lines: [String])] = [
        ("doc-mp-started-child", ["49"]),
        ("doc-mp-started-pool", ["[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "1000"]),
        ("doc-mp-started-queue", ["A", "hello"]),
        ("doc-mp-overview", ["49"]),
        ("doc-mp-pools-progress", ["10000 10000"]),
        ("doc-mp-shared-state", ["3.1415927", "[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]"]),
        ("doc-mp-start-methods", ["[20, 40, 60]"]),
        ("doc-jobqueue-overview", ["49"]),
        ("doc-jobqueue-limits", ["sent to user6@example.com", "concurrency 2, rate 3/1s"]),
        ("doc-jobqueue-chains", ["1400 words", "5 of 5 pages, 1500 words"]),
        ("doc-jobqueue-pool", ["[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "332833500", "DONE"]),
        (
            "doc-jobqueue-schedules",
            ["nightly cron 30 2 * * * posix:CET-1CEST,M3.5.0,M10.5.0/3", "pulse every 1s", "true"]
        ),
        ("doc-services-overview", ["[1, 4, 9, 16, 25]"]),
        ("doc-prometheus-overview", [#"mp_pool_items_succeeded_total{pool="pool"} 1000"#]),
        ("doc-managers-started", ["{1: '1', '2': 2, 0.25: None}", "[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]"]),
        ("doc-sql-overview", ["1,000 rows read, 1,000 written in 1 chunks"]),
        (
            "doc-threading-coroutines",
            [
                "Running in foo", "Explicit context to bar", "Explicit context switch to foo again",
                "Implicit context switch back to bar",
            ]
        ),
        ("doc-threading-started-queue", ["got hello"]),
        ("doc-threading-started-pool", ["42", "100"]),
        ("doc-threading-overview", ["500000500000"]),
    ]

    @Test(arguments: expected.map(\.name))
    func theArticlesProgramRunsAndPrintsWhatItSays(_ name: String) async throws {
        let lines = Self.expected.first { $0.name == name }!.lines
        let (status, output) = try await background { try ExamplePrograms.run(name) }.value
        #expect(status == 0, "\(output)")
        for line in lines { #expect(output.contains(line), "\(name): \(output)") }
    }

    /// The console's program, built without the Console trait (as `swift test` builds it): it says how to
    /// get the console rather than fail obscurely. (ConsoleTests run the console itself, with the trait.)
    @Test func theConsoleProgramSaysHowToBuildTheConsole() async throws {
        let (status, output) = try await background { try ExamplePrograms.run("doc-console-overview") }.value
        #expect(status != 0)
        #expect(output.contains("build with the Console trait (swift build --traits Console)"), "\(output)")
    }

    /// The network articles' listeners, with CPython's `Client` (the handshake CPython 3.12+ uses).
    @Test(arguments: [("doc-network-started", "secret", "b'got 5 bytes'"), ("doc-network-overview", "abc", "")])
    func theNetworkArticlesListenerServesAPythonClient(_ name: String, _ key: String, _ reply: String) async throws {
        let client = """
            import sys
            from multiprocessing.connection import Client
            with Client(('127.0.0.1', int(sys.argv[1])), authkey=b'\(key)') as c:
                c.send_bytes(b'hello')
                if \(reply.isEmpty ? "False" : "True"):
                    print(c.recv_bytes())
            """
        let (status, output, clientOutput) = try await background {
            try ExamplePrograms.runWithPythonClient(name, client: client)
        }.value
        #expect(status == 0, "\(output)")
        #expect(output.hasPrefix("listening on 127.0.0.1:"), "\(output)")
        if !reply.isEmpty { #expect(clientOutput.contains(reply), "\(clientOutput)") }
        if reply.isEmpty { #expect(output.contains("5 bytes"), "\(output)") }
    }
}

/// Issue 25: programs of the kinds users build, each run as a user runs it (and linked from its article).
@Suite(.serialized, .timeLimit(.minutes(20)))
struct UserProgramTests {
    /// A queue worker with jobs of its own returns once the queue is drained.
    @Test func aQueueWorkerDrainsItsQueueAndExits() async throws {
        let (status, output) = try await background { try ExamplePrograms.run("queue-drain") }.value
        #expect(status == 0, "\(output)")
        #expect(output.contains("the worker finished 20 jobs"), "\(output)")
        #expect(output.contains("queue: completed 20"), "\(output)")
    }

    static let pythonWorker = """
        import sys, queue
        from multiprocessing.managers import BaseManager
        class M(BaseManager): pass
        M.register('get_task_queue'); M.register('get_result_queue')
        m = M(address=('127.0.0.1', int(sys.argv[1])), authkey=b'words'); m.connect()
        t, r = m.get_task_queue(), m.get_result_queue()
        n = 0
        while True:
            try:
                task = t.get(timeout=1)
            except (queue.Empty, EOFError, ConnectionError):
                break  # no task for a second, or the master has its results and went away
            r.put({'id': task['id'], 'words': len(task['text'].split())}); n += 1
        print('python worker:', n, 'tasks')
        """

    static let pythonMaster = """
        import queue
        from multiprocessing.managers import BaseManager
        tasks, results = queue.Queue(), queue.Queue()
        class M(BaseManager): pass
        M.register('get_task_queue', callable=lambda: tasks)
        M.register('get_result_queue', callable=lambda: results)
        m = M(address=('127.0.0.1', 0), authkey=b'words'); m.start()
        print(m.address[1], flush=True)
        t, r = m.get_task_queue(), m.get_result_queue()
        for i, text in enumerate(['one two', 'three four five']):
            t.put({'id': i, 'text': text})
        print(sorted((x['id'], x['words']) for x in (r.get(timeout=60), r.get(timeout=60))))
        m.shutdown()
        """

    /// The master of the user's own tasks, with a worker of this package and with CPython's.
    @Test func aMasterOfOwnTasksServesSwiftAndPythonWorkers() async throws {
        let (status, output, workerOutput) = try await background {
            try ExamplePrograms.runWithPythonClient("distributed-words", ["master"], client: Self.pythonWorker)
        }.value
        #expect(status == 0, "\(output)")
        #expect(output.contains("total: 15 words"), "\(output)")
        #expect(workerOutput.contains("python worker: 4 tasks"), "\(workerOutput)")
    }

    /// The worker of the user's own tasks, with CPython's `BaseManager` as the master.
    @Test func aWorkerOfOwnTasksServesAPythonMaster() async throws {
        let (masterOutput, status, output) = try await background {
            try ExamplePrograms.runWithPythonServer(
                Self.pythonMaster,
                client: "distributed-words",
                ["worker", "127.0.0.1"]
            )
        }.value
        #expect(status == 0, "\(output)")
        #expect(output.contains("worker: 2 tasks"), "\(output)")
        #expect(masterOutput.contains("[(0, 2), (1, 3)]"), "\(masterOutput)")
    }
}
