// A distributed master and workers of your own (the tutorial's pattern with your own tasks): the master
// serves a task queue and a result queue on a TCP port with an authkey; workers on any machine take
// texts and answer with their word counts. Tasks and results are `Codable` structs, which travel as
// Python dicts, so CPython's `BaseManager` can take either role (see Networks.md).
//
//   distributed-words master [PORT]          serves on 127.0.0.1:PORT (default 0: a free port)
//   distributed-words worker HOST PORT       takes tasks until the queue stays empty for a second
import Glibc
import Multiprocessing
import MultiprocessingManagers

/// A task: `{'id': 0, 'text': '…'}` on the wire.
struct WordTask: Codable {
    var id: Int
    var text: String
}

/// A result: `{'id': 0, 'words': 4}` on the wire.
struct WordCount: Codable {
    var id: Int
    var words: Int
}

let arguments = Array(CommandLine.arguments.dropFirst())
let authkey = Array("words".utf8)

switch arguments.first {
case "master":
    let port = UInt16(arguments.dropFirst().first ?? "0") ?? 0
    let server = try ManagerServer(address: .tcp(host: "127.0.0.1", port: port), authkey: authkey)
    let tasks = server.registerQueue("get_task_queue")
    let results = server.registerQueue("get_result_queue")
    try server.start()
    print("serving on \(server.address)")
    let texts = ["the quick brown fox", "jumps over", "the lazy dog", "and runs away from the farm"]
    for (id, text) in texts.enumerated() {
        try tasks.put(try PythonValueEncoder().encode(WordTask(id: id, text: text)))
    }
    var total = 0
    for _ in texts {
        let count = try PythonValueDecoder().decode(WordCount.self, from: try results.get(timeout: .seconds(60)))
        print("task \(count.id): \(count.words) words")
        total += count.words
    }
    print("total: \(total) words")
    server.shutdown(timeout: .seconds(5))
case "worker":
    guard arguments.count == 3, let port = UInt16(arguments[2]) else {
        print("usage: distributed-words worker HOST PORT")
        exit(2)
    }
    let client = try ManagerClient(address: .tcp(host: arguments[1], port: port), authkey: authkey)
    let tasks = QueueProxy(try client.create("get_task_queue")).typed(WordTask.self)
    let results = QueueProxy(try client.create("get_result_queue")).typed(WordCount.self)
    var done = 0
    while true {
        let task: WordTask
        do {
            task = try tasks.get(timeout: .seconds(1))
        } catch let e as PythonException where e == .queueEmpty {
            break  // no task for a second: done
        } catch let e as MultiprocessingError
            where e.code == .endOfFile || e.code == .closed || e.errnoCode == ECONNRESET
        {
            break  // the master has all its results and went away
        }
        try results.put(WordCount(id: task.id, words: task.text.split(separator: " ").count))
        done += 1
    }
    print("worker: \(done) tasks")
default:
    print("usage: distributed-words master [PORT] | worker HOST PORT")
    exit(2)
}
