import Multiprocessing

struct Square: Job {                       // the arguments are the stored properties
    let x: Int
    func run() -> Int { x * x }            // may be async and may throw
}

bootstrap()                                // main.swift: workers stop here (Python's __main__ guard)

let p = ChildProcess(job: Square(x: 7))    // Python: Process(target=square, args=(7,))
try p.start()
print(try p.result(timeout: .seconds(5)))  // 49
try p.join()
