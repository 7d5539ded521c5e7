import CoreMetrics
import Glibc
public import Logging
public import Multiprocessing
public import MultiprocessingSQL
import Synchronization
import Threading

/// How a ``QueueWorker`` claims, runs and looks after jobs.
public struct QueueWorkerOptions: Sendable {
    /// The queues served.
    public var queues: [String]
    /// Jobs run at once (default: the pool's workers).
    public var concurrency: Int?
    /// A claimed job's lease: renewed every third of it while the job runs; a job whose lease ran out
    /// (its worker died, hung or lost the database) is run again (or discarded after its last attempt)
    /// by whichever worker sees it first.
    public var lease: Duration
    /// How often an idle worker looks for jobs.
    public var pollInterval: Duration
    /// The most jobs claimed in one statement.
    public var claimBatch: Int
    /// The most jobs claimed beyond ``concurrency`` and queued in the pool, so that its workers never wait
    /// for a claim (graphile-worker's local queue, but sized to the work). The worker keeps about
    /// ``bufferedWork`` of work there, from the rate at which its jobs finish: short jobs get a deep
    /// buffer (one claim per hundred jobs or more), long ones almost none, so a worker never hoards slow
    /// jobs that idle workers could run. Buffered jobs hold leases like running ones: if this worker dies
    /// they run elsewhere after their lease; on a graceful stop they are handed back. 0 claims only as
    /// many jobs as run at once.
    public var localBuffer: Int
    /// How much work, in time, the local buffer holds (see ``localBuffer``).
    public var bufferedWork: Duration
    /// Results larger than this are not stored: the attempt fails with `.resultTooLarge`.
    public var maxResultBytes: Int
    /// How long completed jobs are kept before the cleaner deletes them.
    public var keepCompleted: Duration
    /// How long discarded and cancelled jobs are kept (with their error history).
    public var keepFailed: Duration
    /// On ``QueueWorker/stop(_:)`` with `.finish`, how long running jobs may take before they are handed
    /// back.
    public var shutdownGrace: Duration
    /// This worker's name in the jobs it holds (default `host:pid`).
    public var name: String?
    /// Wake as soon as jobs are queued, where the database can say so (PostgreSQL's `LISTEN`/`NOTIFY`, on
    /// a second connection), polling every ``pollInterval`` as well for delayed jobs, retries and lost
    /// notifications. Set it to false behind a connection pooler in transaction mode (PgBouncer), where
    /// `LISTEN` does not work: the worker then only polls.
    public var notifications: Bool
    /// Return from ``QueueWorker/run()`` once the queues are drained: no job in them is waiting, due later
    /// (a delayed job, a retry) or running anywhere — except jobs of types this program does not define,
    /// which are left to workers that do. A batch program's worker: queue the work, drain it, exit.
    public var exitWhenDrained: Bool
    /// Where the worker logs (start, stop, failures, rescues).
    public var logger: Logger

    public init(
        queues: [String] = ["default"],
        concurrency: Int? = nil,
        lease: Duration = .seconds(30),
        pollInterval: Duration = .milliseconds(50),
        claimBatch: Int = 128,
        localBuffer: Int = 256,
        bufferedWork: Duration = .milliseconds(50),
        maxResultBytes: Int = 1 << 20,
        keepCompleted: Duration = .seconds(24 * 3600),
        keepFailed: Duration = .seconds(7 * 24 * 3600),
        shutdownGrace: Duration = .seconds(30),
        name: String? = nil,
        notifications: Bool = true,
        exitWhenDrained: Bool = false,
        logger: Logger = Logger(label: "swift-multiprocessing.queue", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.queues = queues
        self.concurrency = concurrency
        self.lease = lease
        self.pollInterval = pollInterval
        self.claimBatch = max(1, claimBatch)
        self.localBuffer = localBuffer
        self.bufferedWork = bufferedWork
        self.maxResultBytes = maxResultBytes
        self.keepCompleted = keepCompleted
        self.keepFailed = keepFailed
        self.shutdownGrace = shutdownGrace
        self.name = name
        self.notifications = notifications
        self.exitWhenDrained = exitWhenDrained
        self.logger = logger
    }
}

/// Runs a queue's jobs on a `ProcessPool`: claims them in batches, renews their leases, records
/// results and failures in batches, retries with exponential backoff, rescues jobs whose worker died,
/// and deletes finished jobs after their retention. A job that crashes or hangs its pool worker fails
/// alone (the pool replaces the worker).
///
/// ```swift
/// let pool = try ProcessPool(workers: 4, options: ProcessPoolOptions(interrupt: .ignore))
/// let worker = try QueueWorker(DatabaseURL("sqlite:jobs.db"), pool: pool)
/// QueueWorker.stopOnSignals(worker)      // SIGTERM / Ctrl-C: finish what it holds, then return
/// try worker.run()
/// ```
/// The program that runs the worker must contain the job types (workers find them by name).
public final class QueueWorker: Sendable {
    public let url: DatabaseURL
    public let pool: ProcessPool
    public let options: QueueWorkerOptions
    /// The name recorded in the jobs this worker holds.
    public let name: String
    private let stopRequest = TrackedMutex<StopMode?>(nil)
    /// Job types this program does not define, found when a job of one failed with `unknownJob`: this
    /// worker no longer claims them (another program's workers may define them).
    private let unknownKinds = TrackedMutex<Set<String>>([])
    private let completions = BlockingQueue<Completion>()
    private let telemetry: QueueTelemetry

    /// What ``stop(_:)`` does with the jobs the worker holds.
    public enum StopMode: Sendable, Hashable {
        /// Stop claiming; let running jobs finish (up to ``QueueWorkerOptions/shutdownGrace``), then hand
        /// back the rest.
        case finish
        /// Stop running jobs now and hand them back to the queue (their attempt is not counted).
        case handBack
    }

    struct Completion: Sendable {
        let id: Int64
        let attempt: Int
        let outcome: Result<[UInt8], any Error>
    }

    public init(_ url: DatabaseURL, pool: ProcessPool, options: QueueWorkerOptions = QueueWorkerOptions()) throws {
        self.url = url
        self.pool = pool
        self.options = options
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, 255)
        let hostName = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.name = options.name ?? "\(hostName):\(getpid()):\(UInt32.random(in: 0...UInt32.max))"
        self.telemetry = QueueTelemetry(queues: options.queues)
        let c = try Database.connect(url)
        defer { c.close() }
        try QueueSchema.migrate(c)
    }

    /// Asks ``run()`` to return: `.finish` lets running jobs end first, `.handBack` returns them to the
    /// queue now. Callable from any thread (a signal handler's thread included).
    public func stop(_ mode: StopMode = .finish) {
        stopRequest.withLock { current in
            if current != .handBack { current = mode }
        }
        try? completions.putNowait(Completion(id: -1, attempt: 0, outcome: .success([])))  // wake the loop
    }

    // MARK: the loop

    struct Held {
        /// The pool task: the job's own, or its chunk's.
        let cancel: @Sendable () -> Void
        let job: Claimed
        var attempt: Int { job.attempt }
        var maxAttempts: Int { job.maxAttempts }
        var backoffMs: Int64 { job.backoffMs }
        let started: ContinuousClock.Instant
        var cancelRequested = false
    }

    /// A chunk's pool task failed as a whole (its worker process died, or it was cancelled): its jobs are
    /// run again one by one, under the same attempt, so that only a job that crashes is charged for it.
    struct ChunkFailed: Error {}

    /// Claims and runs jobs until ``stop(_:)`` (or a signal, with ``stopOnSignals(_:)``); returns the
    /// number of jobs it finished (completed, failed or cancelled).
    /// - Throws: when the database cannot be reached for longer than a lease (the jobs it held are then
    ///   rescued by other workers after their lease).
    @discardableResult
    public func run() throws -> Int {
        let log = options.logger
        let concurrency = max(1, options.concurrency ?? pool.workerCount)
        // Jobs held at most: those running, plus a local buffer queued in the pool, so that its workers
        // never wait for a claim's round trip. The buffer follows the rate at which jobs finish (smoothed
        // over 100 ms steps); until there is one, it is small.
        let maxBuffer = max(0, options.localBuffer)
        var buffer = min(maxBuffer, 4 * concurrency)
        var limit = concurrency + buffer
        var rate = 0.0
        var rateSince = ContinuousClock.now
        var rateCount = 0
        func measure(_ finishedNow: Int) {
            rateCount += finishedNow
            let elapsed = ContinuousClock.now - rateSince
            guard elapsed >= .milliseconds(100) else { return }
            let seconds = Double(elapsed.nanoseconds) / 1e9
            let current = Double(rateCount) / seconds
            rate = rate == 0 ? current : 0.6 * rate + 0.4 * current
            rateSince = ContinuousClock.now
            rateCount = 0
            let window = Double(options.bufferedWork.nanoseconds) / 1e9
            buffer = min(maxBuffer, max(0, Int((rate * window).rounded(.up))))
            limit = concurrency + buffer
            telemetry.buffer.record(buffer)
        }
        var held: [Int64: Held] = [:]
        var pending: [Completion] = []
        // Results wait at most this long to be recorded while jobs keep the worker busy (they are recorded
        // with the next claim, one statement for both on PostgreSQL, or once the pool is idle).
        let ackDelay = Duration.milliseconds(10)
        var oldestPending: ContinuousClock.Instant?
        var finished = 0
        var connection: (any SQLConnection)? = try Database.connect(url)
        defer { connection?.close() }
        let clock = ContinuousClock()
        var nextHeartbeat = clock.now + options.lease / 3
        var nextRescue = clock.now
        var nextClean = clock.now
        var stoppingSince: ContinuousClock.Instant?
        var nextDrainCheck = clock.now
        var lastDatabaseSuccess = clock.now
        var listener: (any SQLNotificationListening)?
        var nextListen = clock.now
        defer { listener?.close() }
        log.info("queue worker starts", metadata: ["worker": "\(name)", "queues": "\(options.queues)"])

        /// Opens (or reopens, at most once a second) the connection that hears of queued jobs.
        func listen() {
            guard options.notifications, listener?.isOpen != true, clock.now >= nextListen,
                connection is any SQLNotificationListening
            else { return }
            nextListen = clock.now + .seconds(1)
            listener?.close()
            listener = nil
            do {
                guard let l = try Database.connect(url, timeout: .seconds(5)) as? any SQLNotificationListening else {
                    return
                }
                let queues = Set(options.queues)
                let completions = self.completions
                try l.listen(QueueSchema.channel) { queue in
                    if queues.contains(queue) {
                        try? completions.putNowait(Completion(id: -1, attempt: 0, outcome: .success([])))
                    }
                }
                listener = l
                log.debug("listening for queued jobs")
            } catch {
                log.warning("cannot listen for queued jobs; polling", metadata: ["error": "\(error)"])
            }
        }

        /// Queues a claimed job in the pool, alone.
        func submitOne(_ j: Claimed) {
            let completions = self.completions
            let id = j.id
            let attempt = j.attempt
            do {
                let task = try pool.applyAsync(
                    StoredJob(kind: j.kind, payload: j.payload),
                    options: TaskOptions(timeout: j.timeoutMs.map { .milliseconds($0) }),
                    callback: {
                        try? completions.putNowait(Completion(id: id, attempt: attempt, outcome: .success($0)))
                    },
                    errorCallback: {
                        try? completions.putNowait(Completion(id: id, attempt: attempt, outcome: .failure($0)))
                    }
                )
                held[id] = Held(cancel: { task.cancel() }, job: j, started: clock.now)
            } catch {
                refused([j], error)
            }
        }

        /// Queues claimed jobs in the pool as one task (one message each way for all of them).
        func submitChunk(_ chunk: [Claimed]) {
            let completions = self.completions
            let keys = chunk.map { (id: $0.id, attempt: $0.attempt) }
            do {
                let task = try pool.applyAsync(
                    StoredJobChunk(jobs: chunk.map { StoredJob(kind: $0.kind, payload: $0.payload) }),
                    callback: { outcomes in
                        for (k, o) in zip(keys, outcomes) {
                            try? completions.putNowait(Completion(id: k.id, attempt: k.attempt, outcome: o.result))
                        }
                    },
                    errorCallback: { _ in
                        for k in keys {
                            try? completions.putNowait(
                                Completion(id: k.id, attempt: k.attempt, outcome: .failure(ChunkFailed()))
                            )
                        }
                    }
                )
                for j in chunk { held[j.id] = Held(cancel: { task.cancel() }, job: j, started: clock.now) }
            } catch {
                refused(chunk, error)
            }
        }

        /// The pool refused (closed or broken): hand the jobs back and stop.
        func refused(_ jobs: [Claimed], _ error: any Error) {
            try? database { c in try self.handBack(jobs.map(\.id), on: c) }
            log.error("the pool refused a job; stopping", metadata: ["error": "\(error)"])
            stopRequest.withLock { $0 = .handBack }
        }

        /// Queues claimed jobs in the pool: in chunks while jobs are short (the buffer is deep), so that a
        /// job costs a fraction of a message; alone when they are long, or have a timeout of their own.
        func dispatch(_ jobs: [Claimed]) {
            let size = max(1, min(32, buffer / (4 * concurrency), jobs.count / concurrency))
            var chunk: [Claimed] = []
            for j in jobs {
                telemetry.lag.recordNanoseconds(max(0, QueueSchema.nowMs() - j.runAt) * 1_000_000)
                if size == 1 || j.timeoutMs != nil {
                    submitOne(j)
                    continue
                }
                chunk.append(j)
                if chunk.count == size {
                    submitChunk(chunk)
                    chunk = []
                }
            }
            if chunk.count == 1 { submitOne(chunk[0]) } else if !chunk.isEmpty { submitChunk(chunk) }
        }

        /// Takes in what the pool reported.
        func accept(_ c: Completion) {
            guard c.id >= 0 else { return }  // a wake-up
            if case .failure(let e) = c.outcome, e is ChunkFailed, let h = held[c.id] {
                if !h.cancelRequested {
                    submitOne(h.job)
                    return
                }
            }
            pending.append(c)
            if oldestPending == nil { oldestPending = clock.now }
        }

        /// Runs `body` on the connection, reconnecting after a connection error (the call is not repeated:
        /// a statement that may have run is not run twice).
        func database<R>(_ body: (any SQLConnection) throws -> R) throws -> R {
            do {
                if connection == nil { connection = try Database.connect(url) }
                let r = try body(connection!)
                lastDatabaseSuccess = clock.now
                return r
            } catch let e as SQLError where e.kind == .connection || e.kind == .busy {
                if e.kind == .connection {
                    connection?.close()
                    connection = nil
                }
                if clock.now - lastDatabaseSuccess > options.lease {
                    log.error("the database is unreachable", metadata: ["error": "\(e)"])
                    throw e
                }
                log.warning("database call failed; will retry", metadata: ["error": "\(e)"])
                throw e
            }
        }

        while true {
            let stop = stopRequest.withLock { $0 }
            listen()
            // Completions that arrived.
            while let c = try? completions.getNowait() { accept(c) }
            // Record and claim, in one round trip when both are due. Jobs finished but not yet recorded
            // do not count against the room: the pool is kept fed while their results wait.
            let inPool = held.count - pending.count
            let room = limit - inPool
            let wantClaim =
                stop == nil && room > 0 && (inPool < concurrency || room >= min(options.claimBatch, limit) / 2)
            let flush =
                !pending.isEmpty
                && (stop != nil || inPool == 0 || pending.count >= options.claimBatch
                    || oldestPending.map { clock.now - $0 >= ackDelay } == true)
            var claimed = 0
            if wantClaim || flush {
                let batch = pending
                let want = wantClaim ? min(options.claimBatch, room) : 0
                do {
                    let jobs = try database { c in try self.settle(batch, claiming: want, held: held, on: c) }
                    for c in batch { held[c.id] = nil }
                    finished += batch.count
                    measure(batch.count)
                    pending = []
                    oldestPending = nil
                    claimed = jobs.count
                    dispatch(jobs)
                    telemetry.claimed.increment(by: jobs.count)
                } catch {
                    // Results stay pending (their leases hold meanwhile) and are recorded on a later turn.
                    if clock.now - lastDatabaseSuccess > options.lease { throw error }
                }
            }
            if options.exitWhenDrained, stop == nil, claimed == 0, held.isEmpty, clock.now >= nextDrainCheck {
                nextDrainCheck = clock.now + options.pollInterval
                if let left = try? database({ c in try self.jobsLeft(on: c) }), left == 0 {
                    log.info("the queues are drained: the worker stops", metadata: ["worker": "\(name)"])
                    self.stop(.finish)
                    continue
                }
            }
            if stop == .handBack
                || (stop == .finish && stoppingSince.map { clock.now - $0 > options.shutdownGrace } == true)
            {
                if !held.isEmpty {
                    for h in held.values { h.cancel() }
                    let ids = Array(held.keys)
                    try? database { c in try self.handBack(ids, on: c) }
                    log.info("handed back jobs", metadata: ["count": "\(ids.count)"])
                    held = [:]
                }
                break
            }
            if stop == .finish {
                if stoppingSince == nil {
                    stoppingSince = clock.now
                    log.info("stopping: finishing the jobs held", metadata: ["held": "\(held.count)"])
                }
                if held.isEmpty { break }
            }
            // Leases and cancel requests.
            if clock.now >= nextHeartbeat {
                nextHeartbeat = clock.now + options.lease / 3
                if !held.isEmpty {
                    if let cancelled = try? database({ c in try self.heartbeat(on: c) }) {
                        for id in cancelled {
                            if var h = held[id], !h.cancelRequested {
                                h.cancelRequested = true
                                held[id] = h
                                h.cancel()
                            }
                        }
                    }
                }
            }
            // Maintenance any worker may do.
            if clock.now >= nextRescue {
                nextRescue = clock.now + max(.milliseconds(200), options.lease / 4)
                if let n = try? database({ c in try self.rescue(on: c) }), n > 0 {
                    telemetry.rescued.increment(by: n)
                    log.warning("rescued jobs whose lease expired", metadata: ["count": "\(n)"])
                }
            }
            if clock.now >= nextClean {
                nextClean = clock.now + .seconds(60)
                _ = try? database { c in try self.clean(on: c) }
            }
            if held.isEmpty { measure(0) }  // an idle worker's rate decays
            telemetry.running.record(held.count - pending.count)
            // Wait: for a completion (or a notification) while jobs run, else for the poll interval; never
            // past the moment pending results are due.
            if claimed == 0 || held.count - pending.count >= limit {
                var wait =
                    held.isEmpty || claimed == 0 && held.count - pending.count < limit
                    ? options.pollInterval : options.lease / 3
                wait = min(wait, max(.milliseconds(1), nextHeartbeat - clock.now))
                if let oldestPending { wait = min(wait, max(.zero, oldestPending + ackDelay - clock.now)) }
                if wait > .zero, let c = try? completions.get(timeout: wait) { accept(c) }
            }
        }
        log.info("queue worker stops", metadata: ["worker": "\(name)", "finished": "\(finished)"])
        return finished
    }

    // MARK: statements

    struct Claimed {
        let id: Int64
        let kind: String
        let payload: [UInt8]
        let attempt: Int
        let maxAttempts: Int
        let backoffMs: Int64
        let timeoutMs: Int64?
        let runAt: Int64
    }

    /// Records finished attempts and claims up to `n` due jobs, in one transaction. Each record names the
    /// attempt it ran, so an attempt whose lease was lost (and whose job another worker took) changes
    /// nothing.
    ///
    /// PostgreSQL: results and the claim are one statement (a data-modifying `WITH`): one round trip and
    /// one commit for both; the claim skips rows other workers are claiming (`FOR UPDATE SKIP LOCKED`).
    /// Failures, rarer, are recorded one by one before it. SQLite: `BEGIN IMMEDIATE` takes the write lock
    /// first, so the transaction never fails half-way for a lock.
    func settle(
        _ batch: [Completion],
        claiming n: Int,
        held: [Int64: Held],
        on c: any SQLConnection
    ) throws
        -> [Claimed]
    {
        let now = QueueSchema.nowMs()
        guard c.dialect.name == "postgresql" else {
            return try c.transaction(immediate: true) {
                try recordOneByOne(batch, held: held, now: now, on: c)
                return n > 0 ? try claim(n, now: now, results: [], on: c) : []
            }
        }
        var results: [(Completion, [UInt8])] = []
        var rest: [Completion] = []
        for done in batch {
            if case .success(let bytes) = done.outcome, bytes.count <= options.maxResultBytes {
                results.append((done, bytes))
            } else {
                rest.append(done)
            }
        }
        let claimed: [Claimed]
        if rest.isEmpty {
            claimed = try claim(n, now: now, results: results, on: c)
        } else {
            claimed = try c.transaction(immediate: true) {
                try recordOneByOne(rest, held: held, now: now, on: c)
                return try claim(n, now: now, results: results, on: c)
            }
        }
        telemetry.completed.increment(by: results.count)
        for (done, _) in results {
            if let h = held[done.id] {
                telemetry.duration.recordNanoseconds((ContinuousClock.now - h.started).nanoseconds)
            }
        }
        return claimed
    }

    /// Claims up to `n` due jobs (none when 0) in one statement, which on PostgreSQL also marks `results`
    /// completed.
    func claim(_ n: Int, now: Int64, results: [(Completion, [UInt8])], on c: any SQLConnection) throws -> [Claimed] {
        let d = c.dialect
        // Without a claim, $1 and $2 are placeholders and no queue is bound: PostgreSQL cannot type an
        // unused parameter sent untyped (text is).
        var parameters: [SQLValue] =
            n > 0 ? [.text(name), .int(now + options.lease.milliseconds), .int(now)] : [.int(0), .int(0), .int(now)]
        let queueList = (n > 0 ? options.queues : []).map { q -> String in
            parameters.append(.text(q))
            return d.parameter(parameters.count)
        }
        let skippedKinds = (n > 0 ? unknownKinds.withLock { $0.sorted() } : []).map { k -> String in
            parameters.append(.text(k))
            return d.parameter(parameters.count)
        }
        // PostgreSQL only: the results, as VALUES rows (the first typed), finished at $3.
        var rows: [String] = []
        for (done, bytes) in results {
            parameters += [.int(done.id), .int(Int64(done.attempt)), .blob(bytes)]
            let i = parameters.count
            rows.append(
                rows.isEmpty ? "($\(i - 2)::bigint, $\(i - 1)::integer, $\(i)::bytea)" : "($\(i - 2), $\(i - 1), $\(i))"
            )
        }
        let complete = """
            UPDATE mp_jobs SET state = 'completed', result = v.column3, finished_at = $3, lease_until = NULL
            FROM (VALUES \(rows.joined(separator: ", "))) AS v
            WHERE mp_jobs.id = v.column1 AND mp_jobs.attempt = v.column2 AND mp_jobs.state = 'running'
            """
        guard n > 0 else {
            if !rows.isEmpty {
                let changed = try c.execute(complete, parameters)
                if changed < rows.count {
                    options.logger.warning(
                        "results came after their jobs' leases were lost; dropped",
                        metadata: ["count": "\(rows.count - changed)"]
                    )
                }
            }
            return []
        }
        let due = """
            SELECT id FROM mp_jobs WHERE state = 'available' AND queue IN (\(queueList.joined(separator: ", ")))
              AND run_at <= \(d.parameter(3))\(skippedKinds.isEmpty ? "" : " AND kind NOT IN (\(skippedKinds.joined(separator: ", ")))")
              ORDER BY priority DESC, run_at, id LIMIT \(n)
            """
        let set =
            "state = 'running', attempt = attempt + 1, worker = \(d.parameter(1)), lease_until = \(d.parameter(2))"
        let returning = """
            RETURNING mp_jobs.id, mp_jobs.kind, mp_jobs.payload, mp_jobs.attempt, mp_jobs.max_attempts,
              mp_jobs.backoff_ms, mp_jobs.timeout_ms, mp_jobs.run_at
            """
        let sql: String
        if d.name == "postgresql" {
            let done = rows.isEmpty ? "" : "done AS (\(complete) RETURNING mp_jobs.id), "
            sql =
                "WITH \(done)due AS (\(due) FOR UPDATE SKIP LOCKED) UPDATE mp_jobs SET \(set) FROM due WHERE mp_jobs.id = due.id \(returning)"
        } else {
            sql = "UPDATE mp_jobs SET \(set) WHERE id IN (\(due)) \(returning)"
        }
        var out: [Claimed] = []
        try c.forEachRow(sql, parameters) { r in
            let payload: [UInt8] = if case .blob(let b) = r[2] { b } else { [] }
            out.append(
                Claimed(
                    id: r[0].intValue ?? 0,
                    kind: r[1].textValue ?? "",
                    payload: payload,
                    attempt: Int(r[3].intValue ?? 1),
                    maxAttempts: Int(r[4].intValue ?? 1),
                    backoffMs: r[5].intValue ?? 1000,
                    timeoutMs: r[6].intValue,
                    runAt: r[7].intValue ?? now
                )
            )
        }
        return out
    }

    /// Records attempts one statement each (within the caller's transaction).
    func recordOneByOne(_ batch: [Completion], held: [Int64: Held], now: Int64, on c: any SQLConnection) throws {
        let d = c.dialect
        for done in batch {
            let h = held[done.id]
            let fence = "WHERE id = \(d.parameter(1)) AND attempt = \(d.parameter(2)) AND state = 'running'"
            let key: [SQLValue] = [.int(done.id), .int(Int64(done.attempt))]
            var outcome = done.outcome
            if case .success(let bytes) = outcome, bytes.count > options.maxResultBytes {
                outcome = .failure(
                    JobQueueError(
                        .resultTooLarge,
                        "the result has \(bytes.count) bytes; the limit is \(options.maxResultBytes)"
                    )
                )
            }
            // A job asked to stop that finished anyway keeps its result.
            if h?.cancelRequested == true, case .failure = outcome {
                try c.execute(
                    "UPDATE mp_jobs SET state = 'cancelled', finished_at = \(d.parameter(3)), lease_until = NULL \(fence)",
                    key + [.int(now)]
                )
                telemetry.cancelled.increment()
                continue
            }
            switch outcome {
            case .success(let bytes):
                let n = try c.execute(
                    "UPDATE mp_jobs SET state = 'completed', result = \(d.parameter(3)), finished_at = \(d.parameter(4)), lease_until = NULL \(fence)",
                    key + [.blob(bytes), .int(now)]
                )
                if n == 0 {
                    options.logger.warning(
                        "a result came after the job's lease was lost; dropped",
                        metadata: ["job": "\(done.id)"]
                    )
                }
                telemetry.completed.increment()
                if let h { telemetry.duration.recordNanoseconds((ContinuousClock.now - h.started).nanoseconds) }
            case .failure(let error):
                telemetry.failed.increment()
                let attempt = done.attempt
                let maxAttempts = h?.maxAttempts ?? attempt
                let line =
                    "attempt \(attempt) at \(QueueSchema.iso8601(ms: now)) on \(name): \(Self.describe(error))"
                    .split(separator: "\n").joined(separator: " ") + "\n"
                if let unknown = error as? JobQueueError, unknown.code == .unknownJob {
                    // This program does not define the job's type; another program's workers may. Hand the
                    // job back at once without counting the attempt, and claim that type no more.
                    try c.execute(
                        "UPDATE mp_jobs SET state = 'available', attempt = attempt - 1, worker = NULL, lease_until = NULL \(fence)",
                        key
                    )
                    telemetry.handedBack.increment()
                    let kind = h?.job.kind ?? ""
                    if unknownKinds.withLock({ $0.insert(kind).inserted }) {
                        options.logger.warning(
                            "a job type this program does not define: its jobs are left to workers that define it",
                            metadata: ["job": "\(done.id)", "type": "\(readableTypeName(mangled: kind))"]
                        )
                    }
                } else if attempt < maxAttempts && (error as? JobQueueError)?.code.isFinal != true {
                    let base = Double(h?.backoffMs ?? 1000) * pow(2, Double(attempt - 1))
                    let wait = Int64(min(base, 3_600_000) * Double.random(in: 0.75...1.25))
                    try c.execute(
                        "UPDATE mp_jobs SET state = 'available', run_at = \(d.parameter(3)), worker = NULL, lease_until = NULL, errors = coalesce(errors, '') || \(d.parameter(4)) \(fence)",
                        key + [.int(now + wait), .text(line)]
                    )
                    telemetry.retried.increment()
                } else {
                    try c.execute(
                        "UPDATE mp_jobs SET state = 'discarded', finished_at = \(d.parameter(3)), lease_until = NULL, errors = coalesce(errors, '') || \(d.parameter(4)) \(fence)",
                        key + [.int(now), .text(line)]
                    )
                    telemetry.discarded.increment()
                    options.logger.error(
                        "job discarded after its last attempt",
                        metadata: ["job": "\(done.id)", "error": "\(line)"]
                    )
                }
            }
        }
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? PoolError { return e.message }
        return "\(error)"
    }

    /// Jobs in this worker's queues still to run or running anywhere, those of types this program does not
    /// define left out (``QueueWorkerOptions/exitWhenDrained``).
    func jobsLeft(on c: any SQLConnection) throws -> Int {
        let d = c.dialect
        var parameters: [SQLValue] = []
        func list(_ values: [String]) -> String {
            values.map { v in
                parameters.append(.text(v))
                return d.parameter(parameters.count)
            }.joined(separator: ", ")
        }
        let queues = list(options.queues)
        let unknown = unknownKinds.withLock { $0.sorted() }
        let skip = unknown.isEmpty ? "" : " AND kind NOT IN (\(list(unknown)))"
        let sql =
            "SELECT count(*) FROM mp_jobs WHERE queue IN (\(queues)) AND state IN ('available', 'running')\(skip)"
        return Int(try c.scalar(sql, parameters)?.intValue ?? 0)
    }

    /// Extends the leases of the jobs this worker holds; returns those whose cancellation was asked for.
    func heartbeat(on c: any SQLConnection) throws -> [Int64] {
        let d = c.dialect
        try c.execute(
            "UPDATE mp_jobs SET lease_until = \(d.parameter(1)) WHERE worker = \(d.parameter(2)) AND state = 'running'",
            [.int(QueueSchema.nowMs() + options.lease.milliseconds), .text(name)]
        )
        var ids: [Int64] = []
        try c.forEachRow(
            "SELECT id FROM mp_jobs WHERE worker = \(d.parameter(1)) AND state = 'running' AND cancel_requested = 1",
            [.text(name)]
        ) { ids.append($0[0].intValue ?? 0) }
        return ids
    }

    /// Jobs whose lease expired (their worker died, hung or lost the database) go back to the queue, or
    /// are discarded after their last attempt, with a line in their error history. Any worker does it.
    func rescue(on c: any SQLConnection) throws -> Int {
        let d = c.dialect
        let now = QueueSchema.nowMs()
        return try c.transaction(immediate: true) {
            var rescued = 0
            var requeued: Set<String> = []
            try c.forEachRow(
                """
                UPDATE mp_jobs SET
                  state = CASE WHEN attempt < max_attempts THEN 'available' ELSE 'discarded' END,
                  finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE \(d.parameter(1)) END,
                  run_at = \(d.parameter(1)),
                  errors = coalesce(errors, '') || 'attempt ' || attempt || \(d.parameter(2)) || coalesce(worker, '?') || \(d.parameter(3)),
                  worker = NULL, lease_until = NULL
                WHERE state = 'running' AND lease_until < \(d.parameter(1))
                RETURNING queue, state
                """,
                [
                    .int(now), .text(" at \(QueueSchema.iso8601(ms: now)) on "),
                    .text(": lease expired (the worker stopped renewing it)\n"),
                ]
            ) { r in
                rescued += 1
                if r[1].textValue == "available", let q = r[0].textValue { requeued.insert(q) }
            }
            try notify(requeued, on: c)
            return rescued
        }
    }

    /// Wakes the workers listening for `queues` (PostgreSQL; at commit).
    func notify(_ queues: some Sequence<String>, on c: any SQLConnection) throws {
        guard c.dialect.name == "postgresql" else { return }
        for q in queues { try c.execute("SELECT pg_notify($1, $2)", [.text(QueueSchema.channel), .text(q)]) }
    }

    /// Returns jobs to the queue without counting the attempt (a worker that stops).
    func handBack(_ ids: [Int64], on c: any SQLConnection) throws {
        guard !ids.isEmpty else { return }
        let d = c.dialect
        try c.transaction(immediate: true) {
            for id in ids {
                try c.execute(
                    "UPDATE mp_jobs SET state = 'available', attempt = attempt - 1, worker = NULL, lease_until = NULL WHERE id = \(d.parameter(1)) AND worker = \(d.parameter(2)) AND state = 'running'",
                    [.int(id), .text(name)]
                )
            }
            try notify(options.queues, on: c)
        }
    }

    /// Deletes finished jobs past their retention.
    func clean(on c: any SQLConnection) throws -> Int {
        let d = c.dialect
        let now = QueueSchema.nowMs()
        return try c.execute(
            "DELETE FROM mp_jobs WHERE (state = 'completed' AND finished_at < \(d.parameter(1))) OR (state IN ('discarded', 'cancelled') AND finished_at < \(d.parameter(2)))",
            [.int(now - options.keepCompleted.milliseconds), .int(now - options.keepFailed.milliseconds)]
        )
    }

    // MARK: signals

    private static let signalled = Atomic<Int>(0)
    private static let watched = TrackedMutex<[QueueWorker]>([])

    /// SIGTERM or SIGINT (Ctrl-C) stops `worker`: the first with `.finish`, the second with `.handBack`.
    /// Create its pool with `ProcessPoolOptions(interrupt: .ignore)` so that Ctrl-C does not tear the
    /// pool down first.
    public static func stopOnSignals(_ worker: QueueWorker) {
        watched.withLock { $0.append(worker) }
        let handler: @convention(c) (Int32) -> Void = { _ in _ = QueueWorker.signalled.add(1, ordering: .relaxed) }
        signal(SIGTERM, handler)
        signal(SIGINT, handler)
        // A program started by another may inherit a mask that blocks them (Foundation's Process passes
        // its thread's mask on): unblock them here, and so in the threads started from here on.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        let watcher = OSThread(name: "mp-queue-signals", daemon: true) {
            var seen = 0
            while true {
                usleep(20_000)
                let n = signalled.load(ordering: .relaxed)
                if n > seen {
                    seen = n
                    for w in watched.withLock({ $0 }) { w.stop(n >= 2 ? .handBack : .finish) }
                }
            }
        }
        try? watcher.start()
    }
}

/// The worker's metrics (swift-metrics; the program chooses the backend).
struct QueueTelemetry: Sendable {
    let claimed, completed, failed, retried, discarded, rescued, cancelled, handedBack: Counter
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
        duration = CoreMetrics.Timer(label: "mp_queue_job_duration", dimensions: dims)
        lag = CoreMetrics.Timer(label: "mp_queue_job_lag", dimensions: dims)
        running = Gauge(label: "mp_queue_jobs_running", dimensions: dims)
        buffer = Gauge(label: "mp_queue_local_buffer", dimensions: dims)
    }
}

extension Duration {
    var nanoseconds: Int64 { components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000 }
}
