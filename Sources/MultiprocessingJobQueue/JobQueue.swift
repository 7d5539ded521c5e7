import Glibc
public import Multiprocessing
public import MultiprocessingSQL
import Synchronization
import Threading

/// How a job is queued and run.
public struct JobOptions: Sendable, Hashable {
    /// The named queue (workers choose the queues they serve).
    public var queue: String
    /// Higher runs first (among jobs due).
    public var priority: Int
    /// Not before this long from now.
    public var delay: Duration
    /// While a job with this key is queued or running, enqueueing another with the same key returns the
    /// existing one instead.
    public var uniqueKey: String?
    /// A run that takes longer is stopped (its worker process killed) and counts as a failed attempt.
    public var timeout: Duration?
    /// Runs in all, the first included; then the job is discarded with its error history.
    public var maxAttempts: Int
    /// The wait before the first retry; each further retry waits twice as long (±25 % jitter), at most
    /// an hour.
    public var backoff: Duration

    /// Options for ``JobQueue/enqueue(_:options:on:)`` and the queue's `enqueue` methods; each parameter
    /// sets the property of the same name. The defaults: the `default` queue, priority 0, due at once, no
    /// unique key, no timeout, 3 attempts, a 1-second first backoff. A `maxAttempts` below 1 counts as 1.
    public init(
        queue: String = "default",
        priority: Int = 0,
        delay: Duration = .zero,
        uniqueKey: String? = nil,
        timeout: Duration? = nil,
        maxAttempts: Int = 3,
        backoff: Duration = .seconds(1)
    ) {
        self.queue = queue
        self.priority = priority
        self.delay = delay
        self.uniqueKey = uniqueKey
        self.timeout = timeout
        self.maxAttempts = max(1, maxAttempts)
        self.backoff = backoff
    }

    /// Every option at its default: the `default` queue, priority 0, due at once, no unique key, no
    /// timeout, 3 attempts, a 1-second first backoff.
    public static let `default` = JobOptions()
}

/// Where a job is in its life.
public enum JobState: String, Sendable, Hashable, Codable, CaseIterable {
    /// Waiting to run (first time, or again after a failed attempt: see ``JobInfo/attempt``).
    case available
    /// Claimed by a worker, which holds a lease on it.
    case running
    /// Ran to the end; its result is stored until the retention cleaner deletes it
    /// (``QueueWorkerOptions/keepCompleted``).
    case completed
    /// Failed on its last attempt.
    case discarded
    /// Cancelled with ``JobQueue/cancel(_:)``, before it ran or while it ran (a run that finished anyway
    /// is `completed`); or stopped before it ran because a job it waited for did not complete (a link of a
    /// chain after a failed one: its error history says which).
    case cancelled
    /// Waits for other jobs to finish before it can run: a link of a chain, a group's callback
    /// (``JobQueue/enqueue(_:after:policy:options:)``).
    case waiting
}

/// A job's row, as ``JobQueue/jobs(in:queue:limit:)`` and ``JobHandle/info()`` return it.
public struct JobInfo: Sendable, Hashable {
    /// The job's id, given by the database when it was queued (``JobHandle/id``).
    public var id: Int64
    /// The named queue it is in (``JobOptions/queue``).
    public var queue: String
    /// The job's Swift type.
    public var kind: String
    /// Where it is in its life.
    public var state: JobState
    /// Higher runs first among jobs due (``JobOptions/priority``).
    public var priority: Int
    /// Attempts started so far: 0 before the first run, 1 during it, and so on. An attempt handed back (by
    /// a worker that stopped, or one whose program lacks the job's type) is not counted; one whose lease
    /// ran out is.
    public var attempt: Int
    /// Runs in all before it is discarded (``JobOptions/maxAttempts``).
    public var maxAttempts: Int
    /// The ``QueueWorker/name`` of the worker that holds it, or that finished it (completed, discarded, or
    /// cancelled while it ran); nil while it waits to run.
    public var worker: String?
    /// One line per failed attempt: `attempt N at <ISO-8601 UTC time> on <worker>: <error>`.
    public var errors: [String]
    /// When it was queued.
    public var createdAt: QueueTime
    /// When it finished (completed, discarded, cancelled); nil before.
    public var finishedAt: QueueTime?
    /// ``kind`` for people: `app.Square` for `3app6SquareV`.
    public var typeName: String { readableTypeName(mangled: kind) }
}

/// A durable job queue in a database: SQLite (embedded, the default) or any `SQLConnection`.
///
/// ```swift
/// let queue = try JobQueue(DatabaseURL("sqlite:jobs.db"))
/// let handle = try queue.enqueue(Square(n: 7))
/// let result = try handle.result(timeout: .seconds(30))   // 49, from whichever worker ran it
/// ```
/// Workers (``QueueWorker``, or `mp queue worker`) claim jobs, run them on a `ProcessPool` and
/// record their results. Delivery is at least once: a job whose worker died is run again once its lease
/// expires, so make jobs idempotent or check for their own earlier effects.
public final class JobQueue: Sendable {
    /// The database the queue lives in.
    public let url: DatabaseURL
    private let connection: TrackedMutex<ConnectionBox>

    private let timeout: Duration
    /// SQLite: the doorbells' directory of the database file (nil elsewhere).
    let doorbells: String?

    final class ConnectionBox: @unchecked Sendable {  // used under the mutex only
        var c: (any SQLConnection)?
        init(_ c: any SQLConnection) { self.c = c }
    }

    /// Opens the queue, creating or migrating its tables. `timeout` bounds each database call.
    public init(_ url: DatabaseURL, timeout: Duration = .seconds(30)) throws {
        self.url = url
        self.timeout = timeout
        let c = try Database.connect(url, timeout: timeout)
        try QueueSchema.migrate(c)
        connection = TrackedMutex(ConnectionBox(c))
        doorbells = Doorbell.directory(url)  // the file exists now
    }

    deinit { connection.withLock { $0.c?.close() } }

    /// Runs `body` on the queue's connection. A connection that failed (the server restarted, the
    /// network dropped) is closed, the error thrown, and the next call opens a new one: a call whose
    /// outcome is unknown (an enqueue that may have committed) is never repeated behind the caller's back.
    func withConnection<R>(_ body: (any SQLConnection) throws -> R) throws -> R {
        try connection.withLock { box in
            if box.c == nil { box.c = try Database.connect(url, timeout: timeout) }
            do {
                return try body(box.c!)
            } catch let e as SQLError where e.kind == .connection {
                box.c?.close()
                box.c = nil
                throw e
            }
        }
    }

    // MARK: enqueue

    /// Queues one job. With a ``JobOptions/uniqueKey`` already queued or running, returns that job.
    public func enqueue<J: Job>(_ job: J, options: JobOptions = .default) throws -> JobHandle<J> {
        try enqueue([job], options: options)[0]
    }

    /// Queues many jobs in one transaction (multi-row inserts): all or none.
    public func enqueue<J: Job>(_ jobs: [J], options: JobOptions = .default) throws -> [JobHandle<J>] {
        let handles = try withConnection { c in
            // One INSERT is atomic by itself: no BEGIN and COMMIT round trips (on PostgreSQL a queued job
            // costs one round trip and one commit).
            if options.uniqueKey == nil && jobs.count <= Self.rowsPerInsert {
                return try Self.enqueue(jobs, options: options, on: c)
            }
            return try c.transaction(immediate: true) { try Self.enqueue(jobs, options: options, on: c) }
        }
        .map { $0.handle(self) }
        // Committed. SQLite: the workers on this machine hear of due jobs at once (PostgreSQL's trigger
        // notifies them).
        if options.delay <= .zero && !jobs.isEmpty { Doorbell.ring(doorbells, queues: [options.queue]) }
        return handles
    }

    /// Tells the workers on this machine that serve `queues` of this SQLite database that jobs are due (they
    /// claim at once instead of at their next poll): for jobs queued with ``enqueue(_:options:on:)`` in a
    /// transaction of your own, once it has committed. The `enqueue(_:options:)` methods do it by
    /// themselves. Nothing on PostgreSQL, whose workers are notified at commit.
    public func wakeWorkers(queues: [String] = ["default"]) {
        Doorbell.ring(doorbells, queues: queues)
    }

    /// The most jobs one INSERT statement queues.
    static let rowsPerInsert = 1000

    /// A job's id, for a handle: ``JobQueue/enqueue(_:options:on:)`` returns these.
    public struct Enqueued<J: Job>: Sendable, Hashable {
        /// The job's id (``JobHandle/id``); other connections see the job once the caller's transaction
        /// commits.
        public let id: Int64
        /// The handle on `queue`.
        public func handle(_ queue: JobQueue) -> JobHandle<J> { JobHandle(queue: queue, id: id) }
    }

    /// Queues jobs on `connection`, inside whatever transaction the caller has open there: they are queued
    /// if and only if the caller's transaction commits (a rolled-back producer's jobs never run). The
    /// connection's database must hold the queue (open a ``JobQueue`` on it once to create the tables).
    /// On SQLite, call ``wakeWorkers(queues:)`` after the commit for the workers to start them at once
    /// rather than at their next poll (PostgreSQL notifies them at commit by itself).
    public static func enqueue<J: Job>(
        _ jobs: [J],
        options: JobOptions = .default,
        on c: any SQLConnection
    ) throws
        -> [Enqueued<J>]
    {
        try enqueue(jobs, options: options, replyTo: nil, on: c)
    }

    /// ``enqueue(_:options:on:)``, the rows marked for the ``QueuePool`` whose tag is `replyTo` (nil: none).
    static func enqueue<J: Job>(
        _ jobs: [J],
        options: JobOptions,
        replyTo: String?,
        on c: any SQLConnection
    ) throws
        -> [Enqueued<J>]
    {
        guard !jobs.isEmpty else { return [] }
        let kind = try JobIdentity.name(of: J.self)
        let now = QueueSchema.nowMs()
        let runAt = now + options.delay.wholeMilliseconds
        // Queued inside a span: the jobs keep its context for the worker that runs them.
        let trace = JobTracing.enqueue(kind: kind, queue: options.queue, count: jobs.count)
        var failure: (any Error)?
        defer { if let trace { JobTracing.end(trace.span, failure: failure) } }
        let insert = JobInsert(
            kind: kind,
            options: options,
            now: now,
            runAt: runAt,
            payload: nil,
            trace: trace?.carrier,
            replyTo: replyTo
        )
        let encoder = BinaryEncoder()
        var ids: [Int64] = []
        ids.reserveCapacity(jobs.count)
        let d = c.dialect
        let perStatement = insert.rowsPerStatement(d, at: rowsPerInsert)
        var start = 0
        do {
            while start < jobs.count {
                let end = min(jobs.count, start + perStatement)
                let parameters = insert.parameters(try jobs[start..<end].map { .blob(try encoder.encode($0)) })
                let sql = insert.statement(
                    varying: "payload",
                    type: "bytea",
                    rows: end - start,
                    skippingTakenKey: options.uniqueKey != nil,
                    returningIds: true,
                    d
                )
                var inserted: [Int64] = []
                try c.forEachRow(sql, parameters) { inserted.append($0[0].intValue ?? 0) }
                if let key = options.uniqueKey, inserted.count < end - start {
                    // The key is taken: every job of this call is that one.
                    let existing = try c.scalar(
                        "SELECT id FROM mp_jobs WHERE unique_key = \(d.parameter(1)) AND state IN ('available', 'running')",
                        [.text(key)]
                    )?.intValue
                    guard let existing else {
                        throw SQLError(.other, "unique key \(key) is taken, but no job holds it")
                    }
                    inserted += [Int64](repeating: existing, count: end - start - inserted.count)
                }
                ids += inserted
                start = end
            }
        } catch {
            failure = error
            throw error
        }
        return ids.map { Enqueued(id: $0) }
    }

    // MARK: queries

    /// The job with `id`, or nil.
    public func info(_ id: Int64) throws -> JobInfo? {
        try withConnection { c in
            try Self.infos(c, "WHERE id = \(c.dialect.parameter(1))", [.int(id)]).first
        }
    }

    /// Jobs in `state` (all queues, or one), oldest first.
    public func jobs(in state: JobState, queue: String? = nil, limit: Int = 100) throws -> [JobInfo] {
        try withConnection { c in
            let d = c.dialect
            var condition = "WHERE state = \(d.parameter(1))"
            var parameters: [SQLValue] = [.text(state.rawValue)]
            if let queue {
                condition += " AND queue = \(d.parameter(2))"
                parameters.append(.text(queue))
            }
            return try Self.infos(c, condition + " ORDER BY id LIMIT \(max(0, limit))", parameters)
        }
    }

    /// How many jobs are in each state.
    public func counts(queue: String? = nil) throws -> [JobState: Int] {
        try withConnection { c in
            var out: [JobState: Int] = [:]
            let filter = queue == nil ? "" : "WHERE queue = \(c.dialect.parameter(1))"
            try c.forEachRow(
                "SELECT state, count(*) FROM mp_jobs \(filter) GROUP BY state",
                queue.map { [.text($0)] } ?? []
            ) {
                if let s = $0[0].textValue.flatMap(JobState.init(rawValue:)) { out[s] = Int($0[1].intValue ?? 0) }
            }
            return out
        }
    }

    static func infos(_ c: any SQLConnection, _ condition: String, _ parameters: [SQLValue]) throws -> [JobInfo] {
        try c.query(
            "SELECT id, queue, kind, state, priority, attempt, max_attempts, worker, errors, created_at, finished_at FROM mp_jobs \(condition)",
            parameters
        ).map { r in
            JobInfo(
                id: r.values[0].intValue ?? 0,
                queue: r.values[1].textValue ?? "",
                kind: r.values[2].textValue ?? "",
                state: JobState(rawValue: r.values[3].textValue ?? "") ?? .available,
                priority: Int(r.values[4].intValue ?? 0),
                attempt: Int(r.values[5].intValue ?? 0),
                maxAttempts: Int(r.values[6].intValue ?? 0),
                worker: r.values[7].textValue,
                errors: (r.values[8].textValue ?? "").split(separator: "\n").map(String.init),
                createdAt: QueueTime(r.values[9]) ?? QueueTime(millisecondsSinceEpoch: 0),
                finishedAt: QueueTime(r.values[10])
            )
        }
    }

    // MARK: cancel

    /// Cancels a job: a queued or waiting one at once; a running one is stopped by its worker (within its
    /// heartbeat interval) and then recorded as cancelled. Returns false when the job had already finished.
    /// The jobs that require it (the rest of its chain) are stopped too; those that only wait for it
    /// (a group's callback, ``WaitPolicy/allFinished``) see it cancelled.
    @discardableResult
    public func cancel(_ id: Int64) throws -> Bool {
        let (cancelled, released) = try withConnection { c in
            let d = c.dialect
            return try c.transaction(immediate: true) { () throws -> (Bool, Set<String>) in
                if let released = try endBeforeRunning(id, as: "cancelled", on: c) { return (true, released) }
                let asked =
                    try c.execute(
                        "UPDATE mp_jobs SET cancel_requested = 1 WHERE id = \(d.parameter(1)) AND state = 'running'",
                        [.int(id)]
                    ) == 1
                return (asked, [])
            }
        }
        Doorbell.ring(doorbells, queues: released.sorted())
        return cancelled
    }

    /// Cancels jobs `ids` in one transaction, as ``cancel(_:)`` each; returns how many were cancelled or
    /// asked to stop (a `QueuePool`'s cancelled call).
    @discardableResult
    func cancel(all ids: [Int64]) throws -> Int {
        let (n, released) = try withConnection { c in
            let d = c.dialect
            return try c.transaction(immediate: true) { () throws -> (Int, Set<String>) in
                var n = 0
                var released: Set<String> = []
                for id in ids.sorted() {  // writers lock jobs in id order
                    if let r = try endBeforeRunning(id, as: "cancelled", on: c) {
                        released.formUnion(r)
                        n += 1
                    } else {
                        n += try c.execute(
                            "UPDATE mp_jobs SET cancel_requested = 1 WHERE id = \(d.parameter(1)) AND state = 'running'",
                            [.int(id)]
                        )
                    }
                }
                return (n, released)
            }
        }
        Doorbell.ring(doorbells, queues: released.sorted())
        return n
    }

    /// Ends job `id` as `state` if it is queued or waiting (in the caller's transaction), releasing the jobs
    /// that wait for it. Returns the queues of the jobs made available, or nil when it was not queued or
    /// waiting.
    func endBeforeRunning(_ id: Int64, as state: String, on c: any SQLConnection) throws -> Set<String>? {
        let d = c.dialect
        let now = QueueSchema.nowMs()
        var dependents: Int64?
        try c.forEachRow(
            "UPDATE mp_jobs SET state = \(d.parameter(1)), finished_at = \(d.parameter(2)) WHERE id = \(d.parameter(3)) AND state IN ('available', 'waiting') RETURNING dependents",
            [.text(state), .int(now), .int(id)]
        ) { dependents = $0[0].intValue ?? 0 }
        guard let dependents else { return nil }
        return dependents > 0 ? try JobDependencies.release([id], now: now, on: c) : []
    }

    /// The threads that run database calls for async callers (Swift's cooperative pool never blocks on
    /// the database).
    static let blockingCalls = ThreadPool(maxWorkers: 4, threadNamePrefix: "mp-queue-db")

    /// ``outcome(_:)``, or nil when the connection failed (the next call reconnects): waiting for a result
    /// outlasts a database restart.
    func outcomeUnlessDisconnected(_ id: Int64) throws -> (state: JobState, result: [UInt8]?, errors: String)?? {
        do {
            return .some(try outcome(id))
        } catch let e as SQLError where e.kind == .connection {
            return nil
        }
    }

    /// The stored result bytes and state of a job.
    func outcome(_ id: Int64) throws -> (state: JobState, result: [UInt8]?, errors: String)? {
        try withConnection { c in
            var out: (JobState, [UInt8]?, String)?
            try c.forEachRow(
                "SELECT state, result, errors FROM mp_jobs WHERE id = \(c.dialect.parameter(1))",
                [.int(id)]
            ) { r in
                let result: [UInt8]? = if case .blob(let b) = r[1] { b } else { nil }
                out = (JobState(rawValue: r[0].textValue ?? "") ?? .available, result, r[2].textValue ?? "")
            }
            return out
        }
    }
}

/// A queued job: its id, its state, and its result once a worker has run it — from any process.
public struct JobHandle<J: Job>: Sendable {
    /// The queue the job is in; its connection reads the job's state.
    public let queue: JobQueue
    /// The job's id in the queue's database (``JobInfo/id``): pass it to another process to follow the
    /// job there.
    public let id: Int64

    /// A handle on job `id` of `queue`, for a job queued elsewhere (another process passed its id). Nothing
    /// is checked here: with no such job, ``info()`` returns nil and ``result(timeout:)`` throws
    /// ``JobQueueError`` `.notFound`.
    public init(queue: JobQueue, id: Int64) {
        self.queue = queue
        self.id = id
    }

    /// The job's row.
    public func info() throws -> JobInfo? { try queue.info(id) }

    /// Cancels the job (see ``JobQueue/cancel(_:)``).
    @discardableResult
    public func cancel() throws -> Bool { try queue.cancel(id) }

    /// The job's output, awaited: the database is read on a thread of the queue's (never on Swift's
    /// cooperative pool) every few milliseconds, backing off to `pollInterval`. Cancelling the awaiting
    /// task ends the wait (`CancellationError`); it does not cancel the job (``cancel()`` does).
    /// - Throws: ``JobQueueError`` `.failed`, `.cancelled`, `.notFound`, as ``result(timeout:)``.
    public var value: J.Output {
        get async throws { try await value(pollInterval: .milliseconds(100)) }
    }

    /// ``value``, polling at most every `pollInterval`.
    public func value(pollInterval: Duration) async throws -> J.Output {
        var pause = Duration.milliseconds(2)
        while true {
            try Task.checkCancellation()
            let queue = self.queue
            let id = self.id
            // A lost connection is reopened on the next turn (reads are safe to repeat).
            if let o = try await JobQueue.blockingCalls.submit({ try queue.outcomeUnlessDisconnected(id) }).value,
                let done = try Self.finished(o, id)
            {
                return done
            }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, pollInterval)
        }
    }

    /// The output when the job completed, nil while it is queued or running; throws for the other ends.
    static func finished(_ o: (state: JobState, result: [UInt8]?, errors: String)?, _ id: Int64) throws -> J.Output? {
        guard let o else { throw JobQueueError(.notFound, "no job \(id)") }
        switch o.state {
        case .completed: return try BinaryDecoder().decode(J.Output.self, from: o.result ?? [])
        case .discarded: throw JobQueueError(.failed, "job \(id) failed: \(o.errors.trimmingTrailingNewline)")
        case .cancelled:
            let why = o.errors.trimmingTrailingNewline
            throw JobQueueError(.cancelled, "job \(id) was cancelled" + (why.isEmpty ? "" : ": \(why)"))
        case .available, .running, .waiting: return nil
        }
    }

    /// Waits up to `timeout` for the job to finish and returns its output.
    /// - Throws: ``JobQueueError`` `.failed` (with the error history) when it was discarded after its
    ///   attempts, `.cancelled`, `.timedOut`, `.notFound`.
    public func result(timeout: Duration) throws -> J.Output {
        let deadline = ContinuousClock.now + timeout
        var pause = Duration.milliseconds(2)
        while true {
            if let o = try queue.outcomeUnlessDisconnected(id), let done = try Self.finished(o, id) { return done }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw JobQueueError(.timedOut, "job \(id) did not finish within \(timeout)") }
            usleep(UInt32(clamping: min(pause, left).wholeMilliseconds * 1000))
            pause = min(pause * 2, .milliseconds(100))
        }
    }
}

extension String {
    var trimmingTrailingNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}
