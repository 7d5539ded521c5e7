// A queue worker program with jobs of its own: it queues a batch of jobs in an SQLite file, runs a worker
// that returns once the queue is drained (`exitWhenDrained`), and prints what each job returned. The
// same worker, run by other processes or machines on the same database, shares the work.
import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL

/// A job of this program: workers find it by name, so they must run this program too.
struct Checksum: Job {
    let text: String
    func run() -> Int { text.utf8.reduce(0) { ($0 &* 31 &+ Int($1)) & 0xFFFF } }
}

bootstrap()  // workers of the pool stop here

let url = try DatabaseURL("sqlite:jobs.sqlite")
let queue = try JobQueue(url)
let handles = try queue.enqueue((1...20).map { Checksum(text: "document \($0)") })

let pool = try ProcessPool(workers: 2)
let worker = try QueueWorker(url, pool: pool, options: QueueWorkerOptions(exitWhenDrained: true))
let finished = try worker.run()  // returns once no job is waiting or running
print("the worker finished \(finished) jobs")
for h in handles.prefix(3) { print("job \(h.id): \(try h.result(timeout: .seconds(5)))") }
print("queue: \(try queue.counts().map { "\($0.key.rawValue) \($0.value)" }.sorted().joined(separator: ", "))")
