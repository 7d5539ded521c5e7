import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL
import Threading

struct Square: Job {                         // any Job of this library
    let n: Int
    func run() -> Int { n * n }
}
bootstrap()

let url = try DatabaseURL("sqlite:jobs.db")
let queue = try JobQueue(url)
let handle = try queue.enqueue(Square(n: 7), options: JobOptions(maxAttempts: 5))

// A worker (usually another process or machine: `mp queue worker`, or a program of your own).
let worker = try QueueWorker(url, pool: try ProcessPool(workers: 2))
let serving = OSThread(name: "queue-worker") { _ = try worker.run() }
try serving.start()

print(try handle.result(timeout: .seconds(30)))   // 49, from whichever worker ran it
worker.stop()
try serving.join()
