import Multiprocessing

struct F: SyncTaskFunction {               // Python: def f(x): return x * x
    func callAsFunction(_ x: Int) -> Int { x * x }
}

bootstrap()

let pool = try ProcessPool(workers: 4)     // Python: Pool(4)
print(try pool.map(F(), 0..<10))           // [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
let outcomes = try pool.mapResults(F(), Array(0..<1000),
                                   options: TaskOptions(timeout: .seconds(30), retry: RetryPolicy(attempts: 3)))
print(outcomes.count)                      // 1000: each item's Result
pool.close()
try pool.join(timeout: .seconds(10))
