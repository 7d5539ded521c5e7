// Workers' lives as the pool's state sees them: being started, starting or failing to, becoming
// ready, breaking the protocol, finishing their units, being told to shut down or being stopped.
extension PoolState {
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

    /// A unit finished on worker `w`: shut it down if it is retiring and idle. (The memory limit is the
    /// worker's own check, after each unit: a check here would lag behind the units it has queued.)
    mutating func unitFinished(_ w: Int) {
        if workers[w].inflight.isEmpty {
            workers[w].stalled = false
            workers[w].idleSince = now
            if workers[w].retiring || isDrainedAndClosed { sendShutdown(w) }
        }
    }

    mutating func sendShutdown(_ w: Int) {
        guard !workers[w].shutdownSent else { return }
        workers[w].shutdownSent = true
        workers[w].retiring = true
        queueSend(workers[w].id, .shutdown)
    }

    /// SIGTERM now, SIGKILL after `grace` (the supervisor sends it).
    mutating func stopWorker(_ w: Int, _ reason: StopReason, grace: Duration) {
        guard workers[w].stop == nil else { return }
        workers[w].stop = reason
        workers[w].killAt = now + grace
        actions.append(.terminate(workers[w].id))
        supervisorDue = true
    }
}
