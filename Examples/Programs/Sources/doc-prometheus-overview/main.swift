import Multiprocessing
import MultiprocessingNetwork
import MultiprocessingPrometheus

struct Square: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Int { x * x }
}
bootstrap()

// Once, at the start: swift-prometheus becomes the program's metrics backend, served at
// http://127.0.0.1:9464/metrics for Prometheus to scrape (port 0 here: any free port).
let metrics = try MetricsEndpoint.bootstrap(address: .tcp(host: "127.0.0.1", port: 0))
defer { metrics.close() }

let pool = try ProcessPool(workers: 2)
_ = try pool.map(Square(), Array(0..<1000))
pool.close()
try pool.join()

// What a scrape of the endpoint returns now, in part:
for line in metrics.registry.emitToString().split(separator: "\n")
where line.hasPrefix("mp_pool_items_succeeded_total") {
    print(line)  // mp_pool_items_succeeded_total{pool="pool"} 1000
}
