import Multiprocessing

struct F: SyncTaskFunction {                             // Python: def f(x): return x * x
    func callAsFunction(_ x: Int) -> Int { x * x }
}
struct LongTimeTask: Job {                               // a job: its arguments are its properties
    let name: Int
    func run() async throws -> String { try await Task.sleep(for: .seconds(1)); return "task \(name)" }
}

bootstrap()                                              // main.swift: workers stop here

let pool = try ProcessPool(workers: 4)                   // Python: Pool(4)
print(try pool.map(F(), 0..<10))                         // [0, 1, 4, …, 81]
let unordered = try pool.imapUnordered(F(), 0..<10)      // as they finish (`for try await` in async code)
while let y = try unordered.next() { print(y) }
let r = try pool.applyAsync(LongTimeTask(name: 1)) { print("callback", $0) }   // apply_async + callback
_ = try? r.get(timeout: .milliseconds(100))              // throws a timeout, like get(timeout=0.1)
r.cancel()                                               // and, unlike Python, stops the running task
let outcomes = try pool.mapResults(F(), Array(0..<1000), // every item's Result: a crash fails only its item
                                   options: TaskOptions(timeout: .seconds(30), retry: RetryPolicy(attempts: 3)))
pool.close(); try pool.join()
