import CoreMetrics
import Glibc
import Logging
public import Multiprocessing
public import MultiprocessingSQL
import Synchronization
import Threading
import Tracing

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
    /// The database of the queue it serves.
    public let url: DatabaseURL
    /// The pool its jobs run on (``QueueWorkerOptions/concurrency`` defaults to the pool's worker count).
    public let pool: ProcessPool
    /// How it claims, runs and looks after jobs.
    public let options: QueueWorkerOptions
    /// The name recorded in the jobs this worker holds.
    public let name: String
    /// The machine's name, as the worker announces it.
    private let host: String
    /// SQLite: the doorbells' directory of the database file (nil elsewhere).
    private let doorbells: String?
    private let stopRequest = TrackedMutex<StopMode?>(nil)
    /// What the pool reports (outcomes, from its callback thread) and wake-ups (a notification, a stop
    /// request).
    private let completions = BlockingQueue<Inbox>()

    /// A message for the loop. (Not an optional `Completion`: `try?` would flatten a wake-up into "no
    /// message".)
    enum Inbox: Sendable {
        case completed(Completion)
        case wake
    }
    private let telemetry: QueueTelemetry
    let statements: QueueStatements

    /// What ``stop(_:)`` does with the jobs the worker holds.
    public enum StopMode: Sendable, Hashable {
        /// Stop claiming; let running jobs finish (up to ``QueueWorkerOptions/shutdownGrace``), then hand
        /// back the rest.
        case finish
        /// Stop running jobs now and hand them back to the queue (their attempt is not counted).
        case handBack
    }

    typealias Completion = QueueWorkerState.Completion

    /// Creates a worker for the queue at `url` that runs jobs on `pool`. It connects once, to create or
    /// migrate the queue's tables, and closes that connection; ``run()`` opens its own. Its ``name`` is
    /// ``QueueWorkerOptions/name``, or `host:pid:n` with `n` random.
    /// - Throws: the database's error when it cannot be reached; ``JobQueueError`` `.schema` when the
    ///   database cannot hold the queue (no `UPDATE … RETURNING`: MySQL, MariaDB) or its tables are newer
    ///   than this library.
    public init(_ url: DatabaseURL, pool: ProcessPool, options: QueueWorkerOptions = QueueWorkerOptions()) throws {
        self.url = url
        self.pool = pool
        self.options = options
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, 255)
        let hostName = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.name = options.name ?? "\(hostName):\(getpid()):\(UInt32.random(in: 0...UInt32.max))"
        self.host = hostName
        self.telemetry = QueueTelemetry(queues: options.queues)
        self.statements = QueueStatements(
            worker: name,
            queues: options.queues,
            lease: options.lease,
            keepCompleted: options.keepCompleted,
            keepFailed: options.keepFailed,
            logger: options.logger
        )
        let c = try Database.connect(url)
        defer { c.close() }
        try QueueSchema.migrate(c)
        doorbells = Doorbell.directory(url)  // the file exists now
    }

    /// Asks ``run()`` to return: `.finish` lets running jobs end first, `.handBack` returns them to the
    /// queue now. Callable from any thread (a signal handler's thread included).
    public func stop(_ mode: StopMode = .finish) {
        stopRequest.withLock { current in
            if current != .handBack { current = mode }
        }
        try? completions.putNowait(.wake)  // wake the loop
    }

    // MARK: the loop

    /// Claims and runs jobs until ``stop(_:)`` (or a signal, with ``stopOnSignals(_:)``); returns the
    /// number of jobs it finished (completed, failed or cancelled).
    ///
    /// The decisions are `QueueWorkerState`'s; this loop performs its steps (SQL, pool submissions,
    /// waits) and reports back.
    /// - Throws: when the database cannot be reached for longer than a lease (the jobs it held are then
    ///   rescued by other workers after their lease; their pool tasks are cancelled).
    @discardableResult
    public func run() throws -> Int {
        let log = options.logger
        let clock = ContinuousClock()
        var connection: (any SQLConnection)? = try Database.connect(url)
        defer { connection?.close() }
        var config = QueueWorkerState.Config(
            options,
            workers: pool.workerCount,
            canListen: (connection?.dialect.notifies == true && connection is any SQLNotificationListening)
                || doorbells != nil
        )
        config.traces = PoolTracing.tracer != nil
        config.announces = true
        config.readsLimits = true
        config.runsSchedules = options.schedules
        let startedAt = QueueSchema.nowMs()
        var state = QueueWorkerState(config, now: clock.now)
        var listener: (any WakeUps)?
        defer { listener?.close() }
        /// The pool tasks of the jobs held, by `QueueWorkerState.Token`.
        var tasks: [QueueWorkerState.Token: @Sendable () -> Void] = [:]
        var lastError: (any Error)?
        /// Schedules already reported as unreadable here (logged once each).
        var unreadableSchedules: Set<String> = []
        log.info("queue worker starts", metadata: ["worker": "\(name)", "queues": "\(options.queues)"])

        /// Runs `body` on the connection, reconnecting after a connection error (the call is not repeated:
        /// a statement that may have run is not run twice). A failure is reported to the state; a statement
        /// that failed on a working connection goes to `statementFailed` instead, when there is one.
        func database<R>(
            _ what: String,
            statementFailed: ((any Error) -> Void)? = nil,
            _ body: (any SQLConnection) throws -> R
        ) -> R? {
            do {
                if connection == nil { connection = try Database.connect(url) }
                return try body(connection!)
            } catch {
                let lostConnection = connection == nil || (error as? SQLError)?.kind == .connection
                if lostConnection {
                    connection?.close()
                    connection = nil
                } else if let statementFailed {
                    statementFailed(error)
                    return nil
                }
                lastError = error
                log.warning("database call failed; will retry", metadata: ["call": "\(what)", "error": "\(error)"])
                state.databaseFailed(now: clock.now)
                return nil
            }
        }

        func accept(_ message: Inbox) {
            switch message {
            case .completed(let c): state.completed(c, now: clock.now)
            case .wake: state.woken(now: clock.now)
            }
        }

        while true {
            if let l = listener, !l.isOpen {
                listener = nil
                state.listening(false, now: clock.now)
            }
            if let mode = stopRequest.withLock({ $0 }), state.requestStop(mode, now: clock.now) {
                let what =
                    mode == .finish ? "stopping: finishing the jobs held" : "stopping: handing back the jobs held"
                log.info("\(what)", metadata: ["held": "\(state.held.count)"])
            }
            while let c = try? completions.getNowait() { accept(c) }
            for t in state.takeRetiredTokens() { tasks[t] = nil }
            let step = state.next(now: clock.now)
            switch step {
            case .listen:
                listener?.close()
                listener = listen()
                state.listening(listener != nil, now: clock.now)

            case .submit(let submissions):
                for s in submissions {
                    do {
                        let (token, cancel) = try submit(s)
                        tasks[token] = cancel
                    } catch {
                        log.error("the pool refused a job; stopping", metadata: ["error": "\(error)"])
                        state.refused(now: clock.now)
                        break
                    }
                }

            case .cancel(let tokens):
                for t in tokens { tasks[t]?() }

            case .readLimits:
                guard let queues = database("read limits", { c in try statements.limitedQueues(on: c) }) else {
                    continue
                }
                state.limitsRead(queues, now: clock.now)

            case .runSchedules:
                let ran = database(
                    "run schedules",
                    statementFailed: { error in
                        log.error("cannot queue the jobs of periodic schedules", metadata: ["error": "\(error)"])
                        state.schedulesFailed(now: clock.now)
                    },
                    { c in try ScheduleRunner.run(queues: options.queues, on: c) }
                )
                guard let ran else { continue }
                for (schedule, reason) in ran.unreadable where unreadableSchedules.insert(schedule).inserted {
                    log.error(
                        "a schedule this worker cannot read is left to others",
                        metadata: ["schedule": "\(schedule)", "error": "\(reason)"]
                    )
                }
                for (schedule, error) in ran.failed {
                    log.error(
                        "a schedule's jobs could not be queued",
                        metadata: ["schedule": "\(schedule)", "error": "\(error)"]
                    )
                }
                if ran.queued > 0 {
                    log.debug("queued periodic jobs", metadata: ["jobs": "\(ran.queued)"])
                    // SQLite: the other workers on this machine start them at once.
                    Doorbell.ring(doorbells, queues: ran.queues.sorted())
                }
                state.schedulesRan(
                    queued: ran.queued,
                    nextDueIn: ran.nextDue.map { .milliseconds($0 - QueueSchema.nowMs()) },
                    now: clock.now
                )

            case .settle(let records, let n, let skipping, let limited):
                guard
                    let jobs = database(
                        "settle",
                        { c in
                            try statements.settle(records, claiming: n, skipping: skipping, limited: limited, on: c)
                        }
                    )
                else { continue }
                let released = statements.released.take()
                if !released.isEmpty { Doorbell.ring(doorbells, queues: released) }
                state.settled(records, claimed: jobs, claimWanted: n, now: clock.now)
                telemetry.recorded(records)
                telemetry.claimed.increment(by: jobs.count)
                let nowMs = QueueSchema.nowMs()
                for j in jobs { telemetry.lag.recordNanoseconds(max(0, nowMs - j.runAt) * 1_000_000) }
                for r in records {
                    switch r.resolution {
                    case .handBackUnknownKind where r.firstOfKind:
                        log.warning(
                            "a job type this program does not define: its jobs are left to workers that define it",
                            metadata: ["job": "\(r.id)", "type": "\(readableTypeName(mangled: r.kind))"]
                        )
                    case .discard(let error):
                        log.error(
                            "job discarded after its last attempt",
                            metadata: ["job": "\(r.id)", "error": "\(error)"]
                        )
                    default: break
                    }
                }

            case .checkDrained(let skipping):
                guard let left = database("count", { c in try statements.jobsLeft(skipping: skipping, on: c) }) else {
                    continue
                }
                if state.drained(left: left, now: clock.now) {
                    log.info("the queues are drained: the worker stops", metadata: ["worker": "\(name)"])
                }

            case .heartbeat:
                guard
                    let (renewed, cancelRequested, waitedFor) = database(
                        "heartbeat",
                        { c in try statements.heartbeat(on: c) }
                    )
                else { continue }
                let lost = state.heartbeat(
                    renewed: renewed,
                    cancelRequested: cancelRequested,
                    waitedFor: waitedFor,
                    now: clock.now
                )
                if !lost.isEmpty {
                    telemetry.leasesLost.increment(by: lost.count)
                    log.warning(
                        "jobs whose leases were lost (another worker took them) are let go",
                        metadata: ["jobs": "\(lost)"]
                    )
                }

            case .rescue:
                guard let (n, requeued) = database("rescue", { c in try statements.rescue(on: c) }) else { continue }
                state.databaseSucceeded(now: clock.now)
                if !requeued.isEmpty { Doorbell.ring(doorbells, queues: requeued) }
                if n > 0 {
                    telemetry.rescued.increment(by: n)
                    log.warning("rescued jobs whose lease expired", metadata: ["count": "\(n)"])
                }

            case .clean:
                guard database("clean", { c in try statements.clean(on: c) }) != nil else { continue }
                state.databaseSucceeded(now: clock.now)

            case .announce:
                let presence = WorkerPresence(
                    host: host,
                    pid: getpid(),
                    startedAt: startedAt,
                    heartbeatMs: config.heartbeatEvery.wholeMilliseconds,
                    held: state.held.count,
                    concurrency: config.concurrency,
                    finished: state.finished,
                    stopping: state.stop != nil,
                    processes: pool.currentProgress.workers.map {
                        QueueWorkerRecord.Process(
                            pid: $0.pid,
                            currentItemAge: $0.currentItemAge,
                            peakMemory: $0.peakMemory,
                            tasks: $0.tasks
                        )
                    }
                )
                let written: Void? = database(
                    "announce",
                    statementFailed: { error in
                        // The row is the console's: the jobs do not wait for it.
                        log.warning("cannot announce the worker in mp_workers", metadata: ["error": "\(error)"])
                        state.announceFailed(now: clock.now)
                    },
                    { c in try statements.announce(presence, on: c) }
                )
                if written != nil { state.announced(now: clock.now) }

            case .retire:
                // Best effort: a row left behind shows the worker as lost, and is deleted after a day.
                _ = database("retire", { c in try statements.retire(on: c) })

            case .release(let ids):
                guard database("release", { c in try statements.handBack(ids, on: c) }) != nil else { continue }
                state.databaseSucceeded(now: clock.now)
                Doorbell.ring(doorbells, queues: options.queues)
                telemetry.handedBack.increment(by: ids.count)
                log.warning(
                    "jobs held in the database but unknown to this worker (a claim whose answer was lost) are handed back",
                    metadata: ["jobs": "\(ids)"]
                )

            case .handBack(let ids, let tokens):
                for t in tokens { tasks[t]?() }
                if database("hand back", { c in try statements.handBack(ids, on: c) }) != nil {
                    Doorbell.ring(doorbells, queues: options.queues)
                    telemetry.handedBack.increment(by: ids.count)
                    log.info("handed back jobs", metadata: ["count": "\(ids.count)"])
                }

            case .wait(let until):
                telemetry.running.record(state.inPool)
                telemetry.buffer.record(state.buffer)
                let wait = until - clock.now
                if wait > .zero, let c = try? completions.get(timeout: wait) { accept(c) }

            case .exit:
                log.info("queue worker stops", metadata: ["worker": "\(name)", "finished": "\(state.finished)"])
                return state.finished

            case .giveUp(let tokens):
                for t in tokens { tasks[t]?() }
                log.error("the database is unreachable", metadata: ["error": "\(lastError.map { "\($0)" } ?? "?")"])
                throw lastError ?? SQLError(.connection, "the database is unreachable")
            }
        }
    }

    /// Opens the connection that hears of queued jobs (PostgreSQL's `LISTEN`), or the doorbell that does
    /// (SQLite); nil when it cannot (the worker polls meanwhile).
    private func listen() -> (any WakeUps)? {
        do {
            if url.kind == .sqlite {
                let completions = self.completions
                let bell = try DoorbellListener(url, queues: options.queues) { try? completions.putNowait(.wake) }
                if bell != nil { options.logger.debug("listening for queued jobs (doorbell)") }
                return bell
            }
            guard let l = try Database.connect(url, timeout: .seconds(5)) as? any SQLNotificationListening else {
                return nil
            }
            let queues = Set(options.queues)
            let completions = self.completions
            try l.listen(QueueSchema.channel) { queue in
                if queues.contains(queue) { try? completions.putNowait(.wake) }
            }
            options.logger.debug("listening for queued jobs")
            return ListeningConnection(connection: l)
        } catch {
            options.logger.warning("cannot listen for queued jobs; polling", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// Queues a submission in the pool; returns its token and how to cancel it.
    private func submit(
        _ s: QueueWorkerState.Submission
    ) throws -> (QueueWorkerState.Token, @Sendable () -> Void) {
        let completions = self.completions
        switch s {
        case .one(let token, let j):
            let (id, attempt) = (j.id, j.attempt)
            // A job queued in a trace runs in a span continuing it; its pool task is that span's child.
            let span = JobTracing.run(j, worker: name)
            let submit = { [pool] in
                try pool.applyAsync(
                    StoredJob(kind: j.kind, payload: j.payload, inputs: j.inputs),
                    options: TaskOptions(timeout: j.timeoutMs.map { .milliseconds($0) }),
                    callback: {
                        JobTracing.end(span)
                        try? completions.putNowait(
                            .completed(Completion(id: id, attempt: attempt, outcome: .success($0)))
                        )
                    },
                    errorCallback: {
                        JobTracing.end(span, failure: $0)
                        try? completions.putNowait(
                            .completed(Completion(id: id, attempt: attempt, outcome: .failure($0)))
                        )
                    }
                )
            }
            let task: PoolTask<[UInt8]>
            do {
                task =
                    try span.map { s in try InstrumentationContext.$current.withValue(s.context) { try submit() } }
                    ?? submit()
            } catch {
                JobTracing.end(span, failure: error)
                throw error
            }
            return (token, { task.cancel() })
        case .chunk(let token, let chunk):
            let keys = chunk.map { (id: $0.id, attempt: $0.attempt) }
            let task = try pool.applyAsync(
                StoredJobChunk(jobs: chunk.map { StoredJob(kind: $0.kind, payload: $0.payload, inputs: $0.inputs) }),
                callback: { outcomes in
                    for (k, o) in zip(keys, outcomes) {
                        try? completions.putNowait(
                            .completed(Completion(id: k.id, attempt: k.attempt, outcome: o.result))
                        )
                    }
                },
                errorCallback: { _ in
                    for k in keys {
                        let failed = Completion(
                            id: k.id,
                            attempt: k.attempt,
                            outcome: .failure(QueueWorkerState.ChunkFailed())
                        )
                        try? completions.putNowait(.completed(failed))
                    }
                }
            )
            return (token, { task.cancel() })
        }
    }

    // MARK: signals

    private static let watched = TrackedMutex<(workers: [QueueWorker], signals: Int, installed: Bool)>(
        ([], 0, false)
    )

    /// SIGTERM or SIGINT (Ctrl-C) stops `worker`: the first with `.finish`, the second with `.handBack`.
    /// Create its pool with `ProcessPoolOptions(interrupt: .ignore)` so that Ctrl-C does not tear the
    /// pool down first. The signals reach the worker through the reactor thread (an eventfd the handler
    /// writes to), as the pools' Ctrl-C does; no thread polls.
    public static func stopOnSignals(_ worker: QueueWorker) {
        let install = watched.withLock { w -> Bool in
            w.workers.append(worker)
            defer { w.installed = true }
            return !w.installed
        }
        guard install else { return }
        let handler: @Sendable (Int) -> Void = { n in
            let (workers, count) = watched.withLock { w in
                w.signals += n
                return (w.workers, w.signals)
            }
            for w in workers { w.stop(count >= 2 ? .handBack : .finish) }
        }
        do {
            try SignalForwarding.forward(SIGTERM, handler)
            try SignalForwarding.forward(SIGINT, handler)
        } catch {
            worker.options.logger.error("cannot watch SIGTERM and SIGINT", metadata: ["error": "\(error)"])
            watched.withLock { $0.installed = false }
        }
    }
}
