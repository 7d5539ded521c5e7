import Glibc
import Multiprocessing

// mp-test-helper: programs the test suites run as separate processes (they need a `main` of their own,
// a terminal-like signal set-up, or to die of SIGINT). Not shipped: it is not a product.
//   mp-test-helper bootstrap-check              a worker that enters through `bootstrap()`
//   mp-test-helper pool-interrupt-check [teardown]   a busy pool waiting for Ctrl-C
//   mp-test-helper globals-check               pool jobs reading main.swift's top-level constants

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

bootstrap()
Processes.lineBufferStandardOutput()
let args = Array(CommandLine.arguments.dropFirst())
let command = args.first ?? ""

/// `mp-test-helper bootstrap-check`: starts a worker that enters through `bootstrap()` instead of the pre-main hook.
struct BootstrapCheck: Job {
    let x: Int
    func run() -> Int { x + 1 }
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
default:
    print("usage: mp-test-helper bootstrap-check | pool-interrupt-check [teardown] | globals-check")
    exit(2)
}
