import Logging
public import Multiprocessing
import MultiprocessingSQL
import Threading

/// A periodic job as the database holds it (``JobQueue/schedules()``).
public struct ScheduleInfo: Sendable, Hashable {
    /// The schedule's name, unique in the database.
    public var name: String
    /// The queue its jobs go to.
    public var queue: String
    /// The job's type, as stored.
    public var kind: String
    /// When it runs: `cron 30 2 * * * Europe/Paris`, `every 10s`.
    public var timing: String
    /// What happens to occurrences missed while no worker could queue them.
    public var missed: String
    /// The next occurrence, or nil when there is none (a cron expression with no date left in five years).
    public var next: QueueTime?
    /// The last occurrence the workers handled (queued, or skipped for its unique key), or nil.
    public var last: QueueTime?
}

extension JobQueue {
    /// Declares (or updates) the periodic job `name`: `job` is queued at each occurrence of `when`, with
    /// `options` (its queue, priority, attempts, backoff, timeout; a ``JobOptions/uniqueKey`` skips an
    /// occurrence while the previous one is queued or running; ``JobOptions/delay`` is not used).
    ///
    /// Workers serving the schedule's queue queue its jobs (``QueueWorkerOptions/schedules``): however
    /// many do, each occurrence is queued once — the occurrence is claimed by a compare-and-set of the
    /// schedule's next time, in the same transaction as the job's insert, so a worker killed between the
    /// two leaves the occurrence to another. A queued job is due at its occurrence.
    ///
    /// Workers read the schedules every second (or every poll interval, if that is longer), so a new
    /// schedule's first occurrence may be queued that much late.
    ///
    /// Calling this again with the same name replaces the job and options; the next occurrence is kept
    /// if the timing is the same, so a program may declare its schedules every time it starts. Occurrences
    /// that passed while no worker was running follow `missed`.
    ///
    /// - Throws: ``JobQueueError/Code/invalidSchedule`` for an empty or over-long name.
    public func schedule<J: Job>(
        _ name: String,
        _ job: J,
        _ when: JobSchedule,
        missed: MissedRuns = .skip,
        options: JobOptions = .default
    ) throws {
        guard !name.isEmpty, name.utf8.count <= 255 else {
            throw JobQueueError(.invalidSchedule, "a schedule's name has 1 to 255 bytes")
        }
        let kind = try JobIdentity.name(of: J.self)
        let payload = try BinaryEncoder().encode(job)
        let now = QueueSchema.nowMs()
        try withConnection { c in
            let d = c.dialect
            // Not before the last occurrence handled: a declaring machine whose clock is behind the workers'
            // does not bring back an occurrence already queued.
            let last = try c.scalar("SELECT last_at FROM mp_schedules WHERE name = \(d.parameter(1))", [.text(name)])
            let next = when.next(after: max(now, last?.intValue ?? now))
            let p = (1...14).map { d.parameter($0) }
            _ = try c.execute(
                """
                INSERT INTO mp_schedules (name, queue, kind, payload, spec, zone, missed, priority, max_attempts, \
                backoff_ms, timeout_ms, unique_key, next_at, updated_at) \
                VALUES (\(p[0]), \(p[1]), \(p[2]), \(p[3]), \(p[4]), \(p[5]), \(p[6]), \(p[7]), \(p[8]), \(p[9]), \
                \(p[10]), \(p[11]), \(p[12]), \(p[13])) \
                ON CONFLICT (name) DO UPDATE SET queue = excluded.queue, kind = excluded.kind, \
                payload = excluded.payload, missed = excluded.missed, priority = excluded.priority, \
                max_attempts = excluded.max_attempts, backoff_ms = excluded.backoff_ms, \
                timeout_ms = excluded.timeout_ms, unique_key = excluded.unique_key, \
                next_at = CASE WHEN mp_schedules.spec = excluded.spec AND mp_schedules.zone = excluded.zone \
                THEN COALESCE(mp_schedules.next_at, excluded.next_at) ELSE excluded.next_at END, \
                spec = excluded.spec, zone = excluded.zone, updated_at = excluded.updated_at
                """,
                [
                    .text(name), .text(options.queue), .text(kind), .blob(payload), .text(when.spec),
                    .text(when.zone.description), .text(missed.stored), .int(Int64(options.priority)),
                    .int(Int64(options.maxAttempts)), .int(options.backoff.wholeMilliseconds),
                    options.timeout.map { .int($0.wholeMilliseconds) } ?? .null,
                    options.uniqueKey.map { .text($0) } ?? .null, next.map { .int($0) } ?? .null, .int(now),
                ]
            )
        }
        // Workers see the schedule within a second (`QueueWorkerState.Config.schedulesEvery`).
    }

    /// Removes the periodic job `name`; jobs it already queued stay. Returns whether it existed.
    @discardableResult
    public func unschedule(_ name: String) throws -> Bool {
        try withConnection { c in
            try c.execute("DELETE FROM mp_schedules WHERE name = \(c.dialect.parameter(1))", [.text(name)]) > 0
        }
    }

    /// Every periodic job, by name.
    public func schedules() throws -> [ScheduleInfo] {
        try withConnection { c in
            var out: [ScheduleInfo] = []
            try c.forEachRow(
                "SELECT name, queue, kind, spec, zone, missed, next_at, last_at FROM mp_schedules ORDER BY name",
                []
            ) { r in
                let spec = r[3].textValue ?? ""
                let zone = r[4].textValue ?? "UTC"
                let timing = (try? JobSchedule(spec: spec, zone: zone))?.description ?? "\(spec) \(zone)"
                out.append(
                    ScheduleInfo(
                        name: r[0].textValue ?? "",
                        queue: r[1].textValue ?? "",
                        kind: r[2].textValue ?? "",
                        timing: timing,
                        missed: (try? MissedRuns(stored: r[5].textValue ?? ""))?.description ?? (r[5].textValue ?? ""),
                        next: QueueTime(r[6]),
                        last: QueueTime(r[7])
                    )
                )
            }
            return out
        }
    }
}

/// A worker's turn at the schedules of its queues: queues the jobs of the occurrences due (each once,
/// however many workers look at the same moment).
enum ScheduleRunner {
    /// What one turn did.
    struct Outcome: Equatable {
        /// Jobs queued.
        var queued = 0
        /// The earliest next occurrence of the queues' schedules (ms since the epoch), or nil.
        var nextDue: Int64?
        /// Schedules due that this worker cannot read (a zone not on this machine, a newer format), with
        /// the reason: left to other workers.
        var unreadable: [String: String] = [:]
        /// Schedules whose turn failed (a statement refused: a trigger or constraint of the user's on
        /// `mp_jobs`), with the error: tried again at the next turn, the others not held up.
        var failed: [String: String] = [:]
        /// The queues that got jobs.
        var queues: Set<String> = []
    }

    /// A due schedule's row.
    private struct Due {
        var name: String
        var queue: String
        var kind: String
        var payload: [UInt8]
        var spec: String
        var zone: String
        var missed: String
        var priority: Int64
        var maxAttempts: Int64
        var backoffMs: Int64
        var timeoutMs: Int64?
        var uniqueKey: String?
        var nextAt: Int64
    }

    static func run(
        queues: [String],
        now clock: () -> Int64 = QueueSchema.nowMs,
        on c: any SQLConnection
    ) throws
        -> Outcome
    {
        let d = c.dialect
        let list = queues.indices.map { d.parameter($0 + 2) }.joined(separator: ", ")
        var out = Outcome()
        var due: [Due] = []
        let now = clock()
        try c.forEachRow(
            """
            SELECT name, queue, kind, payload, spec, zone, missed, priority, max_attempts, backoff_ms, timeout_ms, \
            unique_key, next_at FROM mp_schedules WHERE next_at <= \(d.parameter(1)) AND queue IN (\(list)) ORDER BY next_at
            """,
            [.int(now)] + queues.map { .text($0) }
        ) { r in
            due.append(
                Due(
                    name: r[0].textValue ?? "",
                    queue: r[1].textValue ?? "",
                    kind: r[2].textValue ?? "",
                    payload: { if case .blob(let b) = r[3] { b } else { [] } }(),
                    spec: r[4].textValue ?? "",
                    zone: r[5].textValue ?? "",
                    missed: r[6].textValue ?? "",
                    priority: r[7].intValue ?? 0,
                    maxAttempts: r[8].intValue ?? 1,
                    backoffMs: r[9].intValue ?? 1000,
                    timeoutMs: r[10].intValue,
                    uniqueKey: r[11].textValue,
                    nextAt: r[12].intValue ?? 0
                )
            )
        }
        for s in due {
            let schedule: JobSchedule
            let missed: MissedRuns
            do {
                schedule = try JobSchedule(spec: s.spec, zone: s.zone)
                missed = try MissedRuns(stored: s.missed)
            } catch {
                out.unreadable[s.name] = "\(error)"
                continue
            }
            let plan = missed.plan(schedule, due: s.nextAt, now: now)
            let queued: Int
            do {
                queued = try c.transaction(immediate: true) { () throws -> Int in
                    // READ COMMITTED: an update that waited for another worker's sees its committed row,
                    // and then matches nothing (the next time moved), instead of failing to serialise.
                    if d.skipsLockedRows { try c.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED") }
                    let claimed = try c.execute(
                        """
                        UPDATE mp_schedules SET next_at = \(d.parameter(1)), \
                        last_at = COALESCE(\(d.parameter(2)), last_at) \
                        WHERE name = \(d.parameter(3)) AND next_at = \(d.parameter(4))
                        """,
                        [
                            plan.next.map { .int($0) } ?? .null, plan.runs.last.map { .int($0) } ?? .null,
                            .text(s.name), .int(s.nextAt),
                        ]
                    )
                    guard claimed == 1, !plan.runs.isEmpty else { return 0 }
                    return try insert(s, runs: plan.runs, now: now, on: c)
                }
            } catch let e as SQLError where e.kind == .connection {
                throw e  // the worker reconnects; the turn is repeated
            } catch {
                out.failed[s.name] = "\(error)"
                continue
            }
            out.queued += queued
            if queued > 0 { out.queues.insert(s.queue) }
            // A catch-up capped at its turn's limit leaves its next occurrence due: the next turn goes on.
            if let n = plan.next, n <= now { out.nextDue = min(out.nextDue ?? n, n) }
        }
        // The earliest occurrence not yet due: schedules left due by this turn (unreadable here, or failed)
        // do not bring the worker back at once.
        let notDue = queues.indices.map { d.parameter($0 + 2) }.joined(separator: ", ")
        if let next = try c.scalar(
            "SELECT min(next_at) FROM mp_schedules WHERE next_at > \(d.parameter(1)) AND queue IN (\(notDue))",
            [.int(now)] + queues.map { .text($0) }
        )?.intValue {
            out.nextDue = min(out.nextDue ?? next, next)
        }
        return out
    }

    /// Queues one job per occurrence in `runs`, each due at its occurrence.
    private static func insert(_ s: Due, runs: [Int64], now: Int64, on c: any SQLConnection) throws -> Int {
        let options = JobOptions(
            queue: s.queue,
            priority: Int(clamping: s.priority),
            uniqueKey: s.uniqueKey,
            timeout: s.timeoutMs.map { .milliseconds($0) },
            maxAttempts: Int(clamping: s.maxAttempts),
            backoff: .milliseconds(s.backoffMs)
        )
        let insert = JobInsert(kind: s.kind, options: options, now: now, runAt: nil, payload: s.payload)
        var inserted = 0
        // A unique key: one row per statement, so that an occurrence whose predecessor still holds the key
        // is skipped alone.
        let perStatement = s.uniqueKey == nil ? insert.rowsPerStatement(c.dialect, at: 500) : 1
        var start = 0
        while start < runs.count {
            let batch = runs[start..<min(runs.count, start + perStatement)]
            let sql = insert.statement(
                varying: "run_at",
                type: "bigint",
                rows: batch.count,
                skippingTakenKey: s.uniqueKey != nil,
                returningIds: false,
                c.dialect
            )
            inserted += try c.execute(sql, insert.parameters(batch.map { .int($0) }))
            start += batch.count
        }
        return inserted
    }
}
