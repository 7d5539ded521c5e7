import Multiprocessing
import MultiprocessingManagers

struct F: Job {                           // Python: def f(d, l): ...
    let d: DictProxy
    let l: ListProxy
    func run() throws {
        try d.set(1, "1")
        try d.set("2", 2)
        try d.set(0.25, .none)
        try l.reverse()
    }
}
bootstrap()

let manager = try Manager.start()         // a server process
defer { manager.shutdown() }
let d = try manager.client.dict()
let l = try manager.client.list((0..<10).map { .int($0) })
let p = ChildProcess(job: F(d: d, l: l))  // proxies travel inside jobs
try p.start()
try p.join()
print(try d.copy())                       // {1: '1', '2': 2, 0.25: None}
print(try l.copy())                       // [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
