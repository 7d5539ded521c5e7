import Foundation
import Multiprocessing

// Workers run this file down to here (its jobs live in the other files).
bootstrap()

// bench SUITE [workload ...]   — prints RESULT/INFO lines like the Python anchors in shared/bench/python.
let args = CommandLine.arguments.dropFirst()
guard let suite = args.first else {
    print("usage: bench SUITE [workload ...]   (suites: threads, ipc, pool, shared, manager, distributed, etl, queue)")
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
case "queue":
    do {
        try runQueueSuite(only)
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
