/// The pool's decisions as pure functions of values: what to do when a worker dies, when a running item
/// passes a deadline, when deaths come too fast. `PoolCore` gathers the facts (under its lock, from the
/// shared slots), asks these, and applies the answers; the answers are unit-tested with a fake clock and
/// scripted facts (`PoolDecisionTests`), without processes.
///
/// This is the first part of the pool's state machine (issue 9): the decisions where the pool's promises
/// live (a death fails one item, retries follow their policy in every state, timeouts fire on time).
enum PoolDecisions {
    /// How long an item must have run, with tasks queued behind it on its worker, before the pool takes
    /// those tasks back for other workers: 20 times the mean item, and never under 50 ms (the supervisor's
    /// clock has a few milliseconds of resolution, and taking tasks back costs a round of messages).
    static func overdue(itemNanos: Double) -> Duration {
        max(.milliseconds(50), .nanoseconds(Int64(min(itemNanos * 20, 3.6e12))))
    }

    /// Why a worker was stopped, as it concerns one unit.
    enum Stop: Equatable {
        /// Not stopped by the pool: it crashed, exited or was killed from outside.
        case none
        /// Stopped for this unit's hard timeout.
        case timeout
        /// Stopped because this unit ignored its soft timeout's cancellation.
        case softTimeout
        /// Stopped because this unit's call was cancelled.
        case cancelled
        /// Stopped with the whole pool (terminate, break).
        case terminate
        /// Killed for breaking the pool protocol.
        case protocolViolation
        /// Stopped for another unit's sake (the worker moved on): nothing to charge here.
        case other
    }

    /// What becomes of the item a dead worker was running.
    enum Fate: Equatable {
        /// Run again after the policy's backoff; `crashed` adds a kill to its count.
        case retry(crashed: Bool)
        /// Fails for this reason.
        case fail(Failure)
        /// It and the rest of the unit end with the stop's own outcome (cancellation, termination).
        case settleRest
    }

    enum Failure: Equatable {
        case timedOut, softTimedOut, crashed, protocolViolation
        /// Crashed, and has now killed as many workers as the policy allows.
        case killedTooMany(kills: Int)
    }

    /// A dead worker's unit: which parts go again (relative ranges, with their kill counts), and which
    /// item is charged with the death and what becomes of it.
    struct Loss: Equatable {
        var requeue: [Requeue] = []
        var item: Int?
        var fate: Fate?

        struct Requeue: Equatable {
            var range: Range<Int>
            var kills: Int
        }
    }

    /// Decides for a unit in flight on a worker that died.
    ///
    /// - Parameters:
    ///   - reported: items of the unit already answered; `count` items in all.
    ///   - runningIndex: the item the worker was running in this unit, if it was running one.
    ///   - charge: the worker died of its own accord (or broke the protocol) and this is the unit it last
    ///     started: charge it even if no item was running (between items, sending replies).
    ///   - deliversResults: the pool is running or closed (draining), not terminated or broken.
    static func lost(
        reported: Int,
        count: Int,
        attempt: Int,
        kills: Int,
        runningIndex: Int?,
        stop: Stop,
        charge: Bool,
        policy: RetryPolicy,
        callCancelled: Bool,
        deliversResults: Bool
    ) -> Loss {
        var loss = Loss()
        let k = reported
        let i: Int
        if let r = runningIndex, r >= k, r < count {
            i = r
        } else if charge && count - k == 1 {
            i = k  // one item left: it is the one
        } else if charge && k < count {
            // Which item is at fault is unknown: each goes again alone, charged one kill, so the one at
            // fault is found by the next death and fails once it reaches the policy's limit of kills.
            loss.requeue = (k..<count).map { Loss.Requeue(range: $0..<($0 + 1), kills: kills + 1) }
            return loss
        } else {
            if k < count { loss.requeue = [Loss.Requeue(range: k..<count, kills: kills)] }
            return loss
        }
        if k < i { loss.requeue.append(Loss.Requeue(range: k..<i, kills: kills)) }
        loss.item = i
        let cause: RetryPolicy.Cause
        let failure: Failure
        switch stop {
        case .timeout:
            (cause, failure) = (.timeout, .timedOut)
        case .softTimeout:
            (cause, failure) = (.timeout, .softTimedOut)
        case .cancelled, .terminate:
            loss.fate = .settleRest
            return loss
        case .protocolViolation:
            (cause, failure) = (.crash, .protocolViolation)
        case .none, .other:
            (cause, failure) = (.crash, .crashed)
        }
        let newKills = kills + (cause == .crash ? 1 : 0)
        if policy.causes.contains(cause) && attempt < policy.attempts && newKills < policy.maxWorkerKills
            && !callCancelled && deliversResults
        {
            loss.fate = .retry(crashed: cause == .crash)
        } else if cause == .crash && newKills >= policy.maxWorkerKills && policy.attempts > 1 {
            loss.fate = .fail(.killedTooMany(kills: newKills))
        } else {
            loss.fate = .fail(failure)
        }
        if i + 1 < count { loss.requeue.append(Loss.Requeue(range: (i + 1)..<count, kills: kills)) }
        return loss
    }

    /// What the supervisor does about the item running on a worker.
    struct Timing<Instant: InstantProtocol>: Equatable where Instant.Duration == Duration {
        /// Stop the worker (SIGTERM, SIGKILL after the kill grace), for this reason.
        var stop: Stop?
        /// Ask the worker to cancel the running item (a soft timeout): it is killed if still running at
        /// `softAt`.
        var cancelItemUntil: Instant?
        /// When to look again (nil: nothing to wait for).
        var lookAgainAt: Instant?
    }

    /// Decides for the running item `index` of a unit with `options`, `elapsed` after it started.
    /// `softCancelled` is the soft-cancellation already asked for this item (its kill time), `cancelAt`
    /// the whole unit's cancellation deadline.
    static func timing<Instant: InstantProtocol>(
        now: Instant,
        elapsed: Duration,
        options: TaskOptions,
        softCancelled: Instant?,
        cancelAt: Instant?
    ) -> Timing<Instant> where Instant.Duration == Duration {
        var t = Timing<Instant>()
        func lookAt(_ x: Instant) {
            if t.lookAgainAt == nil || x < t.lookAgainAt! { t.lookAgainAt = x }
        }
        if let hard = options.timeout {
            if elapsed >= hard { return Timing(stop: .timeout) }
            lookAt(now + (hard - elapsed))
        }
        var softAt = softCancelled
        if let soft = options.softTimeout, softCancelled == nil {
            if elapsed >= soft {
                softAt = now + options.cancelGrace
                t.cancelItemUntil = softAt
            } else {
                lookAt(now + (soft - elapsed))
            }
        }
        if let at = softAt {
            if now >= at { return Timing(stop: .softTimeout) }
            lookAt(at)
        }
        if let at = cancelAt {
            if now >= at {
                t.stop = .cancelled
                t.cancelItemUntil = nil
                return t
            }
            lookAt(at)
        }
        return t
    }

    /// When to look again at a unit with `options` queued on a worker but not started: its first item
    /// starts no earlier than now, so no deadline of it can fall before now plus its shortest limit.
    static func lookAgainForQueued<Instant: InstantProtocol>(now: Instant, options: TaskOptions) -> Instant?
    where Instant.Duration == Duration {
        [options.timeout, options.softTimeout].compactMap { $0 }.min().map { now + $0 }
    }

    /// The unexpected deaths still inside the window after one more at `now`, and whether there are too
    /// many (the pool breaks instead of spawning workers for ever).
    static func death<Instant: InstantProtocol>(
        at now: Instant,
        recent: [Instant],
        limit: (count: Int, window: Duration)
    ) -> (recent: [Instant], breaks: Bool) where Instant.Duration == Duration {
        var kept = recent.filter { now - $0 <= limit.window }
        kept.append(now)
        return (kept, kept.count > limit.count)
    }

    /// Whether a worker that has been given `dispatched` units is retired (Python's `maxtasksperchild`).
    static func retires(dispatched: Int, maxTasksPerChild: Int?) -> Bool {
        maxTasksPerChild.map { dispatched >= $0 } ?? false
    }
}

// Arithmetic for any instant the decisions are given (the pool's own, or a test's `ContinuousClock`'s,
// whose concrete operators take precedence).
extension InstantProtocol where Duration == Swift.Duration {
    static func + (lhs: Self, rhs: Duration) -> Self { lhs.advanced(by: rhs) }
    static func - (lhs: Self, rhs: Self) -> Duration { rhs.duration(to: lhs) }
}
