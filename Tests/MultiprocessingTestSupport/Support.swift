// Helpers shared by the test targets (one home instead of copies per file). Not a product.
import CoreMetrics
package import Foundation
package import Logging
package import MetricsTestKit
package import Multiprocessing
import Synchronization
package import Testing
package import Threading

// MARK: - time and threads

/// Monotonic elapsed time of `body`.
package func elapsed(_ body: () throws -> Void) rethrows -> Duration {
    let clock = ContinuousClock()
    let start = clock.now
    try body()
    return clock.now - start
}

extension Duration {
    /// This duration in milliseconds, for messages and comparisons.
    package var milliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
    }
}

/// Sleeps the calling thread. Only for a test whose subject is time itself (a timeout, a deadline, a
/// task that must run long): never to wait for another thread, process or server (use ``eventually``).
package func sleep(ms: Int) { usleep(useconds_t(ms * 1000)) }

/// What ``eventually(within:_:sourceLocation:_:)`` throws when its condition never held.
package struct ConditionNeverHeld: Error, CustomStringConvertible {
    package let description: String
}

/// Waits until `condition` holds: it is checked at once, then after 1 ms, doubling up to 20 ms between
/// checks, until `limit` (generous: a busy two-core machine runs other suites' workers meanwhile).
///
/// The way a test waits for another thread, process or server: for a waiter to block (`waiterCount`), a
/// worker to start (`workerPIDs`), a server to see a client go (`clientCount`, `blockedCallCount`). A
/// fixed sleep would be too short on a loaded machine and too long everywhere else.
/// - Throws: ``ConditionNeverHeld`` (naming `what` and the caller's line) if `limit` passed first, or
///   what `condition` threw.
// Disfavoured: an async test that passes a plain closure gets the async overload, which never holds a
// thread of the cooperative pool (otherwise the sync one would win and block one).
@_disfavoredOverload
package func eventually(
    within limit: Duration = .seconds(60),
    _ what: @autoclosure () -> String = "the condition",
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () throws -> Bool
) throws {
    let clock = ContinuousClock()
    let deadline = clock.now + limit
    var pause = 1000
    while true {
        if try condition() { return }
        if clock.now >= deadline { break }
        usleep(useconds_t(pause))
        pause = min(pause * 2, 20_000)
    }
    throw ConditionNeverHeld(description: "\(what()) did not hold within \(limit) (\(sourceLocation))")
}

/// ``eventually(within:_:sourceLocation:_:)`` for async tests: waits between checks without holding a
/// thread of the cooperative pool.
package func eventually(
    within limit: Duration = .seconds(60),
    _ what: @autoclosure () -> String = "the condition",
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + limit
    var pause = 1
    while true {
        if try await condition() { return }
        if clock.now >= deadline { break }
        try await Task.sleep(for: .milliseconds(pause))
        pause = min(pause * 2, 20)
    }
    throw ConditionNeverHeld(description: "\(what()) did not hold within \(limit) (\(sourceLocation))")
}

/// Starts `n` threads running `body(i)` and joins them.
package func runThreads(_ n: Int, _ body: @escaping @Sendable (Int) throws -> Void) throws {
    let threads = (0..<n).map { i in OSThread { try body(i) } }
    for t in threads { try t.start() }
    for t in threads { try t.join() }
}

/// Runs blocking work on its own thread (never on the cooperative pool, which parallel tests share).
package func background<T: Sendable>(_ body: @escaping @Sendable () throws -> T) -> Future<T> {
    let f = Future<T>()
    let t = OSThread(daemon: true) { f.complete(Result { try body() }) }
    try! t.start()
    return f
}

// MARK: - shared values

/// A thread-safe counter for assertions.
package final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    package init() {}
    package func increment(by n: Int = 1) { value.add(n, ordering: .relaxed) }
    package var count: Int { value.load(ordering: .relaxed) }
}

/// Thread-safe list of values for assertions.
package final class Collected<T: Sendable>: Sendable {
    private let items = TrackedMutex<[T]>([])
    package init() {}
    package func append(_ x: T) { items.withLock { $0.append(x) } }
    package var all: [T] { items.withLock { $0 } }
}

/// A value behind a lock, shareable with tasks and threads.
package final class Locked<T: Sendable>: Sendable {
    private let m: TrackedMutex<T>
    package init(_ v: T) { m = TrackedMutex(v) }
    package func withLock<R>(_ body: (inout T) -> R) -> R { m.withLock { body(&$0) } }
}

extension Result {
    /// The error, if this is a failure.
    package var error: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}

extension ThreadingError.Code {
    /// Whether `error` is a ``ThreadingError`` with this code.
    package func matches(_ error: any Error) -> Bool { (error as? ThreadingError)?.code == self }
}

// MARK: - what the machine provides

/// The capabilities this run must have (`MP_TEST_REQUIRE`, comma-separated: `postgresql`,
/// `private-postgres`, `mariadb`, `netns`, `tmux`). `.ci/run` names what it provides, so that a
/// server that failed to start fails CI instead of skipping its tests.
package let requiredCapabilities: Set<String> = Set(
    (getenv("MP_TEST_REQUIRE").map { String(cString: $0) } ?? "").split(separator: ",").map {
        String($0).trimmingCharacters(in: .whitespaces)
    }
)

/// The sanitizer this test binary was built with (`MP_SANITIZER`, set by `scripts/sanitize`): `thread`,
/// `address`, or nil. For the few tests whose subject a sanitizer changes (the Swift backtracer's output).
package let sanitizer: String? = getenv("MP_SANITIZER").map { String(cString: $0) }

/// Whether the tests that need `capability` run: when it is available, or when this run requires it (they
/// then run, and fail on what is missing). For `.enabled(if:)`: otherwise they are reported as skipped,
/// with the reason the trait's comment gives.
package func runs(needing capability: String, unavailable: String?) -> Bool {
    unavailable == nil || requiredCapabilities.contains(capability)
}

// MARK: - processes

/// Options for test pools: Ctrl-C handling stays off (the interrupt test runs in its own process), and
/// workers' stderr is kept but not echoed into the test log.
package func testPoolOptions(
    maxTasksPerChild: Int? = nil,
    memoryLimit: Int? = nil,
    deathLimit: (Int, Duration) = (20, .seconds(10))
) -> ProcessPoolOptions {
    ProcessPoolOptions(
        maxTasksPerChild: maxTasksPerChild,
        memoryLimit: memoryLimit,
        deathLimit: deathLimit,
        stderrLines: 400,
        forwardStderr: false,
        interrupt: .ignore
    )
}

/// Runs `body` with a pool of `workers` (`testPoolOptions()` unless `options` are given), then
/// terminates it and waits for every worker to have exited and been reaped, however `body` ended.
package func withTestPool<R>(
    workers: Int = 2,
    options: ProcessPoolOptions = testPoolOptions(),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (ProcessPool) throws -> R
) throws -> R {
    let pool = try ProcessPool(workers: workers, options: options)
    defer {
        pool.terminate()
        if (try? pool.join(timeout: .seconds(60))) != true {
            Issue.record(
                "the test pool's workers did not exit within 60 s of terminate()",
                sourceLocation: sourceLocation
            )
        }
    }
    return try body(pool)
}

/// ``withTestPool(workers:options:sourceLocation:_:)`` for async tests.
package func withTestPool<R>(
    workers: Int = 2,
    options: ProcessPoolOptions = testPoolOptions(),
    _ body: (ProcessPool) async throws -> R
) async throws -> R {
    let pool = try ProcessPool(workers: workers, options: options)
    do {
        let r = try await body(pool)
        pool.terminate()
        try await pool.join()
        return r
    } catch {
        pool.terminate()
        try? await pool.join()
        throw error
    }
}

/// A path in /tmp unique to this test process and call.
package func tempPath(_ tag: String) -> String {
    "/tmp/swift-mp-test-\(getpid())-\(tag)-\(UInt64.random(in: 0...UInt64.max))"
}

/// Whether `pid` is a zombie (ended, not reaped).
package func isZombie(_ pid: Int32) -> Bool {
    guard let f = fopen("/proc/\(pid)/stat", "r") else { return false }
    defer { fclose(f) }
    var buf = [CChar](repeating: 0, count: 512)
    fgets(&buf, 512, f)
    let s = cString(buf)
    guard let close = s.lastIndex(of: ")") else { return false }
    return s[s.index(close, offsetBy: 2)] == "Z"
}

/// A NUL-terminated buffer as a String.
package func cString(_ buf: [CChar]) -> String {
    String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// `mp-test-helper` (Tests/TestHelper), built beside the test runner (`swift test` builds every
/// executable of the package); records an issue if it is missing.
package func testHelperExecutable() -> URL? { builtExecutable("mp-test-helper") }

/// Runs `mp-test-helper` with `arguments` to its end: its exit status (negative: the signal that killed
/// it), standard output and standard error.
package func runTestHelper(_ helper: URL, _ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
    let p = Foundation.Process()
    p.executableURL = helper
    p.arguments = arguments
    let o = Pipe()
    let e = Pipe()
    p.standardOutput = o
    p.standardError = e
    try p.run()
    let errData = e.fileHandleForReading.readDataToEndOfFile()
    let outData = o.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let status = p.terminationReason == .uncaughtSignal ? -p.terminationStatus : p.terminationStatus
    return (status, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}

/// An executable of this package, built beside the test runner (`swift build` builds them all).
package func builtExecutable(_ name: String) -> URL? {
    let exe = URL(fileURLWithPath: WorkerStart.executablePath).deletingLastPathComponent().appendingPathComponent(name)
    guard FileManager.default.isExecutableFile(atPath: exe.path) else {
        Issue.record("\(name) is not built at \(exe.path); run swift build first")
        return nil
    }
    return exe
}

// MARK: - CPython peers

/// Runs a Python 3 script with arguments; returns (exit status, stdout + stderr).
package func runPython(_ script: String, _ args: [String] = [], timeout: TimeInterval = 30) throws -> (Int32, String) {
    let p = PythonPeer.launch(script, args)
    try p.process.run()
    return p.finish(timeout: timeout)
}

/// Starts a Python script in the background (it is killed and reaped by `finish`).
package final class PythonPeer: @unchecked Sendable {  // the Process is used by one test at a time
    package let process = Foundation.Process()
    package let out = Pipe()

    package convenience init(_ script: String, _ args: [String] = []) throws {
        self.init(script: script, args)
        try process.run()
    }

    /// Starts the script inside a network namespace (`ip netns exec`).
    package convenience init(_ script: String, _ args: [String] = [], inNetworkNamespace namespace: String) throws {
        self.init(script: script, args)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip", "netns", "exec", namespace, "python3", "-c", script] + args
        try process.run()
    }

    private init(script: String, _ args: [String]) {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script] + args
        process.standardOutput = out
        process.standardError = out
    }

    static func launch(_ script: String, _ args: [String]) -> PythonPeer { PythonPeer(script: script, args) }

    /// Waits up to `timeout` for the script, terminating it then; returns (exit status, its output).
    /// The output is read while the script runs (a script that writes more than a pipe holds would
    /// otherwise block for ever), and never waited for more than a second after the script ended (another
    /// process may have inherited the pipe's write end).
    package func finish(timeout: TimeInterval = 30) -> (Int32, String) {
        let collected = Locked<[UInt8]>([])
        let done = DispatchSemaphore(value: 0)
        let reader = out.fileHandleForReading
        Thread.detachNewThread {
            while true {
                let d = reader.availableData
                if d.isEmpty { break }
                collected.withLock { $0 += d }
            }
            done.signal()
        }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        if process.isRunning {
            process.terminate()
            // SIGTERM may be blocked in the child (it inherits the test runner's signal mask): SIGKILL.
            let grace = Date().addingTimeInterval(1)
            while process.isRunning && Date() < grace { usleep(5_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        _ = done.wait(timeout: .now() + 1)
        return (process.terminationStatus, String(decoding: collected.withLock { $0 }, as: UTF8.self))
    }
}

extension FileHandle {
    /// Reads up to the first newline (a Python peer prints its port first).
    package func availableLine() -> String {
        var bytes: [UInt8] = []
        while true {
            let d = readData(ofLength: 1)
            if d.isEmpty || d.first == 10 { break }
            bytes.append(d.first!)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

// MARK: - Network namespaces

/// A network namespace joined to this one by a veth pair: this side is 10.231.N.1, the namespace's side
/// 10.231.N.2, so traffic between them crosses a real (virtual) interface, not loopback. Needs root and
/// iproute2; `make` returns nil (and says why) where that is not permitted.
package final class VethNamespace: @unchecked Sendable {  // immutable
    package let name: String
    package let hostAddress: String
    package let namespaceAddress: String
    private let hostLink: String

    private init(name: String, subnet: Int, hostLink: String) {
        self.name = name
        self.hostLink = hostLink
        hostAddress = "10.231.\(subnet).1"
        namespaceAddress = "10.231.\(subnet).2"
    }

    /// Creates the namespace and the link; nil with the reason when the system does not allow it.
    package static func make(_ tag: String) -> (VethNamespace?, String) {
        let pid = Int(getpid())
        let subnet = (pid + tag.utf8.reduce(0) { Int($0) &* 31 &+ Int($1) }) & 0xff
        let name = "mpns\(pid % 100_000)\(tag)"
        let host = "mpv\(pid % 100_000)\(tag.prefix(4))"
        let peer = host + "p"
        let ns = VethNamespace(name: name, subnet: subnet, hostLink: host)
        let steps: [[String]] = [
            ["netns", "add", name],
            ["link", "add", host, "type", "veth", "peer", "name", peer],
            ["link", "set", peer, "netns", name],
            ["addr", "add", "\(ns.hostAddress)/24", "dev", host],
            ["link", "set", host, "up"],
            ["-n", name, "addr", "add", "\(ns.namespaceAddress)/24", "dev", peer],
            ["-n", name, "link", "set", peer, "up"],
            ["-n", name, "link", "set", "lo", "up"],
        ]
        for step in steps {
            let (ok, out) = ip(step)
            if !ok {
                ns.remove()
                return (nil, "network namespaces are not available here (ip \(step.joined(separator: " ")): \(out))")
            }
        }
        return (ns, "")
    }

    /// Takes the namespace's end of the link down: from here its machine has vanished (no reset, no
    /// answer: packets are dropped).
    package func cutLink() { _ = Self.ip(["-n", name, "link", "set", hostLink + "p", "down"]) }

    /// Deletes the namespace (and with it the link).
    package func remove() {
        _ = Self.ip(["netns", "del", name])
        _ = Self.ip(["link", "del", hostLink])
    }

    @discardableResult
    static func ip(_ args: [String]) -> (Bool, String) {
        let p = Foundation.Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["ip"] + args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        do { try p.run() } catch { return (false, "\(error)") }
        p.waitUntilExit()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (p.terminationStatus == 0, text)
    }
}

// MARK: - metrics

/// The process's metrics backend (swift-metrics allows one bootstrap per process, and every test target
/// runs in one process; every test that reads metrics shares it and tells its series apart by their
/// dimensions).
package let sharedTestMetrics: TestMetrics = {
    let m = TestMetrics()
    MetricsSystem.bootstrap(m)
    return m
}()

/// A seeded generator (SplitMix64), so that a randomized test's failure can be replayed with its seed.
package struct SplitMix64: RandomNumberGenerator {
    package var state: UInt64
    package init(state: UInt64) { self.state = state }
    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Runs `executable` with `arguments` (and `environment` added to this process's) to its end; returns
/// how it ended and everything it wrote to standard output and standard error (run in `directory`, or
/// in this process's). A process still running
/// after `timeout` is killed (SIGKILL; its output then ends with a line that says so).
package func runToEnd(
    _ executable: URL,
    _ arguments: [String],
    environment: [String: String] = [:],
    directory: URL? = nil,
    timeout: Duration = .seconds(600)
) throws -> (status: Int32, reason: Foundation.Process.TerminationReason, output: String) {
    let p = Foundation.Process()
    p.executableURL = executable
    p.arguments = arguments
    if let directory { p.currentDirectoryURL = directory }
    if !environment.isEmpty {
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    try p.run()
    let ended = Event()
    let killed = Counter()
    let pid = p.processIdentifier
    let watchdog = OSThread(name: "runToEnd-watchdog", daemon: true) {
        if !ended.wait(timeout: timeout) {
            killed.increment()
            kill(pid, SIGKILL)
        }
    }
    try watchdog.start()
    var text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    ended.set()
    if killed.count > 0 { text += "\n[runToEnd: still running after \(timeout), killed]\n" }
    return (p.terminationStatus, p.terminationReason, text)
}

/// Collects log messages, as `LEVEL message` lines.
package struct CollectingHandler: LogHandler {
    package let messages: Locked<[String]>
    package var metadata: Logger.Metadata = [:]
    package var logLevel: Logger.Level = .trace
    package init(messages: Locked<[String]>) { self.messages = messages }
    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    package func log(event: LogEvent) { messages.withLock { $0.append("\(event.level) \(event.message)") } }
}
