import DequeModule
import Glibc

// A worker's exit: what becomes of the units it held (kept, failed, retried or sent again) and whether
// its death breaks the pool.
extension PoolState {
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
}

/// The name of signal `sig`, for a dead worker's message.
private func signalName(_ sig: Int32) -> String {
    switch sig {
    case SIGKILL: "SIGKILL"
    case SIGTERM: "SIGTERM"
    case SIGSEGV: "SIGSEGV"
    case SIGILL: "SIGILL"
    case SIGTRAP: "SIGTRAP"
    case SIGABRT: "SIGABRT"
    case SIGBUS: "SIGBUS"
    case SIGFPE: "SIGFPE"
    case SIGINT: "SIGINT"
    default: "signal \(sig)"
    }
}
