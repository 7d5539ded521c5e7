internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import SystemPackage
import Threading

/// How workers are started — Python's start methods (`multiprocessing.set_start_method`).
///
/// Both give a worker the same program, arguments, environment, working directory and standard streams
/// as the program has when the worker starts; they differ in cost and in what a worker shares with its
/// siblings (see <doc:StartMethods>).
public enum StartMethod: String, Sendable, CaseIterable {
    /// Workers are forked by a fork server: a copy of this program started once, the first time a worker
    /// is needed, that forks each worker while it is still single-threaded, before `main` and before any
    /// Swift code has run in it. About ten times faster to a ready worker than ``spawn``. The default.
    ///
    /// Where it cannot be used safely (a library linked into the program started a thread at load time,
    /// as sanitizers do; a kernel without `PR_GET_TID_ADDRESS`), workers are spawned instead and
    /// ``WorkerStart/forkServerUnavailableReason`` says why.
    case forkServer = "forkserver"
    /// Every worker re-executes the program (`posix_spawn` of `/proc/self/exe`): nothing is shared with
    /// any other process, at the cost of loading and initialising the program and its libraries again
    /// (6–8 ms per worker here).
    case spawn
}

/// One fork server: its pid, a pidfd, and our end of its control socket (a `SOCK_SEQPACKET` pair).
///
/// A request is one message, ``mp_fork_request``, carrying the worker's channel, the working directory
/// and the standard streams as `SCM_RIGHTS`; the answer is the worker's pid. Workers are this program's
/// children (the server clones them with `CLONE_PARENT`), reaped and watched like spawned ones.
final class ForkServer: Sendable {
    let pid: Int32
    private let pidfd: Int32
    /// What its workers inherit from it that a request cannot change: the environment (the program's when
    /// the server started, with the start's extra variables) and the program's credentials.
    let identity: Identity

    struct Identity: Equatable {
        /// Sorted: the order of the variables does not make another environment.
        var environment: [String]
        /// Real and effective user and group ids: a program that changes them gets workers with the new ones.
        var credentials: [UInt32]

        init(environment: [String]) {
            self.environment = environment.sorted()
            credentials = [getuid(), geteuid(), getgid(), getegid()]
        }
    }
    /// Our end of the control socket; -1 once closed. Held for a whole request: one at a time.
    private let control: Mutex<Int32>

    private init(pid: Int32, pidfd: Int32, control: Int32, environment: [String]) {
        self.pid = pid
        self.pidfd = pidfd
        self.control = Mutex(control)
        identity = Identity(environment: environment)
    }

    /// Why a server could not be used.
    struct Failure: Error {
        enum Kind {
            /// No request reached a server: the worker's channel is untouched.
            case notSent
            /// The server answered that it could not fork (an errno such as `EAGAIN`): it is healthy, and
            /// nothing holds the channel.
            case refused
            /// The request was sent and no usable answer came (the server died, or did not answer in time):
            /// a worker may have been forked with the channel.
            case lost
            /// No server can work in this process (see ``WorkerStart/forkServerUnavailableReason``).
            case permanent
        }
        let reason: String
        let kind: Kind
    }

    /// Starts a server (this executable, worker mode `f`) and waits for its first answer.
    static func start(environment: [String], arguments: [String], timeout: Duration) throws(Failure) -> ForkServer {
        let pair: (Int32, Int32)
        do { pair = try SystemCall.socketpair(Int32(SOCK_SEQPACKET.rawValue)) } catch {
            throw Failure(reason: "socketpair: \(error)", kind: .notSent)
        }
        let (mine, theirs) = pair
        defer { SystemCall.close(theirs) }
        // The parent-death signal fires when the *thread* that started the server exits, so it is asked for
        // only from the main thread (as for spawned workers); the end of the control socket covers the rest.
        let deathFlag = mp_is_primary_thread() != 0 ? "d" : ""
        let env = ["SWIFT_MP_WORKER=f", "SWIFT_MP_PARENT=\(getpid())\(deathFlag)"] + environment
        var pid: pid_t = 0
        let rc = Spawner.withCStrings(arguments) { cargv in
            Spawner.withCStrings(env) { cenv in mp_spawn(WorkerStart.executable, cargv, cenv, theirs, -1, &pid) }
        }
        guard rc == 0 else {
            SystemCall.close(mine)
            throw Failure(reason: "posix_spawn: \(Errno(rawValue: -rc))", kind: .notSent)
        }
        let pidfd: Int32
        switch Spawner.watch(pid) {
        case .success(let fd): pidfd = fd
        case .failure(let e):
            SystemCall.close(mine)
            throw Failure(reason: "pidfd_open: \(e)", kind: .notSent)
        }
        let server = ForkServer(pid: pid, pidfd: pidfd, control: mine, environment: environment)
        do throws(Failure) {
            let hello = try server.control.withLock { fd throws(Failure) in
                try receiveReply(fd, deadline: Deadline.after(timeout))
            }
            if hello.error != 0 {
                let e = Errno(rawValue: hello.error)
                // A process limit hit by its self-test child: the next start may succeed.
                let transient = e == .resourceTemporarilyUnavailable || e == .noMemory
                throw Failure(
                    reason: transient ? "its self-test could not start a process: \(e)" : helloReason(e),
                    kind: transient ? .notSent : .permanent
                )
            }
        } catch {
            server.shutDown()  // a server that declined, or did not answer: closed and reaped once, here
            throw error
        }
        return server
    }

    private static func helloReason(_ e: Errno) -> String {
        switch e {
        case .deadlock: "the program has more than one thread before main (a sanitizer, or a library that starts one)"
        case .notSupported: "the C library's thread descriptor is not laid out as expected"
        case .resourceBusy:
            "a second thread was running once the server had prepared itself (a sanitizer's runtime starts one)"
        case .noSuchFileOrDirectory: "/proc is not mounted: whether forking is safe cannot be told"
        case .noFunction: "this architecture's clone() is not supported by the fork server"
        default: "the kernel refused what forking safely needs (prctl(PR_GET_TID_ADDRESS) or get_robust_list): \(e)"
        }
    }

    /// Forks a worker: `channel` becomes its descriptor 3, `stderr` (or this program's) its standard error.
    func fork(
        channel: Int32,
        stderr: Int32?,
        bootstrap: Bool,
        dieWithParent: Bool,
        timeout: Duration
    ) throws(Failure) -> Int32 {
        let cwd: Int32
        do { cwd = try SystemCall.open(".", MP_O_PATH | O_DIRECTORY | O_CLOEXEC) } catch {
            throw Failure(reason: "the working directory cannot be opened: \(error)", kind: .notSent)
        }
        defer { SystemCall.close(cwd) }
        var flags: UInt32 = (bootstrap ? MP_FORK_BOOTSTRAP : 0) | (dieWithParent ? MP_FORK_DIE_WITH_PARENT : 0)
        var fds = [channel, cwd]
        for s: Int32 in 0..<3 {
            let fd = s == 2 ? (stderr ?? 2) : s
            // A stream the program has closed is closed in the worker too, as a spawned one would have it.
            if SystemCall.isOpen(fd) {
                fds.append(fd)
                flags |= MP_FORK_HAS_STDIN << UInt32(s)
            }
        }
        let request = mp_fork_request(magic: MP_FORK_MAGIC, flags: flags)
        let reply = try control.withLock { fd throws(Failure) in
            guard fd >= 0 else { throw Failure(reason: "the fork server was shut down", kind: .notSent) }
            do {
                // One SOCK_SEQPACKET message: the server gets all of it with its descriptors, or nothing.
                _ = try withUnsafeBytes(of: request) { p throws(SystemCallError) in
                    try SystemCall.sendWithDescriptors(fd, p, fds: fds)
                }
            } catch {
                throw Failure(reason: "the request could not be sent: \(error)", kind: .notSent)
            }
            do throws(Failure) {
                return try Self.receiveReply(fd, deadline: Deadline.after(timeout))
            } catch {
                throw Failure(reason: error.reason, kind: .lost)
            }
        }
        guard reply.error == 0, reply.pid > 0 else {
            throw Failure(reason: "fork failed: \(Errno(rawValue: reply.error))", kind: .refused)
        }
        return reply.pid
    }

    private static func receiveReply(_ fd: Int32, deadline: Deadline?) throws(Failure) -> mp_fork_reply {
        var reply = mp_fork_reply(pid: 0, error: 0)
        do {
            let revents = try SystemCall.poll(fd, events: Int16(POLLIN), timeoutMs: Deadline.pollTimeout(deadline))
            guard revents != 0 else { throw Failure(reason: "no answer in time", kind: .notSent) }
            let n = try withUnsafeMutableBytes(of: &reply) { p throws(SystemCallError) in
                try SystemCall.recv(fd, p, blocking: true)
            }
            guard n.value == MemoryLayout<mp_fork_reply>.size else {
                throw Failure(reason: n.value == 0 ? "it exited" : "a malformed answer", kind: .notSent)
            }
        } catch let error as Failure {
            throw error
        } catch {
            throw Failure(reason: "\(error)", kind: .notSent)
        }
        return reply
    }

    /// Closes the control socket (the server exits at its end) and reaps the server: at once if it has
    /// exited within a second, else after `SIGKILL`.
    func shutDown() {
        let fd = control.withLock { fd in
            defer { fd = -1 }
            return fd
        }
        guard fd >= 0 else { return }
        SystemCall.close(fd)
        if (try? SystemCall.poll(pidfd, events: Int16(POLLIN), timeoutMs: 1000)) ?? 0 == 0 {
            _ = mp_pidfd_send_signal(pidfd, SIGKILL)
        }
        var status: Int32 = 0
        _ = try? SystemCall.reap(pid, status: &status)
        SystemCall.close(pidfd)
    }
}

/// The fork servers of this program: one per environment its workers were started with (a few at most,
/// the least recently used shut down first), started on first use.
enum ForkServers {
    private struct State {
        var servers: [ForkServer] = []  // most recently used last
        var unavailable: String?
        var consecutiveFailures = 0
    }
    private static let state = Mutex(State())
    private static let capacity = 3
    /// A server that dies or fails this many times in a row is not started again.
    private static let failureLimit = 3
    private static let timeout = Duration.seconds(30)

    /// Workers forked so far (for tests and statistics).
    static let forked = Atomic<Int>(0)

    /// The servers running now.
    static var serverPIDs: [Int32] { state.withLock { $0.servers.map(\.pid) } }

    /// Why workers are spawned instead, once the fork server was found unusable.
    static var unavailableReason: String? { state.withLock { $0.unavailable } }

    /// What became of a request for a worker.
    enum Outcome {
        /// The worker was forked: its pid (a child of this program).
        case forked(Int32)
        /// No fork server can serve now: spawn the worker, with the same channel.
        case unavailable
        /// A request was sent and lost: a worker may hold the channel. Spawn with a new one (see
        /// ``reapLost(channel:)``).
        case lost
    }

    /// A worker forked by the server for `environment` (one is started if none serves it).
    static func fork(
        environment: [String],
        arguments: [String],
        channel: Int32,
        stderr: Int32?,
        bootstrap: Bool,
        dieWithParent: Bool
    ) -> Outcome {
        let identity = ForkServer.Identity(environment: environment)
        return state.withLock { s -> Outcome in
            // Checked again here: a server started after the exit-time clean-up would outlive the program.
            guard s.unavailable == nil, !ChildRegistry.exiting.load(ordering: .sequentiallyConsistent) else {
                return .unavailable
            }
            let server: ForkServer
            if let i = s.servers.firstIndex(where: { $0.identity == identity }) {
                server = s.servers.remove(at: i)
            } else {
                do throws(ForkServer.Failure) {
                    server = try ForkServer.start(environment: environment, arguments: arguments, timeout: timeout)
                } catch {
                    failed(&s, error)
                    return .unavailable
                }
                if s.servers.count >= capacity { s.servers.removeFirst().shutDown() }
            }
            do throws(ForkServer.Failure) {
                let pid = try server.fork(
                    channel: channel,
                    stderr: stderr,
                    bootstrap: bootstrap,
                    dieWithParent: dieWithParent,
                    timeout: timeout
                )
                s.servers.append(server)
                s.consecutiveFailures = 0
                forked.add(1, ordering: .relaxed)
                return .forked(pid)
            } catch {
                if error.kind == .refused {
                    // The server is fine; the system refused a process (a limit): spawning says the same.
                    s.servers.append(server)
                    return .unavailable
                }
                server.shutDown()
                failed(&s, error)
                return error.kind == .lost ? .lost : .unavailable
            }
        }
    }

    private static func failed(_ s: inout State, _ error: ForkServer.Failure) {
        s.consecutiveFailures += 1
        if error.kind == .permanent {
            s.unavailable = error.reason
        } else if s.consecutiveFailures >= failureLimit {
            s.unavailable = "the fork server failed \(s.consecutiveFailures) times in a row, last: \(error.reason)"
        }
    }

    /// After a lost request: a worker forked with this channel announces itself (`ready` with its pid)
    /// if it exists; it is then killed and reaped (it is this program's child). The wait is a daemon
    /// thread's, a minute at most (a lost request usually means a loaded machine), so the caller goes on at
    /// once. Takes `channel` (closes it). With no such worker the read ends at once (nothing else holds
    /// the other end); one silent for a minute ends by itself at the channel's end.
    static func reapLost(channel: Int32) {
        let c = Connection(fileDescriptor: channel)
        let waiter = OSThread(name: "mp-fork-lost", daemon: true) {
            defer { c.close() }
            guard let bytes = try? c.recvBytes(timeout: .seconds(60)),
                case .ready(let pid)? = try? c.decodeMessage(FromWorker.self, bytes), pid > 0
            else { return }
            kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = try? SystemCall.reap(pid, status: &status)
        }
        do { try waiter.start() } catch { c.close() }
    }

    /// Shuts every server down (at exit): each exits at the end of its control socket and is reaped.
    static func shutDownAll() {
        let servers = state.withLock { s in
            defer { s.servers = [] }
            return s.servers
        }
        for server in servers { server.shutDown() }
    }
}

/// Called by the fork server once, before it answers its first request, with no other thread running:
/// runs, on values that go nowhere, the codec work every worker does first (its messages' `Codable`
/// conformances and the generic types the codec instantiates), so that the Swift runtime's caches hold
/// the answers before the server forks. Measured: a third of a new worker's CPU time was these first
/// conformance look-ups. Nothing here starts a thread, opens a descriptor or initialises a global that
/// depends on which process runs it (the server checks its thread count again afterwards).
@_cdecl("mp_fork_server_prepare")
func forkServerPrepare() {
    ForkPreparation.warmUp()
    ForkPreparation.touch(TrackedMutex<[UInt64: Int]>.self)
    let setup = PoolSetup(
        slot: PassedDescriptor(-1),
        wake: PassedDescriptor(-1),
        initializer: [],
        initializerType: "",
        memoryLimit: 0
    )
    for message in [ToWorker.run(id: 0, typeName: "", payload: []), .shutdown, .pool(setup)] {
        guard let (bytes, sent) = try? MessageCodec.encode(message) else { continue }
        var fds = sent
        _ = try? MessageCodec.decode(ToWorker.self, from: bytes, fds: &fds)
    }
    let error = WireError(MultiprocessingError(.encodingFailed, ""), pid: 0)
    for message in [FromWorker.ready(pid: 0), .result(id: 0, payload: []), .failure(id: 0, error)] {
        guard let (bytes, sent) = try? MessageCodec.encode(message) else { continue }
        var fds = sent
        _ = try? MessageCodec.decode(FromWorker.self, from: bytes, fds: &fds)
    }
}
