import CoreMetrics
import Foundation
import Logging
import MetricsTestKit
import Multiprocessing
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import MultiprocessingManagers

/// Squares, but item 3 kills its worker (SIGKILL) the first time it runs.
struct SquareOrDieOnce: TaskFunction {
    let marker: String
    func callAsFunction(_ x: Int) -> Int {
        if x == 3, open(marker, O_CREAT | O_EXCL | O_WRONLY, 0o600) >= 0 { kill(getpid(), SIGKILL) }
        return x * x
    }
}

@Suite(.serialized) struct ManagerObservabilityTests {
    /// A pool given a logger logs a worker's death; its metrics count items, failures, retries, starts
    /// and deaths.
    @Test func poolLogsAndMetrics() throws {
        let metrics = sharedTestMetrics
        let messages = Locked<[String]>([])
        let logger = Logger(label: "test") { _ in CollectingHandler(messages: messages) }
        let marker = "/tmp/mp-obs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(marker) }
        let pool = try ProcessPool(workers: 2, options: ProcessPoolOptions(name: "obs-test", logger: logger))
        let results = try pool.mapResults(
            SquareOrDieOnce(marker: marker),
            Array(0..<10),
            chunksize: 1,
            options: TaskOptions(retry: RetryPolicy(attempts: 2, backoff: .milliseconds(10), on: [.crash]))
        )
        pool.close()
        _ = try pool.join(timeout: .seconds(30))
        #expect(results.compactMap { try? $0.get() } == (0..<10).map { $0 * $0 })
        let dims = [("pool", "obs-test")]
        #expect(metrics.counterTotal(label: "mp_pool_items_submitted_total", dimensions: dims) == 10)
        #expect(metrics.counterTotal(label: "mp_pool_items_succeeded_total", dimensions: dims) == 10)
        #expect(metrics.counterTotal(label: "mp_pool_items_failed_total", dimensions: dims) == 0)
        #expect(metrics.counterTotal(label: "mp_pool_retries_total", dimensions: dims) == 1)
        #expect(metrics.counterTotal(label: "mp_pool_worker_deaths_total", dimensions: dims) == 1)
        #expect(metrics.counterTotal(label: "mp_pool_worker_starts_total", dimensions: dims) >= 3)  // 2 + a replacement
        #expect(messages.withLock { $0 }.contains { $0.hasPrefix("warning worker died") })
    }

    /// The server logs rejected clients and malformed requests, and counts requests, failures and
    /// rejected clients (the only test that bootstraps a metrics backend: the process has one).
    @Test func logsAndMetrics() throws {
        let metrics = sharedTestMetrics
        let messages = Locked<[String]>([])
        let logger = Logger(label: "test") { _ in CollectingHandler(messages: messages) }
        let server = try ManagerServer(authkey: Array("abc".utf8), logger: logger)
        try server.start()
        defer { server.shutdown() }
        let dims = [("server", "\(server.address)")]
        // A client with a wrong key, then a malformed request, then two good calls.
        #expect(throws: (any Error).self) { try connect(to: server.address, authkey: Array("bad".utf8)) }
        let c = try connect(to: server.address, authkey: Array("abc".utf8))
        try c.sendBytes([1, 2, 3])
        _ = try c.recvBytes(timeout: .seconds(5))
        let client = try ManagerClient(address: server.address, authkey: Array("abc".utf8))
        let d = try client.dict()
        try d.set("a", 1)
        _ = try d.get("a")
        // The rejection is counted on the server's thread for that client, which may still be at it.
        try eventually("the rejected client counted") {
            metrics.counterTotal(label: "mp_manager_rejected_clients_total", dimensions: dims) >= 1
        }
        #expect(metrics.counterTotal(label: "mp_manager_rejected_clients_total", dimensions: dims) == 1)
        #expect(metrics.counterTotal(label: "mp_manager_failed_requests_total", dimensions: dims) == 1)
        #expect(metrics.counterTotal(label: "mp_manager_requests_total", dimensions: dims) == 2)
        let logged = messages.withLock { $0 }
        #expect(logged.contains { $0.hasPrefix("warning client rejected") })
        #expect(logged.contains { $0.hasPrefix("warning malformed request") })
        #expect(logged.contains { $0.hasPrefix("info manager server listening") })
    }
}
