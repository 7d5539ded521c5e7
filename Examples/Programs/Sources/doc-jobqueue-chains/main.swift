import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL
import Threading

struct Fetch: Job {
    let page: Int
    func run() -> Int { page * 100 }                     // the page's word count
}
struct Twice: ChainedJob {                               // given the previous link's output
    func run(_ words: Int) -> Int { words * 2 }
}
struct Describe: ChainedJob {
    func run(_ words: Int) -> String { "\(words) words" }
}
struct Tally: DependentJob {                             // a group's callback: every member's outcome
    func run(after outcomes: JobOutcomes) throws -> String {
        let done = outcomes.filter(\.succeeded).count
        return "\(done) of \(outcomes.count) pages, \(try outcomes.values(as: Int.self).reduce(0, +)) words"
    }
}
bootstrap()

let url = try DatabaseURL("sqlite:pages.db")
let queue = try JobQueue(url)
// A chain: each link waits in the database until the one before it completes, then gets its output.
let chain = try queue.chain(Fetch(page: 7)).then(Twice()).then(Describe()).enqueue()
// A group and its callback (a chord): the callback runs once every member has ended.
let group = try queue.group((1...5).map { Fetch(page: $0) }, then: Tally())

let worker = try QueueWorker(url, pool: try ProcessPool(workers: 2))
let running = OSThread { _ = try? worker.run() }
try running.start()
print(try chain.last.result(timeout: .seconds(30)))      // 1400 words
print(try group.callback.result(timeout: .seconds(30)))  // 5 of 5 pages, 1500 words
worker.stop()
try running.join()
