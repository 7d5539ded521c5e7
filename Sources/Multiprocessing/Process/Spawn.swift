internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import SystemPackage
import Threading

/// How a worker process enters worker mode.
public enum WorkerEntry: Sendable {
    /// The default: ``bootstrap`` if this program called ``bootstrap()`` before starting the worker,
    /// else ``beforeMain``. A `main.swift` that declares its constants and then calls `bootstrap()` —
    /// Python's `if __name__ == "__main__":` — gets those constants in its workers, as CPython's spawn
    /// re-imports the main module; programs with `@main`, and test runners, need nothing.
    case automatic
    /// Before `main`, from a load-time constructor: workers never run `main.swift`'s top-level code, so
    /// variables declared there do not exist in them (they read as zero, or crash).
    case beforeMain
    /// When the program calls ``bootstrap()``: the worker runs `main.swift` from the top until that
    /// call, then becomes a worker (it never returns from it). A program using this must call
    /// `bootstrap()` before it does any work of its own (and before it starts processes).
    case bootstrap
}

/// Process-wide settings for starting workers.
public enum WorkerStart {
    nonisolated(unsafe) private static var _entry: WorkerEntry = .automatic  // set before starting workers
    /// This program called ``bootstrap()`` (and is not a worker).
    static let calledBootstrap = Atomic<Bool>(false)

    /// How the next worker enters: ``WorkerEntry/automatic`` resolved.
    static var effectiveEntry: WorkerEntry {
        switch entry {
        case .automatic: calledBootstrap.load(ordering: .relaxed) ? .bootstrap : .beforeMain
        case let e: e
        }
    }
    private static let lock = Lock()

    nonisolated(unsafe) private static var _method: StartMethod = {
        // SWIFT_MP_START_METHOD=spawn|forkserver chooses without changing the program (a whole test suite
        // run both ways, or a program that must not fork).
        guard let v = getenv("SWIFT_MP_START_METHOD") else { return .forkServer }
        return StartMethod(rawValue: String(cString: v)) ?? .forkServer
    }()

    /// How new workers are started: ``StartMethod/forkServer`` unless the environment variable
    /// `SWIFT_MP_START_METHOD` says `spawn`. Python's `multiprocessing.set_start_method`; it applies to
    /// workers started after it is set.
    public static var method: StartMethod {
        get { lock.withLock { _method } }
        set { lock.withLock { _method = newValue } }
    }

    /// Why workers are spawned although ``method`` is ``StartMethod/forkServer``: the fork server was
    /// found unusable in this process (for example, a thread exists before `main`, as under a sanitizer).
    /// `nil` while it is used, or before it was first needed.
    public static var forkServerUnavailableReason: String? { ForkServers.unavailableReason }

    /// How new workers enter worker mode. Set it before starting any.
    public static var entry: WorkerEntry {
        get { lock.withLock { _entry } }
        set { lock.withLock { _entry = newValue } }
    }

    /// For a worker that died of a memory fault after starting before `main`: the likely cause (a job
    /// reading a variable of `main.swift`, which such workers never initialise) and the fix.
    static func startedBeforeMainHint(exitCode: Int32?) -> String? {
        guard exitCode == -SIGSEGV || exitCode == -SIGBUS, effectiveEntry == .beforeMain else { return nil }
        return "If the task reads a variable declared at the top level of main.swift: workers start before "
            + "main and never run main.swift's top-level code. Call bootstrap() in main.swift after those "
            + "declarations (workers then run main.swift down to it), or move them to another file"
    }

    /// Refuses to start a worker that would run a job without `main.swift`'s variables: the program has
    /// top-level code (no `@main` type), did not call ``bootstrap()``, and left ``entry`` at
    /// ``WorkerEntry/automatic``. Such a worker would read those variables as zeroed memory — `0`, `""`,
    /// or a crash — so the start fails with ``MultiprocessingError/Code/bootstrapRequired`` instead,
    /// every time, whether or not any job reads them (CPython refuses the same program under spawn).
    static func checkProgramIsReady() throws(MultiprocessingError) {
        // A worker's own processes enter as it did (a worker that started before main was started so by
        // a program that chose it).
        guard entry == .automatic, !calledBootstrap.load(ordering: .relaxed), !WorkerRuntime.isWorker,
            ProgramShape.hasTopLevelCode
        else { return }
        throw MultiprocessingError(
            .bootstrapRequired,
            "this program starts a process from main.swift before calling bootstrap(), so its workers would "
                + "not have main.swift's variables (they would read as 0, \"\" or crash). Add the line "
                + "`bootstrap()` to main.swift after the declarations your jobs use and before the first line "
                + "that starts a process (Python's `if __name__ == \"__main__\":`); or, if no job reads "
                + "main.swift's variables, set `WorkerStart.entry = .beforeMain` first"
        )
    }

    /// Whether this program's `main` is `main.swift`'s top-level code, as its symbol table shows (no
    /// `@main` type). Such a program calls ``bootstrap()`` before it starts a process. Read once, from the
    /// executable's symbol table (`false` when it has none).
    public static var programHasTopLevelCode: Bool { ProgramShape.hasTopLevelCode }

    /// The executable workers run: this program (`/proc/self/exe` resolved).
    public static var executablePath: String { executable }

    static let executable: String = {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return n > 0
            ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }()
}

/// What kind of program this is, read once from its executable's symbol table.
enum ProgramShape {
    /// The program's `main` is `main.swift`'s top-level code: its symbol table names no `@main` type's
    /// entry (`$main()`, mangled `…5$mainyy…`). `false` for `@main` programs, test runners, and
    /// executables without a symbol table (stripped: then nothing can be told, and nothing is refused).
    static let hasTopLevelCode: Bool =
        ELFSymbolTable.withTable(WorkerStart.executable) { !$0.anyName(contains: "5$mainyy") }
        ?? false
}

/// A started worker: its pid, a pidfd (its sentinel) and the parent's end of the fd-3 channel.
struct SpawnedWorker {
    let pid: Int32
    let pidfd: Int32
    let channel: Connection
}

enum Spawner {
    /// Starts this executable in worker mode with a socket pair end on fd 3.
    /// - Parameters:
    ///   - stderr: a descriptor to become the worker's standard error (a pipe, for pools that keep
    ///   the tail of each worker's stderr), or `nil` to inherit this process's.
    ///   - environment: extra variables, used only where the environment does not set them already.
    ///   - runsJobs: `false` for a helper process that runs no job of the program (the shared-memory
    ///   tracker): it always starts before `main`, and needs no ``bootstrap()``.
    static func spawn(
        stderr: Int32? = nil,
        environment: [String: String] = [:],
        dieWithParent: Bool = true,
        runsJobs: Bool = true
    ) throws -> SpawnedWorker {
        guard !ChildRegistry.exiting.load(ordering: .sequentiallyConsistent) else {
            throw MultiprocessingError(.spawnFailed, "the program is exiting: no new process is started")
        }
        if runsJobs { try WorkerStart.checkProgramIsReady() }
        var (parentEnd, childEnd) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        defer { if childEnd >= 0 { Syscall.close(childEnd) } }
        let mode = runsJobs && WorkerStart.effectiveEntry == .bootstrap ? "b" : "c"
        // Parent-death signal only when spawning from the main thread: PR_SET_PDEATHSIG fires when the
        // spawning *thread* exits, which would kill workers started from short-lived threads. EOF on fd 3
        // covers every case.
        let deathFlag = dieWithParent && mp_is_primary_thread() != 0 ? "d" : ""
        // A process that must outlive its parent (the shared-memory tracker) gets no parent to check:
        // it may still be starting when its parent dies, and must run anyway.
        var base: [String] = []
        var e = environ
        while let p = e.pointee {
            let s = String(cString: p)
            if !s.hasPrefix("SWIFT_MP_WORKER=") && !s.hasPrefix("SWIFT_MP_PARENT=") { base.append(s) }
            e += 1
        }
        for (k, v) in environment.sorted(by: { $0.key < $1.key }) where getenv(k) == nil { base.append("\(k)=\(v)") }
        // The parent's arguments, as CPython's workers get `sys.argv` (the worker is told it is one by
        // its environment, not by an argument that would confuse `main`'s argument parsing).
        let argv = CommandLine.arguments.isEmpty ? [WorkerStart.executable] : CommandLine.arguments
        // Workers that run jobs come from the fork server when it can serve. Spawned: the shared-memory
        // tracker (it outlives the program), and the workers of a program that called bootstrap(), whose main
        // thread must run main.swift (a forked main thread carries the server's thread id in caches of the
        // Swift runtime and libdispatch that nothing resets; a forked worker runs on a new thread instead).
        if runsJobs, mode == "c", WorkerStart.method == .forkServer {
            switch ForkServers.fork(
                environment: base,
                arguments: argv,
                channel: childEnd,
                stderr: stderr,
                bootstrap: false,
                dieWithParent: dieWithParent
            ) {
            case .forked(let pid):
                return try adopt(pid, channel: parentEnd)
            case .unavailable:
                break
            case .lost:
                // A worker may hold this channel: it is ended, and the spawned worker gets a new one.
                Syscall.close(childEnd)
                childEnd = -1
                ForkServers.reapLost(channel: parentEnd)
                (parentEnd, childEnd) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
            }
        }
        var env = ["SWIFT_MP_WORKER=\(mode)"]
        if dieWithParent { env.append("SWIFT_MP_PARENT=\(getpid())\(deathFlag)") }
        env += base
        var pid: pid_t = 0
        let rc = withCStrings(argv) { cargv in
            withCStrings(env) { cenv in mp_spawn(WorkerStart.executable, cargv, cenv, childEnd, stderr ?? -1, &pid) }
        }
        guard rc == 0 else {
            Syscall.close(parentEnd)
            throw MultiprocessingError(
                .spawnFailed,
                "posix_spawn of \(WorkerStart.executable) failed",
                errno: Errno(rawValue: -rc)
            )
        }
        return try adopt(pid, channel: parentEnd)
    }

    /// A started child `pid` (spawned, or forked by the fork server: our child either way) as a worker:
    /// its pidfd and our end of its channel.
    private static func adopt(_ pid: pid_t, channel parentEnd: Int32) throws -> SpawnedWorker {
        switch watch(pid) {
        case .success(let pidfd):
            return SpawnedWorker(pid: pid, pidfd: pidfd, channel: Connection(fileDescriptor: parentEnd))
        case .failure(let e):
            Syscall.close(parentEnd)
            throw MultiprocessingError(.spawnFailed, "pidfd_open failed", errno: e)
        }
    }

    /// A pidfd for `pid`, a child just started. Without one nothing could watch the child, so it is then
    /// killed and reaped, and the error returned.
    static func watch(_ pid: pid_t) -> Result<Int32, Errno> {
        let pidfd = mp_pidfd_open(pid)
        if pidfd >= 0 { return .success(pidfd) }
        Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = try? SystemCall.reap(pid, status: &status)
        return .failure(Errno(rawValue: -pidfd))
    }

    /// Starts a worker whose standard error is a pipe this process reads: returns the worker and the
    /// pipe's read end (non-blocking, the caller's to close). `crashReport` sets what a crash writes
    /// (`SWIFT_BACKTRACE`, unless the environment sets it).
    static func spawnCapturingStderr(_ crashReport: CrashReport) throws -> (SpawnedWorker, stderr: Int32) {
        let (errRead, errWrite) = try Syscall.pipe()
        defer { Syscall.close(errWrite) }
        do {
            let w = try spawn(stderr: errWrite, environment: ["SWIFT_BACKTRACE": crashReport.environment])
            Syscall.setNonBlocking(errRead)
            return (w, errRead)
        } catch {
            Syscall.close(errRead)
            throw error
        }
    }

    static func withCStrings<R>(
        _ strings: [String],
        _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R
    ) -> R {
        let cstrings = strings.map { strdup($0) } + [nil]
        defer { for p in cstrings { free(p) } }
        return cstrings.withUnsafeBufferPointer { body($0.baseAddress!) }
    }
}
