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

/// Collects log messages.
struct CollectingHandler: LogHandler {
    let messages: Locked<[String]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { messages.withLock { $0.append("\(event.level) \(event.message)") } }
}

@Suite(.serialized) struct ManagerObservabilityTests {
    /// The server logs rejected clients and malformed requests, and counts requests, failures and
    /// rejected clients (the only test that bootstraps a metrics backend: the process has one).
    @Test func logsAndMetrics() throws {
        let metrics = TestMetrics()
        MetricsSystem.bootstrap(metrics)
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
        let deadline = ContinuousClock.now + .seconds(5)
        while metrics.counterTotal(label: "mp_manager_rejected_clients_total", dimensions: dims) < 1
            && ContinuousClock.now < deadline
        {
            usleep(10_000)
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
