import Testing

@testable import Multiprocessing

/// The pool's decisions without processes: scripted facts and a fake clock (instants built from one
/// origin), checked against the pool's promises.
@Suite struct PoolDecisionTests {
    typealias Loss = PoolDecisions.Loss
    let t0 = ContinuousClock.now
    let retry3 = RetryPolicy(attempts: 3, backoff: .milliseconds(10))

    func lost(
        reported: Int = 0,
        count: Int,
        attempt: Int = 1,
        kills: Int = 0,
        running: Int?,
        stop: PoolDecisions.Stop = .none,
        charge: Bool = false,
        policy: RetryPolicy = .none,
        cancelled: Bool = false,
        delivers: Bool = true
    ) -> Loss {
        PoolDecisions.lost(
            reported: reported,
            count: count,
            attempt: attempt,
            kills: kills,
            runningIndex: running,
            stop: stop,
            charge: charge,
            policy: policy,
            callCancelled: cancelled,
            deliversResults: delivers
        )
    }

    // MARK: deaths

    @Test func aDeathMidChunkFailsOnlyTheRunningItem() {
        // 10 items, 3 answered, the worker died running item 5: 3..<5 and 6..<10 go again, 5 fails.
        let loss = lost(reported: 3, count: 10, running: 5)
        #expect(loss.item == 5)
        #expect(loss.fate == .fail(.crashed))
        #expect(loss.requeue == [Loss.Requeue(range: 3..<5, kills: 0), Loss.Requeue(range: 6..<10, kills: 0)])
    }

    @Test func aCrashIsRetriedByItsPolicyUntilItHasKilledTooMany() {
        #expect(lost(count: 1, running: 0, policy: retry3).fate == .retry(crashed: true))
        // A second kill reaches maxWorkerKills (2): not run again, and the error says why.
        #expect(
            lost(count: 1, attempt: 2, kills: 1, running: 0, policy: retry3).fate == .fail(.killedTooMany(kills: 2))
        )
        // Out of attempts.
        let twice = RetryPolicy(attempts: 2, maxWorkerKills: 5)
        #expect(lost(count: 1, attempt: 2, kills: 1, running: 0, policy: twice).fate == .fail(.crashed))
    }

    @Test func retriesAreHonouredWhileClosedButNotAfterTerminate() {
        // `deliversResults` is true for a running or closed pool (issue 8: retries were dropped after close).
        #expect(lost(count: 1, running: 0, policy: retry3, delivers: true).fate == .retry(crashed: true))
        #expect(lost(count: 1, running: 0, policy: retry3, delivers: false).fate == .fail(.crashed))
        #expect(lost(count: 1, running: 0, policy: retry3, cancelled: true).fate == .fail(.crashed))
    }

    @Test func timeoutsFollowTheTimeoutCause() {
        let onTimeout = RetryPolicy(attempts: 2, on: [.timeout])
        #expect(lost(count: 1, running: 0, stop: .timeout, policy: onTimeout).fate == .retry(crashed: false))
        #expect(lost(count: 1, running: 0, stop: .timeout).fate == .fail(.timedOut))
        #expect(lost(count: 1, running: 0, stop: .softTimeout).fate == .fail(.softTimedOut))
        // A stop for another unit is a crash as far as this one is concerned.
        #expect(lost(count: 1, running: 0, stop: .other).fate == .fail(.crashed))
    }

    @Test func cancellationAndTerminationSettleTheRest() {
        let loss = lost(reported: 1, count: 4, running: 2, stop: .terminate)
        #expect(loss.item == 2 && loss.fate == .settleRest)
        #expect(loss.requeue == [Loss.Requeue(range: 1..<2, kills: 0)])
        #expect(lost(count: 3, running: 0, stop: .cancelled).fate == .settleRest)
    }

    @Test func aWorkerThatDiesOutsideAnItemChargesItsUnit() {
        // Not charged (another unit, or a clean exit): everything unanswered goes again, unchanged.
        #expect(lost(reported: 2, count: 5, running: nil) == Loss(requeue: [Loss.Requeue(range: 2..<5, kills: 0)]))
        // Charged, several items left: each alone, one kill each, so the culprit is found by the next death.
        let split = lost(reported: 2, count: 5, running: nil, charge: true)
        #expect(split.item == nil)
        #expect(split.requeue == (2..<5).map { Loss.Requeue(range: $0..<($0 + 1), kills: 1) })
        // Charged, one item left: it is the one; with the kill it already has, it fails instead of looping.
        let last = lost(count: 1, kills: 1, running: nil, stop: .protocolViolation, charge: true, policy: retry3)
        #expect(last.item == 0 && last.fate == .fail(.killedTooMany(kills: 2)))
        #expect(lost(count: 1, running: nil, stop: .protocolViolation, charge: true).fate == .fail(.protocolViolation))
    }

    @Test func aRunningIndexOutsideTheUnansweredItemsIsNotCharged() {
        // The worker had answered item 4 already (a stale index): nothing to charge, the rest goes again.
        #expect(lost(reported: 5, count: 8, running: 4) == Loss(requeue: [Loss.Requeue(range: 5..<8, kills: 0)]))
        #expect(lost(reported: 8, count: 8, running: 7) == Loss())
    }

    // MARK: deadlines

    @Test func aHardTimeoutFiresAtItsDeadlineAndNotBefore() {
        let options = TaskOptions(timeout: .milliseconds(200))
        let early = PoolDecisions.timing(
            now: t0,
            elapsed: .milliseconds(150),
            options: options,
            softCancelled: nil,
            cancelAt: nil
        )
        #expect(early.stop == nil)
        #expect(early.lookAgainAt == t0 + .milliseconds(50))  // exactly at the deadline
        let due = PoolDecisions.timing(
            now: t0,
            elapsed: .milliseconds(200),
            options: options,
            softCancelled: nil,
            cancelAt: nil
        )
        #expect(due.stop == .timeout)
    }

    @Test func aSoftTimeoutCancelsThenStopsAfterTheGrace() {
        let options = TaskOptions(softTimeout: .milliseconds(500), cancelGrace: .milliseconds(500))
        let before = PoolDecisions.timing(
            now: t0,
            elapsed: .milliseconds(100),
            options: options,
            softCancelled: nil,
            cancelAt: nil
        )
        #expect(before.lookAgainAt == t0 + .milliseconds(400) && before.stop == nil)
        let at = PoolDecisions.timing(
            now: t0,
            elapsed: .milliseconds(500),
            options: options,
            softCancelled: nil,
            cancelAt: nil
        )
        #expect(at.cancelItemUntil == t0 + .milliseconds(500))
        #expect(at.lookAgainAt == t0 + .milliseconds(500) && at.stop == nil)
        let graceLeft = PoolDecisions.timing(
            now: t0 + .milliseconds(300),
            elapsed: .milliseconds(800),
            options: options,
            softCancelled: t0 + .milliseconds(500),
            cancelAt: nil
        )
        #expect(
            graceLeft.stop == nil && graceLeft.cancelItemUntil == nil
                && graceLeft.lookAgainAt == t0 + .milliseconds(500)
        )
        let over = PoolDecisions.timing(
            now: t0 + .milliseconds(500),
            elapsed: .milliseconds(1000),
            options: options,
            softCancelled: t0 + .milliseconds(500),
            cancelAt: nil
        )
        #expect(over.stop == .softTimeout)
    }

    @Test func aCancelledUnitIsStoppedAfterItsGrace() {
        let waiting = PoolDecisions.timing(
            now: t0,
            elapsed: .seconds(3),
            options: .default,
            softCancelled: nil,
            cancelAt: t0 + .seconds(1)
        )
        #expect(waiting.stop == nil && waiting.lookAgainAt == t0 + .seconds(1))
        let due = PoolDecisions.timing(
            now: t0 + .seconds(1),
            elapsed: .seconds(4),
            options: .default,
            softCancelled: nil,
            cancelAt: t0 + .seconds(1)
        )
        #expect(due.stop == .cancelled)
    }

    @Test func aQueuedUnitWithADeadlineIsLookedAtWithinItsShortestLimit() {
        let options = TaskOptions(timeout: .seconds(2), softTimeout: .milliseconds(300))
        #expect(PoolDecisions.lookAgainForQueued(now: t0, options: options) == t0 + .milliseconds(300))
        #expect(PoolDecisions.lookAgainForQueued(now: t0, options: .default) == nil)
    }

    // MARK: the death window and recycling

    @Test func tooManyDeathsInTheWindowBreakThePool() {
        let limit = (count: 3, window: Duration.seconds(10))
        var recent: [ContinuousClock.Instant] = []
        var breaks = false
        for s in 0..<3 {
            (recent, breaks) = PoolDecisions.death(at: t0 + .seconds(s), recent: recent, limit: limit)
            #expect(!breaks)
        }
        // Old deaths leave the window: the fourth, 20 s later, does not break the pool.
        (recent, breaks) = PoolDecisions.death(at: t0 + .seconds(20), recent: recent, limit: limit)
        #expect(!breaks && recent.count == 1)
        for s in 21..<23 { (recent, breaks) = PoolDecisions.death(at: t0 + .seconds(s), recent: recent, limit: limit) }
        #expect(!breaks)
        (recent, breaks) = PoolDecisions.death(at: t0 + .seconds(23), recent: recent, limit: limit)
        #expect(breaks)
    }

    @Test func workersRetireAfterMaxTasksPerChild() {
        #expect(!PoolDecisions.retires(dispatched: 2, maxTasksPerChild: 3))
        #expect(PoolDecisions.retires(dispatched: 3, maxTasksPerChild: 3))
        #expect(!PoolDecisions.retires(dispatched: 1_000, maxTasksPerChild: nil))
    }
}
