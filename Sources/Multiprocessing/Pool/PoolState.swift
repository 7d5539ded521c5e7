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
/// returned values. This file holds the type, the vocabulary of its events and actions, its stored state
/// and the helpers every event uses; the events are extensions by concern, as postgres-nio splits its
/// machine: `PoolState+Dispatch` (submitting, pumping units to workers), `+Replies` (results and
/// failures read), `+Workers` (a worker's life: start, ready, retire, stop), `+Exits` (a worker's death
/// and the units it held), `+Supervision` (timeouts, kills, retries due, overdue items),
/// `+Shutdown` (cancel, close, terminate) and `+Requeueing` (items failed, sent again or retried).
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
        /// The running unit during which this worker was last asked for the replies it holds
        /// (``PoolState/repliesOwed(running:)``): asked once per unit.
        var repliesAsked: UInt64 = 0

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

    // The state below is internal only so that the extensions in the `PoolState+*.swift` files can update
    // it: only the state's own events change it; `PoolCore` and the tests read it.
    var phase = Phase.running
    var workers: [Worker] = []
    var pending = Deque<Unit>()
    var delayed: [(at: Instant, unit: Unit)] = []
    /// Workers being started (counted until `workerStarted` or `spawnFailed`).
    var spawning = 0
    var nextSerial = 0
    var nextUnit: UInt64 = 1
    var nextFunction: UInt32 = 1
    var functions: [FunctionKey: UInt32] = [:]
    var deaths: [Instant] = []
    /// Workers that died unexpectedly (crashed, were killed from outside, broke the protocol).
    var unexpectedDeaths = 0
    var cancelRing = 0
    /// Units taken back from workers stuck on a long item (``reclaim(_:startedThrough:now:)``).
    var reclaimed = 0
    /// Mean nanoseconds per item (exponentially weighted; 0 before any), for chunk sizes.
    var itemNanos: Double = 0
    /// Mean nanoseconds per unit, for how many units a worker holds.
    var unitNanos: Double = 0
    var done = 0
    var failed = 0
    var total = 0
    var retried = 0
    var started = 0
    var firstSubmit: Instant?

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
    var now: Instant
    var actions: [Action] = []
    private var sends: [(WorkerID, [Outgoing])] = []
    /// Units of a dead worker to send again; they go first in line, in order, once all are collected.
    var requeued: [Unit] = []
    var supervisorDue = false
    /// When the supervisor means to look again (its last round's `wakeAt`; nil: on its idle second).
    var supervisionAt: Instant?

    /// CPUs this process may run on: how many workers tiny units are spread over (``pump()``).
    let cpus: Int

    init(size: Int, options: ProcessPoolOptions, now: Instant, cpus: Int) {
        self.size = size
        self.options = options
        self.now = now
        self.cpus = cpus
    }

    // MARK: - helpers

    func index(of id: WorkerID) -> Int? { workers.firstIndex { $0.id == id } }

    mutating func queueSend(_ id: WorkerID, _ item: Outgoing) {
        if let k = sends.firstIndex(where: { $0.0 == id }) {
            sends[k].1.append(item)
        } else {
            sends.append((id, [item]))
        }
    }

    /// The actions gathered by the current event, sends numbered per worker.
    mutating func finish() -> [Action] {
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
    var deliversResults: Bool {
        switch phase {
        case .running, .closed: true
        case .terminated, .broken: false
        }
    }

    /// Whether the pool should keep `size` workers.
    var wantsWorkers: Bool {
        switch phase {
        case .running: true
        case .closed: !pending.isEmpty || !delayed.isEmpty || workers.contains { !$0.inflight.isEmpty }
        case .terminated, .broken: false
        }
    }

    var isDrainedAndClosed: Bool {
        if case .closed = phase, pending.isEmpty, delayed.isEmpty { return true }
        return false
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
