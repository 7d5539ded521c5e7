import Foundation
import Glibc
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import Multiprocessing

/// What a worker reports about itself, to tell how it was started.
struct ProcessFacts: Job {
    let variable: String
    struct Output: Codable, Sendable, Equatable {
        /// The start of the executable's first mapping: equal in two workers forked from one server,
        /// different (address-space randomisation) in two spawned ones.
        var imageBase: String
        var parent: Int32
        var variable: String?
        var directory: String
        /// Device and inode of descriptors 0 and 1.
        var standardStreams: [String]
    }
    func run() throws -> Output {
        let maps = (try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)) ?? ""
        let base = maps.split(separator: "-", maxSplits: 1).first.map(String.init) ?? ""
        return Output(
            imageBase: base,
            parent: getppid(),
            variable: getenv(variable).map { String(cString: $0) },
            directory: FileManager.default.currentDirectoryPath,
            standardStreams: [0, 1].map(ForkServerTests.identity)
        )
    }
}

/// Holds a `Mutex` on the job's thread while another thread blocks on it in the kernel, then lets go: a
/// priority-inheritance unlock, which the kernel refuses to a thread whose cached thread id is not its
/// own. (A forked copy of the server's main thread could carry such a cache; jobs run on a new thread.)
struct ContendedMutex: Job {
    func run() throws -> Int {
        let mutex = Mutex(0)
        let waiterTid = Atomic<Int32>(0)
        return try mutex.withLock { value -> Int in
            let waiter = OSThread {
                waiterTid.store(OSThread.current.nativeID ?? -1, ordering: .releasing)
                mutex.withLock { $0 += 1 }
            }
            try waiter.start()
            // Until the waiter sleeps in the kernel on the lock (state S in its stat line).
            var tid: Int32 = 0
            while tid == 0 { tid = waiterTid.load(ordering: .acquiring) }
            while true {
                let stat = (try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8)) ?? ""
                if let close = stat.lastIndex(of: ")"), stat[stat.index(close, offsetBy: 2)] == "S" { break }
                sched_yield()
            }
            value = 41
            return 1
        } + 0
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct ForkServerTests {
    static func identity(_ fd: Int32) -> String {
        var st = stat()
        return fstat(fd, &st) == 0 ? "\(st.st_dev):\(st.st_ino)" : "closed"
    }

    /// Why this process cannot use the fork server (after trying it once), or `nil` when it can: the
    /// tests that need it are skipped with this reason.
    static let unusable: String? = {
        if WorkerStart.method != .forkServer { return "workers are spawned in this run (SWIFT_MP_START_METHOD=spawn)" }
        _ = try? facts()
        return WorkerStart.forkServerUnavailableReason.map { "the fork server is not usable here: \($0)" }
    }()

    static func facts(_ variable: String = "MP_FORK_SERVER_TEST") throws -> ProcessFacts.Output {
        let p = ChildProcess(job: ProcessFacts(variable: variable))
        try p.start()
        defer { _ = try? p.join(timeout: .seconds(30)) }
        return try p.result(timeout: .seconds(30))
    }

    /// Workers are forked by one server (same image base, unlike spawned programs), yet are this
    /// program's children, with its working directory and standard streams.
    @Test(.enabled(if: unusable == nil, "\(unusable ?? "")"))
    func workersAreForkedChildrenOfTheProgram() throws {
        let first = try Self.facts()
        let before = ForkServers.forked.load(ordering: .relaxed)
        let second = try Self.facts()
        #expect(ForkServers.forked.load(ordering: .relaxed) > before)
        #expect(first.parent == getpid() && second.parent == getpid())
        let randomised =
            (try? String(contentsOfFile: "/proc/sys/kernel/randomize_va_space", encoding: .utf8))?
            .hasPrefix("0") == false
        if randomised { #expect(first.imageBase == second.imageBase) }
        #expect(second.directory == FileManager.default.currentDirectoryPath)
        #expect(second.standardStreams == [0, 1].map(Self.identity))
    }

    /// A lock contended inside a forked worker is released by its holder. (With this toolchain it passed
    /// with jobs on the copied main thread too: it guards against a regression, it does not show the
    /// hazard the new thread avoids.)
    @Test(
        .disabled(
            if: sanitizer == "thread",
            "Synchronization.Mutex's futex hand-over is not instrumented: ThreadSanitizer reports the value it guards"
        )
    )
    func aContendedLockInAForkedWorkerIsReleased() throws {
        let p = ChildProcess(job: ContendedMutex())
        try p.start()
        #expect(try p.result(timeout: .seconds(60)) == 1)
        #expect(try p.join(timeout: .seconds(30)))
        #expect(p.exitCode == 0)
    }

    /// A variable the program sets after the server started reaches new workers, as with spawn: the
    /// server is chosen by the environment workers are to get.
    @Test func theEnvironmentIsTheProgramsAtEachStart() throws {
        let name = "MP_FORK_SERVER_TEST_\(getpid())"
        #expect(try Self.facts(name).variable == nil)
        setenv(name, "set later", 1)
        defer { unsetenv(name) }
        #expect(try Self.facts(name).variable == "set later")
        unsetenv(name)
        #expect(try Self.facts(name).variable == nil)
    }

    /// A server that dies is reaped and replaced at the next start: workers keep coming.
    @Test(.enabled(if: unusable == nil, "\(unusable ?? "")"))
    func aKilledServerIsReapedAndReplaced() throws {
        _ = try Self.facts()
        let servers = ForkServers.serverPIDs
        #expect(!servers.isEmpty)
        for pid in servers { kill(pid, SIGKILL) }
        // The next start finds its server gone, reaps it and starts another (or spawns, if it cannot).
        #expect(try Self.facts().parent == getpid())
        #expect(try Self.facts().parent == getpid())
        var status: Int32 = 0
        for pid in servers where !ForkServers.serverPIDs.contains(pid) {
            // Reaped by the library: no longer our child (a zombie would still be).
            #expect(waitpid(pid, &status, WNOHANG) == -1)
        }
        #expect(WorkerStart.forkServerUnavailableReason == nil)
    }

    /// After a lost request, the worker that was forked with the channel anyway is found through its
    /// `ready` message, killed and reaped: it is this program's child, and nothing else would reap it.
    @Test(.enabled(if: unusable == nil, "\(unusable ?? "")"))
    func theWorkerOfALostRequestIsReaped() throws {
        let (mine, theirs) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        let outcome = ForkServers.fork(
            environment: Self.environment(),
            arguments: CommandLine.arguments,
            channel: theirs,
            stderr: nil,
            bootstrap: false,
            dieWithParent: true
        )
        Syscall.close(theirs)
        guard case .forked(let pid) = outcome else {
            Issue.record("no worker forked: \(outcome)")
            Syscall.close(mine)
            return
        }
        // As the spawn path does when the server's answer is lost: only the channel is known.
        ForkServers.reapLost(channel: mine)
        // Reaped by the library: the pid is gone (a zombie, or a live worker, still answers kill(pid, 0)).
        // The test never waits for it itself, which would reap it in the library's place.
        let deadline = Deadline.after(.seconds(60))!
        while kill(pid, 0) == 0, !deadline.hasPassed { sched_yield() }
        #expect(kill(pid, 0) == -1 && errno == ESRCH, "worker \(pid) was not reaped")
    }

    /// The environment a worker started now would get (as `Spawner` builds it).
    static func environment() -> [String] {
        var out: [String] = []
        var e = environ
        while let p = e.pointee {
            out.append(String(cString: p))
            e += 1
        }
        return out
    }

    /// A program that used the fork server reaps it before it exits: nothing of it outlives the program.
    @Test(.enabled(if: unusable == nil, "\(unusable ?? "")"))
    func theServerEndsWithTheProgram() throws {
        guard let helper = builtExecutable("mp-test-helper") else { return }
        let r = try runTestHelper(helper, ["fork-server"])
        #expect(r.status == 0, "\(r.err)")
        guard let line = r.out.split(separator: "\n").first(where: { $0.hasPrefix("servers ") }) else {
            Issue.record("no servers line: \(r.out)")
            return
        }
        let pids = line.dropFirst("servers ".count).split(separator: " ").compactMap { Int32($0) }
        #expect(!pids.isEmpty, "the helper used no fork server: \(r.out)")
        for pid in pids { #expect(kill(pid, 0) == -1 && errno == ESRCH, "fork server \(pid) outlived its program") }
    }
}
