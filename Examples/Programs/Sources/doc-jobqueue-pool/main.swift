import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL
import Threading

struct Square: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Int { x * x }
}
struct Shout: Job {
    let word: String
    func run() -> String { word.uppercased() }
}
/// Code written against any pool: a process pool, threads, or the queue's workers.
func sumOfSquares(_ pool: some TaskPool, _ n: Int) throws -> Int {
    try pool.map(Square(), Array(0..<n), chunksize: nil, options: .default, timeout: nil).reduce(0, +)
}
bootstrap()

let url = try DatabaseURL("sqlite:squares.db")
// The workers: here, one in this program; in production, any number on any machine that reaches the
// database, running this same program (`QueueWorker`, or its `mp queue worker`-style command).
let worker = try QueueWorker(url, pool: try ProcessPool(workers: 2))
let running = OSThread { _ = try? worker.run() }
try running.start()

// let pool = try ProcessPool(workers: 4)    // the one line that changes
let pool = try QueuePool(url)
print(try pool.map(Square(), Array(0..<10)))               // [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
print(try sumOfSquares(pool, 1000))                        // 332833500
print(try pool.submit(Shout(word: "done")).get(timeout: .seconds(30)))  // DONE
pool.close()
_ = pool.join(timeout: .seconds(30))
worker.stop()
try running.join()
