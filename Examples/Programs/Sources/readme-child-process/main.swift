import Multiprocessing

struct Square: Job {                       // the arguments are the stored properties
    let x: Int
    func run() -> Int { x * x }            // may be async and may throw
}

bootstrap()                                // main.swift: workers stop here (Python's __main__ guard)

let p = ChildProcess(job: Square(x: 7))    // Python: Process(target=square, args=(7,))
try p.start()                              // this program, started again; no fork()
print(try p.result(timeout: .seconds(5)))  // 49 — errors come back as themselves if Codable
try p.join()
print(p.exitCode!)                         // 0, 1 if the job threw, -9 if SIGKILLed, as Python
