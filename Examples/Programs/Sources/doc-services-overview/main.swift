import Logging
import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingManagers
import MultiprocessingSQL
import MultiprocessingServices
import ServiceLifecycle
import UnixSignals

struct Square: Job {
    let n: Int
    func run() -> Int { n * n }
}
bootstrap()

let url = try DatabaseURL("sqlite:services.db")
let handles = try JobQueue(url).enqueue((1...5).map { Square(n: $0) })

// Ctrl-C and SIGTERM go to the group (which drains), not straight to the pool's workers.
let pool = try ProcessPool(workers: 2, options: ProcessPoolOptions(interrupt: .ignore))
let worker = try QueueWorker(url, pool: pool)
let manager = try ManagerServer(authkey: Array("secret".utf8))
// Stopped in reverse order on SIGTERM or Ctrl-C: the worker first, then the manager, then the pool it used.
let group = ServiceGroup(
    configuration: ServiceGroupConfiguration(
        services: [.init(service: pool), .init(service: manager), .init(service: worker)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: Logger(label: "services")
    )
)
let running = Task { try await group.run() }

var results: [Int] = []
for handle in handles { results.append(try await handle.value(pollInterval: .milliseconds(20))) }
print(results)  // [1, 4, 9, 16, 25]
await group.triggerGracefulShutdown()  // as SIGTERM does
try await running.value
