/// A snapshot of a pool's progress, from ``ProcessPool/progress(every:)``.
public struct PoolProgress: Sendable {
    /// Tasks finished (with a result or an error).
    public var done: Int
    /// Of those, the failed ones.
    public var failed: Int
    /// Tasks submitted so far (for a lazy `imap`, this grows as input is read).
    public var total: Int
    /// Tasks per second since the first submission.
    public var rate: Double
    /// Estimated time to finish what has been submitted, if any progress has been made.
    public var eta: Duration?
    /// One entry per live worker.
    public var workers: [WorkerInsight]

    /// `done / total`, from 0 to 1.
    public var fractionDone: Double { total == 0 ? 0 : Double(done) / Double(total) }
}

extension PoolProgress {
    /// A snapshot with these figures and no per-worker insights, the rate counted since `first` (the
    /// first submission): the in-process pool's, and pools outside this module (the job queue's `QueuePool`).
    package static func snapshot(
        done: Int,
        failed: Int,
        total: Int,
        since first: ContinuousClock.Instant?
    ) -> PoolProgress {
        let elapsed = first.map { ContinuousClock.now - $0 } ?? .zero
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        let rate = seconds > 0 ? Double(done) / seconds : 0
        return PoolProgress(
            done: done,
            failed: failed,
            total: total,
            rate: rate,
            eta: rate > 0 ? .seconds(Double(total - done) / rate) : nil,
            workers: []
        )
    }

    /// `snapshot()` every `interval`, as an `AsyncStream`, until its consumer stops iterating.
    package static func every(
        _ interval: Duration,
        _ snapshot: @escaping @Sendable () -> PoolProgress
    ) -> AsyncStream<PoolProgress> {
        AsyncStream { continuation in
            let task = Task {
                while !Task.isCancelled {
                    continuation.yield(snapshot())
                    try? await Task.sleep(for: interval)
                }
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}
