import Synchronization
import Threading

/// A call of many items whose work runs outside this module's pools (the job queue's `QueuePool` runs it
/// as queue jobs), handed to its caller as the pools' own ``PoolResults``: the same ordering, failures,
/// credit, cancellation and progress display as a ``ProcessPool``'s. The pool keeps this side; only the
/// caller holds the results, so that dropping them cancels the call.
package final class ExternalStream<Output: Codable & Sendable>: Sendable {
    private let call: StreamCall<Output>
    private let credit: Credit?

    private init(call: StreamCall<Output>, credit: Credit?) {
        self.call = call
        self.credit = credit
    }

    /// A call with `options` (its progress display starts here) and the results its caller reads; with
    /// `maxInFlight`, its input is read only while fewer items than that are submitted and not yet read
    /// (``acquire(_:)``). `cancel` runs when the caller cancels or drops the results.
    package static func make(
        options: TaskOptions,
        maxInFlight: Int?,
        chunksize: Int,
        ordered: Bool,
        cancel: @escaping @Sendable () -> Void
    ) throws -> (ExternalStream<Output>, PoolResults<Output>) {
        let call = StreamCall<Output>(options: options)
        if let display = options.progress { call.progress = try ProgressReporter.start(for: call, display) }
        let credit = maxInFlight.map { Credit(Swift.max($0, 2 * chunksize, 1)) }
        let results = PoolResults(call: call, credit: credit, ordered: ordered) {
            _ = call.markCancelled()
            credit?.cancel()
            cancel()
        }
        return (ExternalStream(call: call, credit: credit), results)
    }

    /// Whether the caller cancelled the call (or dropped its results).
    package var isCancelled: Bool { call.isCancelled }

    /// Waits for `n` items' credit; false when the call was cancelled meanwhile. True at once without
    /// `maxInFlight`.
    package func acquire(_ n: Int) -> Bool { credit?.acquire(n) ?? !call.isCancelled }

    /// Items `start..<start + values.count` succeeded.
    package func deliver(start: Int, _ values: [Output]) {
        guard !values.isEmpty else { return }
        call.deliverItems(start: start, values)
    }

    /// Item `index` failed with `error`.
    package func fail(index: Int, _ error: any Error) { call.fail(index: index, error) }

    /// The input is all submitted: `total` items (every one gets an outcome, or fails).
    package func end(total: Int) {
        call.totalItems.store(total, ordering: .relaxed)
        call.inputEnded(total: total)
        try? call.deliveries.put(.end(total: total))
    }
}

/// A call of one item whose work runs outside this module's pools, handed to its caller as a ``PoolTask``.
package final class ExternalTask<Output: Codable & Sendable>: Sendable {
    private let call: SingleCall<Output>
    /// What the caller waits on.
    package let task: PoolTask<Output>

    /// A task; `cancel` runs when the caller cancels it.
    package init(options: TaskOptions, cancel: @escaping @Sendable () -> Void) {
        let call = SingleCall<Output>(options: options)
        self.call = call
        task = PoolTask(call: call) {
            guard call.markCancelled() else { return }
            cancel()
            call.future.complete(.failure(CancellationError()))
        }
    }

    /// The task's outcome (the first one counts).
    package func complete(_ result: Result<Output, any Error>) { call.future.complete(result) }

    /// ``PoolTask/reporting(on:_:_:)``: the task with `callback` and `errorCallback` called through
    /// `deliver` when it ends.
    package func reporting(
        on deliver: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void,
        _ callback: (@Sendable (Output) -> Void)?,
        _ errorCallback: (@Sendable (any Error) -> Void)?
    ) -> PoolTask<Output> {
        task.reporting(on: deliver, callback, errorCallback)
    }
}
