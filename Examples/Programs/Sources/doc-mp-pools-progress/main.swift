import Multiprocessing

struct F: SyncTaskFunction { func callAsFunction(_ x: Int) -> Int { x * x } }
bootstrap()
let pool = try ProcessPool(workers: 2)
let inputs = Array(0..<10_000)

let squares = try pool.map(F(), inputs, options: .progressBar)          // a bar on standard error
let rows = try pool.mapResults(F(), inputs, options: TaskOptions(progress: .handler { p in
    print(p.summary())                                                  // 5,000/10,000 … ETA 0.1 s
}))
print(squares.count, rows.count)                                        // 10000 10000
