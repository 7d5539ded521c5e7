import Threading

let pool = ThreadPool(maxWorkers: 4)
let squares = try pool.map(1...10) { $0 * $0 }            // ordered, lazy, bounded in flight
while let x = try squares.next() { print(x) }

let q = BlockingQueue<String>(maxsize: 100)               // Python's queue.Queue
let consumer = OSThread(name: "consumer") {
    while let item = try? q.get(timeout: .seconds(1)) { print("got", item); try q.taskDone() }
}
try consumer.start()
try q.put("hello")
q.join()                                                  // every item processed
pool.shutdown()
