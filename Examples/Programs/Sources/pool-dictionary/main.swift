import Multiprocessing

let prices = ["apple": 3, "pear": 5, "plum": 7]
struct Price: SyncTaskFunction { func callAsFunction(_ fruit: String) -> Int { prices[fruit] ?? -1 } }
if CommandLine.arguments.contains("--bootstrap") { bootstrap() }
let pool = try ProcessPool(workers: 2)
print(try pool.map(Price(), ["apple", "pear", "plum"]))
