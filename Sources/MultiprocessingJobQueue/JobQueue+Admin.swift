import MultiprocessingSQL
import Threading

/// A moment on the queue's clock: milliseconds since the Unix epoch, as the queue's rows store it (the same
/// in every process and on every machine that keeps time).
public struct QueueTime: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    public var millisecondsSinceEpoch: Int64

    /// The moment `millisecondsSinceEpoch` after the epoch.
    public init(millisecondsSinceEpoch: Int64) { self.millisecondsSinceEpoch = millisecondsSinceEpoch }

    /// Now, on this machine's real-time clock.
    public static var now: QueueTime { QueueTime(millisecondsSinceEpoch: QueueSchema.nowMs()) }

    /// `2026-12-06T03:33:02.123Z` (ISO 8601, UTC).
    public var description: String { QueueSchema.iso8601(ms: millisecondsSinceEpoch) }

    /// The time from `other` to this moment (negative when `other` is later).
    public func since(_ other: QueueTime) -> Duration {
        .milliseconds(millisecondsSinceEpoch - other.millisecondsSinceEpoch)
    }

    /// Whether `lhs` is earlier.
    public static func < (lhs: QueueTime, rhs: QueueTime) -> Bool {
        lhs.millisecondsSinceEpoch < rhs.millisecondsSinceEpoch
    }

    init?(_ value: SQLValue) {
        guard let ms = value.intValue else { return nil }
        millisecondsSinceEpoch = ms
    }
}

/// One named queue's jobs, counted by state (``JobQueue/queues()``).
public struct QueueSummary: Sendable, Hashable {
    /// The queue's name (``JobOptions/queue``).
    public var queue: String
    /// Jobs in each state; a state with none is left out.
    public var counts: [JobState: Int]
    /// Of the available jobs, those not due yet (delayed, or waiting for a retry's backoff).
    public var scheduled: Int
    /// How many jobs are in `state`.
    public func count(_ state: JobState) -> Int { counts[state] ?? 0 }
}

/// Jobs that finished in one span of time (``JobQueue/throughput(last:bucket:queue:)``).
public struct ThroughputBucket: Sendable, Hashable {
    /// When the span starts (it lasts the bucket's length).
    public var start: QueueTime
    /// Jobs that completed in it.
    public var completed: Int
    /// Jobs discarded (failed their last attempt) or cancelled in it.
    public var failed: Int
}

/// Which jobs ``JobQueue/jobs(matching:limit:)`` lists. Every criterion set must hold.
public struct JobFilter: Sendable, Hashable {
    /// Jobs in this state, or in any.
    public var state: JobState?
    /// Jobs of this queue, or of any.
    public var queue: String?
    /// Jobs whose type's name contains this text (`Square` finds `3app6SquareV`), or of any type.
    public var kind: String?
    /// Only jobs with a smaller id: the next page after a page whose last job had this id.
    public var before: Int64?

    /// A filter; each parameter sets the property of the same name (nil: no condition).
    public init(state: JobState? = nil, queue: String? = nil, kind: String? = nil, before: Int64? = nil) {
        self.state = state
        self.queue = queue
        self.kind = kind
        self.before = before
    }
}

/// Everything the queue keeps of one job (``JobQueue/details(_:)``).
public struct JobDetails: Sendable, Hashable {
    /// The job's row as the lists show it: queue, type, state, attempts, worker, error history.
    public var info: JobInfo
    /// The job's arguments as they were queued: the job value in the library's binary encoding.
    public var payload: [UInt8]
    /// When it was queued.
    public var createdAt: QueueTime
    /// When it is (or was) due: its delay, or the end of a retry's backoff.
    public var runAt: QueueTime
    /// When it finished (completed, discarded, cancelled); nil before.
    public var finishedAt: QueueTime?
    /// Until when its worker's lease holds (while it runs).
    public var leaseUntil: QueueTime?
    /// The unique key it was queued with (``JobOptions/uniqueKey``).
    public var uniqueKey: String?
    /// Its time limit per attempt (``JobOptions/timeout``).
    public var timeout: Duration?
    /// The wait before its first retry (``JobOptions/backoff``).
    public var backoff: Duration
    /// Its cancellation was asked for while it ran (its worker stops it within a heartbeat).
    public var cancelRequested: Bool
    /// The size of its stored result, once it completed.
    public var resultBytes: Int?
    /// It was queued inside a trace (its row keeps the trace context).
    public var traced: Bool
    /// The jobs it waits for or waited for (a link of a chain, a group's callback), in the order named.
    public var waitsFor: [JobDependency] = []
    /// The jobs that wait or waited for it (the next link, a group's callback).
    public var waitedForBy: [Int64] = []
}

/// One job that another waits for (``JobDetails/waitsFor``).
public struct JobDependency: Sendable, Hashable {
    /// The job waited for.
    public var job: Int64
    /// Whether it must complete for the waiting job to run (``WaitPolicy/allSucceeded``).
    public var required: Bool
    /// How it ended, once it has (nil while it has not).
    public var ended: JobState?
}

/// A queue worker as it last announced itself: every third of its lease, while it runs
/// (``JobQueue/workers()``).
public struct QueueWorkerRecord: Sendable, Hashable {
    /// Its ``QueueWorker/name`` (`host:pid:n` unless set).
    public var name: String
    /// The machine it runs on.
    public var host: String
    /// Its process id there.
    public var pid: Int32
    /// The queues it serves.
    public var queues: [String]
    /// When it started.
    public var startedAt: QueueTime
    /// Its last announcement.
    public var lastSeen: QueueTime
    /// How often it announces itself.
    public var heartbeat: Duration
    /// Jobs it holds: running, and claimed for its local buffer.
    public var held: Int
    /// Jobs it runs at once.
    public var concurrency: Int
    /// Jobs it has finished since it started.
    public var finished: Int
    /// It is stopping (finishing or handing back what it holds).
    public var stopping: Bool
    /// Its pool's worker processes.
    public var processes: [Process]

    /// Whether it announced itself within its last three heartbeats at `now` (a worker that misses more was
    /// killed, or has lost the database).
    public func isLive(at now: QueueTime) -> Bool { now.since(lastSeen) <= heartbeat * 3 }

    /// One process of a worker's pool.
    public struct Process: Sendable, Hashable {
        /// Its process id.
        public var pid: Int32
        /// How long its current item has run; nil while it is idle.
        public var currentItemAge: Duration?
        /// Its peak resident memory (the kernel's high-water mark, VmHWM), in bytes; nil if unknown.
        public var peakMemory: Int?
        /// Tasks (chunks) it has finished.
        public var tasks: Int

        /// Whether it runs an item now.
        public var busy: Bool { currentItemAge != nil }

        /// A process with these figures.
        public init(pid: Int32, currentItemAge: Duration?, peakMemory: Int?, tasks: Int) {
            self.pid = pid
            self.currentItemAge = currentItemAge
            self.peakMemory = peakMemory
            self.tasks = tasks
        }

        /// `pid age_ms peak_bytes tasks`, -1 for what is unknown: the stored form.
        var line: String {
            "\(pid) \(currentItemAge.map { $0.wholeMilliseconds } ?? -1) \(peakMemory ?? -1) \(tasks)"
        }

        init?(line: Substring) {
            let f = line.split(separator: " ").compactMap { Int64($0) }
            guard f.count == 4, let pid = Int32(exactly: f[0]) else { return nil }
            self.pid = pid
            currentItemAge = f[1] < 0 ? nil : .milliseconds(f[1])
            peakMemory = f[2] < 0 ? nil : Int(f[2])
            tasks = Int(f[3])
        }
    }
}

extension JobQueue {
    /// Every queue that has jobs, by name, with its jobs counted by state.
    public func queues() throws -> [QueueSummary] {
        try withConnection { c in
            var byQueue: [String: QueueSummary] = [:]
            try c.forEachRow(
                "SELECT queue, state, count(*), sum(CASE WHEN state = 'available' AND run_at > \(c.dialect.parameter(1)) THEN 1 ELSE 0 END) FROM mp_jobs GROUP BY queue, state",
                [.int(QueueSchema.nowMs())]
            ) { r in
                guard let q = r[0].textValue, let s = r[1].textValue.flatMap(JobState.init(rawValue:)) else { return }
                byQueue[q, default: QueueSummary(queue: q, counts: [:], scheduled: 0)].counts[s] = Int(
                    r[2].intValue ?? 0
                )
                byQueue[q]!.scheduled += Int(r[3].intValue ?? 0)
            }
            return byQueue.values.sorted { $0.queue < $1.queue }
        }
    }

    /// Jobs finished in each `bucket` of the `last` span of time, oldest first, every bucket present (a
    /// quiet one counts 0); all queues, or one. Jobs deleted by the retention cleaner are not counted.
    public func throughput(
        last: Duration,
        bucket: Duration = .seconds(10),
        queue: String? = nil
    ) throws -> [ThroughputBucket] {
        let size = max(1, bucket.wholeMilliseconds)
        let count = Int(max(1, min(10_000, last.wholeMilliseconds / size)))
        let end = (QueueSchema.nowMs() / size + 1) * size
        let start = end - Int64(count) * size
        var buckets = (0..<count).map {
            ThroughputBucket(
                start: QueueTime(millisecondsSinceEpoch: start + Int64($0) * size),
                completed: 0,
                failed: 0
            )
        }
        try withConnection { c in
            let d = c.dialect
            var parameters: [SQLValue] = [.int(start), .int(size)]
            var sql =
                "SELECT (finished_at - \(d.parameter(1))) / \(d.parameter(2)), state, count(*) FROM mp_jobs WHERE finished_at >= \(d.parameter(1))"
            if let queue {
                parameters.append(.text(queue))
                sql += " AND queue = \(d.parameter(3))"
            }
            try c.forEachRow(sql + " GROUP BY 1, 2", parameters) { r in
                guard let i = r[0].intValue, i >= 0, i < count else { return }
                let n = Int(r[2].intValue ?? 0)
                switch r[1].textValue {
                case "completed": buckets[Int(i)].completed += n
                case "discarded", "cancelled": buckets[Int(i)].failed += n
                default: break
                }
            }
        }
        return buckets
    }

    /// Jobs that match `filter`, newest first (by id), at most `limit`: pass the last one's id as
    /// ``JobFilter/before`` for the next page.
    public func jobs(matching filter: JobFilter, limit: Int = 50) throws -> [JobInfo] {
        try withConnection { c in
            let d = c.dialect
            var conditions: [String] = []
            var parameters: [SQLValue] = []
            func bind(_ v: SQLValue) -> String {
                parameters.append(v)
                return d.parameter(parameters.count)
            }
            if let s = filter.state { conditions.append("state = \(bind(.text(s.rawValue)))") }
            if let q = filter.queue { conditions.append("queue = \(bind(.text(q)))") }
            if let k = filter.kind, !k.isEmpty {
                // A substring, case and all, the same on every database (LIKE ignores case on SQLite only,
                // and its escapes depend on PostgreSQL's settings): `kind` contains it when removing it
                // changes `kind`.
                conditions.append("kind <> replace(kind, \(bind(.text(k))), '')")
            }
            if let b = filter.before { conditions.append("id < \(bind(.int(b)))") }
            let condition = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
            return try Self.infos(c, condition + " ORDER BY id DESC LIMIT \(max(0, limit))", parameters)
        }
    }

    /// Everything the queue keeps of job `id`, or nil when there is no such job.
    public func details(_ id: Int64) throws -> JobDetails? {
        guard let info = try info(id) else { return nil }
        return try withConnection { c in
            var out: JobDetails?
            try c.forEachRow(
                """
                SELECT payload, created_at, run_at, finished_at, lease_until, unique_key, timeout_ms, backoff_ms,
                  cancel_requested, length(result), trace_context IS NOT NULL FROM mp_jobs WHERE id = \(c.dialect.parameter(1))
                """,
                [.int(id)]
            ) { r in
                let payload: [UInt8] = if case .blob(let b) = r[0] { b } else { [] }
                out = JobDetails(
                    info: info,
                    payload: payload,
                    createdAt: QueueTime(r[1]) ?? QueueTime(millisecondsSinceEpoch: 0),
                    runAt: QueueTime(r[2]) ?? QueueTime(millisecondsSinceEpoch: 0),
                    finishedAt: QueueTime(r[3]),
                    leaseUntil: QueueTime(r[4]),
                    uniqueKey: r[5].textValue,
                    timeout: r[6].intValue.map { .milliseconds($0) },
                    backoff: .milliseconds(r[7].intValue ?? 0),
                    cancelRequested: r[8].intValue == 1,
                    resultBytes: r[9].intValue.map { Int($0) },
                    traced: r[10].intValue == 1 || r[10].textValue == "t" || r[10].textValue == "true"
                )
            }
            guard var details = out else { return nil }
            let d = c.dialect
            try c.forEachRow(
                "SELECT parent_id, required, parent_state FROM mp_job_deps WHERE child_id = \(d.parameter(1)) ORDER BY position",
                [.int(id)]
            ) { r in
                details.waitsFor.append(
                    JobDependency(
                        job: r[0].intValue ?? 0,
                        required: r[1].intValue == 1,
                        ended: r[2].textValue.flatMap(JobState.init(rawValue:))
                    )
                )
            }
            try c.forEachRow(
                "SELECT DISTINCT child_id FROM mp_job_deps WHERE parent_id = \(d.parameter(1)) ORDER BY child_id",
                [.int(id)]
            ) { details.waitedForBy.append($0[0].intValue ?? 0) }
            return details
        }
    }

    /// Queues a finished job again (discarded, cancelled, or completed: Sidekiq's and Oban's "retry"), due
    /// now, with one more attempt allowed if it had used them all; its error history is kept. Returns false
    /// when the job is not finished (or does not exist). A job cancelled while it waited for others that
    /// have not all ended waits for them again; one stopped because a job it needs failed runs with that
    /// outcome (retry the failed job first, then queue the rest anew: a retried job does not bring back
    /// the jobs its failure stopped).
    /// - Throws: ``JobQueueError`` `.conflict` when another job with its unique key is queued or running.
    @discardableResult
    public func retry(_ id: Int64) throws -> Bool {
        let retried: String? = try withConnection { c in
            let d = c.dialect
            return try c.transaction(immediate: true) {
                var row: (state: String, key: String?, queue: String)?
                try c.forEachRow(
                    "SELECT state, unique_key, queue FROM mp_jobs WHERE id = \(d.parameter(1))",
                    [.int(id)]
                ) { row = ($0[0].textValue ?? "", $0[1].textValue, $0[2].textValue ?? "") }
                guard let row, ["discarded", "cancelled", "completed"].contains(row.state) else { return nil }
                if let key = row.key,
                    try c.scalar(
                        "SELECT count(*) FROM mp_jobs WHERE unique_key = \(d.parameter(1)) AND state IN ('available', 'running')",
                        [.text(key)]
                    )?.intValue ?? 0 > 0
                {
                    throw JobQueueError(
                        .conflict,
                        "job \(id) was not queued again: another job with its unique key \(key) is queued or running"
                    )
                }
                let n: Int
                do {
                    n = try c.execute(
                        """
                        UPDATE mp_jobs SET run_at = \(d.parameter(1)), finished_at = NULL, worker = NULL,
                          state = CASE WHEN waiting_on > 0 THEN 'waiting' ELSE 'available' END,
                          lease_until = NULL, cancel_requested = 0, result = NULL,
                          max_attempts = CASE WHEN attempt >= max_attempts THEN attempt + 1 ELSE max_attempts END
                        WHERE id = \(d.parameter(2)) AND state IN ('discarded', 'cancelled', 'completed')
                        """,
                        [.int(QueueSchema.nowMs()), .int(id)]
                    )
                } catch let e as SQLError where e.kind == .constraint {
                    // A job with its unique key was queued between the check and this update (PostgreSQL's
                    // READ COMMITTED; SQLite's write lock serialises them).
                    throw JobQueueError(
                        .conflict,
                        "job \(id) was not queued again: another job with its unique key is queued or running"
                    )
                }
                if n == 1 && d.notifies {
                    try c.execute(
                        "SELECT pg_notify(\(d.parameter(1)), \(d.parameter(2)))",
                        [.text(QueueSchema.channel), .text(row.queue)]
                    )
                }
                return n == 1 ? row.queue : nil
            }
        }
        // Committed. SQLite: the workers on this machine hear of it at once.
        if let retried { Doorbell.ring(doorbells, queues: [retried]) }
        return retried != nil
    }

    /// Discards a job that waits to run (queued, delayed, waiting for a retry or for other jobs): it will
    /// not run, and keeps its error history; the jobs that wait for it see it discarded. Returns false
    /// when it is not waiting (running jobs are stopped with ``cancel(_:)``).
    @discardableResult
    public func discard(_ id: Int64) throws -> Bool {
        let released = try withConnection { c in
            try c.transaction(immediate: true) { try endBeforeRunning(id, as: "discarded", on: c) }
        }
        if let released { Doorbell.ring(doorbells, queues: released.sorted()) }
        return released != nil
    }

    /// The workers serving this queue's database, as each last announced itself, by name. A worker that
    /// stops deletes its row; one that was killed stays (``QueueWorkerRecord/isLive(at:)`` is false) until
    /// a day has passed.
    public func workers() throws -> [QueueWorkerRecord] {
        try withConnection { c in
            try c.query(
                "SELECT name, host, pid, queues, started_at, last_seen, heartbeat_ms, held, concurrency, finished, stopping, processes FROM mp_workers ORDER BY name"
            ).map { r in
                let v = r.values
                return QueueWorkerRecord(
                    name: v[0].textValue ?? "",
                    host: v[1].textValue ?? "",
                    pid: Int32(truncatingIfNeeded: v[2].intValue ?? 0),
                    queues: (v[3].textValue ?? "").split(separator: ",").map(String.init),
                    startedAt: QueueTime(v[4]) ?? QueueTime(millisecondsSinceEpoch: 0),
                    lastSeen: QueueTime(v[5]) ?? QueueTime(millisecondsSinceEpoch: 0),
                    heartbeat: .milliseconds(v[6].intValue ?? 0),
                    held: Int(v[7].intValue ?? 0),
                    concurrency: Int(v[8].intValue ?? 0),
                    finished: Int(v[9].intValue ?? 0),
                    stopping: v[10].intValue == 1,
                    processes: (v[11].textValue ?? "").split(separator: "\n").compactMap {
                        QueueWorkerRecord.Process(line: $0)
                    }
                )
            }
        }
    }
}
