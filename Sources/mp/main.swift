import Glibc
import Multiprocessing
import SeedExamples

// mp — the swift-multiprocessing command-line tool.
//   mp demo [NAME ...]   run the seed notes' programs (all, or the ones named)
//   mp list              list them
// Python's `if __name__ == "__main__":` habit: a no-op here unless a worker was started with
// `WorkerStart.entry = .bootstrap` (then this process becomes that worker and never returns).
bootstrap()
Processes.lineBufferStandardOutput()
let args = Array(CommandLine.arguments.dropFirst())
let command = args.first ?? "demo"

/// `mp bootstrap-check`: starts a worker that enters through `bootstrap()` instead of the pre-main hook.
struct BootstrapCheck: Job {
    let x: Int
    func run() -> Int { x + 1 }
}

func usage() -> Never {
    print("""
        usage: mp demo [NAME ...]   run the seed notes' programs (all, or those named)
               mp list              list the programs
        """)
    exit(2)
}

switch command {
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
    // `mp pool-interrupt-check teardown`: the `.tearDown` behaviour (the program carries on).
    let carryOn = args.dropFirst().first == "teardown"
    do {
        let pool = try ProcessPool(workers: 2, options: ProcessPoolOptions(interrupt: carryOn ? .tearDown : .tearDownAndExit))
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
case "list":
    for e in SeedExamples.all { print("\(e.name + String(repeating: " ", count: max(1, 15 - e.name.count))) \(e.summary)") }
case "demo":
    let wanted = Set(args.dropFirst())
    let unknown = wanted.subtracting(SeedExamples.all.map(\.name))
    if !unknown.isEmpty {
        print("unknown program(s): \(unknown.sorted().joined(separator: ", "))")
        usage()
    }
    for e in SeedExamples.all where wanted.isEmpty || wanted.contains(e.name) {
        print("\n=== \(e.name): \(e.summary) ===")
        do {
            try await e.run()
        } catch {
            print("error: \(error)")
            exit(1)
        }
    }
default:
    usage()
}
