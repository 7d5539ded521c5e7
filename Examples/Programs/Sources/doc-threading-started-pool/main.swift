import Threading

let pool = ThreadPool(maxWorkers: 4)             // Python's ThreadPoolExecutor
let f = try pool.submit { 6 * 7 }
print(try f.result(timeout: .seconds(1)))        // 42
let squares = try pool.map(1...10) { $0 * $0 }   // ordered, lazy
while let x = try squares.next() { print(x) }
pool.shutdown()
