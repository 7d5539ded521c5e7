import DequeModule

// The supervisor's view: timeouts and soft timeouts, kills after grace periods, retries whose backoff
// passed, replacements, and units taken back from workers stuck on a long item.
extension PoolState {
    /// Whether worker `id` stamps each item of its running unit `unit` with the clock (the unit's call has a
    /// limit measured from each item's start); otherwise only the unit's first item carries a stamp. A
    /// unit no longer in flight (its last reply read before the worker published its end) counts as
    /// unstamped: its item's age is then never too long (``ItemAges``).
    func stampsEachItem(_ id: WorkerID, unit: UInt64) -> Bool {
        guard let w = index(of: id) else { return false }
        return workers[w].inflight.first { $0.id == unit }?.call.options.limitsItemTime ?? false
    }

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

    /// Workers whose running item is overdue (as in ``overdue(running:)``) while units sent before it are
    /// still unanswered: the worker finished those and holds their replies in its batch, which it would
    /// write only after the long item. For each, the running unit; `PoolCore` asks the worker (through its
    /// slot and a wake-up) to write its replies now. Each worker is asked once per running unit.
    mutating func repliesOwed(running: [WorkerID: RunningFacts]) -> [(id: WorkerID, unit: UInt64)] {
        let limit = PoolDecisions.overdue(itemNanos: itemNanos)
        var out: [(id: WorkerID, unit: UInt64)] = []
        for w in workers.indices where workers[w].stop == nil && workers[w].inflight.count > 1 {
            guard let facts = running[workers[w].id], facts.unit != 0, facts.elapsed >= limit,
                workers[w].repliesAsked != facts.unit,
                let seq = workers[w].inflight.first(where: { $0.id == facts.unit })?.seq,
                workers[w].inflight.contains(where: { $0.seq < seq })
            else { continue }
            workers[w].repliesAsked = facts.unit
            out.append((workers[w].id, facts.unit))
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
            // Units queued behind a running item, or replies held for units before it: look again when it
            // would be overdue (a worker between units, or not yet seen running: one limit from now, so an
            // item that starts after this round is not left for the supervisor's idle second).
            if !workers[w].stalled, workers[w].inflight.count > 1 {
                let limit = PoolDecisions.overdue(itemNanos: itemNanos)
                if let f = facts, f.unit != 0 {
                    if f.elapsed < limit { wakeAt(now + (limit - f.elapsed)) }
                } else {
                    wakeAt(now + limit)
                }
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
        supervisorDue = false  // this is the supervisor
        supervisionAt = round.wakeAt
        pump()
        // Units this round sent (a retry, a replacement's first work) that the supervisor must watch (a
        // deadline, or a unit behind another): a second look soon, rather than on the idle second.
        if supervisorDue {
            wakeAt(now + .milliseconds(5))
            supervisorDue = false
        }
        if !wantsWorkers && workers.isEmpty && spawning == 0 && round.spawn == 0 {
            actions.append(.allExited)
            if case .running = phase {} else { round.finished = true }
        }
        round.actions = finish()
        supervisionAt = round.wakeAt
        return round
    }
}
