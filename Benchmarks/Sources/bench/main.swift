import Foundation

// bench SUITE [workload ...]   — prints RESULT/INFO lines like the Python anchors in shared/bench/python.
let args = CommandLine.arguments.dropFirst()
guard let suite = args.first else {
    print("usage: bench threads [workload ...]")
    exit(2)
}
let only = Set(args.dropFirst())
switch suite {
case "threads": runThreadsSuite(only)
default:
    print("unknown suite \(suite); suites: threads")
    exit(2)
}
