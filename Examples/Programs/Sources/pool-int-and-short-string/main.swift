import Multiprocessing

// The program, as pasted. `--bootstrap` adds the one line the error asks for.
let prefix = "item-"
let multiplier = 3
struct Label: SyncTaskFunction { func callAsFunction(_ x: Int) -> String { prefix + String(x * multiplier) } }
if CommandLine.arguments.contains("--bootstrap") { bootstrap() }
let pool = try ProcessPool(workers: 2)
print(try pool.map(Label(), [1, 2, 3]))
