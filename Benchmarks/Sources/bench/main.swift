import Foundation
import Multiprocessing

// Its jobs live in the other files: workers start before main, from the fork server (MP_BENCH_BOOTSTRAP=1
// makes them run this file down to `bootstrap()` instead, which spawns them).
if getenv("MP_BENCH_BOOTSTRAP") != nil { bootstrap() } else { WorkerStart.entry = .beforeMain }

// bench SUITE [workload ...]   — prints RESULT/INFO lines like the Python anchors in shared/bench/python.
let args = CommandLine.arguments.dropFirst()
guard let suite = args.first else {
    print(
        "usage: bench SUITE [workload ...]   (suites: threads, ipc, pool, shared, manager, distributed, etl, queue, queuepool, observe)"
    )
    exit(2)
}
let only = Set(args.dropFirst())
switch suite {
case "threads": runThreadsSuite(only)
case "ipc":
    do {
        try runIPCSuite(only)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "pool":
    do {
        try runPoolSuite(only.subtracting(["timeouts", "crash"]).isEmpty && !only.isEmpty ? ["none"] : only)
        try runPoolPromises(only)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "distributed":
    do {
        try runDistributedSuite(only)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "manager":
    do {
        try runManagerSuite(only)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "observe":
    do {
        try runObservabilitySuite(only)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "queue":
    do {
        try runQueueSuite(only)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "queuepool":
    do {
        try runQueuePoolSuite(only)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "etl":
    do {
        try runETLSuite(only)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "serve-manager":
    // For Benchmarks/python/manager_clients.py: a manager server in this process until stdin closes.
    do {
        try serveManagerUntilStdinCloses()
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "shared":
    do {
        try runSharedSuite(only)
    } catch {
        print("error: \(error)")
        exit(1)
    }
default:
    print("unknown suite \(suite); suites: threads, ipc, pool, shared, manager, distributed, etl, queue")
    exit(2)
}
