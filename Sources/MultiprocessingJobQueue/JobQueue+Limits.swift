import MultiprocessingSQL
import Threading

/// A queue's limits across all the workers that serve it (``JobQueue/setLimit(_:for:)``): at most
/// ``concurrency`` of its jobs running at once, and at most ``Rate/count`` started in any
/// ``Rate/period``.
///
/// A worker's claim enforces them: it locks the queue's limit (PostgreSQL: its row, `FOR UPDATE`; SQLite:
/// the database's write lock), counts the queue's running jobs and its starts in the last period, claims
/// only what fits, and records the starts before it lets go, so no worker overshoots however many claim
/// at once. Unlimited queues are claimed as before, in one statement, at their former cost.
///
/// - A running job counts until it is recorded: one whose worker was killed counts until its lease
///   expires and it is rescued.
/// - The rate is a sliding window over claims: in no interval of length `period` are more than `count`
///   jobs claimed (a counter per fixed window would let twice as many through across its boundary). A
///   worker claims a limited queue's jobs only into its free pool workers, not its local buffer, so a
///   claim is a start, within the moment it takes to hand the job to the pool. A retried attempt is a
///   start; a job handed back unrun (its worker stopping) stays counted.
/// - A worker claims from its limited queues first, each in turn, then from the others: a busy unlimited
///   queue does not starve a limited one (which, limited, cannot starve it).
/// - Workers read which of their queues are limited when they start and every second (or poll interval,
///   if longer): a limit set while they run keeps the queue's jobs out of their ordinary claim from the
///   next claim on (one already under way when the limit is committed may still take a batch of them),
///   and lets them through their limited claim within that second.
/// - Times are the workers' clocks: keep the machines' clocks in step (NTP), as for delayed jobs.
/// - Workers of versions before this one do not know limits and ignore them.
public struct QueueLimit: Sendable, Hashable, CustomStringConvertible {
    /// At most this many jobs of the queue running at once, across all workers; `nil`: no limit.
    public var concurrency: Int?
    /// At most this many jobs started in any period; `nil`: no limit.
    public var rate: Rate?

    /// `count` jobs started in any `period`.
    public struct Rate: Sendable, Hashable, CustomStringConvertible {
        /// The most jobs started in any ``period``.
        public var count: Int
        /// The sliding window's length (whole milliseconds).
        public var period: Duration

        /// At most `count` jobs started in any `period`.
        public init(_ count: Int, per period: Duration) {
            self.count = count
            self.period = period
        }

        /// `10/1s`, as `mp queue limit --rate` takes it.
        public var description: String { "\(count)/\(QueueLimit.describe(period))" }
    }

    /// A limit of `concurrency` running jobs, `rate` starts, or both.
    public init(concurrency: Int? = nil, rate: Rate? = nil) {
        self.concurrency = concurrency
        self.rate = rate
    }

    /// `concurrency 2, rate 10/1s`.
    public var description: String {
        var parts: [String] = []
        if let concurrency { parts.append("concurrency \(concurrency)") }
        if let rate { parts.append("rate \(rate)") }
        return parts.isEmpty ? "none" : parts.joined(separator: ", ")
    }

    static func describe(_ d: Duration) -> String {
        let ms = d.wholeMilliseconds
        if ms % 3_600_000 == 0 { return "\(ms / 3_600_000)h" }
        if ms % 60_000 == 0 { return "\(ms / 60_000)m" }
        if ms % 1000 == 0 { return "\(ms / 1000)s" }
        return "\(ms)ms"
    }

    /// Refuses what a claim could not enforce.
    func validate() throws(JobQueueError) {
        if let concurrency, concurrency < 1 || concurrency > 1_000_000 {
            throw JobQueueError(.invalidLimit, "a concurrency limit is between 1 and 1,000,000 (got \(concurrency))")
        }
        if let rate {
            guard rate.count >= 1 else { throw JobQueueError(.invalidLimit, "a rate is at least 1 job per period") }
            guard rate.count <= 1_000_000 else {
                throw JobQueueError(.invalidLimit, "a rate is at most 1,000,000 jobs per period (one row each)")
            }
            guard rate.period >= .milliseconds(1) else {
                throw JobQueueError(.invalidLimit, "a rate's period is at least a millisecond")
            }
        }
        if concurrency == nil && rate == nil {
            throw JobQueueError(.invalidLimit, "a limit sets a concurrency, a rate or both (remove one with nil)")
        }
    }
}

extension JobQueue {
    /// Sets the limit of `queue` across all workers (replacing the one it had), or removes it (`nil`):
    /// `setLimit(QueueLimit(concurrency: 2, rate: .init(10, per: .seconds(1))), for: "mail")`.
    /// - Throws: ``JobQueueError`` `invalidLimit` for a limit no claim could keep (a concurrency or a
    ///   rate below 1, a period under a millisecond).
    public func setLimit(_ limit: QueueLimit?, for queue: String) throws {
        try limit?.validate()
        try withConnection { c in
            let d = c.dialect
            try c.transaction(immediate: true) {
                // Either statement waits for a claim of the queue that holds the limit's row lock.
                if limit?.rate == nil {
                    try c.execute("DELETE FROM mp_queue_starts WHERE queue = \(d.parameter(1))", [.text(queue)])
                }
                guard let limit else {
                    try c.execute("DELETE FROM mp_queue_limits WHERE queue = \(d.parameter(1))", [.text(queue)])
                    return
                }
                // An upsert: two callers setting a first limit for one queue at once both succeed (the later
                // one's values stay) rather than one failing on the primary key.
                try c.execute(
                    """
                    INSERT INTO mp_queue_limits (queue, concurrency, rate, period_ms) \
                    VALUES (\(d.parameter(1)), \(d.parameter(2)), \(d.parameter(3)), \(d.parameter(4))) \
                    ON CONFLICT (queue) DO UPDATE SET concurrency = excluded.concurrency, rate = excluded.rate, \
                    period_ms = excluded.period_ms
                    """,
                    [
                        .text(queue),
                        limit.concurrency.map { .int(Int64($0)) } ?? .null,
                        limit.rate.map { .int(Int64($0.count)) } ?? .null,
                        limit.rate.map { .int($0.period.wholeMilliseconds) } ?? .null,
                    ]
                )
            }
        }
        // Idle workers of the queue look again: a limit removed or raised lets jobs through now.
        wakeWorkers(queues: [queue])
    }

    /// The queues that have a limit, by name.
    public func limits() throws -> [String: QueueLimit] {
        try withConnection { c in
            var out: [String: QueueLimit] = [:]
            try c.forEachRow("SELECT queue, concurrency, rate, period_ms FROM mp_queue_limits", []) { r in
                guard let queue = r[0].textValue else { return }
                out[queue] = QueueLimit(
                    concurrency: r[1].intValue.map { Int($0) },
                    rate: r[2].intValue.flatMap { count in
                        r[3].intValue.map { QueueLimit.Rate(Int(count), per: .milliseconds($0)) }
                    }
                )
            }
            return out
        }
    }
}
