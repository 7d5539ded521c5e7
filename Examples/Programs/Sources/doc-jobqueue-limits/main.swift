import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL

struct Send: Job {                           // a call to a service that takes 2 at once, 3 a second
    let to: String
    func run() -> String { "sent to \(to)" }
}
bootstrap()

let url = try DatabaseURL("sqlite:mail.db")
let queue = try JobQueue(url)
// For every worker on every machine: at most 2 running, at most 3 started in any second.
try queue.setLimit(QueueLimit(concurrency: 2, rate: .init(3, per: .seconds(1))), for: "mail")
let handles = try queue.enqueue((1...6).map { Send(to: "user\($0)@example.com") },
                                options: JobOptions(queue: "mail"))

let worker = try QueueWorker(url, pool: try ProcessPool(workers: 4),
                             options: QueueWorkerOptions(queues: ["mail"], exitWhenDrained: true))
try worker.run()                             // returns once the queue is drained: after a second at least
print(try handles[5].result(timeout: .seconds(30)))   // sent to user6@example.com
print(try queue.limits()["mail"]!)                    // concurrency 2, rate 3/1s
