import DequeModule

/// The pool's state and decisions as one value: events go in (work submitted, a reply read, a worker
/// started, exited or timed, a call cancelled, the pool closed) and come back as ``Action``s for the
/// caller to perform (send frames to a worker, signal it, write its shared page, fail an item, wake the
/// supervisor). It makes no system call, reads no clock and calls into no call: `PoolCore` holds it in a
/// `Mutex`, gathers the facts that need the system (the clock, a worker's shared page, its exit status),
/// and performs the actions once the lock is released. `PoolStateTests` drive it with a fake clock and
/// scripted workers, without processes.
///
/// Modelled on postgres-nio's `PoolStateMachine`: one value type, events as mutating methods, actions as
/// returned values.
struct PoolState: Sendable {
    typealias WorkerID = Int
    typealias Instant = PoolInstant

    enum Phase: Sendable {
        case running, closed, terminated
        case broken(PoolError)
    }

    /// One worker as the pool's logic sees it (its descriptors and process are `PoolCore`'s).
    struct Worker: Sendable {
        let id: WorkerID
        let pid: Int32
        let spawnedAt: Instant
        /// Units sent and not finished, oldest first.
        var inflight: [Unit] = []
        var knownFunctions: Set<UInt32> = []
        var dispatched = 0
        var retiring = false
        var shutdownSent = false
        var stop: StopReason?
        var killAt: Instant?
        var readyAt: Instant?
        var busy: Duration = .zero
        var idleSince: Instant?
        var idle: Duration = .zero
        var tasksDone = 0
        /// Sequence number of the next `send` action (the outbox restores their order).
        var nextSend: UInt64 = 0
        /// Task frames sent to it (its units' `seq`).
        var taskFrames = 0
        /// Its queued units were taken back while it ran a long item: it gets no more work until that
        /// item's unit ends.
        var stalled = false

        /// Neither retiring nor stopped.
        var takesWork: Bool { !retiring && stop == nil }
    }

    /// A frame for a worker, encoded by whoever performs the `send`.
    enum Outgoing: Sendable {
        case define(FunctionRef)
        case task(Unit)
        case shutdown
    }

    enum Action: Sendable {
        /// Append these frames to the worker's outbox. Sends to one worker are numbered: performed out
        /// of order by different threads, they still reach the worker in order.
        case send(WorkerID, seq: UInt64, [Outgoing])
        /// SIGTERM.
        case terminate(WorkerID)
        /// SIGKILL.
        case kill(WorkerID)
        /// Mark `unit` cancelled in the worker's shared page (ring position `ring`); if it is running,
        /// ask the worker to cancel it and wake the worker.
        case cancelUnit(WorkerID, unit: UInt64, ring: Int)
        /// Ask the worker to cancel item `index` of `unit` (a soft timeout) and wake it.
        case cancelItem(WorkerID, unit: UInt64, index: UInt64)
        /// Item `index` of `call` ends with `error`.
        case fail(CallCore, index: Int, any Error)
        case wakeSupervisor
        /// No worker is left and none is wanted: `join` returns.
        case allExited
    }

    /// A reply read from a worker.
    enum Reply: Sendable, Equatable {
        case output(unit: UInt64, start: Int, count: Int, busyNanos: UInt64)
        case failure(unit: UInt64, index: Int, busyNanos: UInt64)
    }

    /// What becomes of a reply's payload.
    enum Delivery: Sendable {
        /// Decode it as `count` results for items `index...` of `call`.
        case output(CallCore, index: Int, count: Int)
        /// Decode it as the error of item `index` of `call`; `softTimedOut`: the item was cancelled by its
        /// soft timeout (the cancellation is reported as a time-out).
        case failure(CallCore, index: Int, softTimedOut: Bool, attempts: Int)
    }

    /// What `PoolCore` reads about a worker that exited.
    struct ExitFacts: Sendable {
        var exitCode: Int32?
        var peakMemoryBytes: Int?
        /// The unit and item it was running (unit 0: none).
        var running: (unit: UInt64, index: UInt64) = (0, 0)
        /// The unit it started last.
        var lastStarted: UInt64 = 0
        /// It exited by itself after passing its memory limit.
        var retiredItself = false
        var stderrTail: [String] = []
        /// The worker's last crash report, whole, and what it says in one line.
        var crashReport: String?
        var crash: CrashSummary?
        /// A likely cause the message should name.
        var hint: String?
    }

    /// What `PoolCore` reads about a live worker for the supervisor.
    struct RunningFacts: Sendable {
        var unit: UInt64
        var index: UInt64
        /// Time since the running item started.
        var elapsed: Duration
    }

    /// The supervisor's round: what to do, how many workers to start, when to look again.
    struct Round: Sendable {
        var actions: [Action] = []
        var spawn = 0
        var wakeAt: Instant?
        /// The pool has stopped and every worker is gone: the supervisor ends.
        var finished = false
    }

    let size: Int
    let options: ProcessPoolOptions

    private(set) var phase = Phase.running
    private(set) var workers: [Worker] = []
    private(set) var pending = Deque<Unit>()
    private(set) var delayed: [(at: Instant, unit: Unit)] = []
    /// Workers being started (counted until `workerStarted` or `spawnFailed`).
    private(set) var spawning = 0
    private var nextSerial = 0
    private var nextUnit: UInt64 = 1
    private var nextFunction: UInt32 = 1
    private var functions: [FunctionKey: UInt32] = [:]
    private var deaths: [Instant] = []
    /// Workers that died unexpectedly (crashed, were killed from outside, broke the protocol).
    private(set) var unexpectedDeaths = 0
    private var cancelRing = 0
    /// Units taken back from workers stuck on a long item (``reclaim(_:startedThrough:now:)``).
    private(set) var reclaimed = 0
    /// Mean nanoseconds per item (exponentially weighted; 0 before any), for chunk sizes.
    private(set) var itemNanos: Double = 0
    /// Mean nanoseconds per unit, for how many units a worker holds.
    private var unitNanos: Double = 0
    private var done = 0
    private var failed = 0
    private var total = 0
    private var retried = 0
    private var started = 0
    private var firstSubmit: Instant?

    /// Running totals for metrics: the shell reports what changed since the last event.
    struct Tally: Equatable, Sendable {
        var submitted = 0
        var done = 0
        var failed = 0
        var retried = 0
        var unexpectedDeaths = 0
        var started = 0
        var queued = 0
        var reclaimed = 0
    }

    var tally: Tally {
        Tally(
            submitted: total,
            done: done,
            failed: failed,
            retried: retried,
            unexpectedDeaths: unexpectedDeaths,
            started: started,
            queued: pending.count + delayed.count,
            reclaimed: reclaimed
        )
    }

    /// The error that broke the pool, once it is broken.
    var brokenBy: PoolError? { if case .broken(let e) = phase { e } else { nil } }

    // Gathered during one event and handed back by `finish()`.
    private var now: Instant
    private var actions: [Action] = []
    private var sends: [(WorkerID, [Outgoing])] = []
    /// Units of a dead worker to send again; they go first in line, in order, once all are collected.
    private var requeued: [Unit] = []
    private var supervisorDue = false

    init(size: Int, options: ProcessPoolOptions, now: Instant) {
        self.size = size
        self.options = options
        self.now = now
    }

    // MARK: - workers

    /// A serial number for the next worker (its id and the `N` of its name `PoolWorker-N`); the worker
    /// counts as being started until ``workerStarted(_:pid:now:)`` or ``spawnFailed(_:now:)``.
    mutating func startingWorker() -> WorkerID {
        nextSerial += 1
        spawning += 1
        return nextSerial
    }

    /// A worker process is running (not ready yet).
    mutating func workerStarted(_ id: WorkerID, pid: Int32, now: Instant) -> [Action] {
        self.now = now
        spawning -= 1
        started += 1
        workers.append(Worker(id: id, pid: pid, spawnedAt: now))
        // Started while the pool was being terminated or broken: stop it like the others.
        switch phase {
        case .terminated, .broken: stopWorker(workers.count - 1, .terminate(terminalError), grace: .milliseconds(500))
        case .running, .closed: pump()
        }
        return finish()
    }

    /// A worker could not be started.
    mutating func spawnFailed(_ error: any Error, now: Instant) -> [Action] {
        self.now = now
        spawning -= 1
        let breaks: Bool
        (deaths, breaks) = PoolDecisions.death(at: now, recent: deaths, limit: options.deathLimit)
        if breaks, case .running = phase {
            breakPool(PoolError(.broken, "workers cannot be started: \(error)"))
        }
        return finish()
    }

    /// The worker said it is ready.
    mutating func ready(_ id: WorkerID, now: Instant) {
        guard let w = index(of: id) else { return }
        workers[w].readyAt = now
        if workers[w].inflight.isEmpty { workers[w].idleSince = now }
    }

    /// Whether the worker closing its channel is expected (it was told to shut down, stopped, or is gone).
    func expectsExit(_ id: WorkerID) -> Bool {
        guard let w = index(of: id) else { return true }
        return workers[w].shutdownSent || workers[w].stop != nil
    }

    /// The worker sent something the parent cannot accept: it is killed, and what it ran is charged.
    mutating func protocolViolation(_ id: WorkerID, _ error: any Error) -> [Action] {
        guard let w = index(of: id) else { return [] }
        if workers[w].stop == nil {
            let pid = workers[w].pid
            workers[w].stop = .protocolViolation(
                PoolError(.workerDied, "worker \(pid) broke the pool protocol: \(error)", pid: pid)
            )
        }
        actions.append(.kill(id))
        return finish()
    }

    // MARK: - submitting

    mutating func function(kind: PoolWire.FunctionKind, name: String, payload: [UInt8]) -> FunctionRef {
        let key = FunctionKey(kind: kind.rawValue, name: name, payload: payload)
        if let id = functions[key] { return FunctionRef(id: id, kind: kind, name: name, payload: payload) }
        let id = nextFunction
        nextFunction += 1
        functions[key] = id
        return FunctionRef(id: id, kind: kind, name: name, payload: payload)
    }

    mutating func makeUnitId() -> UInt64 {
        defer { nextUnit += 1 }
        return nextUnit
    }

    /// Queues units and dispatches what the workers can take; throws if the pool takes no more work.
    mutating func submit(_ units: [Unit], now: Instant) throws(PoolError) -> [Action] {
        self.now = now
        switch phase {
        case .running: break
        case .closed: throw PoolError(.closed, "the pool is closed")
        case .terminated: throw PoolError(.terminated, "the pool was terminated")
        case .broken(let e): throw e
        }
        if firstSubmit == nil { firstSubmit = now }
        for u in units {
            pending.append(u)
            total += u.count
        }
        pump()
        return finish()
    }

    /// Dispatches what the workers can take.
    mutating func dispatch(now: Instant) -> [Action] {
        self.now = now
        pump()
        return finish()
    }

    /// Assigns pending units to workers with room.
    private mutating func pump() {
        guard !pending.isEmpty else { return }
        // Each worker holds the unit it runs plus the next one, so it never waits for the parent (whose
        // reactor thread may wait milliseconds for a CPU while workers keep both cores busy: pulling
        // 2 ms units one at a time halved the CPU benchmark's speed-up). Tiny units are pipelined
        // deeper; units of 50 ms or more are pulled one at a time, so none waits behind a long one.
        let window = unitNanos >= 50_000_000 ? 1 : unitNanos > 100_000 || unitNanos == 0 ? 2 : 32
        while !pending.isEmpty {
            var best: Int?
            var least = window
            // By index: a `Worker` is costly to copy.
            for i in workers.indices where workers[i].takesWork && !workers[i].stalled {
                let n = workers[i].inflight.count
                if n < least {
                    best = i
                    least = n
                }
            }
            guard let b = best else { return }
            var unit = pending.removeFirst()
            if unit.callCancelled {
                settleRange(unit, unit.reported..<unit.count, CancellationError())
                continue
            }
            if unit.payload.count > PoolWire.maxBody {
                // A frame the worker would refuse: items go alone, and an item too large alone fails.
                if unit.count > 1 {
                    pending.prepend(contentsOf: singletons(unit, 0..<unit.count))
                } else {
                    settleItem(
                        unit,
                        0,
                        MultiprocessingError(
                            .messageTooLarge,
                            "the task's input is \(unit.payload.count) bytes encoded, over the pool's limit of \(PoolWire.maxBody) bytes per task"
                        )
                    )
                }
                continue
            }
            if !workers[b].knownFunctions.contains(unit.function.id) {
                workers[b].knownFunctions.insert(unit.function.id)
                queueSend(workers[b].id, .define(unit.function))
            }
            workers[b].taskFrames += 1
            unit.seq = workers[b].taskFrames
            queueSend(workers[b].id, .task(unit))
            if workers[b].inflight.isEmpty, let since = workers[b].idleSince {
                workers[b].idle += now - since
                workers[b].idleSince = nil
            }
            workers[b].inflight.append(unit)
            workers[b].dispatched += 1
            // A unit with a deadline: the supervisor must know it is out there, or it sleeps through it.
            if unit.call.options.timeout != nil || unit.call.options.softTimeout != nil { supervisorDue = true }
            if PoolDecisions.retires(dispatched: workers[b].dispatched, maxTasksPerChild: options.maxTasksPerChild) {
                workers[b].retiring = true
            }
        }
    }

    // MARK: - replies

    /// A reply from worker `id`: accounts for it and says where its payload goes (nil: nowhere, the unit
    /// was settled already). Throws if the reply contradicts what the worker was sent (the worker then
    /// broke the protocol).
    mutating func received(
        _ reply: Reply,
        from id: WorkerID,
        now: Instant
    ) throws(MultiprocessingError) -> (
        Delivery?, [Action]
    ) {
        self.now = now
        guard let w = index(of: id) else { return (nil, []) }
        let (unitId, start, count, busyNanos, isFailure): (UInt64, Int, Int, UInt64, Bool) =
            switch reply {
            case .output(let u, let s, let c, let b): (u, s, c, b, false)
            case .failure(let u, let i, let b): (u, i, 1, b, true)
            }
        workers[w].busy += .nanoseconds(Int64(clamping: busyNanos))
        // Not in flight: cancelled and settled already.
        guard let k = workers[w].inflight.firstIndex(where: { $0.id == unitId }) else { return (nil, []) }
        let (reported, total) = (workers[w].inflight[k].reported, workers[w].inflight[k].count)
        guard start == reported, count > 0, start + count <= total else {
            throw MultiprocessingError(
                .malformedMessage,
                "reply for items \(start)..<\(start + count) of a task at \(reported)/\(total)"
            )
        }
        workers[w].inflight[k].busyNanos &+= busyNanos
        workers[w].inflight[k].reported += count
        let unit = workers[w].inflight[k]
        var delivery: Delivery?  // nil: the item is retried
        if isFailure {
            let policy = unit.call.options.retry
            if policy.causes.contains(.error) && unit.attempt < policy.attempts && !unit.callCancelled {
                scheduleRetry(unit, index: start, crashed: false)
            } else {
                failed += 1
                done += 1
                delivery = .failure(
                    unit.call,
                    index: unit.base + start,
                    softTimedOut: unit.softIndex == start,
                    attempts: unit.attempt
                )
            }
        } else {
            done += count
            if busyNanos > 0 {
                let per = Double(busyNanos) / Double(count)
                itemNanos = itemNanos == 0 ? per : itemNanos * 0.8 + per * 0.2
            }
            delivery = .output(unit.call, index: unit.base + start, count: count)
        }
        if unit.reported == unit.count {
            workers[w].inflight.remove(at: k)
            workers[w].tasksDone += 1
            let took = Double(unit.busyNanos)
            unitNanos = unitNanos == 0 ? took : unitNanos * 0.8 + took * 0.2
            unitFinished(w)
        }
        return (delivery, finish())
    }

    /// The worker could not decode a chunk as a whole: its items go again one by one, so an item that
    /// cannot be decoded fails alone. A worker asks this only of a chunk of several items it has not
    /// answered: any other request would send the same unit round for ever, and breaks the protocol.
    mutating func resendAlone(
        _ unitId: UInt64,
        from id: WorkerID,
        now: Instant
    ) throws(MultiprocessingError)
        -> [Action]
    {
        self.now = now
        guard let w = index(of: id), let k = workers[w].inflight.firstIndex(where: { $0.id == unitId }) else {
            return []
        }
        let unit = workers[w].inflight[k]
        guard unit.reported == 0, unit.count > 1 else {
            throw MultiprocessingError(.malformedMessage, "a request to resend a unit of one item")
        }
        workers[w].inflight.remove(at: k)
        pending.prepend(contentsOf: singletons(unit, 0..<unit.count))
        unitFinished(w)
        return finish()
    }

    /// A unit finished on worker `w`: shut it down if it is retiring and idle. (The memory limit is the
    /// worker's own check, after each unit: a check here would lag behind the units it has queued.)
    private mutating func unitFinished(_ w: Int) {
        if workers[w].inflight.isEmpty {
            workers[w].stalled = false
            workers[w].idleSince = now
            if workers[w].retiring || isDrainedAndClosed { sendShutdown(w) }
        }
    }

    private var isDrainedAndClosed: Bool {
        if case .closed = phase, pending.isEmpty, delayed.isEmpty { return true }
        return false
    }

    private mutating func sendShutdown(_ w: Int) {
        guard !workers[w].shutdownSent else { return }
        workers[w].shutdownSent = true
        workers[w].retiring = true
        queueSend(workers[w].id, .shutdown)
    }

    // MARK: - deaths

    /// Worker `id` exited, and everything it wrote has been read. Its units' items that were answered
    /// stay answered; the item it was running fails or is retried; the rest goes again.
    /// - Returns: whether no worker is left nor wanted (`join` may return), and the actions.
    mutating func exited(_ id: WorkerID, _ facts: ExitFacts, now: Instant) -> (everyoneGone: Bool, [Action]) {
        self.now = now
        guard let w = index(of: id) else { return (false, []) }
        let slot = workers.remove(at: w)
        let code = facts.exitCode
        let clean = (slot.shutdownSent || slot.retiring || facts.retiredItself) && code == 0
        let unexpected = slot.stop == nil && !clean
        let what =
            code.map { $0 < 0 ? "was killed by signal \($0 * -1) (\(signalName(-$0)))" : "exited with code \($0)" }
            ?? "ended"
        // A crash leads with the runtime's own words and the program's frame, then how the worker ended.
        var message =
            if let reason = facts.crash?.reason {
                "worker \(slot.pid) crashed: \(reason)\(facts.crash?.frame.map { ", in \($0)" } ?? "") — it \(what)"
            } else {
                "worker \(slot.pid) \(what)"
            }
        if let hint = facts.hint { message += ". \(hint)" }
        let death = PoolError(
            .workerDied,
            message,
            pid: slot.pid,
            exitCode: code,
            stderrTail: facts.stderrTail,
            peakMemoryBytes: facts.peakMemoryBytes,
            crashReport: facts.crashReport
        )
        // A worker that died of its own accord or broke the protocol charges the unit it last started,
        // even outside a known item (between items, or sending its replies).
        let violation: Bool = if case .protocolViolation = slot.stop { true } else { false }
        let chargeable = !clean && (slot.stop == nil || violation)
        for unit in slot.inflight {
            handleLost(
                unit,
                running: facts.running,
                slot: slot,
                death: death,
                charge: chargeable && unit.id == facts.lastStarted
            )
        }
        pending.prepend(contentsOf: requeued)
        requeued = []
        if unexpected || violation {
            unexpectedDeaths += 1
            let breaks: Bool
            (deaths, breaks) = PoolDecisions.death(at: now, recent: deaths, limit: options.deathLimit)
            if breaks, case .running = phase {
                breakPool(
                    PoolError(
                        .broken,
                        "\(deaths.count) workers died within \(options.deathLimit.window); the last: \(death.message)",
                        pid: slot.pid,
                        exitCode: code,
                        stderrTail: facts.stderrTail,
                        peakMemoryBytes: facts.peakMemoryBytes,
                        crashReport: facts.crashReport
                    )
                )
            }
        }
        pump()
        let everyoneGone = workers.isEmpty && spawning == 0 && !wantsWorkers
        return (everyoneGone, finish())
    }

    /// A unit whose worker died: keep what was reported, fail or retry the item that was running, send
    /// the rest again.
    /// `charge`: the worker died on this unit (of its own accord or for a protocol violation) even if
    /// no item of it was running — between items, or sending its replies.
    private mutating func handleLost(
        _ unit: Unit,
        running: (unit: UInt64, index: UInt64),
        slot: Worker,
        death: PoolError,
        charge: Bool
    ) {
        let stop: PoolDecisions.Stop =
            switch slot.stop {
            case nil: .none
            case .timeout(let u)?: u == unit.id ? .timeout : .other
            case .softTimeout(let u)?: u == unit.id ? .softTimeout : .other
            case .cancelled(let u)?: u == unit.id ? .cancelled : .other
            case .terminate?: .terminate
            case .protocolViolation?: .protocolViolation
            }
        let loss = PoolDecisions.lost(
            reported: unit.reported,
            count: unit.count,
            attempt: unit.attempt,
            kills: unit.kills,
            runningIndex: running.unit == unit.id ? Int(running.index) : nil,
            stop: stop,
            charge: charge,
            policy: unit.call.options.retry,
            callCancelled: unit.callCancelled,
            deliversResults: deliversResults
        )
        for r in loss.requeue { requeue(unit, r.range, kills: r.kills) }
        guard let i = loss.item, let fate = loss.fate else { return }
        func error(_ code: PoolError.Code, _ message: String, pid: Int32? = death.pid) -> PoolError {
            PoolError(
                code,
                message,
                pid: pid,
                exitCode: death.exitCode,
                stderrTail: death.stderrTail,
                peakMemoryBytes: death.peakMemoryBytes,
                attempts: unit.attempt,
                crashReport: death.crashReport
            )
        }
        switch fate {
        case .retry(let crashed):
            scheduleRetry(unit, index: i, crashed: crashed)
        case .settleRest:
            switch slot.stop {
            case .terminate(let e)?: settleRange(unit, i..<unit.count, e)
            default: settleRange(unit, i..<unit.count, CancellationError())
            }
        case .fail(let failure):
            let e: PoolError
            switch failure {
            case .timedOut:
                let limit = unit.call.options.timeout.map { "\($0)" } ?? "?"
                e = error(
                    .timedOut,
                    "the task ran past its timeout of \(limit) in worker \(slot.pid), which was stopped",
                    pid: slot.pid
                )
            case .softTimedOut:
                e = error(
                    .timedOut,
                    "the task passed its soft timeout, ignored cancellation and worker \(slot.pid) was stopped",
                    pid: slot.pid
                )
            case .protocolViolation:
                let m: String = if case .protocolViolation(let v)? = slot.stop { v.message } else { death.message }
                e = error(.workerDied, m + " while running this task")
            case .crashed:
                e = error(.workerDied, death.message + " while running this task")
            case .killedTooMany(let kills):
                e = error(
                    .workerDied,
                    "the task killed \(kills) workers and is not retried again; the last: \(death.message)"
                )
            }
            settleItem(unit, i, e)
        }
    }

    // MARK: - supervision

    /// Workers whose running item has run far longer than items do (``PoolDecisions/overdue(itemNanos:)``)
    /// with units queued behind it: for each, the number of its last task frame. `PoolCore` fences those
    /// frames in the worker's slot and, if the worker had not started them, calls ``reclaim(_:startedThrough:now:)``.
    func overdue(running: [WorkerID: RunningFacts]) -> [(id: WorkerID, through: Int)] {
        let limit = PoolDecisions.overdue(itemNanos: itemNanos)
        var out: [(id: WorkerID, through: Int)] = []
        for w in workers.indices where workers[w].stop == nil && !workers[w].stalled && workers[w].inflight.count > 1 {
            guard let facts = running[workers[w].id], facts.unit != 0, facts.elapsed >= limit,
                let last = workers[w].inflight.map(\.seq).max()
            else { continue }
            out.append((workers[w].id, last))
        }
        return out
    }

    /// Worker `id` will not start its task frames after `started` (fenced): their units go back to the
    /// front of the queue for other workers, and `id` gets no more work until its running unit ends. Its
    /// replies for those units, which it never sends, would be ignored.
    mutating func reclaim(_ id: WorkerID, startedThrough started: Int, now: Instant) -> [Action] {
        self.now = now
        guard let w = index(of: id) else { return [] }
        let back = workers[w].inflight.filter { $0.seq > started }
        guard !back.isEmpty else { return [] }
        workers[w].inflight.removeAll { $0.seq > started }
        workers[w].stalled = true
        reclaimed += back.count
        pending.prepend(contentsOf: back)
        pump()
        return finish()
    }

    /// The supervisor's round at `now`, with what each live worker is running (`running[id]`; absent:
    /// nothing): timeouts, kills after grace periods, retries whose backoff passed, replacements.
    mutating func supervise(now: Instant, running: [WorkerID: RunningFacts]) -> Round {
        self.now = now
        var round = Round()
        func wakeAt(_ t: Instant) { if round.wakeAt == nil || t < round.wakeAt! { round.wakeAt = t } }
        for w in workers.indices {
            let id = workers[w].id
            if workers[w].stop != nil {
                if let k = workers[w].killAt {
                    if now >= k {
                        actions.append(.kill(id))
                        workers[w].killAt = nil
                    } else {
                        wakeAt(k)
                    }
                }
                continue
            }
            let facts = running[id]
            for u in workers[w].inflight where u.id != facts?.unit {
                if let at = PoolDecisions.lookAgainForQueued(now: now, options: u.call.options) { wakeAt(at) }
            }
            // Units queued behind a running item: look again when it would be overdue.
            if !workers[w].stalled, workers[w].inflight.count > 1, let f = facts, f.unit != 0 {
                let limit = PoolDecisions.overdue(itemNanos: itemNanos)
                if f.elapsed < limit { wakeAt(now + (limit - f.elapsed)) }
            }
            guard let facts, facts.unit != 0, let k = workers[w].inflight.firstIndex(where: { $0.id == facts.unit })
            else { continue }
            let unit = workers[w].inflight[k]
            let opts = unit.call.options
            let index = Int(facts.index)
            let decision = PoolDecisions.timing(
                now: now,
                elapsed: facts.elapsed,
                options: opts,
                softCancelled: unit.softIndex == index ? unit.softAt : nil,
                cancelAt: unit.cancelAt
            )
            if let until = decision.cancelItemUntil {
                workers[w].inflight[k].softIndex = index
                workers[w].inflight[k].softAt = until
                actions.append(.cancelItem(id, unit: unit.id, index: facts.index))
            }
            if let at = decision.lookAgainAt { wakeAt(at) }
            switch decision.stop {
            case .timeout?: stopWorker(w, .timeout(unit: unit.id), grace: opts.killGrace)
            case .softTimeout?: stopWorker(w, .softTimeout(unit: unit.id), grace: opts.killGrace)
            case .cancelled?: stopWorker(w, .cancelled(unit: unit.id), grace: opts.killGrace)
            default: break
            }
            if let k = workers[w].killAt { wakeAt(k) }
        }
        // Retries whose backoff has passed join the queue.
        delayed.sort { $0.at < $1.at }
        while let first = delayed.first, first.at <= now {
            delayed.removeFirst()
            if deliversResults {
                pending.append(first.unit)
            } else {
                settleRange(first.unit, 0..<first.unit.count, terminalError)
            }
        }
        if let first = delayed.first { wakeAt(first.at) }
        let live = workers.indices.filter { workers[$0].takesWork }.count
        if wantsWorkers { round.spawn = max(0, size - live - spawning) }
        if isDrainedAndClosed {
            for w in workers.indices where workers[w].inflight.isEmpty { sendShutdown(w) }
        }
        pump()
        if !wantsWorkers && workers.isEmpty && spawning == 0 && round.spawn == 0 {
            actions.append(.allExited)
            if case .running = phase {} else { round.finished = true }
        }
        supervisorDue = false  // this is the supervisor
        round.actions = finish()
        return round
    }

    /// SIGTERM now, SIGKILL after `grace` (the supervisor sends it).
    private mutating func stopWorker(_ w: Int, _ reason: StopReason, grace: Duration) {
        guard workers[w].stop == nil else { return }
        workers[w].stop = reason
        workers[w].killAt = now + grace
        actions.append(.terminate(workers[w].id))
        supervisorDue = true
    }

    // MARK: - cancellation, close, terminate

    /// Cancels every unit of `call`: queued ones fail at once; running ones are cancelled inside their
    /// worker, which is killed if they are still running after the call's grace period.
    mutating func cancel(_ call: CallCore, now: Instant) -> [Action] {
        self.now = now
        var keep = Deque<Unit>()
        for u in pending {
            if u.call === call { settleRange(u, u.reported..<u.count, CancellationError()) } else { keep.append(u) }
        }
        pending = keep
        for d in delayed where d.unit.call === call { settleRange(d.unit, 0..<d.unit.count, CancellationError()) }
        delayed.removeAll { $0.unit.call === call }
        for w in workers.indices {
            for k in workers[w].inflight.indices where workers[w].inflight[k].call === call {
                workers[w].inflight[k].callCancelled = true
                guard workers[w].inflight[k].cancelAt == nil else { continue }
                workers[w].inflight[k].cancelAt = now + call.options.cancelGrace
                actions.append(.cancelUnit(workers[w].id, unit: workers[w].inflight[k].id, ring: cancelRing))
                cancelRing += 1
            }
        }
        supervisorDue = true
        return finish()
    }

    mutating func close(now: Instant) -> [Action] {
        self.now = now
        if case .running = phase { phase = .closed }
        if isDrainedAndClosed {
            for w in workers.indices where workers[w].inflight.isEmpty { sendShutdown(w) }
        }
        supervisorDue = true
        return finish()
    }

    mutating func terminate(_ error: PoolError, now: Instant) -> [Action] {
        self.now = now
        switch phase {
        case .terminated, .broken: return []
        default: break
        }
        phase = .terminated
        failEverything(error)
        supervisorDue = true
        return finish()
    }

    /// Forgets all work without settling it and marks every worker stopped (the program is about to end:
    /// callers stay blocked until it does, rather than waking to a failure and carrying on in the moment
    /// before). Returns the workers to stop.
    mutating func abandon() -> [WorkerID] {
        phase = .terminated
        pending = []
        delayed = []
        for w in workers.indices {
            workers[w].inflight = []
            workers[w].stop = .terminate(PoolError(.interrupted, "interrupted by SIGINT"))
        }
        return workers.map(\.id)
    }

    /// Fails all work and stops all workers.
    private mutating func failEverything(_ error: PoolError) {
        for u in pending { settleRange(u, u.reported..<u.count, error) }
        pending = []
        for d in delayed { settleRange(d.unit, 0..<d.unit.count, error) }
        delayed = []
        for w in workers.indices {
            for u in workers[w].inflight { settleRange(u, u.reported..<u.count, error) }
            workers[w].inflight = []
            if workers[w].stop == nil { stopWorker(w, .terminate(error), grace: .milliseconds(500)) }
        }
        if workers.isEmpty && spawning == 0 { actions.append(.allExited) }
    }

    private mutating func breakPool(_ error: PoolError) {
        phase = .broken(error)
        failEverything(error)
    }

    // MARK: - settling and requeueing

    private mutating func settleItem(_ unit: Unit, _ i: Int, _ error: any Error) {
        failed += 1
        done += 1
        actions.append(.fail(unit.call, index: unit.base + i, error))
    }

    private mutating func settleRange(_ unit: Unit, _ range: Range<Int>, _ error: any Error) {
        for i in range { settleItem(unit, i, error) }
    }

    /// Collects items `range` (relative) of `unit` to be sent again.
    private mutating func requeue(_ unit: Unit, _ range: Range<Int>, kills: Int) {
        guard !range.isEmpty else { return }
        if unit.callCancelled {
            settleRange(unit, range, CancellationError())
            return
        }
        guard deliversResults else {
            settleRange(unit, range, terminalError)
            return
        }
        if let again = part(unit, range, attempt: unit.attempt, kills: kills) { requeued.append(again) }
    }

    /// Items `range` (relative) of `unit` as a new unit with the next id; `nil` after failing those items
    /// if they cannot be encoded again.
    private mutating func part(_ unit: Unit, _ range: Range<Int>, attempt: Int, kills: Int) -> Unit? {
        do {
            defer { nextUnit += 1 }
            return try unit.part(range, id: nextUnit, attempt: attempt, kills: kills)
        } catch {
            settleRange(unit, range, error)
            return nil
        }
    }

    /// Items `range` (relative) of `unit`, each as a unit of its own (an item that cannot be re-encoded
    /// fails).
    private mutating func singletons(_ unit: Unit, _ range: Range<Int>) -> [Unit] {
        var out: [Unit] = []
        for j in range {
            if let u = part(unit, j..<(j + 1), attempt: unit.attempt, kills: unit.kills) { out.append(u) }
        }
        return out
    }

    private mutating func scheduleRetry(_ unit: Unit, index i: Int, crashed: Bool) {
        guard let again = part(unit, i..<(i + 1), attempt: unit.attempt + 1, kills: unit.kills + (crashed ? 1 : 0))
        else { return }
        delayed.append((now + unit.call.options.retry.delay(beforeAttempt: unit.attempt + 1), again))
        retried += 1
        supervisorDue = true
    }

    // MARK: - helpers

    private func index(of id: WorkerID) -> Int? { workers.firstIndex { $0.id == id } }

    private mutating func queueSend(_ id: WorkerID, _ item: Outgoing) {
        if let k = sends.firstIndex(where: { $0.0 == id }) {
            sends[k].1.append(item)
        } else {
            sends.append((id, [item]))
        }
    }

    /// The actions gathered by the current event, sends numbered per worker.
    private mutating func finish() -> [Action] {
        for (id, items) in sends {
            guard let w = index(of: id) else { continue }
            actions.append(.send(id, seq: workers[w].nextSend, items))
            workers[w].nextSend += 1
        }
        sends = []
        if supervisorDue {
            actions.append(.wakeSupervisor)
            supervisorDue = false
        }
        defer { actions = [] }
        return actions
    }

    var terminalError: PoolError {
        switch phase {
        case .broken(let e): e
        case .terminated: PoolError(.terminated, "the pool was terminated")
        default: PoolError(.closed, "the pool is closed")
        }
    }

    /// Whether work in the pool still runs to its end: running or closed (draining), not terminated or broken.
    private var deliversResults: Bool {
        switch phase {
        case .running, .closed: true
        case .terminated, .broken: false
        }
    }

    /// Whether the pool should keep `size` workers.
    private var wantsWorkers: Bool {
        switch phase {
        case .running: true
        case .closed: !pending.isEmpty || !delayed.isEmpty || workers.contains { !$0.inflight.isEmpty }
        case .terminated, .broken: false
        }
    }

    // MARK: - queries

    var isRunning: Bool { if case .running = phase { true } else { false } }

    /// Whether fewer units are queued than the workers could take now.
    var isHungry: Bool { pending.count < workers.count * 2 }

    func progress(now: Instant) -> PoolProgress {
        let elapsed = firstSubmit.map { now - $0 } ?? .zero
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        let rate = seconds > 0 ? Double(done) / seconds : 0
        let eta: Duration? = rate > 0 ? .seconds(Double(total - done) / rate) : nil
        let insights = workers.map { s -> WorkerInsight in
            var idle = s.idle
            if let since = s.idleSince { idle += now - since }
            return WorkerInsight(
                pid: s.pid,
                startup: s.readyAt.map { $0 - s.spawnedAt },
                waiting: idle,
                working: s.busy,
                tasks: s.tasksDone
            )
        }
        return PoolProgress(done: done, failed: failed, total: total, rate: rate, eta: eta, workers: insights)
    }
}
