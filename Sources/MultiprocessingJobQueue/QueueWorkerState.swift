import Multiprocessing
import Threading

/// The queue worker's decisions as one value: events go in (jobs claimed, a job's outcome from the pool, a
/// heartbeat's answer, a database call that failed, a stop request) and ``next(now:)`` says what to do
/// next as a ``Step`` (record results and claim, submit jobs to the pool, renew leases, rescue, clean,
/// hand jobs back, wait until a moment, exit). It makes no database call, reads no clock and touches no
/// pool: `QueueWorker.run()` performs the steps and reports back. `QueueWorkerStateTests` drive it with a
/// fake clock and no database.
///
/// The decisions that matter for a durable queue live here: which outcome a job's attempt gets (completed,
/// retried after a backoff, discarded, cancelled, handed back uncounted), when results are recorded, how
/// many jobs are held, when leases are renewed and what happens when one is lost, and how a stop ends.
/// Modelled on the pool's `PoolState`.
struct QueueWorkerState: Sendable {
    typealias Instant = ContinuousClock.Instant
    /// One pool task: a job's own, or a chunk's shared by several jobs.
    typealias Token = Int

    /// The worker's settings, from ``QueueWorkerOptions`` and the pool.
    struct Config: Sendable {
        /// Jobs run at once.
        var concurrency: Int
        /// The most jobs held beyond ``concurrency``.
        var maxBuffer: Int
        /// How much work, in time, the local buffer holds.
        var bufferedWork: Duration
        var claimBatch: Int
        var lease: Duration
        var pollInterval: Duration
        var shutdownGrace: Duration
        var maxResultBytes: Int
        var exitWhenDrained: Bool
        /// Open a connection that hears of queued jobs (the option is on and the database can).
        var listens: Bool
        /// A tracer is active where the worker runs: jobs queued in a trace run one per pool task, each in
        /// its own span. Without one, their trace contexts are ignored and they are chunked as any job.
        var traces = false
        /// Announce the worker in `mp_workers` every ``heartbeatEvery`` (and delete its row when it stops):
        /// the console's list of workers and their pools.
        var announces = false
        /// Read which of the worker's queues have a limit (`mp_queue_limits`) before claiming, and again
        /// every ``limitsEvery``: claims of those go through their limits.
        var readsLimits = false
        /// Queue the jobs of the periodic schedules of the worker's queues as they fall due
        /// (``QueueWorkerOptions/schedules``).
        var runsSchedules = false
        /// Results wait at most this long to be recorded while jobs keep the worker busy (they are then
        /// recorded with the next claim, or once the pool is idle).
        var ackDelay: Duration = .milliseconds(10)
        var cleanEvery: Duration = .seconds(60)
        var listenRetry: Duration = .seconds(1)
        /// How often expired leases are looked for.
        var rescueEvery: Duration { max(.milliseconds(200), lease / 4) }
        var heartbeatEvery: Duration { lease / 3 }
        /// How often the limited queues are read again: a limit set meanwhile keeps the queue's jobs out of
        /// the ordinary claim at once, and lets them through its own claim within this time.
        var limitsEvery: Duration { max(pollInterval, .seconds(1)) }
        /// How often the schedules are read when none falls due sooner: a schedule declared or changed
        /// meanwhile is seen within this time.
        var schedulesEvery: Duration { max(pollInterval, .seconds(1)) }

        init(_ options: QueueWorkerOptions, workers: Int, canListen: Bool) {
            concurrency = max(1, options.concurrency ?? workers)
            maxBuffer = max(0, options.localBuffer)
            bufferedWork = options.bufferedWork
            claimBatch = max(1, options.claimBatch)
            lease = options.lease
            pollInterval = options.pollInterval
            shutdownGrace = options.shutdownGrace
            maxResultBytes = options.maxResultBytes
            exitWhenDrained = options.exitWhenDrained
            listens = options.notifications && canListen
        }
    }

    /// A claimed job, as the claim returned it.
    struct Job: Sendable, Equatable {
        let id: Int64
        let kind: String
        let payload: [UInt8]
        let attempt: Int
        let maxAttempts: Int
        let backoffMs: Int64
        let timeoutMs: Int64?
        /// When it was due (ms since the epoch): its lag is measured from it.
        let runAt: Int64
        /// The trace context it was queued in (`PoolTracing.encode`d headers), or `nil`.
        var trace: [UInt8]? = nil
        /// The outcomes of the jobs it waited for (an encoded ``JobOutcomes``), or `nil`.
        var inputs: [UInt8]? = nil
        /// Other jobs wait for it (when it was claimed).
        var hasDependents = false
    }

    /// What the pool reported for one job's attempt.
    struct Completion: Sendable {
        let id: Int64
        let attempt: Int
        let outcome: Result<[UInt8], any Error>
    }

    /// A chunk's pool task failed as a whole (its worker process died, or it was cancelled): its jobs are
    /// run again one by one, under the same attempt, so that only a job that crashes is charged for it.
    struct ChunkFailed: Error {}

    /// How a finished attempt is recorded.
    enum Resolution: Sendable, Equatable {
        /// Completed with this result.
        case complete([UInt8])
        /// Its cancellation was asked for and it failed (a job that finished anyway keeps its result).
        case cancelled
        /// Its type is not in this program: back to the queue with the attempt not counted, for workers
        /// that define it.
        case handBackUnknownKind
        /// Its pool was terminated under it (not the job's failure: the program is stopping, as when the
        /// worker's service group is cancelled): back to the queue with the attempt not counted.
        case handBack
        /// Failed; runs again after `afterMs` (exponential backoff with ±25 % jitter).
        case retry(afterMs: Int64, error: String)
        /// Failed its last attempt, or with a final error: kept with its error history.
        case discard(error: String)
    }

    /// A finished attempt waiting to be recorded.
    struct Record: Sendable, Equatable {
        let id: Int64
        let attempt: Int
        let kind: String
        let resolution: Resolution
        /// How long it held a pool worker (for the duration metric).
        let ran: Duration
        /// The first job of an unknown type seen by this worker (logged once per type).
        let firstOfKind: Bool
        /// Other jobs waited for it when it was claimed: its end releases them, in its own transaction.
        var releases = false
    }

    /// The limited queues a claim takes from first, and how many of their jobs at most: the free pool
    /// workers (not the local buffer), so that a limited job claimed starts at once and the rate its
    /// limit counts at claims is the rate at which its jobs start.
    struct LimitedClaim: Sendable, Equatable {
        var queues: [String]
        var room: Int
        static let none = LimitedClaim(queues: [], room: 0)
    }

    /// Jobs for the pool, alone or as one task.
    enum Submission: Sendable, Equatable {
        case one(Token, Job)
        case chunk(Token, [Job])
    }

    enum Step: Sendable, Equatable {
        /// Open the connection that hears of queued jobs; report ``listening(_:now:)``.
        case listen
        /// Queue these in the pool; report ``refused(now:)`` if it refuses one.
        case submit([Submission])
        /// Cancel these pool tasks.
        case cancel([Token])
        /// Record `records` and claim up to `claim` due jobs (none when 0) of types not in `skipping`, in
        /// one transaction, then from the `limited` queues as their limits allow; report
        /// ``settled(_:claimed:claimWanted:now:)`` or ``databaseFailed(now:)``.
        case settle([Record], claim: Int, skipping: [String], limited: LimitedClaim = .none)
        /// Read which of the worker's queues have a limit; report ``limitsRead(_:now:)`` or
        /// ``databaseFailed(now:)``.
        case readLimits
        /// Queue the jobs of the schedules due; report ``schedulesRan(queued:nextDueIn:now:)``,
        /// ``schedulesFailed(now:)`` (a statement failed: claims do not wait for the schedules) or
        /// ``databaseFailed(now:)``.
        case runSchedules
        /// Count the jobs left in the queues (types in `skipping` left out); report ``drained(left:now:)``.
        case checkDrained(skipping: [String])
        /// Renew the leases of the jobs held; report ``heartbeat(renewed:cancelRequested:now:)``.
        case heartbeat
        /// Return jobs whose lease expired (any worker's) to the queue; report ``databaseSucceeded(now:)``.
        case rescue
        /// Delete finished jobs past their retention.
        case clean
        /// Write the worker's row in `mp_workers` (who it is, what it holds, its pool's processes); report
        /// ``announced(now:)``, ``announceFailed(now:)`` (the statement failed: the row is the console's, the
        /// jobs wait for nothing), or ``databaseFailed(now:)`` (the connection failed).
        case announce
        /// Delete the worker's row (it stops); then exit, whatever the outcome.
        case retire
        /// Return these jobs to the queue uncounted after cancelling these tasks; then exit.
        case handBack([Int64], cancelling: [Token])
        /// Return these jobs to the queue uncounted: the database says this worker holds them, but it never
        /// heard of them (a claim whose answer was lost). Report ``databaseSucceeded(now:)`` or
        /// ``databaseFailed(now:)``.
        case release([Int64])
        /// Wait for a completion or a wake-up until this moment.
        case wait(until: Instant)
        /// Return from `run()`.
        case exit
        /// The database was unreachable for longer than a lease: the jobs held are other workers' now.
        /// Cancel these tasks and throw.
        case giveUp(cancelling: [Token])
    }

    struct Held: Sendable {
        var job: Job
        var token: Token
        var started: Instant
        var cancelRequested = false
        /// Finished, its record waiting in `pending`.
        var done = false
    }

    let config: Config
    private(set) var held: [Int64: Held] = [:]
    /// Finished attempts not yet recorded, oldest first.
    private(set) var pending: [Record] = []
    private var oldestPending: Instant?
    private var toSubmit: [Submission] = []
    private var toCancel: [Token] = []
    /// Jobs this worker holds in the database but not here: to be handed back.
    private var toRelease: Set<Int64> = []
    private var nextToken: Token = 0
    /// Held jobs still in the pool, by task.
    private var tokenJobs: [Token: Int] = [:]
    private var retiredTokens: [Token] = []
    /// Tasks of jobs let go (their lease was lost), released once their cancellation is asked for.
    private var releaseAfterCancel: [Token] = []
    /// Job types this program does not define: no longer claimed by this worker.
    private(set) var unknownKinds: Set<String> = []

    private(set) var stop: QueueWorker.StopMode?
    private var stoppingSince: Instant?
    /// The last database call failed while stopping: at the end of the grace, hand back without trying to
    /// record again (reset by any success).
    private var stopFlushFailed = false
    private var exited = false
    /// The worker's row may exist (an announcement was asked for: its answer may have been lost after the
    /// row was written), and it was not yet deleted.
    private var isAnnounced = false
    private var retired = false
    private var nextAnnounce: Instant
    /// An announcement was asked for and not yet reported: a failure retries it after the poll interval,
    /// not a heartbeat later.
    private var announcing = false
    /// No claim made yet: the start-up maintenance comes first.
    private var startingUp = true
    private var gaveUp = false

    private var nextClaimAt: Instant
    /// The worker's queues that have a limit, as last read; read again from this moment.
    private var limited: [String] = []
    private var nextLimitsRead: Instant
    /// When the schedules are looked at next: the earliest next occurrence, or ``Config/schedulesEvery``.
    private var nextSchedules: Instant
    /// The last claim found fewer jobs than it asked for: the queue was empty then.
    private var queueSeenEmpty = false
    private var lastClaimFound: Int?
    private var nextHeartbeat: Instant
    private var nextRescue: Instant
    private var nextClean: Instant
    private var nextDrainCheck: Instant
    private var nextListen: Instant
    private(set) var listening = false
    /// No database call before this (a failed one waits a poll interval before the next).
    private var databaseRetryAt: Instant
    private var lastDatabaseSuccess: Instant

    /// Jobs held beyond ``Config/concurrency``: follows the rate at which jobs finish.
    private(set) var buffer: Int
    private var rate = 0.0
    private var rateSince: Instant
    private var rateCount = 0
    private var jitter: SplitMix
    private(set) var finished = 0

    init(_ config: Config, now: Instant, seed: UInt64 = .random(in: 0...UInt64.max)) {
        self.config = config
        buffer = min(config.maxBuffer, 4 * config.concurrency)
        nextClaimAt = now
        nextLimitsRead = now
        nextSchedules = now
        nextHeartbeat = now + config.heartbeatEvery
        nextAnnounce = now
        nextRescue = now
        nextClean = now
        nextDrainCheck = now
        nextListen = now
        databaseRetryAt = now
        lastDatabaseSuccess = now
        rateSince = now
        jitter = SplitMix(seed)
    }

    /// The most jobs held: those running and the local buffer.
    var limit: Int { config.concurrency + buffer }
    /// Jobs in the pool (held and not finished).
    var inPool: Int { held.count - pending.count }

    // MARK: events

    /// ``QueueWorker/stop(_:)`` was called (or a signal came). Returns true when the worker starts stopping
    /// now (for the log).
    mutating func requestStop(_ mode: QueueWorker.StopMode, now: Instant) -> Bool {
        guard stop != .handBack, stop != mode else { return false }
        stop = mode
        nextAnnounce = now  // the row says "stopping" at once
        if stoppingSince == nil {
            stoppingSince = now
            return true
        }
        return false
    }

    /// Something woke the worker (a notification that jobs were queued): claim now.
    mutating func woken(now: Instant) {
        queueSeenEmpty = false
        nextClaimAt = now
    }

    /// The pool reported a job's outcome.
    mutating func completed(_ c: Completion, now: Instant) {
        // Not held (its lease was lost and it was let go), or an older attempt's.
        guard var h = held[c.id], !h.done, h.job.attempt == c.attempt else { return }
        if case .failure(let e) = c.outcome, e is ChunkFailed, !h.cancelRequested {
            release(h.token)
            h.token = makeToken()
            use(h.token)
            h.started = now
            held[c.id] = h
            toSubmit.append(.one(h.token, h.job))
            return
        }
        h.done = true
        release(h.token)
        held[c.id] = h
        pending.append(record(c, h, now: now))
        if oldestPending == nil { oldestPending = now }
        // A pool worker is free: claim now, unless the queue was empty at the last look (a notification
        // or the poll finds new jobs).
        if !queueSeenEmpty { nextClaimAt = min(nextClaimAt, now) }
    }

    /// The outcome `c` of the held job `h`, as it is to be recorded.
    private mutating func record(_ c: Completion, _ h: Held, now: Instant) -> Record {
        var outcome = c.outcome
        if case .success(let bytes) = outcome, bytes.count > config.maxResultBytes {
            outcome = .failure(
                JobQueueError(
                    .resultTooLarge,
                    "the result has \(bytes.count) bytes; the limit is \(config.maxResultBytes)"
                )
            )
        }
        var firstOfKind = false
        let resolution: Resolution
        switch outcome {
        case .success(let bytes):
            resolution = .complete(bytes)
        case .failure where h.cancelRequested:
            resolution = .cancelled
        case .failure(let error as PoolError) where error.code == .terminated:
            resolution = .handBack
        case .failure(let error as JobQueueError) where error.code == .unknownJob:
            firstOfKind = unknownKinds.insert(h.job.kind).inserted
            resolution = .handBackUnknownKind
        case .failure(let error):
            let attempt = h.job.attempt
            if attempt < h.job.maxAttempts && (error as? JobQueueError)?.code.isFinal != true {
                let base = Double(h.job.backoffMs) * pow2(attempt - 1)
                let wait = Int64(min(base, 3_600_000) * (0.75 + 0.5 * jitter.unit()))
                resolution = .retry(afterMs: wait, error: Self.describe(error))
            } else {
                resolution = .discard(error: Self.describe(error))
            }
        }
        return Record(
            id: c.id,
            attempt: c.attempt,
            kind: h.job.kind,
            resolution: resolution,
            ran: now - h.started,
            firstOfKind: firstOfKind,
            releases: h.job.hasDependents
        )
    }

    /// A settle step's transaction committed: `records` (the pending ones) are recorded and `claimed` are
    /// held now.
    mutating func settled(_ records: [Record], claimed: [Job], claimWanted: Int, now: Instant) {
        succeeded(now: now)
        for r in records { held[r.id] = nil }
        let recorded = Set(records.map(\.id))
        pending.removeAll { recorded.contains($0.id) }
        if pending.isEmpty { oldestPending = nil }
        finished += records.count
        measure(records.count, now: now)
        if claimWanted > 0 {
            lastClaimFound = claimed.count
            // Fewer than asked for: the queue is empty; look again after the poll interval (or a
            // notification), not at every job that finishes.
            queueSeenEmpty = claimed.count < claimWanted
            if queueSeenEmpty { nextClaimAt = now + config.pollInterval }
        }
        dispatch(claimed, now: now)
    }

    /// Plans the pool tasks for claimed jobs: in chunks while jobs are short (the buffer is deep), so that
    /// a job costs a fraction of a message; alone when they are long, have a timeout of their own, or were
    /// queued in a trace.
    private mutating func dispatch(_ jobs: [Job], now: Instant) {
        guard !jobs.isEmpty else { return }
        let size = max(1, min(32, buffer / (4 * config.concurrency), jobs.count / config.concurrency))
        var chunk: [Job] = []
        func flush(_ state: inout QueueWorkerState) {
            guard !chunk.isEmpty else { return }
            let token = state.makeToken()
            state.toSubmit.append(chunk.count == 1 ? .one(token, chunk[0]) : .chunk(token, chunk))
            for j in chunk { state.held[j.id] = Held(job: j, token: token, started: now) }
            state.use(token, jobs: chunk.count)
            chunk = []
        }
        for j in jobs {
            // Alone also when traced: a pool task carries one trace context, and each job has its own.
            if size == 1 || j.timeoutMs != nil || (config.traces && j.trace != nil) {
                let token = makeToken()
                toSubmit.append(.one(token, j))
                held[j.id] = Held(job: j, token: token, started: now)
                use(token)
                continue
            }
            chunk.append(j)
            if chunk.count == size { flush(&self) }
        }
        flush(&self)
    }

    /// The pool refused a submission (closed or broken): stop, handing back everything held.
    mutating func refused(now: Instant) {
        stop = .handBack
        if stoppingSince == nil { stoppingSince = now }
    }

    /// The notification connection opened (true) or could not be opened (false, retried later); or it
    /// closed (false).
    mutating func listening(_ open: Bool, now: Instant) {
        listening = open
    }

    /// The worker's queues that have a limit were read.
    mutating func limitsRead(_ queues: [String], now: Instant) {
        succeeded(now: now)
        limited = queues
    }

    /// A turn at the schedules queued `queued` jobs; the earliest next occurrence is `nextDueIn` from now
    /// (nil: none).
    mutating func schedulesRan(queued: Int, nextDueIn: Duration?, now: Instant) {
        succeeded(now: now)
        // Due already (a catch-up capped at its turn's limit, or clocks that disagree): after a poll
        // interval, so that heartbeats, results and claims go on between turns.
        let due = nextDueIn ?? config.schedulesEvery
        nextSchedules = now + (due <= .zero ? config.pollInterval : min(config.schedulesEvery, due))
        if queued > 0 { woken(now: now) }
    }

    /// A turn at the schedules failed on a working connection: tried again ``Config/schedulesEvery`` later.
    mutating func schedulesFailed(now: Instant) {
        nextSchedules = now + config.schedulesEvery
    }

    /// The worker's row was written.
    mutating func announced(now: Instant) {
        succeeded(now: now)
        announcing = false
    }

    /// The announcement's statement failed (not the connection: the table is missing, or the worker's role
    /// may not write it): tried again a heartbeat later. Claims, results and leases are not held back for
    /// it, as they are after ``databaseFailed(now:)``.
    mutating func announceFailed(now: Instant) {
        announcing = false
        nextAnnounce = now + config.heartbeatEvery
    }

    /// A database call other than a settle succeeded.
    mutating func databaseSucceeded(now: Instant) {
        succeeded(now: now)
    }

    private mutating func succeeded(now: Instant) {
        lastDatabaseSuccess = now
        stopFlushFailed = false
    }

    /// A database call failed. Results stay pending (their leases hold meanwhile) and are recorded on a
    /// later turn, a poll interval from now at the earliest; after a lease without any success, the worker
    /// gives up (the jobs it holds are rescued by other workers once their leases expire).
    mutating func databaseFailed(now: Instant) {
        databaseRetryAt = now + config.pollInterval
        if announcing {
            announcing = false
            nextAnnounce = databaseRetryAt
        }
        if stop != nil { stopFlushFailed = true }
        if now - lastDatabaseSuccess > config.lease { gaveUp = true }
    }

    /// The queues' count of jobs left (``QueueWorkerOptions/exitWhenDrained``). Returns true when it stops
    /// the worker.
    mutating func drained(left: Int, now: Instant) -> Bool {
        succeeded(now: now)
        guard left == 0, stop == nil else { return false }
        return requestStop(.finish, now: now)
    }

    /// A heartbeat renewed the leases of `renewed` (those of held jobs still this worker's) and found
    /// cancellation asked for `cancelRequested`. A held job whose lease was not renewed was taken back
    /// (its lease expired while this worker could not renew it, and another worker rescued it): it is let
    /// go and its task cancelled, since its result could no longer be recorded. Returns those jobs.
    ///
    /// A job renewed but not held is one this worker claimed without hearing of it (the claim committed and
    /// its answer was lost with the connection): it goes back to the queue, uncounted (``Step/release(_:)``).
    /// Held jobs in `waitedFor` are ones that other jobs now wait for (queued after them while they ran):
    /// their ends are recorded with the releases (``Record/releases``).
    mutating func heartbeat(
        renewed: Set<Int64>,
        cancelRequested: Set<Int64>,
        waitedFor: Set<Int64> = [],
        now: Instant
    ) -> [Int64] {
        succeeded(now: now)
        let orphans = renewed.subtracting(held.keys)
        if !orphans.isEmpty { toRelease.formUnion(orphans) }
        var lost: [Int64] = []
        for (id, h) in held where !renewed.contains(id) {
            lost.append(id)
            // Its task is cancelled; the other jobs of its chunk come back as `ChunkFailed` and run again alone.
            if !h.done && !toCancel.contains(h.token) { toCancel.append(h.token) }
            if !h.done { releaseAfterCancel.append(h.token) }  // the task is kept until it is cancelled
            held[id] = nil
        }
        if !lost.isEmpty {
            let gone = Set(lost)
            pending.removeAll { gone.contains($0.id) }
            if pending.isEmpty { oldestPending = nil }
        }
        for id in waitedFor where held[id]?.job.hasDependents == false {
            held[id]!.job.hasDependents = true
            if let i = pending.firstIndex(where: { $0.id == id }) { pending[i].releases = true }
        }
        for id in cancelRequested.sorted() {
            guard var h = held[id], !h.cancelRequested, !h.done else { continue }
            h.cancelRequested = true
            held[id] = h
            toCancel.append(h.token)
        }
        return lost.sorted()
    }

    // MARK: the next step

    /// What the worker does next. Steps that are due come first; `.wait` when nothing is.
    mutating func next(now: Instant) -> Step {
        if exited { return exitStep() }
        if gaveUp {
            exited = true
            return .giveUp(cancelling: liveTokens())
        }
        if !toCancel.isEmpty {
            defer {
                toCancel = []
                for t in releaseAfterCancel { release(t) }
                releaseAfterCancel = []
            }
            return .cancel(toCancel)
        }
        let handingBack =
            stop == .handBack || (stop == .finish && stoppingSince.map { now - $0 >= config.shutdownGrace } == true)
        if !toRelease.isEmpty && now >= databaseRetryAt {
            defer { toRelease = [] }
            return .release(toRelease.sorted())
        }
        if !toSubmit.isEmpty && !handingBack {
            defer { toSubmit = [] }
            return .submit(toSubmit)
        }
        if config.listens, !listening, stop == nil, now >= nextListen {
            nextListen = now + config.listenRetry
            return .listen
        }
        let databaseReady = now >= databaseRetryAt
        // A worker that starts rescues expired leases and cleans old rows before it claims (and so before
        // any result of its own is recorded), then every `rescueEvery` and `cleanEvery`.
        if startingUp && databaseReady {
            if now >= nextRescue {
                nextRescue = now + config.rescueEvery
                return .rescue
            }
            startingUp = false
            if now >= nextClean {
                nextClean = now + config.cleanEvery
                return .clean
            }
        }
        // Periodic jobs due are queued before the claim that takes them.
        if config.runsSchedules && stop == nil && databaseReady && now >= nextSchedules {
            nextSchedules = now + config.schedulesEvery
            return .runSchedules
        }
        // Record and claim, in one round trip when both are due. Jobs finished but not yet recorded do not
        // count against the room: the pool is kept fed while their results wait.
        let want = claimWanted(now: now) && databaseReady ? min(config.claimBatch, limit - inPool) : 0
        if want > 0 && config.readsLimits && now >= nextLimitsRead {
            nextLimitsRead = now + config.limitsEvery
            return .readLimits
        }
        if want > 0 || flushDue(now: now) && databaseReady && !(handingBack && stopFlushFailed) {
            var claimLimited = LimitedClaim.none
            if want > 0 && !limited.isEmpty {
                claimLimited = LimitedClaim(queues: limited, room: max(0, config.concurrency - inPool))
                // The next claim starts at the next queue: none of them waits behind another for ever.
                limited.append(limited.removeFirst())
            }
            return .settle(pending, claim: want, skipping: unknownKinds.sorted(), limited: claimLimited)
        }
        if handingBack {
            exited = true
            toSubmit = []
            if held.isEmpty { return exitStep() }
            let ids = held.keys.sorted()
            let tokens = liveTokens()
            held = [:]
            pending = []
            return .handBack(ids, cancelling: tokens)
        }
        if stop == .finish && held.isEmpty {
            exited = true
            return exitStep()
        }
        if config.exitWhenDrained, stop == nil, held.isEmpty, lastClaimFound == 0, now >= nextDrainCheck,
            databaseReady
        {
            nextDrainCheck = now + config.pollInterval
            return .checkDrained(skipping: unknownKinds.sorted())
        }
        // Leases and cancel requests.
        if now >= nextHeartbeat {
            if held.isEmpty {
                nextHeartbeat = now + config.heartbeatEvery
            } else if databaseReady {
                nextHeartbeat = now + config.heartbeatEvery
                return .heartbeat
            }
        }
        // Who the worker is and what it holds, for the console.
        if config.announces && now >= nextAnnounce && databaseReady {
            nextAnnounce = now + config.heartbeatEvery
            announcing = true
            isAnnounced = true
            return .announce
        }
        // Maintenance any worker may do.
        if now >= nextRescue && databaseReady {
            nextRescue = now + config.rescueEvery
            return .rescue
        }
        if now >= nextClean && databaseReady {
            nextClean = now + config.cleanEvery
            return .clean
        }
        if held.isEmpty { measure(0, now: now) }  // an idle worker's rate decays
        return .wait(until: wakeAt(now: now))
    }

    /// A claim is due: not stopping, room in the pool (below the concurrency, or room for half a batch, so
    /// that claims come in batches), and not waiting for the poll after an empty claim.
    private func claimWanted(now: Instant) -> Bool {
        let room = limit - inPool
        return stop == nil && room > 0 && now >= nextClaimAt
            && (inPool < config.concurrency || room >= min(config.claimBatch, limit) / 2)
    }

    /// Pending results are due to be recorded: when stopping, when the pool is idle, when a batch has
    /// gathered, or when the oldest has waited ``Config/ackDelay``.
    private func flushDue(now: Instant) -> Bool {
        guard !pending.isEmpty else { return false }
        return stop != nil || inPool == 0 || pending.count >= config.claimBatch
            || oldestPending.map { now - $0 >= config.ackDelay } == true
    }

    /// The earliest moment something becomes due.
    private func wakeAt(now: Instant) -> Instant {
        // Every timer here leads to a database call: none before `databaseRetryAt`.
        var at = max(nextRescue, databaseRetryAt)
        func consider(_ t: Instant) { if t < at { at = t } }
        consider(max(nextClean, databaseRetryAt))
        if !held.isEmpty { consider(max(nextHeartbeat, databaseRetryAt)) }
        if config.announces { consider(max(nextAnnounce, databaseRetryAt)) }
        if config.runsSchedules && stop == nil { consider(max(nextSchedules, databaseRetryAt)) }
        let room = limit - inPool
        if stop == nil && room > 0 && (inPool < config.concurrency || room >= min(config.claimBatch, limit) / 2) {
            consider(max(nextClaimAt, databaseRetryAt))
        }
        if let oldestPending { consider(max(oldestPending + config.ackDelay, databaseRetryAt)) }
        if config.exitWhenDrained, stop == nil, held.isEmpty, lastClaimFound == 0 {
            consider(max(nextDrainCheck, databaseRetryAt))
        }
        if stop == .finish, let stoppingSince { consider(stoppingSince + config.shutdownGrace) }
        if config.listens, !listening, stop == nil { consider(nextListen) }
        return max(at, now)
    }

    /// The worker ends: its row, if it wrote one, is deleted first.
    private mutating func exitStep() -> Step {
        if isAnnounced && !retired {
            retired = true
            return .retire
        }
        return .exit
    }

    /// Tasks of held jobs still in the pool.
    private func liveTokens() -> [Token] {
        Array(Set(held.values.lazy.filter { !$0.done }.map(\.token))).sorted()
    }

    /// Whether a pool task is still needed (the worker forgets the others).
    /// Counts `jobs` more held jobs running in `token`'s task.
    private mutating func use(_ token: Token, jobs: Int = 1) { tokenJobs[token, default: 0] += jobs }

    /// One job of `token`'s task left the pool (finished, let go, or sent again in a task of its own).
    private mutating func release(_ token: Token) {
        guard let n = tokenJobs[token] else { return }
        if n > 1 {
            tokenJobs[token] = n - 1
        } else {
            tokenJobs[token] = nil
            retiredTokens.append(token)
        }
    }

    /// Tasks that no held job needs any more: the worker forgets them (their cancel handles).
    mutating func takeRetiredTokens() -> [Token] {
        defer { retiredTokens = [] }
        return retiredTokens
    }

    private mutating func makeToken() -> Token {
        defer { nextToken += 1 }
        return nextToken
    }

    /// Follows the rate at which jobs finish (smoothed over 100 ms steps) and sizes the local buffer to
    /// hold ``Config/bufferedWork`` of it: short jobs get a deep buffer, long ones almost none.
    private mutating func measure(_ finishedNow: Int, now: Instant) {
        rateCount += finishedNow
        let elapsed = now - rateSince
        guard elapsed >= .milliseconds(100) else { return }
        let current = Double(rateCount) / elapsed.seconds
        rate = rate == 0 ? current : 0.6 * rate + 0.4 * current
        rateSince = now
        rateCount = 0
        buffer = min(config.maxBuffer, max(0, Int((rate * config.bufferedWork.seconds).rounded(.up))))
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? PoolError { return e.message }
        return "\(error)"
    }
}

/// 2^n for the backoff (n ≥ 0, capped so that it stays finite).
private func pow2(_ n: Int) -> Double {
    Double(sign: .plus, exponent: min(max(n, 0), 1000), significand: 1)
}

/// The retry jitter's generator (SplitMix64): seeded, so tests see fixed backoffs.
struct SplitMix: Sendable {
    private var state: UInt64
    init(_ seed: UInt64) { state = seed }
    /// A double in [0, 1).
    mutating func unit() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(1 << 53)
    }
}
