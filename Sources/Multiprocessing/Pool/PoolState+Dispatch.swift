import DequeModule

// Work coming in and going out: functions and unit ids, submissions, and the pump that hands queued
// units to the workers with room.
extension PoolState {
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
        for var u in units {
            if u.id == 0 { u.id = makeUnitId() }  // ids are given here, under the pool's lock anyway
            pending.append(u)
            total += u.count
        }
        pump()
        return finish()
    }

    /// Dispatches what the workers can take.
    mutating func dispatch(now: Instant) -> [Action] {
        self.now = Swift.max(self.now, now)  // the reactor's, read before the lock
        pump()
        return finish()
    }

    /// Assigns pending units to workers with room.
    mutating func pump() {
        guard !pending.isEmpty else { return }
        // Each worker holds the unit it runs plus the next one, so it never waits for the parent (whose
        // reactor thread may wait milliseconds for a CPU while workers keep both cores busy: pulling
        // 2 ms units one at a time halved the CPU benchmark's speed-up). Tiny units are pipelined
        // deeper; units of 50 ms or more are pulled one at a time, so none waits behind a long one.
        let window = unitNanos >= 50_000_000 ? 1 : unitNanos > 100_000 || unitNanos == 0 ? 2 : 32
        // Tiny units keep as few workers busy as keep the CPUs busy: with more workers than CPUs, waking
        // each for its share only adds context switches (32 workers on 2 CPUs: a quarter of the rate).
        let spread = window == 32 ? Swift.max(2, 2 * cpus) : Int.max
        // Only workers that can take more count: one stalled on a long item, retiring or stopping keeps
        // no place (its long item would otherwise hold the tiny units back).
        var holding = workers.count { !$0.inflight.isEmpty && !$0.stalled && $0.takesWork }
        while !pending.isEmpty {
            var best: Int?
            var least = window
            // By index: a `Worker` is costly to copy.
            for i in workers.indices where workers[i].takesWork && !workers[i].stalled {
                let n = workers[i].inflight.count
                if n == 0 && holding >= spread { continue }
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
            if workers[b].inflight.isEmpty {
                holding += 1
                if let since = workers[b].idleSince {
                    workers[b].idle += now - since
                    workers[b].idleSince = nil
                }
            }
            workers[b].inflight.append(unit)
            workers[b].dispatched += 1
            // A unit with a deadline: the supervisor must know it is out there, or it sleeps through it.
            if unit.call.options.timeout != nil || unit.call.options.softTimeout != nil { supervisorDue = true }
            // Two units or more on one worker: one may wait behind a long item, or hold its reply ahead of
            // one, so the supervisor must look within the overdue limit (not on its idle second).
            if workers[b].inflight.count >= 2 {
                let by = now + PoolDecisions.overdue(itemNanos: itemNanos)
                if supervisionAt.map({ $0 > by }) ?? true {
                    supervisorDue = true
                    supervisionAt = now
                }
            }
            if PoolDecisions.retires(dispatched: workers[b].dispatched, maxTasksPerChild: options.maxTasksPerChild) {
                workers[b].retiring = true
                holding -= 1
            }
        }
    }
}
