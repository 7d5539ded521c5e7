public import Multiprocessing
public import MultiprocessingJobQueue
public import MultiprocessingManagers
public import ServiceLifecycle
import Threading

// The library's long-running parts as swift-service-lifecycle services, so that a Swift server runs them
// in its `ServiceGroup` beside its other services, and SIGTERM drains them as the library's own signal
// handling does (`QueueWorker.stopOnSignals`, a manager's `shutdown`, a pool's `close` and `join`).
//
// A `ServiceGroup` shuts its services down in the reverse of their order: list the pool before the queue
// worker that uses it, so the worker hands its jobs back or finishes them before the pool closes.

extension ProcessPool: Service {
    /// Keeps the pool until the service group shuts down, then closes it: work already submitted
    /// finishes, and the workers exit (`ProcessPool.close()`, then `ProcessPool.join()`).
    ///
    /// If the group is cancelled instead (its graceful shutdown timed out, or a cancellation signal), the
    /// pool is terminated: running work fails with `PoolError.Code.terminated` and the workers are
    /// stopped.
    public func run() async throws {
        do {
            try await gracefulShutdown()
        } catch {
            terminate()
            throw error
        }
        close()
        do {
            try await join()
        } catch {
            terminate()
            throw error
        }
    }
}

extension QueueWorker: Service {
    /// Claims and runs jobs until the service group shuts down. Graceful shutdown (SIGTERM, with the
    /// group's `gracefulShutdownSignals`) stops claiming, lets the jobs held finish within
    /// `QueueWorkerOptions.shutdownGrace` and hands back the rest, as `QueueWorker.stop(_:)` with
    /// `QueueWorker.StopMode.finish` does; cancellation hands them back at once
    /// (`QueueWorker.StopMode.handBack`), their attempt not counted.
    ///
    /// The worker's loop runs on a thread of its own, never on a thread of the cooperative pool.
    /// - Throws: as the blocking `run()`: when the database cannot be reached for longer than a lease.
    public func run() async throws {
        try await withGracefulShutdownHandler {
            _ = try await AsyncBridge.offload(onCancel: { [self] in stop(.handBack) }) { [self] () throws -> Int in
                try run()
            }
        } onGracefulShutdown: { [self] in
            stop(.finish)
        }
    }
}

extension ManagerServer: Service {
    /// How long a graceful shutdown waits for the replies owed to go out before it cuts the connections
    /// of clients that do not read them (as ``ManagerServer/shutdown(timeout:)``'s default).
    static var serviceShutdownGrace: Duration { .seconds(10) }

    /// Serves clients until the service group shuts down (starting the server first, unless
    /// `ManagerServer.start()` was called already), then shuts down gracefully, as
    /// `ManagerServer.shutdown(timeout:)` does: no new client is accepted, every request already read
    /// is answered, and calls waiting on the server give up; a client that does not take its replies
    /// within 10 seconds is disconnected.
    ///
    /// A client's `shutdown` request stops the server but not the service: the group's other services go
    /// on until the group shuts down. Cancellation cuts every connection at once.
    public func run() async throws {
        if !isStarted { try start() }
        let groupShutdown = Threading.Event()
        do {
            try await withGracefulShutdownHandler {
                try await AsyncBridge.offload(onCancel: { [self] in
                    requestShutdown()
                    cutConnections()
                }) { [self] in
                    // Until the group shuts down, or a client shuts the server down (noticed within a
                    // second).
                    while !groupShutdown.wait(timeout: .seconds(1)) {
                        if wait(timeout: .zero) { return }
                    }
                    _ = shutdown(timeout: Self.serviceShutdownGrace)
                }
            } onGracefulShutdown: {
                groupShutdown.set()
            }
        } catch {
            // Cancelled, perhaps before the wait began: the server must not outlive the service.
            requestShutdown()
            cutConnections()
            throw error
        }
        if !groupShutdown.isSet { try await gracefulShutdown() }
    }
}
