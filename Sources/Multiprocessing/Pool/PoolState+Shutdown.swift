import DequeModule

// Calls cancelled and the pool stopped: cancel, close, terminate, abandon, and the pool breaking.
extension PoolState {
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

    mutating func breakPool(_ error: PoolError) {
        phase = .broken(error)
        failEverything(error)
    }
}
