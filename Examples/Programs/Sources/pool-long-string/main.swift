import Multiprocessing

let banner = "a string far too long to be stored inline in a String value"
struct Tag: SyncTaskFunction { func callAsFunction(_ x: Int) -> String { "\(banner) #\(x)" } }
if CommandLine.arguments.contains("--bootstrap") { bootstrap() }
let pool = try ProcessPool(workers: 2)
print(try pool.map(Tag(), [1, 2]))
