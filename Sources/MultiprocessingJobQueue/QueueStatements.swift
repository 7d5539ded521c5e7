import Logging
import MultiprocessingSQL
import Threading

/// The queue worker's SQL: what each of `QueueWorkerState`'s database steps runs, written once for every
/// database and shaped by the dialect's capabilities (`UPDATE … RETURNING`, `SKIP LOCKED`, writes inside
/// `WITH`, `NOTIFY`), never by its name. Every record names the attempt it ran (`attempt = …` and
/// `state = 'running'` fence each update), so an attempt whose lease was lost, and whose job another worker
/// took, changes nothing.
struct QueueStatements: Sendable {
    typealias Job = QueueWorkerState.Job
    typealias Record = QueueWorkerState.Record

    /// The worker's name in the rows it holds.
    let worker: String
    let queues: [String]
    let lease: Duration
    let keepCompleted: Duration
    let keepFailed: Duration
    let logger: Logger
    /// The queues of jobs released by the ends this worker recorded (for SQLite's doorbell, rung by the
    /// worker once they have committed).
    let released = ReleasedQueues()

    /// Records finished attempts and claims up to `n` due jobs of types not in `skipping`, in one
    /// transaction; with `limited` queues, records, then claims from those as their limits allow, then
    /// from the others.
    ///
    /// Where the database can write inside `WITH` (PostgreSQL), completed results and the claim are one
    /// statement: one round trip and one commit for both; the claim skips rows other workers are claiming
    /// (`FOR UPDATE SKIP LOCKED`). Other outcomes, rarer, are recorded one by one before it. Elsewhere
    /// (SQLite) `BEGIN IMMEDIATE` takes the write lock first, so the transaction never fails half-way for a
    /// lock. Queues with a limit (`mp_queue_limits`) are left out of that claim, whose cost stays what it
    /// was. A worker that serves some (`limited`) claims from them first, each in a transaction of its own
    /// that locks its limit (``claimLimited(_:_:skipping:clock:on:)``), up to `limited.room` (its free
    /// pool workers: a limited job claimed is a job started), so that an unlimited queue kept full cannot
    /// starve them; they cannot starve it in turn beyond what their limits let through.
    ///
    /// Once the records are committed, a claim that fails ends the call with the jobs claimed until then
    /// (logged): they are held, and the records are not sent again.
    func settle(
        _ records: [Record],
        claiming n: Int,
        skipping: [String],
        limited: QueueWorkerState.LimitedClaim = .none,
        on c: any SQLConnection
    ) throws -> [Job] {
        if limited.queues.isEmpty || n == 0 {
            return try settleAndClaim(records, claiming: n, skipping: skipping, on: c)
        }
        // Nothing to record (an idle worker's poll): no transaction, which on SQLite would take the write
        // lock for nothing.
        if !records.isEmpty { _ = try settleAndClaim(records, claiming: 0, skipping: skipping, on: c) }
        var jobs: [Job] = []
        do {
            for q in limited.queues where jobs.count < min(n, limited.room) {
                jobs += try claimLimited(q, min(n, limited.room) - jobs.count, skipping: skipping, on: c)
            }
            if jobs.count < n {
                jobs += try claim(
                    n - jobs.count,
                    skipping: skipping,
                    now: QueueSchema.nowMs(),
                    results: [],
                    on: c
                )
            }
        } catch {
            // Nothing committed by this call: an ordinary failure (the worker backs off, and gives up after
            // a lease of them). Otherwise the recorded results must not be sent again (a hand-back resent
            // could hand back another worker's attempt) and the jobs claimed are held: keep them.
            if records.isEmpty && jobs.isEmpty { throw error }
            logger.warning(
                "a claim failed after the results were recorded; the jobs claimed before it are kept",
                metadata: ["claimed": "\(jobs.count)", "error": "\(error)"]
            )
        }
        return jobs
    }

    /// Records `records` and claims up to `n` jobs of the queues without a limit, in one transaction.
    private func settleAndClaim(
        _ records: [Record],
        claiming n: Int,
        skipping: [String],
        on c: any SQLConnection
    )
        throws -> [Job]
    {
        let now = QueueSchema.nowMs()
        guard c.dialect.modifiesDataInWith else {
            return try c.transaction(immediate: true) {
                try recordOneByOne(records, now: now, on: c)
                return n > 0 ? try claim(n, skipping: skipping, now: now, results: [], on: c) : []
            }
        }
        var results: [Record] = []
        var rest: [Record] = []
        for r in records {
            // A result whose end releases other jobs is recorded with them, in the claim's transaction.
            if case .complete = r.resolution, !r.releases { results.append(r) } else { rest.append(r) }
        }
        if rest.isEmpty { return try claim(n, skipping: skipping, now: now, results: results, on: c) }
        return try c.transaction(immediate: true) {
            try recordOneByOne(rest, now: now, on: c)
            return try claim(n, skipping: skipping, now: now, results: results, on: c)
        }
    }

    /// The worker's queues that have a limit.
    func limitedQueues(on c: any SQLConnection) throws -> [String] {
        let d = c.dialect
        let list = queues.indices.map { d.parameter($0 + 1) }.joined(separator: ", ")
        var out: [String] = []
        try c.forEachRow(
            "SELECT queue FROM mp_queue_limits WHERE queue IN (\(list)) ORDER BY queue",
            queues.map { .text($0) }
        ) {
            if let q = $0[0].textValue { out.append(q) }
        }
        return out
    }

    /// Claims up to `n` due jobs of the limited queue `queue`, as many as its limit allows now, in a
    /// transaction that locks the limit's row (PostgreSQL: `FOR UPDATE`; SQLite: the database's write
    /// lock), so that two workers never both see the same room: running jobs of the queue counted against
    /// its concurrency, starts in the last period against its rate, and the starts of the jobs claimed
    /// recorded, at `clock`'s time once the lock is held, before the lock is released.
    func claimLimited(
        _ queue: String,
        _ n: Int,
        skipping: [String],
        clock: () -> Int64 = QueueSchema.nowMs,
        on c: any SQLConnection
    ) throws -> [Job] {
        let d = c.dialect
        let q = d.parameter(1)
        return try c.transaction(immediate: true) {
            // Each statement sees what committed before it (the counts below follow the claims of the
            // worker that held the lock before), whatever the server's default isolation.
            if d.skipsLockedRows { try c.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED") }
            var limit: (concurrency: Int64?, rate: Int64?, period: Int64?)?
            try c.forEachRow(
                "SELECT concurrency, rate, period_ms FROM mp_queue_limits WHERE queue = \(q)\(d.skipsLockedRows ? " FOR UPDATE" : "")",
                [.text(queue)]
            ) { r in limit = (r[0].intValue, r[1].intValue, r[2].intValue) }
            guard let limit else { return [] }  // removed since the worker looked
            // The time once the lock is held: starts are recorded when they happen, not when the worker
            // began to wait for the lock.
            let now = clock()
            var room = Int64(n)
            if let concurrency = limit.concurrency {
                let running =
                    try c.scalar(
                        "SELECT count(*) FROM mp_jobs WHERE queue = \(q) AND state = 'running'",
                        [.text(queue)]
                    )?.intValue ?? 0
                room = min(room, concurrency - running)
            }
            if let rate = limit.rate, let period = limit.period {
                try c.execute(
                    "DELETE FROM mp_queue_starts WHERE queue = \(q) AND at <= \(d.parameter(2))",
                    [.text(queue), .int(now - period)]
                )
                let started =
                    try c.scalar("SELECT count(*) FROM mp_queue_starts WHERE queue = \(q)", [.text(queue)])?.intValue
                    ?? 0
                room = min(room, rate - started)
            }
            guard room > 0 else { return [] }
            let jobs = try claim(
                Int(room),
                from: [queue],
                skipping: skipping,
                now: now,
                results: [],
                on: c
            )
            if limit.rate != nil, !jobs.isEmpty {
                let rows = jobs.indices.map { _ in "(\(q), \(d.parameter(2)))" }.joined(separator: ", ")
                try c.execute("INSERT INTO mp_queue_starts (queue, at) VALUES \(rows)", [.text(queue), .int(now)])
            }
            return jobs
        }
    }

    /// Claims up to `n` due jobs (none when 0) in one statement, which, where the database can write inside
    /// `WITH`, also marks `results` completed: of the worker's queues that have no limit, or of
    /// `limitedQueue` (its limit checked by the caller).
    private func claim(
        _ n: Int,
        from limitedQueue: [String]? = nil,
        skipping: [String],
        now: Int64,
        results: [Record],
        on c: any SQLConnection
    ) throws
        -> [Job]
    {
        let d = c.dialect
        // Without a claim, the first two parameters are placeholders and no queue is bound: PostgreSQL cannot
        // type an unused parameter sent untyped (text is).
        var parameters: [SQLValue] =
            n > 0 ? [.text(worker), .int(now + lease.wholeMilliseconds), .int(now)] : [.int(0), .int(0), .int(now)]
        let queueList = (n > 0 ? limitedQueue ?? queues : []).map { q -> String in
            parameters.append(.text(q))
            return d.parameter(parameters.count)
        }
        let skippedKinds = (n > 0 ? skipping : []).map { k -> String in
            parameters.append(.text(k))
            return d.parameter(parameters.count)
        }
        // The results, as VALUES rows (the first typed), finished at the third parameter.
        var rows: [String] = []
        for r in results {
            guard case .complete(let bytes) = r.resolution else { continue }
            parameters += [.int(r.id), .int(Int64(r.attempt)), .blob(bytes)]
            let i = parameters.count
            let (id, attempt, result) = (d.parameter(i - 2), d.parameter(i - 1), d.parameter(i))
            rows.append(
                rows.isEmpty
                    ? "(\(d.typed(id, "bigint")), \(d.typed(attempt, "integer")), \(d.typed(result, "bytea")))"
                    : "(\(id), \(attempt), \(result))"
            )
        }
        let complete = """
            UPDATE mp_jobs SET state = 'completed', result = v.column3, finished_at = \(d.parameter(3)), lease_until = NULL
            FROM (VALUES \(rows.joined(separator: ", "))) AS v
            WHERE mp_jobs.id = v.column1 AND mp_jobs.attempt = v.column2 AND mp_jobs.state = 'running'
            """
        guard n > 0 else {
            if !rows.isEmpty {
                let changed = try c.execute(complete, parameters)
                if changed < rows.count {
                    logger.warning(
                        "results came after their jobs' leases were lost; dropped",
                        metadata: ["count": "\(rows.count - changed)"]
                    )
                }
            }
            return []
        }
        var skip = skippedKinds.isEmpty ? "" : " AND kind NOT IN (\(skippedKinds.joined(separator: ", ")))"
        // Limited queues are claimed from one at a time, by `claimLimited`.
        if limitedQueue == nil { skip += " AND queue NOT IN (SELECT queue FROM mp_queue_limits)" }
        let due = """
            SELECT id FROM mp_jobs WHERE state = 'available' AND queue IN (\(queueList.joined(separator: ", ")))
              AND run_at <= \(d.parameter(3))\(skip)
              ORDER BY priority DESC, run_at, id LIMIT \(n)\(d.skipsLockedRows ? " FOR UPDATE SKIP LOCKED" : "")
            """
        let set =
            "state = 'running', attempt = attempt + 1, worker = \(d.parameter(1)), lease_until = \(d.parameter(2))"
        let returning = """
            RETURNING mp_jobs.id, mp_jobs.kind, mp_jobs.payload, mp_jobs.attempt, mp_jobs.max_attempts,
              mp_jobs.backoff_ms, mp_jobs.timeout_ms, mp_jobs.run_at, mp_jobs.trace_context, mp_jobs.waits_for,
              mp_jobs.dependents
            """
        let sql: String
        if d.modifiesDataInWith {
            let done = rows.isEmpty ? "" : "done AS (\(complete) RETURNING mp_jobs.id), "
            sql =
                "WITH \(done)due AS (\(due)) UPDATE mp_jobs SET \(set) FROM due WHERE mp_jobs.id = due.id \(returning)"
        } else {
            sql = "UPDATE mp_jobs SET \(set) WHERE id IN (\(due)) \(returning)"
        }
        var out: [Job] = []
        var waiting: [Int] = []
        try c.forEachRow(sql, parameters) { r in
            if (r[9].intValue ?? 0) > 0 { waiting.append(out.count) }
            let payload: [UInt8] = if case .blob(let b) = r[2] { b } else { [] }
            out.append(
                Job(
                    id: r[0].intValue ?? 0,
                    kind: r[1].textValue ?? "",
                    payload: payload,
                    attempt: Int(r[3].intValue ?? 1),
                    maxAttempts: Int(r[4].intValue ?? 1),
                    backoffMs: r[5].intValue ?? 1000,
                    timeoutMs: r[6].intValue,
                    runAt: r[7].intValue ?? now,
                    trace: { if case .blob(let b) = r[8] { b } else { nil } }(),
                    hasDependents: (r[10].intValue ?? 0) > 0
                )
            )
        }
        if !waiting.isEmpty {
            let outcomes = try JobDependencies.outcomes(of: waiting.map { out[$0].id }, on: c)
            for i in waiting { out[i].inputs = outcomes[out[i].id] }
        }
        return out
    }

    /// Records attempts one statement each (within the caller's transaction); the ends of jobs that others
    /// wait for release them, in the same transaction.
    private func recordOneByOne(_ records: [Record], now: Int64, on c: any SQLConnection) throws {
        let d = c.dialect
        let fence = "WHERE id = \(d.parameter(1)) AND attempt = \(d.parameter(2)) AND state = 'running'"
        var ended: [Int64] = []
        /// Runs an update of one attempt; true when it matched (the attempt was still this worker's). An end
        /// (`ends`) of a job the worker knows others wait for (`releases`) releases them; one it does not is
        /// fenced by `dependents = 0` too, and if a job came to wait for it since the worker last looked,
        /// runs again without the fence and releases: no RETURNING and no look-up per job (on SQLite, a
        /// RETURNING per record cost a worker a third more CPU per job).
        func update(_ sql: String, _ parameters: [SQLValue], ends: Bool, releases: Bool) throws -> Bool {
            if ends && !releases, try c.execute(sql + " AND dependents = 0", parameters) > 0 { return true }
            let matched = try c.execute(sql, parameters) > 0
            if matched && ends, let id = parameters[0].intValue { ended.append(id) }
            return matched
        }
        // In id order (then the waiting jobs they release, in id order: a waiting job's id may be below a
        // later record's, a crossing PostgreSQL's deadlock detection settles by failing one side, which
        // retries).
        for r in records.sorted(by: { $0.id < $1.id }) {
            let key: [SQLValue] = [.int(r.id), .int(Int64(r.attempt))]
            func line(_ error: String) -> SQLValue {
                // One line per attempt; no NUL, which PostgreSQL's text refuses (the record would then
                // fail on every try).
                let text = "attempt \(r.attempt) at \(QueueSchema.iso8601(ms: now)) on \(worker): \(error)"
                    .split(whereSeparator: { $0 == "\n" || $0 == "\0" }).joined(separator: " ")
                return .text(text + "\n")
            }
            switch r.resolution {
            case .complete(let bytes):
                let matched = try update(
                    "UPDATE mp_jobs SET state = 'completed', result = \(d.parameter(3)), finished_at = \(d.parameter(4)), lease_until = NULL \(fence)",
                    key + [.blob(bytes), .int(now)],
                    ends: true,
                    releases: r.releases
                )
                if !matched {
                    logger.warning(
                        "a result came after the job's lease was lost; dropped",
                        metadata: ["job": "\(r.id)"]
                    )
                }
            case .cancelled:
                _ = try update(
                    "UPDATE mp_jobs SET state = 'cancelled', finished_at = \(d.parameter(3)), lease_until = NULL \(fence)",
                    key + [.int(now)],
                    ends: true,
                    releases: r.releases
                )
            case .handBackUnknownKind, .handBack:
                _ = try update(
                    "UPDATE mp_jobs SET state = 'available', attempt = attempt - 1, worker = NULL, lease_until = NULL \(fence)",
                    key,
                    ends: false,
                    releases: false
                )
            case .retry(let afterMs, let error):
                _ = try update(
                    "UPDATE mp_jobs SET state = 'available', run_at = \(d.parameter(3)), worker = NULL, lease_until = NULL, errors = coalesce(errors, '') || \(d.parameter(4)) \(fence)",
                    key + [.int(now + afterMs), line(error)],
                    ends: false,
                    releases: false
                )
            case .discard(let error):
                _ = try update(
                    "UPDATE mp_jobs SET state = 'discarded', finished_at = \(d.parameter(3)), lease_until = NULL, errors = coalesce(errors, '') || \(d.parameter(4)) \(fence)",
                    key + [.int(now), line(error)],
                    ends: true,
                    releases: r.releases
                )
            }
        }
        if !ended.isEmpty { released.add(try JobDependencies.release(ended, now: now, on: c)) }
    }

    /// Jobs in the queues still to run or running anywhere, types in `skipping` left out.
    func jobsLeft(skipping: [String], on c: any SQLConnection) throws -> Int {
        let d = c.dialect
        var parameters: [SQLValue] = []
        func list(_ values: [String]) -> String {
            values.map { v in
                parameters.append(.text(v))
                return d.parameter(parameters.count)
            }.joined(separator: ", ")
        }
        let queueList = list(queues)
        let skip = skipping.isEmpty ? "" : " AND kind NOT IN (\(list(skipping)))"
        let sql =
            "SELECT count(*) FROM mp_jobs WHERE queue IN (\(queueList)) AND state IN ('available', 'running', 'waiting')\(skip)"
        return Int(try c.scalar(sql, parameters)?.intValue ?? 0)
    }

    /// Extends the leases of the jobs this worker holds. Returns the jobs renewed (those still this
    /// worker's), those whose cancellation was asked for, and those that other jobs now wait for.
    func heartbeat(
        on c: any SQLConnection
    ) throws -> (renewed: Set<Int64>, cancelRequested: Set<Int64>, waitedFor: Set<Int64>) {
        let d = c.dialect
        var renewed: Set<Int64> = []
        var cancelRequested: Set<Int64> = []
        var waitedFor: Set<Int64> = []
        try c.forEachRow(
            "UPDATE mp_jobs SET lease_until = \(d.parameter(1)) WHERE worker = \(d.parameter(2)) AND state = 'running' RETURNING id, cancel_requested, dependents",
            [.int(QueueSchema.nowMs() + lease.wholeMilliseconds), .text(worker)]
        ) { r in
            let id = r[0].intValue ?? 0
            renewed.insert(id)
            if r[1].intValue == 1 { cancelRequested.insert(id) }
            if (r[2].intValue ?? 0) > 0 { waitedFor.insert(id) }
        }
        return (renewed, cancelRequested, waitedFor)
    }

    /// Jobs whose lease expired (their worker died, hung or lost the database) go back to the queue, or
    /// are discarded after their last attempt, with a line in their error history. Any worker does it.
    func rescue(on c: any SQLConnection) throws -> (count: Int, requeued: [String]) {
        let d = c.dialect
        let now = QueueSchema.nowMs()
        var result: (count: Int, requeued: Set<String>) = try c.transaction(immediate: true) {
            var rescued = 0
            var requeued: Set<String> = []
            var ended: [Int64] = []
            try c.forEachRow(
                """
                UPDATE mp_jobs SET
                  state = CASE WHEN attempt < max_attempts THEN 'available' ELSE 'discarded' END,
                  finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE \(d.parameter(1)) END,
                  run_at = \(d.parameter(1)),
                  errors = coalesce(errors, '') || 'attempt ' || attempt || \(d.parameter(2)) || coalesce(worker, '?') || \(d.parameter(3)),
                  worker = NULL, lease_until = NULL
                WHERE state = 'running' AND lease_until < \(d.parameter(1))
                RETURNING queue, state, id, dependents
                """,
                [
                    .int(now), .text(" at \(QueueSchema.iso8601(ms: now)) on "),
                    .text(": lease expired (the worker stopped renewing it)\n"),
                ]
            ) { r in
                rescued += 1
                if r[1].textValue == "available", let q = r[0].textValue { requeued.insert(q) }
                if r[1].textValue == "discarded", (r[3].intValue ?? 0) > 0, let id = r[2].intValue { ended.append(id) }
            }
            try notify(requeued.sorted(), on: c)
            // Jobs that waited for those discarded.
            requeued.formUnion(try JobDependencies.release(ended, now: now, on: c))
            return (rescued, requeued)
        }
        // Then any that ended unseen (the sweep): looked for outside the write lock, released in a
        // transaction of their own (each edge is resolved once, whoever else does it meanwhile).
        let sweep = try JobDependencies.endedUnseen(on: c)
        if !sweep.isEmpty {
            try c.transaction(immediate: true) {
                result.requeued.formUnion(try JobDependencies.release(sweep, now: now, on: c))
            }
        }
        return (result.count, result.requeued.sorted())
    }

    /// Wakes the workers listening for `queues`, at commit (where the database can).
    private func notify(_ queues: [String], on c: any SQLConnection) throws {
        guard c.dialect.notifies else { return }
        for q in queues {
            try c.execute(
                "SELECT pg_notify(\(c.dialect.parameter(1)), \(c.dialect.parameter(2)))",
                [.text(QueueSchema.channel), .text(q)]
            )
        }
    }

    /// Returns jobs to the queue without counting the attempt (a worker that stops).
    func handBack(_ ids: [Int64], on c: any SQLConnection) throws {
        guard !ids.isEmpty else { return }
        let d = c.dialect
        try c.transaction(immediate: true) {
            for id in ids {
                try c.execute(
                    "UPDATE mp_jobs SET state = 'available', attempt = attempt - 1, worker = NULL, lease_until = NULL WHERE id = \(d.parameter(1)) AND worker = \(d.parameter(2)) AND state = 'running'",
                    [.int(id), .text(worker)]
                )
            }
            try notify(queues, on: c)
        }
    }

    /// The least time the cleaner keeps a `QueuePool`'s ended job, whatever the retention: its pool takes
    /// (and deletes) it within milliseconds while the pool's process lives, so only a dead caller's rows
    /// wait this long; a retention shorter than that must not take a result its pool is about to read.
    static var keepForQueuePools: Duration { .seconds(600) }

    /// Deletes finished jobs past their retention (a `QueuePool`'s, past ``keepForQueuePools`` at least).
    func clean(on c: any SQLConnection) throws -> Int {
        let d = c.dialect
        let now = QueueSchema.nowMs()
        // Rows of killed workers: best effort (a role without rights on mp_workers still cleans jobs).
        try? forgetLostWorkers(on: c)
        return try c.transaction(immediate: true) {
            // A job whose end has not yet been copied to the jobs waiting for it (ended by something that
            // did not release them) stays until the sweep has.
            var n = 0
            var waited: [Int64] = []
            try c.forEachRow(
                """
                DELETE FROM mp_jobs WHERE ((state = 'completed' AND finished_at < \(d.parameter(1)))
                  OR (state IN ('discarded', 'cancelled') AND finished_at < \(d.parameter(2))))
                  AND (dependents = 0 OR NOT EXISTS (SELECT 1 FROM mp_job_deps e WHERE e.parent_id = mp_jobs.id AND e.parent_state IS NULL))
                  AND (reply_to IS NULL OR finished_at < \(d.parameter(3)))
                RETURNING id, waits_for
                """,
                [
                    .int(now - keepCompleted.wholeMilliseconds), .int(now - keepFailed.wholeMilliseconds),
                    .int(now - Self.keepForQueuePools.wholeMilliseconds),
                ]
            ) { r in
                n += 1
                if (r[1].intValue ?? 0) > 0, let id = r[0].intValue { waited.append(id) }
            }
            // The edges of the jobs deleted that had waited (each had run or stopped).
            for chunk in waited.chunks(of: 500) {
                let list = chunk.indices.map { d.parameter($0 - chunk.startIndex + 1) }.joined(separator: ", ")
                try c.execute("DELETE FROM mp_job_deps WHERE child_id IN (\(list))", chunk.map { .int($0) })
            }
            return n
        }
    }
}

extension QueueStatements {
    /// Writes this worker's row in `mp_workers` anew (a heartbeat of the worker itself, held jobs or not).
    func announce(_ presence: WorkerPresence, on c: any SQLConnection) throws {
        let d = c.dialect
        let columns = [
            "name", "host", "pid", "queues", "started_at", "last_seen", "heartbeat_ms", "held", "concurrency",
            "finished", "stopping", "processes",
        ]
        let values: [SQLValue] = [
            .text(worker), .text(presence.host), .int(Int64(presence.pid)), .text(queues.joined(separator: ",")),
            .int(presence.startedAt), .int(QueueSchema.nowMs()), .int(presence.heartbeatMs),
            .int(Int64(presence.held)), .int(Int64(presence.concurrency)), .int(Int64(presence.finished)),
            .int(presence.stopping ? 1 : 0), .text(presence.processes.map(\.line).joined(separator: "\n")),
        ]
        let updates = columns.dropFirst().map { "\($0) = excluded.\($0)" }.joined(separator: ", ")
        try c.execute(
            "INSERT INTO mp_workers (\(columns.joined(separator: ", "))) VALUES (\((1...values.count).map { d.parameter($0) }.joined(separator: ", "))) ON CONFLICT (name) DO UPDATE SET \(updates)",
            values
        )
    }

    /// Deletes this worker's row (it stops).
    func retire(on c: any SQLConnection) throws {
        try c.execute("DELETE FROM mp_workers WHERE name = \(c.dialect.parameter(1))", [.text(worker)])
    }

    /// Deletes the rows of workers unseen for a day (killed: a worker that stops deletes its own).
    func forgetLostWorkers(on c: any SQLConnection) throws {
        try c.execute(
            "DELETE FROM mp_workers WHERE last_seen < \(c.dialect.parameter(1))",
            [.int(QueueSchema.nowMs() - 86_400_000)]
        )
    }
}

/// What a worker announces of itself (``QueueStatements/announce(_:on:)``).
struct WorkerPresence: Sendable {
    var host: String
    var pid: Int32
    var startedAt: Int64
    var heartbeatMs: Int64
    var held: Int
    var concurrency: Int
    var finished: Int
    var stopping: Bool
    var processes: [QueueWorkerRecord.Process]
}

/// Queues of jobs made available by releases, gathered until the worker rings for them.
final class ReleasedQueues: Sendable {
    private let queues = TrackedMutex<Set<String>>([])
    func add(_ q: Set<String>) { if !q.isEmpty { queues.withLock { $0.formUnion(q) } } }
    /// The queues gathered since the last call (a release rolled back with its transaction may be among
    /// them: a spare wake-up, which costs a claim that finds nothing).
    func take() -> [String] {
        queues.withLock { q in
            defer { q = [] }
            return q.sorted()
        }
    }
}
