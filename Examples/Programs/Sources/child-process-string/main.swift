import Multiprocessing

let greeting = "hello from the top level"
struct Greet: Job { func run() -> String { greeting } }
if CommandLine.arguments.contains("--bootstrap") { bootstrap() }
let p = ChildProcess(job: Greet())
try p.start()
print(try p.result(timeout: .seconds(30)))
