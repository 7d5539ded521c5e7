import Threading

/// Runs blocking work for async callers on a dedicated thread pool, so that no thread of the
/// cooperative pool is ever parked in a blocking syscall.
package enum AsyncBridge {
    private static let pool = ThreadPool(maxWorkers: 256, threadNamePrefix: "mp-async-wait")
    static let slice = Duration.milliseconds(50)

    /// `attempt(timeout)` returns a value, or `nil` when its slice ran out (then it is called again).
    ///
    /// Cancellation stops a slice that has not started; a slice already running is awaited (at most one
    /// slice) and its value returned, so an item a cancelled `get` has already taken is never lost.
    static func run<T: Sendable>(_ attempt: @escaping @Sendable (Duration?) throws -> T?) async throws -> T {
        while true {
            try Task.checkCancellation()
            let future = try pool.submit { try attempt(slice) }
            let outcome: Result<T?, any Error> = await withTaskCancellationHandler {
                await withCheckedContinuation { continuation in
                    future.addDoneCallback { f in continuation.resume(returning: Result { try f.result() }) }
                }
            } onCancel: {
                future.cancel()
            }
            switch outcome {
            case .success(.some(let value)): return value
            case .success(.none): continue
            case .failure(let e as ThreadingError) where e.code == .cancelled: throw CancellationError()
            case .failure(let e): throw e
            }
        }
    }

    /// ``run(_:)`` without cancellation: for work that must complete even in a cancelled task (taking a
    /// condition's lock back). `attempt` must make progress towards a value; the pool refusing work (it
    /// never closes) would be a bug, and traps.
    static func runIgnoringCancellation<T: Sendable>(_ attempt: @escaping @Sendable (Duration?) -> T?) async -> T {
        while true {
            let future: Future<T?>
            do {
                future = try pool.submit { attempt(slice) }
            } catch {
                preconditionFailure("the async-wait pool refused work: \(error)")
            }
            let value: T? = await withCheckedContinuation { continuation in
                future.addDoneCallback { f in continuation.resume(returning: (try? f.result()) ?? nil) }
            }
            if let value { return value }
        }
    }

    /// Runs `body` (which must bound its own blocking time) on the pool and awaits it. On cancellation a
    /// body that has not started is dropped, and `onCancel` runs so a started one can be cut short (by
    /// closing what it waits on); the body's own outcome is returned either way.
    package static func offload<T: Sendable>(
        onCancel: @escaping @Sendable () -> Void = {},
        _ body: @escaping @Sendable () throws -> T
    ) async throws -> T {
        let future = try pool.submit(body)
        let outcome: Result<T, any Error> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                future.addDoneCallback { f in continuation.resume(returning: Result { try f.result() }) }
            }
        } onCancel: {
            if !future.cancel() { onCancel() }
        }
        if case .failure(let e as ThreadingError) = outcome, e.code == .cancelled { throw CancellationError() }
        return try outcome.get()
    }
}
