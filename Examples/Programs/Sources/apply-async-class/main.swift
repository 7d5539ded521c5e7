import Multiprocessing

final class Settings: Sendable {
    let scale: Int
    init(scale: Int) { self.scale = scale }
}
let settings = Settings(scale: 10)
struct Scale: Job {
    let x: Int
    func run() -> Int { x * settings.scale }
}
if CommandLine.arguments.contains("--bootstrap") { bootstrap() }
let pool = try ProcessPool(workers: 2)
let task = try pool.applyAsync(Scale(x: 4), callback: { print("callback:", $0) })
print(try task.get(timeout: .seconds(30)))
pool.close()
try pool.join()
