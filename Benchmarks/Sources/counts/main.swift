// The hot paths' instruction counts, for the CI gate (scripts/instruction-counts, BENCHMARKS.md): run under
// `valgrind --tool=callgrind` twice per path with different counts, the difference divided by the
// difference in operations is one operation's instructions in this (the parent) process — stable where a
// wall clock on a shared machine is not. Workers run outside valgrind (`--trace-children=no`).
//
//   counts apply N    N `pool.apply` round trips, one after another, on a pool of one worker
//   counts map1 N     a `map` of N items at chunksize 1 on a pool of two workers
//   counts start N    N workers started (`ChildProcess`) and joined, one after another
//   counts tiny N     a `map` of N tiny items in 8 chunks on a pool of two workers (one item's share of
//                     a chunk's round trip: the worker's item loop, the codec, placing the results)
//
// Each first does the same warm-up, so that the difference holds only the operations.
import Glibc
import Multiprocessing

// Workers start before main, from the fork server (the library's default), as most programs' do.
WorkerStart.entry = .beforeMain

struct Square: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Int { x &* x }
}

struct SquareJob: Job {
    let x: Int
    func run() -> Int { x &* x }
}

struct Nothing: Job {
    func run() -> Int { 0 }
}

let args = Array(CommandLine.arguments.dropFirst())
guard args.count == 2, let n = Int(args[1]), n >= 0 else {
    print("usage: counts apply|map1|tiny|start N")
    exit(2)
}
let options = ProcessPoolOptions(interrupt: .ignore)

do {
    switch args[0] {
    case "apply":
        let pool = try ProcessPool(workers: 1, options: options)
        for i in 0..<(100 + n) {
            let r = try pool.apply(SquareJob(x: i), timeout: .seconds(60))
            precondition(r == i &* i)
        }
        pool.close()
        guard try pool.join(timeout: .seconds(60)) else { fatalError("the pool did not end") }
    case "map1":
        let pool = try ProcessPool(workers: 2, options: options)
        _ = try pool.map(Square(), Array(0..<100), chunksize: 1)
        let out = try pool.map(Square(), Array(0..<n), chunksize: 1)
        precondition(out.count == n && out.last.map { $0 == (n - 1) * (n - 1) } ?? true)
        pool.close()
        guard try pool.join(timeout: .seconds(60)) else { fatalError("the pool did not end") }
    case "tiny":
        let pool = try ProcessPool(workers: 2, options: options)
        _ = try pool.map(Square(), Array(0..<8_000), chunksize: 1_000)
        let out = try pool.map(Square(), Array(0..<n), chunksize: max(1, n / 8))
        precondition(out.count == n && out.last.map { $0 == (n - 1) * (n - 1) } ?? true)
        pool.close()
        guard try pool.join(timeout: .seconds(60)) else { fatalError("the pool did not end") }
    case "start":
        for _ in 0..<(2 + n) {
            let p = ChildProcess(job: Nothing())
            try p.start()
            guard try p.join(timeout: .seconds(60)) else { fatalError("the worker did not end") }
            precondition(p.exitCode == 0)
        }
    default:
        print("usage: counts apply|map1|tiny|start N")
        exit(2)
    }
} catch {
    print("error: \(error)")
    exit(1)
}
