import Foundation
import Glibc
import Logging
import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingManagers
import MultiprocessingNetwork
import MultiprocessingSQL
import MultiprocessingServices
import MultiprocessingTestSupport
import ServiceLifecycle
import Testing

/// Works for `ms` milliseconds, then answers `ms` (a pool task and a queue job).
struct Nap: Job {
    let ms: Int
    func run() -> Int {
        usleep(UInt32(ms) * 1000)
        return ms
    }
}

/// Each service on its own in a `ServiceGroup`, shut down gracefully (`triggerGracefulShutdown`) or
/// cancelled (the group's task cancelled, as when its graceful shutdown times out).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ServiceTests {
    private func group(_ services: [any Service]) -> ServiceGroup {
        ServiceGroup(services: services, logger: Logger(label: "services-test") { _ in SwiftLogNoOpLogHandler() })
    }

    @Test func aPoolFinishesItsWorkAndItsWorkersExitOnGracefulShutdown() async throws {
        let pool = try ProcessPool(workers: 2)
        let tasks = try (0..<8).map { _ in try pool.submit(Nap(ms: 20)) }
        let group = group([pool])
        let running = Task { try await group.run() }
        try await eventually("both workers started") { pool.workerPIDs.count == 2 }
        await group.triggerGracefulShutdown()
        try await running.value
        for t in tasks { #expect(try await t.value == 20) }
        #expect(pool.workerPIDs.isEmpty)
    }

    @Test func aCancelledPoolIsTerminated() async throws {
        let pool = try ProcessPool(workers: 2)
        let long = try pool.submit(Nap(ms: 60_000))
        let group = group([pool])
        let running = Task { try await group.run() }
        try await eventually("both workers started") { pool.workerPIDs.count == 2 }
        running.cancel()
        _ = try? await running.value
        await #expect {
            _ = try await long.value
        } throws: { error in
            (error as? PoolError)?.code == .terminated
        }
        try await eventually("the workers exited") { pool.workerPIDs.isEmpty }
    }

    @Test func aManagerServerStopsServingOnGracefulShutdown() async throws {
        let server = try ManagerServer(authkey: Array("abc".utf8))
        guard case .tcp(_, let port) = server.address else { throw CancellationError() }
        let group = group([server])
        let running = Task { try await group.run() }
        // Served: the client's handshake is answered once the service has started the server.
        let client = try ManagerClient(address: .tcp(host: "127.0.0.1", port: port), authkey: Array("abc".utf8))
        let list = try client.list()
        try list.append(PythonValue.int(7))
        #expect(try list.count == 1)
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(server.wait(timeout: .zero))
        #expect(throws: (any Error).self) {
            _ = try ManagerClient(
                address: .tcp(host: "127.0.0.1", port: port),
                authkey: Array("abc".utf8),
                timeout: .seconds(5)
            )
        }
    }

    /// Cancelled (the group's graceful shutdown timed out): every connection is cut at once, a client's
    /// next call fails, and the server has stopped.
    @Test func aCancelledManagerServerCutsItsConnections() async throws {
        let server = try ManagerServer(authkey: Array("abc".utf8))
        guard case .tcp(_, let port) = server.address else { throw CancellationError() }
        let group = group([server])
        let running = Task { try await group.run() }
        let client = try ManagerClient(address: .tcp(host: "127.0.0.1", port: port), authkey: Array("abc".utf8))
        let list = try client.list()
        try list.append(PythonValue.int(1))
        running.cancel()
        _ = try? await running.value
        #expect(server.wait(timeout: .seconds(30)))
        #expect(throws: (any Error).self) { try list.append(PythonValue.int(2)) }
    }

    /// `run()` in a task already cancelled: it throws, and the server it started does not outlive it.
    @Test func aManagerServerRunInACancelledTaskDoesNotStayUp() async throws {
        let server = try ManagerServer(authkey: Array("abc".utf8))
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await server.run()
        }
        await #expect(throws: (any Error).self) { try await task.value }
        #expect(server.wait(timeout: .seconds(30)))
    }

    @Test func aCancelledQueueWorkerHandsItsJobsBack() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mp-service-worker-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = try DatabaseURL("sqlite:\(dir.path)/jobs.db")
        let queue = try JobQueue(url)
        _ = try queue.enqueue((0..<6).map { _ in Nap(ms: 60_000) })
        let pool = try ProcessPool(workers: 2)
        let worker = try QueueWorker(url, pool: pool, options: QueueWorkerOptions(pollInterval: .milliseconds(20)))
        let group = group([pool, worker])
        let running = Task { try await group.run() }
        try await eventually("two jobs run") { (try queue.counts()[.running] ?? 0) >= 2 }
        running.cancel()
        _ = try? await running.value
        // Handed back at once (not after the minute the jobs would take), their attempt not counted.
        let counts = try queue.counts()
        #expect(counts[.running] ?? 0 == 0)
        #expect(counts[.available] == 6, "\(counts)")
        for job in try queue.jobs(in: .available) { #expect(job.attempt == 0, "job \(job.id)") }
        try await eventually("the pool's workers exited") { pool.workerPIDs.isEmpty }
    }
}
