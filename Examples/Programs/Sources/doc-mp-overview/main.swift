import Multiprocessing

struct Square: Job {
    let x: Int
    func run() -> Int { x * x }
}
bootstrap()
let p = ChildProcess(job: Square(x: 7))
try p.start()
print(try p.result(timeout: .seconds(5)))   // 49
