import Glibc
import MultiprocessingTestSupport
import Testing
import Threading

@testable import Multiprocessing

/// A job that returns nothing, written as Python's `Process` target is: `func run() throws`. It writes
/// its argument to a file (its only effect).
struct TouchFile: Job {
    let path: String
    let text: String
    func run() throws {
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        guard fd >= 0 else { throw MultiprocessingError.system("open", errno) }
        defer { close(fd) }
        _ = text.withCString { write(fd, $0, strlen($0)) }
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct ChildProcessTests {
    /// `func run() throws` is a `Job` (its Output is NoOutput), in a child process and in a pool.
    @Test func aJobThatReturnsNothing() throws {
        let path = "/tmp/mp-void-job-\(getpid())"
        defer { unlink(path) }
        let p = ChildProcess(job: TouchFile(path: path, text: "from a child"))
        try p.start()
        #expect(try p.result(timeout: .seconds(30)) == NoOutput())
        #expect(try p.join(timeout: .seconds(30)))
        #expect(p.exitCode == 0)
        #expect(Self.contents(of: path) == "from a child")
        try withTestPool(workers: 1) { pool in
            let done = try pool.submit(TouchFile(path: path, text: "from a pool")).get(timeout: .seconds(30))
            #expect(done == NoOutput())
        }
        #expect(Self.contents(of: path) == "from a pool")
    }

    /// The first bytes of a file ("" if it cannot be read).
    static func contents(of path: String) -> String {
        var buf = [CChar](repeating: 0, count: 64)
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        _ = read(fd, &buf, 63)
        return cString(buf)
    }

    @Test func jobFromTestModuleRunsInAWorker() throws {
        let p = ChildProcess(name: "squarer", job: Square(x: 12))
        try p.start()
        #expect(p.pid != nil && p.pid != getpid())
        #expect(try p.result(timeout: .seconds(30)) == 144)
        #expect(try p.join(timeout: .seconds(30)))
        #expect(p.exitCode == 0)
        #expect(!p.isAlive)
        #expect(p.name == "squarer")
    }

    @Test func asyncJobAndAsyncJoin() async throws {
        let p = ChildProcess(job: AsyncEcho(text: "hi"))
        try p.start()
        let v = try await p.value
        #expect(v == "hi from \(p.pid!)")
        try await p.join()
        #expect(p.exitCode == 0)
    }

    @Test func codableErrorComesBackAsItself() throws {
        let p = ChildProcess(job: ThrowsCodable())
        try p.start()
        #expect(throws: CodableFailure(reason: "bad input")) { try p.result(timeout: .seconds(30)) }
        try p.join()
        #expect(p.exitCode == 1)  // as Python: an exception in the target exits with 1
    }

    @Test func otherErrorsComeBackAsRemoteError() throws {
        let p = ChildProcess(job: ThrowsPlain())
        try p.start()
        do {
            _ = try p.result(timeout: .seconds(30))
            Issue.record("expected an error")
        } catch let e as RemoteError {
            #expect(e.message == "plain failure")
            #expect(e.typeName.hasSuffix("PlainFailure"))
            #expect(e.pid == p.pid)
        }
        try p.join()
    }

    @Test func trapGivesNegativeSignal() throws {
        let report = "/tmp/mp-trap-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(report) }
        let p = ChildProcess(job: Trap(stderrPath: report))
        try p.start()
        try p.join(timeout: .seconds(30))
        let code = try #require(p.exitCode)
        #expect(code == -SIGILL || code == -SIGTRAP)
        do {
            _ = try p.result(timeout: .seconds(10))
            Issue.record("expected processDied")
        } catch let e as MultiprocessingError {
            #expect(e.code == .processDied)
            #expect(e.message.contains("signal"))
        }
        // The child's crash report, captured: the runtime's message is in it.
        var buf = [CChar](repeating: 0, count: 4096)
        let fd = open(report, O_RDONLY)
        _ = read(fd, &buf, 4095)
        close(fd)
        #expect(cString(buf).contains("Fatal error: Index out of range"))
    }

    @Test func sigkillGivesMinusNine() throws {
        let p = ChildProcess(job: Sleep(milliseconds: 30_000))
        try p.start()
        let pid = try #require(p.pid)
        try eventually("the child runs its job (sleeps in it)") { KernelView.aThreadIsBlocked(pid: pid, in: .sleep) }
        p.kill()
        try p.join(timeout: .seconds(10))
        #expect(p.exitCode == -SIGKILL)
    }

    @Test func exitThreeGivesThree() throws {
        let p = ChildProcess(job: ExitWith(code: 3))
        try p.start()
        try p.join(timeout: .seconds(30))
        #expect(p.exitCode == 3)
    }

    @Test func joinTimeoutReturnsInTime() throws {
        let p = ChildProcess(job: Sleep(milliseconds: 60_000))  // longer than any wait below: terminated
        try p.start()
        let clock = ContinuousClock()
        let t0 = clock.now
        let ended = try p.join(timeout: .milliseconds(200))
        let d = clock.now - t0
        #expect(!ended)
        #expect(p.isAlive)
        #expect(p.exitCode == nil)
        // Not before the timeout; the upper bound only says it did not wait for the child (other suites
        // load the machine).
        #expect(d >= .milliseconds(190) && d < .seconds(30))
        p.terminate()
        try p.join(timeout: .seconds(10))
        #expect(p.exitCode == -SIGTERM)
    }

    @Test func sentinelBecomesReadable() throws {
        let p = ChildProcess(job: Sleep(milliseconds: 50))
        try p.start()
        var pfd = pollfd(fd: p.sentinel!, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, 10_000) == 1)
        try p.join()
    }

    @Test func privateAndLocalJobsAreRejected() throws {
        struct LocalJob: Job { func run() -> Int { 1 } }
        do {
            try ChildProcess(job: LocalJob()).start()
            Issue.record("expected unsupportedJob")
        } catch let e as MultiprocessingError {
            #expect(e.code == .unsupportedJob)
            #expect(e.message.contains("internal or public"))
        }
        do {
            try ChildProcess(job: PrivateJob()).start()
            Issue.record("expected unsupportedJob")
        } catch let e as MultiprocessingError {
            #expect(e.code == .unsupportedJob)
        }
    }

    @Test func unencodableResultIsAnErrorNotAHang() throws {
        let p = ChildProcess(job: ReturnsUnencodable())
        try p.start()
        do {
            _ = try p.result(timeout: .seconds(30))
            Issue.record("expected encodingFailed")
        } catch let e as MultiprocessingError {
            #expect(e.code == .encodingFailed)
        }
        try p.join(timeout: .seconds(30))
    }

    @Test func startTwiceAndJoinBeforeStart() throws {
        let p = ChildProcess(job: Square(x: 1))
        #expect(throws: MultiprocessingError.self) { try p.join() }
        try p.start()
        #expect(throws: MultiprocessingError.self) { try p.start() }
        try p.join()
    }

    @Test func activeChildrenReapsFinishedOnes() throws {
        let p = ChildProcess(job: Sleep(milliseconds: 10))
        try p.start()
        let pid = p.pid!
        #expect(Processes.activeChildren().contains { $0.pid == pid })
        #expect(!Processes.reapAdoptedOrphan(pid, timeout: .seconds(1)))  // ours: its handle keeps the status
        // Not joined: once it has ended, activeChildren() reaps it.
        try eventually("activeChildren() no longer lists the ended child") {
            !Processes.activeChildren().contains { $0.pid == pid }
        }
        #expect(!isZombie(pid))
    }

    @Test func killedParentLeavesNoSurvivingWorker() throws {
        // The orphaned grandchild is re-parented to us (not PID 1), so we can check it and reap it.
        try Processes.adoptOrphans()
        let path = "/tmp/mp-intermediate-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        defer { unlink(path) }
        let p = ChildProcess(job: Intermediate(path: path))
        try p.start()
        var grandchild: Int32 = 0
        try eventually("the intermediate child wrote its child's pid") {
            grandchild = Self.pid(in: path) ?? 0
            return grandchild > 0
        }
        #expect(Glibc.kill(grandchild, 0) == 0)
        p.kill()  // SIGKILL the intermediate parent
        try p.join(timeout: .seconds(10))
        try eventually("the grandchild died with its parent") {
            isZombie(grandchild) || Glibc.kill(grandchild, 0) != 0
        }
        #expect(Processes.reapAdoptedOrphan(grandchild, timeout: .seconds(10)))
        #expect(Glibc.kill(grandchild, 0) != 0)
    }

    @Test func noDescriptorLeaksIntoChildren() throws {
        var fds: [Int32] = [0, 0]
        #expect(Glibc.pipe(&fds) == 0)  // deliberately without O_CLOEXEC
        defer {
            close(fds[0])
            close(fds[1])
        }
        let p = ChildProcess(job: DescribeFd(fd: fds[1]))
        try p.start()
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(fds[1])", &buf, 255)
        let mine = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        #expect(mine.hasPrefix("pipe:"))
        let theirs = try p.result(timeout: .seconds(30))
        #expect(theirs != mine)  // not inherited (closed, or the number reused for something else)
        try p.join()
    }

    @Test func daemonChildrenAreTerminatedWhenTheirParentExits() throws {
        try Processes.adoptOrphans()
        let path = "/tmp/mp-daemon-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        defer { unlink(path) }
        let p = ChildProcess(job: DaemonParent(path: path))
        try p.start()
        #expect(try p.result(timeout: .seconds(30)) == 0)
        try p.join(timeout: .seconds(30))
        #expect(p.exitCode == 0)
        let grandchild = try #require(Self.pid(in: path), "no pid file, or no pid in it")
        // The parent's exit terminated (and reaped) its daemon child.
        try eventually("the daemon grandchild ended with its parent") {
            Glibc.kill(grandchild, 0) != 0 || isZombie(grandchild)
        }
        Processes.reapAdoptedOrphan(grandchild, timeout: .seconds(10))
    }

    /// The process id written in the file at `path` (by a job), if the file is there.
    static func pid(in path: String) -> Int32? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var buf = [CChar](repeating: 0, count: 32)
        fgets(&buf, 32, f)
        return Int32(cString(buf).trimmingCharacters(in: .whitespacesAndNewlines)).flatMap { $0 > 0 ? $0 : nil }
    }

    @Test func processesFacts() {
        #expect(Processes.cpuCount >= 1)
        #expect(Processes.currentPID == getpid())
        #expect(Processes.parentPID == getppid())
        #expect(!Processes.isWorker)
    }
}

@Suite(.timeLimit(.minutes(3)))
struct JobWithoutRunTests {
    /// `struct J: Job {}` compiles (the two `run()`s have defaults that call each other); running it
    /// fails at once with a message naming the type, in this process and in a child.
    @Test func aJobWithoutRunFailsAtOnceInsteadOfRecursing() async throws {
        do {
            let _: Void = try await NoRunJob().run()
            Issue.record("a job without run() ran")
        } catch let e as MultiprocessingError {
            #expect(e.code == .unsupportedJob)
            #expect(e.message.contains("NoRunJob implements neither"))
        }
        let p = ChildProcess(job: NoRunJob())
        try p.start()
        let outcome = try await background { Result { try p.result(timeout: .seconds(30)) } }.value
        guard case .failure(let error) = outcome else {
            Issue.record("the child ran it")
            return
        }
        #expect("\(error)".contains("NoRunJob implements neither"), "\(error)")
        _ = try await background { try p.join(timeout: .seconds(30)) }.value
    }

    /// A job that implements only the `Void` `run()` runs it, and one that runs another job from its
    /// own `run()` is not mistaken for one without.
    @Test func jobsThatImplementOneRunAreUnaffected() async throws {
        let _: Void = try await VoidRunner(inner: 3).run()
        let out: NoOutput = try await VoidRunner(inner: 3).run()
        #expect(out == NoOutput())
    }
}

struct VoidRunner: Job {
    let inner: Int
    func run() async throws {
        if inner > 0 { let _: Void = try await VoidRunner(inner: inner - 1).run() }
    }
}

private struct PrivateJob: Job { func run() -> Int { 1 } }

extension String {
    func trimmingCharacters(in _: WhitespaceSet) -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

enum WhitespaceSet { case whitespacesAndNewlines }
