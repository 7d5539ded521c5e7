import Threading

let q = BlockingQueue<String>(maxsize: 100)      // Python's queue.Queue
let consumer = OSThread(name: "consumer") {
    while let item = try? q.get(timeout: .seconds(1)) { print("got", item); try q.taskDone() }
}
try consumer.start()
try q.put("hello")
q.join()                                         // every item processed
