import Glibc
import Logging
import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingManagers
import MultiprocessingNetwork
import MultiprocessingSQL
import MultiprocessingServices
import ServiceLifecycle
import SystemCalls
import Threading
import UnixSignals

// mp-test-helper: programs the test suites run as separate processes (they need a `main` of their own,
// a terminal-like signal set-up, or to die of SIGINT). Not shipped: it is not a product.
//   mp-test-helper bootstrap-check              a worker that enters through `bootstrap()`
//   mp-test-helper pool-interrupt-check [teardown]   a busy pool waiting for Ctrl-C
//   mp-test-helper globals-check               pool jobs reading main.swift's top-level constants
//   mp-test-helper manager-server [NOFILE]     a manager server (RLIMIT_NOFILE lowered to NOFILE): prints
//                                              `port P`, serves until a client asks it to shut down
//   mp-test-helper listener-server NOFILE      a Listener's accept loop echoing messages, likewise
//   mp-test-helper pool-nofile NOFILE          a pool whose parent runs out of descriptors and recovers
//   mp-test-helper mariadb-connect URL         connects (loading the client library: MP_MARIADB_LIBRARY)
//                                              and reads `SELECT 1`; prints `ok` or the error
//   mp-test-helper progress-bar N               `pool.map` of N items with `.progressBar`, then a line
//   mp-test-helper fork-server                  a ChildProcess, then prints `servers PID...`: the children
//                                              left (the fork server), which must not outlive this program
//   mp-test-helper service-group URL N MS      a ServiceGroup of a pool, a manager server and a queue
//                                              worker on the queue at URL, N jobs of MS ms queued; prints
//                                              `port P`; SIGTERM drains it, then `group ended: ok`
//   mp-test-helper child-crash                  a ChildProcess whose job writes a line to stderr and crashes;
//                                              prints the error, its first line, and the report's size

// Top-level constants, declared above `bootstrap()` as a ported Python program declares its globals.
let multiplier = 20
let greeting = "hello from main.swift"
let table = ["a": 1, "b": 2]

/// Reads the constants above; in a worker they exist only if it ran main.swift down to `bootstrap()`.
struct ReadGlobals: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> String {
        "\(x * multiplier) \(greeting) \(table["b"] ?? -1) args=\(CommandLine.arguments.dropFirst().joined(separator: ","))"
    }
}

/// Says something on standard error, then dies of a fatal error (`child-crash`).
struct CrashingJob: Job {
    let item: Int
    func run() -> Int {
        _ = "before the crash\n".withCString { write(2, $0, strlen($0)) }
        if item == 4242 { fatalError("bad item \(item)") }
        return item
    }
}

/// Adds one; the pool's job in `pool-nofile`.
/// A job that does nothing (the fork-server scenario only needs a worker).
struct NoWork: Job {
    func run() {}
}

struct Increment: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Int { x + 1 }
}

/// Lowers this process's soft descriptor limit (`RLIMIT_NOFILE`) to `n`.
func lowerDescriptorLimit(to n: Int) {
    var rl = rlimit()
    getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl)
    rl.rlim_cur = rlim_t(n)
    guard setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl) == 0 else {
        print("error: setrlimit failed")
        exit(1)
    }
}

bootstrap()
Processes.lineBufferStandardOutput()
let args = Array(CommandLine.arguments.dropFirst())
let command = args.first ?? ""

/// `mp-test-helper bootstrap-check`: starts a worker that enters through `bootstrap()` instead of the pre-main hook.
struct BootstrapCheck: Job {
    let x: Int
    func run() -> Int { x + 1 }
}

/// Squares `n` after `pauseMs` of work (`service-group`'s jobs).
struct PausedSquare: Job {
    let n: Int
    let pauseMs: Int
    func run() -> Int {
        usleep(UInt32(pauseMs) * 1000)
        return n * n
    }
}

/// Sleeps; the interrupt check's long task.
struct SleepSeconds: Job {
    let seconds: Int
    func run() async throws -> NoOutput {
        try await Task.sleep(for: .seconds(seconds))
        return NoOutput()
    }
}

switch command {
case "globals-check":
    // The default entry (automatic): this program called bootstrap(), so workers run main.swift to it.
    // `globals-check before-main`: workers start before main, as in a program without bootstrap().
    if args.dropFirst().first == "before-main" { WorkerStart.entry = .beforeMain }
    do {
        let pool = try ProcessPool(workers: 2)
        for line in try pool.map(ReadGlobals(), [1, 2]) { print(line) }
        pool.close()
        _ = try pool.join(timeout: .seconds(30))
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "bootstrap-check":
    WorkerStart.entry = .bootstrap
    let p = ChildProcess(job: BootstrapCheck(x: 41))
    do {
        try p.start()
        let v = try p.result(timeout: .seconds(30))
        try p.join(timeout: .seconds(30))
        print("bootstrap worker \(p.pid!) answered \(v), exit code \(p.exitCode!)")
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "pool-interrupt-check":
    // For the Ctrl-C test: a pool with the default interrupt handling, busy with long tasks; prints its
    // workers' pids, then waits. The test sends SIGINT (once or twice) and checks that nothing survives.
    // As in a terminal: a test runner may start us with SIGINT ignored or blocked.
    signal(SIGINT, SIG_DFL)
    var unblock = sigset_t()
    sigemptyset(&unblock)
    sigaddset(&unblock, SIGINT)
    pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
    // `mp-test-helper pool-interrupt-check teardown`: the `.tearDown` behaviour (the program carries on).
    let carryOn = args.dropFirst().first == "teardown"
    do {
        let pool = try ProcessPool(
            workers: 2,
            options: ProcessPoolOptions(interrupt: carryOn ? .tearDown : .tearDownAndExit)
        )
        let tasks = try (0..<4).map { _ in try pool.submit(SleepSeconds(seconds: 60)) }
        while pool.workerPIDs.count < 2 { usleep(1000) }
        print("pids: \(pool.workerPIDs.map(String.init).joined(separator: " "))")
        fflush(nil)
        do {
            _ = try tasks[0].get(timeout: .seconds(60))
        } catch let e as PoolError where e.code == .interrupted {
            _ = try? pool.join(timeout: .seconds(5))
            print("interrupted: \(e.message); workers left: \(pool.workerPIDs.count)")
            exit(0)
        } catch {}
        print("not interrupted")
        exit(3)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "manager-server":
    // For the hostile-client tests: a manager server in a process of its own, so that a crash is seen as
    // one. With NOFILE, its descriptor limit is lowered first (a busy server meeting its limit).
    if let n = args.dropFirst().first.flatMap(Int.init) { lowerDescriptorLimit(to: n) }
    do {
        var logger = Logger(label: "manager-server") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .notice
        let server = try ManagerServer(authkey: Array("abc".utf8), logger: logger)
        try server.start()
        guard case .tcp(_, let port) = server.address else { exit(1) }
        print("port \(port)")
        _ = server.wait()
        print("shut down")
        exit(0)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "service-group":
    // A server's ServiceGroup with the library's three services; the test sends SIGTERM mid-run.
    guard args.count >= 4, let n = Int(args[2]), let pauseMs = Int(args[3]) else { exit(2) }
    do {
        var logger = Logger(label: "service-group") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .notice
        let url = try DatabaseURL(args[1])
        _ = try JobQueue(url).enqueue((0..<n).map { PausedSquare(n: $0, pauseMs: pauseMs) })
        let pool = try ProcessPool(workers: 2, options: ProcessPoolOptions(interrupt: .ignore))
        let worker = try QueueWorker(
            url,
            pool: pool,
            options: QueueWorkerOptions(pollInterval: .milliseconds(20), shutdownGrace: .seconds(60), logger: logger)
        )
        let server = try ManagerServer(authkey: Array("abc".utf8), logger: logger)
        _ = server.registerQueue("get_queue")
        guard case .tcp(_, let port) = server.address else { exit(1) }
        // Listed pool first: the group stops them in reverse, the queue worker (which uses the pool) first.
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: pool), .init(service: server), .init(service: worker)],
                gracefulShutdownSignals: [.sigterm],
                logger: logger
            )
        )
        let ended = Threading.Event()
        let outcome = TrackedMutex("")
        // Detached: top-level code is the main actor's, whose thread waits below.
        Task.detached {
            do {
                try await group.run()
                outcome.withLock { $0 = "ok" }
            } catch {
                outcome.withLock { $0 = "\(error)" }
            }
            ended.set()
        }
        print("port \(port)")
        fflush(nil)
        ended.wait()
        let result = outcome.withLock { $0 }
        print("group ended: \(result); pool workers left: \(pool.workerPIDs.count)")
        exit(result == "ok" ? 0 : 1)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "listener-server":
    // A user's own accept loop on a Listener: each client on a thread of its own, echoing messages.
    if let n = args.dropFirst().first.flatMap(Int.init) { lowerDescriptorLimit(to: n) }
    do {
        let listener = try Listener(authkey: Array("abc".utf8))
        guard case .tcp(_, let port) = listener.address else { exit(1) }
        print("port \(port)")
        var exhausted = 0
        while true {
            let accepted: AcceptedConnection
            do {
                accepted = try listener.acceptConnection(timeout: .seconds(60))
            } catch let e as MultiprocessingError where e.code == .resourceExhausted {
                exhausted += 1
                if exhausted == 1 { print("exhausted: \(e)") }
                continue
            }
            let t = OSThread(name: "echo", daemon: true) {
                guard let c = try? listener.authenticate(accepted).connection else { return }
                defer { c.close() }
                while let m = try? c.recvBytes() {
                    if m == Array("stop".utf8) {
                        print("stopping")
                        exit(0)
                    }
                    guard (try? c.sendBytes(m)) != nil else { return }
                }
            }
            if (try? t.start()) == nil { accepted.connection.close() }
        }
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "pool-nofile":
    // The pool's parent out of descriptors: a worker dies and cannot be replaced while the descriptors
    // are taken; once they are given back, the pool replaces it and serves again.
    let limit = args.dropFirst().first.flatMap(Int.init) ?? 64
    lowerDescriptorLimit(to: limit)
    do {
        let pool = try ProcessPool(workers: 2)
        print("first: \(try pool.map(Increment(), [1, 2, 3]))")
        // Take every descriptor left.
        var taken: [Int32] = []
        while true {
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            if fd < 0 { break }
            taken.append(fd)
        }
        print("took \(taken.count) descriptors")
        let victim = pool.workerPIDs[0]
        kill(victim, SIGKILL)
        // While out of descriptors: a submission may fail (a clear error) or run on the worker left; the
        // process must neither trap nor hang.
        do {
            print("exhausted: \(try pool.map(Increment(), [10, 20], timeout: .seconds(20)))")
        } catch {
            print("exhausted: error \(error)")
        }
        for fd in taken { close(fd) }
        print("released")
        print("after: \(try pool.map(Increment(), Array(0..<10), timeout: .seconds(60)))")
        pool.close()
        _ = try pool.join(timeout: .seconds(30))
        print("done")
        exit(0)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "mariadb-connect":
    // The client library is loaded once per process: each library under test gets a process of its own.
    do {
        let db = try MariaDBConnection(try DatabaseURL(args.dropFirst().first ?? ""), timeout: .seconds(10))
        _ = try db.forEachRow("SELECT 1", [], columns: { _ in }, { _ in })
        db.close()
        print("ok")
    } catch {
        print("error: \(error)")
    }
    exit(0)
case "child-crash":
    let p = ChildProcess(job: CrashingJob(item: 4242))
    try p.start()
    do {
        _ = try p.result(timeout: .seconds(30))
        print("no error")
    } catch let e as MultiprocessingError {
        print("message: \(e.message)")
        print("report lines: \(e.crashReport?.split(separator: "\n").count ?? 0)")
        print("report on the process: \(p.crashReport != nil)")
    }
    _ = try p.join(timeout: .seconds(30))
    exit(0)
case "progress-bar":
    // Issue 25: the bar must reach N/N and end its line before `map` returns, so the next print starts a
    // line of its own.
    let n = Int(args.dropFirst().first ?? "") ?? 2000
    let pool = try ProcessPool(workers: 2)
    let results = try pool.map(Increment(), Array(0..<n), chunksize: 10, options: .progressBar)
    print("\(results.count) results")
    pool.close()
    try pool.join(timeout: .seconds(30))
    exit(0)
case "fork-server":
    // A worker from the fork server; then this program's remaining children (the server, once the worker
    // is joined; started from this, the main, thread), which must all be gone when this program has exited.
    // Entered before main: workers of a program that relies on bootstrap() are spawned, not forked.
    WorkerStart.entry = .beforeMain
    let p = ChildProcess(job: NoWork())
    try p.start()
    _ = try p.join(timeout: .seconds(30))
    var text = [UInt8](repeating: 0, count: 4096)
    let fd = open("/proc/self/task/\(getpid())/children", O_RDONLY)
    let n = fd < 0 ? 0 : max(0, read(fd, &text, text.count))
    if fd >= 0 { close(fd) }
    print("servers \(String(decoding: text[0..<n], as: UTF8.self))")
    exit(0)
case "trap":
    // The system-call policy's traps, each in a process of its own: the tests expect a signal and the
    // message; "no trap" on standard output means the policy let the bug through.
    var byte: UInt8 = 0
    switch args.dropFirst().first {
    case "read-closed":
        let (r, w) = try SystemCall.pipe()
        SystemCall.close(r)
        SystemCall.close(w)
        _ = withUnsafeMutableBytes(of: &byte) { try? SystemCall.read(r, $0) }
    case "double-close":
        let (r, w) = try SystemCall.pipe()
        SystemCall.close(w)
        SystemCall.close(r)
        SystemCall.close(r)
    case "closed-connection":
        _ = Connection(fileDescriptor: -1)
    default:
        exit(2)
    }
    print("no trap")
    exit(0)
default:
    print(
        "usage: mp-test-helper bootstrap-check | pool-interrupt-check [teardown] | globals-check"
            + " | manager-server [NOFILE] | listener-server NOFILE | pool-nofile NOFILE | mariadb-connect URL"
            + " | progress-bar N | child-crash | fork-server | trap read-closed|double-close|closed-connection"
    )
    exit(2)
}
