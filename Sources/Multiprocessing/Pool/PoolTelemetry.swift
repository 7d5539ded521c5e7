import CoreMetrics
import Logging

/// A pool's logs and metrics, reported through swift-log and swift-metrics to whatever backends the
/// program bootstrapped (the library bootstraps neither).
///
/// Metrics, each with the dimension `pool` (``ProcessPoolOptions/name``):
/// - `mp_pool_items_submitted_total`, `mp_pool_items_succeeded_total`, `mp_pool_items_failed_total`:
///   items (a chunk's items count one by one);
/// - `mp_pool_retries_total`: units scheduled again under a ``RetryPolicy``;
/// - `mp_pool_worker_starts_total`, `mp_pool_worker_deaths_total` (crashes, kills from outside, protocol
///   violations; not recycling or shutdown);
/// - `mp_pool_units_reclaimed_total`: units taken back from a worker stuck on a long item, before it
///   started them, and given to other workers;
/// - `mp_pool_queued_units` (gauge): units waiting for a worker, retries in backoff included;
/// - `mp_pool_busy_seconds` (timer): a worker's time on each unit it answered.
struct PoolTelemetry: Sendable {
    let logger: Logger
    let submitted: Counter
    let succeeded: Counter
    let failed: Counter
    let retries: Counter
    let starts: Counter
    let deaths: Counter
    let reclaimed: Counter
    let queued: Gauge
    let busy: CoreMetrics.Timer

    init(name: String, logger: Logger) {
        var logger = logger
        logger[metadataKey: "pool"] = "\(name)"
        self.logger = logger
        let dims = [("pool", name)]
        submitted = Counter(label: "mp_pool_items_submitted_total", dimensions: dims)
        succeeded = Counter(label: "mp_pool_items_succeeded_total", dimensions: dims)
        failed = Counter(label: "mp_pool_items_failed_total", dimensions: dims)
        retries = Counter(label: "mp_pool_retries_total", dimensions: dims)
        starts = Counter(label: "mp_pool_worker_starts_total", dimensions: dims)
        deaths = Counter(label: "mp_pool_worker_deaths_total", dimensions: dims)
        reclaimed = Counter(label: "mp_pool_units_reclaimed_total", dimensions: dims)
        queued = Gauge(label: "mp_pool_queued_units", dimensions: dims)
        busy = CoreMetrics.Timer(label: "mp_pool_busy_seconds", dimensions: dims)
    }

    /// Reports what changed between two tallies of the pool's state.
    func report(from old: PoolState.Tally, to new: PoolState.Tally) {
        func bump(_ c: Counter, _ delta: Int) { if delta > 0 { c.increment(by: delta) } }
        bump(submitted, new.submitted - old.submitted)
        bump(failed, new.failed - old.failed)
        bump(succeeded, (new.done - new.failed) - (old.done - old.failed))
        bump(retries, new.retried - old.retried)
        bump(starts, new.started - old.started)
        bump(deaths, new.unexpectedDeaths - old.unexpectedDeaths)
        bump(reclaimed, new.reclaimed - old.reclaimed)
        if new.queued != old.queued { queued.record(new.queued) }
    }
}
