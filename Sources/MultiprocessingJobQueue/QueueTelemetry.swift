import CoreMetrics
import Threading

/// The worker's metrics (swift-metrics; the program chooses the backend).
struct QueueTelemetry: Sendable {
    let claimed, completed, failed, retried, discarded, rescued, cancelled, handedBack, leasesLost: Counter
    let duration, lag: CoreMetrics.Timer
    let running, buffer: Gauge

    init(queues: [String]) {
        let dims = [("queues", queues.joined(separator: ","))]
        claimed = Counter(label: "mp_queue_jobs_claimed_total", dimensions: dims)
        completed = Counter(label: "mp_queue_jobs_completed_total", dimensions: dims)
        failed = Counter(label: "mp_queue_attempts_failed_total", dimensions: dims)
        retried = Counter(label: "mp_queue_jobs_retried_total", dimensions: dims)
        discarded = Counter(label: "mp_queue_jobs_discarded_total", dimensions: dims)
        rescued = Counter(label: "mp_queue_jobs_rescued_total", dimensions: dims)
        cancelled = Counter(label: "mp_queue_jobs_cancelled_total", dimensions: dims)
        handedBack = Counter(label: "mp_queue_jobs_handed_back_total", dimensions: dims)
        leasesLost = Counter(label: "mp_queue_leases_lost_total", dimensions: dims)
        duration = CoreMetrics.Timer(label: "mp_queue_job_duration_seconds", dimensions: dims)
        lag = CoreMetrics.Timer(label: "mp_queue_job_lag_seconds", dimensions: dims)
        running = Gauge(label: "mp_queue_jobs_running", dimensions: dims)
        buffer = Gauge(label: "mp_queue_local_buffer", dimensions: dims)
    }

    /// Counts recorded attempts by outcome.
    func recorded(_ records: [QueueWorkerState.Record]) {
        for r in records {
            switch r.resolution {
            case .complete:
                completed.increment()
                duration.recordNanoseconds(r.ran.wholeNanoseconds)
            case .cancelled: cancelled.increment()
            case .handBackUnknownKind, .handBack:
                handedBack.increment()  // not a failed attempt: the database does not count it either
            case .retry:
                failed.increment()
                retried.increment()
            case .discard:
                failed.increment()
                discarded.increment()
            }
        }
    }
}
