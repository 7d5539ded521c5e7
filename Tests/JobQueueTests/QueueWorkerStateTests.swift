import Testing

@testable import Multiprocessing
@testable import MultiprocessingJobQueue

/// The queue worker's decisions without a database, a pool or a clock: scripted claims, outcomes and
/// heartbeats, a fake clock, and the steps the state asks for.
@Suite struct QueueWorkerStateTests {
    typealias State = QueueWorkerState
    typealias Step = QueueWorkerState.Step
    typealias Job = QueueWorkerState.Job

    let t0 = ContinuousClock.now

    func at(_ ms: Int) -> State.Instant { t0 + .milliseconds(ms) }

    /// A worker's state; defaults: 2 pool workers, a lease of 30 s, a 50 ms poll, batches of 128.
    func worker(concurrency: Int = 2, _ configure: (inout QueueWorkerOptions) -> Void = { _ in }) -> State {
        var o = QueueWorkerOptions(concurrency: concurrency)
        configure(&o)
        return State(State.Config(o, workers: concurrency, canListen: false), now: t0, seed: 42)
    }

    func job(
        _ id: Int64,
        attempt: Int = 1,
        maxAttempts: Int = 3,
        backoffMs: Int64 = 1000,
        timeoutMs: Int64? = nil,
        kind: String = "K"
    ) -> Job {
        Job(
            id: id,
            kind: kind,
            payload: [],
            attempt: attempt,
            maxAttempts: maxAttempts,
            backoffMs: backoffMs,
            timeoutMs: timeoutMs,
            runAt: 0
        )
    }

    /// The next step that is not maintenance (rescue, clean: answered as done).
    func step(_ s: inout State, at now: State.Instant) -> Step {
        while true {
            let st = s.next(now: now)
            switch st {
            case .rescue, .clean: s.databaseSucceeded(now: now)
            default: return st
            }
        }
    }

    /// Expects a claim of `wanted` jobs, answers it with `jobs` and returns what goes to the pool.
    @discardableResult
    func claim(
        _ s: inout State,
        _ jobs: [Job],
        at now: State.Instant,
        wanted: Int? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> [State.Submission] {
        guard case .settle(let records, let n, _, _) = step(&s, at: now), n > 0 else {
            Issue.record("no claim", sourceLocation: sourceLocation)
            return []
        }
        if let wanted { #expect(n == wanted, sourceLocation: sourceLocation) }
        s.settled(records, claimed: jobs, claimWanted: n, now: now)
        guard !jobs.isEmpty else { return [] }
        guard case .submit(let subs) = step(&s, at: now) else {
            Issue.record("claimed jobs were not submitted", sourceLocation: sourceLocation)
            return []
        }
        return subs
    }

    func ms(_ t: State.Instant) -> Int {
        let (sec, atto) = (t - t0).components
        return Int(sec) * 1000 + Int(atto / 1_000_000_000_000_000)
    }

    /// Runs the worker from `from` to `to` ms with nothing finishing: claims find nothing, maintenance and
    /// heartbeats succeed (renewing every job held). Returns the moments (ms) of its heartbeats. A wait
    /// that ends at once (a busy loop) is an issue.
    func idle(_ s: inout State, from: Int, to: Int, sourceLocation: SourceLocation = #_sourceLocation) -> [Int] {
        var now = from
        var beats: [Int] = []
        var steps = 0
        while now < to {
            steps += 1
            if steps > 100_000 {
                Issue.record("no progress at \(now) ms", sourceLocation: sourceLocation)
                return beats
            }
            let step = s.next(now: at(now))
            switch step {
            case .settle(let r, let n, _, _): s.settled(r, claimed: [], claimWanted: n, now: at(now))
            case .rescue, .clean: s.databaseSucceeded(now: at(now))
            case .heartbeat:
                beats.append(now)
                _ = s.heartbeat(renewed: Set(s.held.keys), cancelRequested: [], now: at(now))
            case .wait(let until):
                let next = ms(until)
                if next <= now {
                    Issue.record("a wait that ends at once at \(now) ms: a busy loop", sourceLocation: sourceLocation)
                    return beats
                }
                now = min(next, to)
            default:
                Issue.record("unexpected \(step) at \(now) ms", sourceLocation: sourceLocation)
                return beats
            }
        }
        return beats
    }

    /// Makes the buffer deep, as a stream of fast jobs does: `n` jobs claimed and finished within 100 ms.
    func warmUp(_ s: inout State, jobs n: Int = 10, from: Int = 0) {
        claim(&s, (1...n).map { job(Int64(100_000 + $0)) }, at: at(from))
        for id in 1...n { s.completed(ok(Int64(100_000 + id)), now: at(from + 100)) }
        guard case .settle(let r, let k, _, _) = step(&s, at: at(from + 100)) else {
            Issue.record("expected a settle")
            return
        }
        s.settled(r, claimed: [], claimWanted: k, now: at(from + 100))
        s.woken(now: at(from + 100))  // more jobs queued
    }

    func ok(_ id: Int64, attempt: Int = 1, _ bytes: [UInt8] = [1]) -> State.Completion {
        State.Completion(id: id, attempt: attempt, outcome: .success(bytes))
    }

    func failed(_ id: Int64, attempt: Int = 1, _ error: any Error = Boom()) -> State.Completion {
        State.Completion(id: id, attempt: attempt, outcome: .failure(error))
    }

    struct Boom: Error, CustomStringConvertible { var description: String { "boom" } }

    func tokens(_ subs: [State.Submission]) -> [State.Token] {
        subs.map { if case .one(let t, _) = $0 { t } else if case .chunk(let t, _) = $0 { t } else { -1 } }
    }

    func jobIDs(_ subs: [State.Submission]) -> [[Int64]] {
        subs.map {
            switch $0 {
            case .one(_, let j): [j.id]
            case .chunk(_, let js): js.map(\.id)
            }
        }
    }

    // MARK: claims and the buffer

    @Test func theFirstClaimAsksForTheWorkersAndASmallBuffer() {
        var s = worker(concurrency: 2)
        // 2 running + a buffer of 4 × 2 until a rate is known.
        let subs = claim(&s, (1...10).map { job($0) }, at: t0, wanted: 10)
        #expect(jobIDs(subs) == (1...10).map { [Int64($0)] })  // a shallow buffer: one job per task
        #expect(s.inPool == 10)
        // Full: no claim. The worker waits until the next timer: the rescue (a quarter of the lease).
        #expect(step(&s, at: t0) == .wait(until: t0 + .milliseconds(7500)))
    }

    @Test func anEmptyClaimWaitsForThePollIntervalOrAWakeUp() {
        var s = worker()
        claim(&s, [], at: t0)
        #expect(step(&s, at: t0) == .wait(until: at(50)))
        #expect(step(&s, at: at(20)) == .wait(until: at(50)))
        // A notification: claim at once.
        s.woken(now: at(20))
        claim(&s, [job(1)], at: at(20))
        // A claim that found fewer jobs than it asked for also waits for the poll.
        #expect(step(&s, at: at(20)) == .wait(until: at(70)))
    }

    @Test func aBusyWorkerClaimsInBatchesNotAtEveryFinishedJob() {
        var s = worker(concurrency: 2) { $0.claimBatch = 8 }
        claim(&s, (1...8).map { job($0) }, at: t0, wanted: 8)
        // Room for 2 of the 10 it may hold, less than half a batch, and 8 in the pool: no claim.
        guard case .wait = step(&s, at: t0) else {
            Issue.record("expected a wait")
            return
        }
        // One finishes: room 3, still no claim; its result waits for the acknowledgement delay.
        s.completed(ok(1), now: at(1))
        #expect(step(&s, at: at(1)) == .wait(until: at(11)))
        s.completed(ok(2), now: at(2))
        // Room for half a batch (4): the results and the claim go in one step.
        guard case .settle(let records, let n, _, _) = step(&s, at: at(2)) else {
            Issue.record("expected a settle")
            return
        }
        #expect(records.map(\.id) == [1, 2])
        #expect(n == 4)
    }

    @Test func aResultWaitsAtMostTheAcknowledgementDelay() {
        var s = worker(concurrency: 2)
        claim(&s, (1...10).map { job($0) }, at: t0)
        s.completed(ok(5, [9]), now: at(100))
        #expect(s.takeRetiredTokens().count == 1)  // its task is no longer needed
        #expect(step(&s, at: at(100)) == .wait(until: at(110)))
        guard case .settle(let records, let n, _, _) = step(&s, at: at(110)) else {
            Issue.record("the result was not recorded after the delay")
            return
        }
        #expect(n == 0)
        #expect(records.map(\.resolution) == [.complete([9])])
        s.settled(records, claimed: [], claimWanted: 0, now: at(110))
        #expect(s.finished == 1)
        #expect(s.held[5] == nil)
    }

    @Test func anIdlePoolHasItsResultsRecordedAtOnce() {
        var s = worker(concurrency: 1) { $0.localBuffer = 0 }
        claim(&s, [job(1)], at: t0, wanted: 1)
        s.completed(ok(1), now: at(3))
        guard case .settle(let records, _, _, _) = step(&s, at: at(3)) else {
            Issue.record("expected the result to be recorded at once")
            return
        }
        #expect(records.map(\.id) == [1])
    }

    @Test func shortJobsGoInChunksAndLongOnesAlone() {
        var s = worker(concurrency: 2) { $0.bufferedWork = .seconds(1) }
        var id: Int64 = 0
        func claimAll(at now: Int, extra: [Job] = []) -> [State.Submission] {
            guard case .settle(let r, let n, _, _) = step(&s, at: at(now)), n > 0 else {
                Issue.record("no claim at \(now) ms")
                return []
            }
            let jobs =
                (0..<(n - extra.count)).map { _ in
                    id += 1
                    return job(id)
                } + extra
            s.settled(r, claimed: jobs, claimWanted: n, now: at(now))
            guard case .submit(let subs) = step(&s, at: at(now)) else { return [] }
            return subs
        }
        // Fast jobs: everything claimed finishes within the next 100 ms; the buffer deepens each round.
        for round in 0..<6 {
            let subs = claimAll(at: 100 * round)
            for j in jobIDs(subs).joined() { s.completed(ok(j), now: at(100 * round + 99)) }
        }
        #expect(s.buffer == 256)
        let subs = claimAll(at: 600, extra: [job(9999, timeoutMs: 500)])
        let sizes = jobIDs(subs).map(\.count)
        #expect(sizes.filter { $0 == 32 }.count == 3 && sizes.allSatisfy { $0 <= 32 }, "\(sizes)")
        #expect(jobIDs(subs).contains([9999]))  // a job with a timeout of its own runs alone
        // Long jobs: one finishing every 2 s brings the buffer down to one.
        var t = 600
        for j in jobIDs(subs).joined() {
            t += 2000
            s.completed(ok(j), now: at(t))
            if case .settle(let r, let k, _, _) = step(&s, at: at(t)) {
                s.settled(r, claimed: [], claimWanted: 0, now: at(t))
                _ = k
            }
        }
        #expect(s.buffer <= 1)
    }

    // MARK: outcomes

    @Test func aFailedAttemptIsRetriedWithExponentialJitteredBackoffUntilItsLast() {
        var s = worker(concurrency: 1) { $0.localBuffer = 0 }
        var backoffs: [Int64] = []
        for attempt in 1...4 {
            claim(&s, [job(1, attempt: attempt, maxAttempts: 4, backoffMs: 1000)], at: t0)
            s.completed(failed(1, attempt: attempt), now: t0)
            guard case .settle(let records, _, _, _) = step(&s, at: t0), let r = records.first else {
                Issue.record("expected a settle")
                return
            }
            s.settled(records, claimed: [], claimWanted: 0, now: t0)
            s.woken(now: t0)
            switch r.resolution {
            case .retry(let after, let error):
                #expect(error == "boom")
                backoffs.append(after)
            case .discard(let error):
                #expect(attempt == 4)
                #expect(error == "boom")
            default: Issue.record("unexpected \(r.resolution)")
            }
        }
        #expect(backoffs.count == 3)
        for (i, b) in backoffs.enumerated() {
            let base = 1000 << i
            #expect(b >= Int64(Double(base) * 0.75) && b <= Int64(Double(base) * 1.25), "attempt \(i + 1): \(b) ms")
        }
    }

    @Test func theBackoffIsCappedAtAnHour() {
        var s = worker(concurrency: 1) { $0.localBuffer = 0 }
        claim(&s, [job(1, attempt: 30, maxAttempts: 40, backoffMs: 1000)], at: t0)
        s.completed(failed(1, attempt: 30), now: t0)
        guard case .settle(let records, _, _, _) = step(&s, at: t0),
            case .retry(let after, _) = records.first?.resolution
        else {
            Issue.record("expected a retry")
            return
        }
        #expect(after <= 4_500_000 && after >= 2_700_000)
    }

    @Test func aFinalErrorOrAnOversizedResultIsNotRetriedBlindly() {
        var s = worker(concurrency: 2) {
            $0.localBuffer = 0
            $0.maxResultBytes = 4
        }
        claim(&s, [job(1), job(2)], at: t0)
        s.completed(failed(1, JobQueueError(.malformedJob, "cannot decode")), now: t0)
        s.completed(ok(2, [1, 2, 3, 4, 5]), now: t0)
        guard case .settle(let records, _, _, _) = step(&s, at: t0) else {
            Issue.record("expected a settle")
            return
        }
        guard case .discard = records[0].resolution else {
            Issue.record("a final error must discard: \(records[0].resolution)")
            return
        }
        // Too large: it would be as large every time: discarded, with the reason.
        guard case .discard(let error) = records[1].resolution else {
            Issue.record("expected a discard: \(records[1].resolution)")
            return
        }
        #expect(error.contains("5 bytes"))
    }

    @Test func aJobOfAnUnknownTypeGoesBackUncountedAndItsTypeIsNoLongerClaimed() {
        var s = worker(concurrency: 2) { $0.localBuffer = 0 }
        claim(&s, [job(1, kind: "app.Missing"), job(2, kind: "app.Missing")], at: t0)
        s.completed(failed(1, JobQueueError(.unknownJob, "no such type")), now: t0)
        s.completed(failed(2, JobQueueError(.unknownJob, "no such type")), now: t0)
        guard case .settle(let records, let n, let skipping, _) = step(&s, at: t0) else {
            Issue.record("expected a settle")
            return
        }
        #expect(records.map(\.resolution) == [.handBackUnknownKind, .handBackUnknownKind])
        #expect(records.map(\.firstOfKind) == [true, false])  // logged once per type
        #expect(n == 2 && skipping == ["app.Missing"])
    }

    /// A pool terminated under its jobs (the program stopping: a service group cancelled, which stops the
    /// pool and the worker at once) is not the jobs' failure: they go back uncounted, even on their last
    /// attempt.
    @Test func jobsWhosePoolWasTerminatedGoBackUncounted() {
        var s = worker(concurrency: 2) { $0.localBuffer = 0 }
        claim(&s, [job(1), job(2, maxAttempts: 1)], at: t0)
        s.completed(failed(1, PoolError(.terminated, "the pool was terminated")), now: t0)
        s.completed(failed(2, PoolError(.terminated, "the pool was terminated")), now: t0)
        guard case .settle(let records, _, _, _) = step(&s, at: t0) else {
            Issue.record("expected a settle")
            return
        }
        #expect(records.map(\.resolution) == [.handBack, .handBack])
    }

    @Test func aChunkThatFailsAsAWholeRunsItsJobsAgainAloneUnderTheSameAttempt() {
        var t = worker(concurrency: 1) { $0.bufferedWork = .seconds(1) }
        warmUp(&t, jobs: 4)
        let chunked = claim(&t, (10...17).map { job($0) }, at: at(100))
        guard case .chunk(let token, let js)? = chunked.first, js.count > 1 else {
            Issue.record("expected a chunk: \(jobIDs(chunked))")
            return
        }
        // Its worker process died: every job of it comes back as ChunkFailed.
        for j in js { t.completed(failed(j.id, QueueWorkerState.ChunkFailed()), now: at(101)) }
        guard case .submit(let again) = step(&t, at: at(101)) else {
            Issue.record("the chunk's jobs were not resubmitted")
            return
        }
        #expect(jobIDs(again) == js.map { [$0.id] })
        #expect(!tokens(again).contains(token))
        #expect(t.pending.isEmpty)  // no attempt charged
        #expect(t.held.count == 8)
    }

    // MARK: leases and cancellation

    @Test func leasesAreRenewedEveryThirdOfALeaseWhileJobsAreHeld() {
        var s = worker(concurrency: 1) {
            $0.localBuffer = 0
            $0.lease = .seconds(3)
        }
        // Idle: no heartbeat, and no busy loop.
        #expect(idle(&s, from: 0, to: 3000) == [])
        s.woken(now: at(3000))
        claim(&s, [job(1)], at: at(3000))
        let beats = idle(&s, from: 3000, to: 7000)
        #expect(beats.first.map { $0 <= 4000 } == true, "\(beats)")
        #expect(zip(beats, beats.dropFirst()).allSatisfy { $1 - $0 == 1000 }, "\(beats)")
        #expect(beats.count >= 3)
    }

    @Test func aCancelRequestCancelsTheTaskAndAFailureThenRecordsCancelled() {
        var s = worker(concurrency: 2) { $0.localBuffer = 0 }
        let subs = claim(&s, [job(1), job(2)], at: t0)
        #expect(step(&s, at: at(10_000)) == .heartbeat)
        _ = s.heartbeat(renewed: [1, 2], cancelRequested: [1, 2], now: at(10_000))
        #expect(step(&s, at: at(10_000)) == .cancel(tokens(subs)))
        // Job 1 stops with an error: cancelled. Job 2 finished anyway: it keeps its result.
        s.completed(failed(1, Boom()), now: at(10_001))
        s.completed(ok(2, [7]), now: at(10_001))
        guard case .settle(let records, _, _, _) = step(&s, at: at(10_001)) else {
            Issue.record("expected a settle")
            return
        }
        #expect(records.map(\.resolution) == [.cancelled, .complete([7])])
    }

    /// Jobs that other jobs wait for have their ends recorded with the releases: known at the claim, or
    /// told by a heartbeat (queued after the claim), even for a result already waiting to be recorded.
    @Test func endsOfJobsThatOthersWaitForAreMarkedForRelease() {
        var s = worker(concurrency: 3) { $0.localBuffer = 0 }
        var waited = job(1)
        waited.hasDependents = true
        _ = claim(&s, [waited, job(2), job(3)], at: t0)
        s.completed(ok(3, [3]), now: at(5))  // its record waits to be sent
        _ = s.heartbeat(renewed: [1, 2, 3], cancelRequested: [], waitedFor: [2, 3], now: at(10_000))
        s.completed(ok(1, [1]), now: at(10_001))
        s.completed(ok(2, [2]), now: at(10_001))
        guard case .settle(let records, _, _, _) = step(&s, at: at(10_001)) else {
            Issue.record("expected a settle")
            return
        }
        #expect(records.map(\.id).sorted() == [1, 2, 3])
        #expect(records.filter { !$0.releases }.isEmpty, "\(records.map { ($0.id, $0.releases) })")
    }

    @Test func aJobWhoseLeaseWasLostIsLetGoAndItsChunkPartnersRunAlone() {
        var s = worker(concurrency: 1) { $0.bufferedWork = .seconds(1) }
        warmUp(&s, jobs: 4)
        let chunked = claim(&s, (10...17).map { job($0) }, at: at(100))
        guard case .chunk(let token, let js)? = chunked.first, js.count == 8 else {
            Issue.record("expected one chunk: \(jobIDs(chunked))")
            return
        }
        // The heartbeat finds job 12 no longer this worker's (its lease expired while the database was
        // away, and another worker rescued it). (First, the poll's claim finds nothing.)
        if case .settle(let r, let n, _, _) = step(&s, at: at(10_000)) {
            s.settled(r, claimed: [], claimWanted: n, now: at(10_000))
        }
        #expect(step(&s, at: at(10_000)) == .heartbeat)
        let lost = s.heartbeat(renewed: Set(10...17).subtracting([12]), cancelRequested: [], now: at(10_000))
        #expect(lost == [12])
        #expect(s.held[12] == nil)
        #expect(step(&s, at: at(10_000)) == .cancel([token]))
        // The chunk's task ends cancelled: its other jobs run again alone; job 12's outcome is ignored.
        for j in js { s.completed(failed(j.id, QueueWorkerState.ChunkFailed()), now: at(10_001)) }
        guard case .submit(let again) = step(&s, at: at(10_001)) else {
            Issue.record("the chunk's other jobs were not resubmitted")
            return
        }
        #expect(jobIDs(again) == [10, 11, 13, 14, 15, 16, 17].map { [Int64($0)] })
        s.completed(ok(12), now: at(10_002))
        #expect(s.pending.isEmpty)
        // The chunk's task is forgotten only after its cancellation was asked for.
        #expect(s.takeRetiredTokens().contains(token))
    }

    @Test func jobsTheDatabaseSaysThisWorkerHoldsButItNeverHeardOfGoBack() {
        var s = worker(concurrency: 2) { $0.localBuffer = 0 }
        claim(&s, [job(1)], at: t0)
        // A claim committed but its answer was lost with the connection: job 7 is this worker's in the
        // database only. The heartbeat renews it; it goes back to the queue at once, uncounted. (First,
        // the poll's claim finds nothing.)
        if case .settle(let r, let n, _, _) = step(&s, at: at(10_000)) {
            s.settled(r, claimed: [], claimWanted: n, now: at(10_000))
        }
        #expect(step(&s, at: at(10_000)) == .heartbeat)
        let lost = s.heartbeat(renewed: [1, 7], cancelRequested: [], now: at(10_000))
        #expect(lost.isEmpty)
        #expect(step(&s, at: at(10_000)) == .release([7]))
        #expect(s.held.keys.sorted() == [1])
    }

    // MARK: stopping

    @Test func finishStopsClaimingRecordsResultsAndExitsWhenNothingIsHeld() {
        var s = worker(concurrency: 2) { $0.localBuffer = 0 }
        claim(&s, [job(1), job(2)], at: t0)
        let stopping = s.requestStop(.finish, now: at(1))
        #expect(stopping)
        s.completed(ok(1), now: at(2))
        guard case .settle(let records, 0, _, _) = step(&s, at: at(2)) else {
            Issue.record("a stopping worker records at once and claims nothing")
            return
        }
        s.settled(records, claimed: [], claimWanted: 0, now: at(2))
        guard case .wait = step(&s, at: at(2)) else {
            Issue.record("job 2 is still running: wait")
            return
        }
        s.completed(ok(2), now: at(3))
        guard case .settle(let r2, 0, _, _) = step(&s, at: at(3)) else { return }
        s.settled(r2, claimed: [], claimWanted: 0, now: at(3))
        #expect(step(&s, at: at(3)) == .exit)
        #expect(s.finished == 2)
    }

    @Test func finishHandsBackWhatIsStillRunningAfterTheGrace() {
        var s = worker(concurrency: 2) {
            $0.localBuffer = 0
            $0.shutdownGrace = .seconds(5)
        }
        let subs = claim(&s, [job(1), job(2)], at: t0)
        _ = s.requestStop(.finish, now: at(1000))
        #expect(step(&s, at: at(1000)) == .wait(until: at(6000)))
        #expect(step(&s, at: at(6000)) == .handBack([1, 2], cancelling: tokens(subs).sorted()))
        #expect(step(&s, at: at(6000)) == .exit)
    }

    @Test func handBackRecordsFinishedResultsFirst() {
        var s = worker(concurrency: 2) { $0.localBuffer = 0 }
        let subs = claim(&s, [job(1), job(2)], at: t0)
        s.completed(ok(1), now: at(1))
        _ = s.requestStop(.handBack, now: at(1))
        guard case .settle(let records, 0, _, _) = step(&s, at: at(1)) else {
            Issue.record("finished results are recorded before the hand-back")
            return
        }
        s.settled(records, claimed: [], claimWanted: 0, now: at(1))
        #expect(step(&s, at: at(1)) == .handBack([2], cancelling: [tokens(subs)[1]]))
    }

    @Test func handBackGoesAheadWhenTheResultsCannotBeRecorded() {
        var s = worker(concurrency: 2) { $0.localBuffer = 0 }
        claim(&s, [job(1), job(2)], at: t0)
        s.completed(ok(1), now: at(1))
        _ = s.requestStop(.handBack, now: at(1))
        guard case .settle = step(&s, at: at(1)) else { return }
        s.databaseFailed(now: at(1))
        guard case .handBack(let ids, _) = step(&s, at: at(100)) else {
            Issue.record("expected a hand-back")
            return
        }
        #expect(ids == [1, 2])  // job 1 runs again elsewhere: its result was never recorded
    }

    @Test func aDatabaseThatCameBackRecordsTheResultsBeforeTheHandBack() {
        var s = worker(concurrency: 2) {
            $0.localBuffer = 0
            $0.shutdownGrace = .seconds(5)
        }
        let subs = claim(&s, [job(1), job(2)], at: t0)
        _ = s.requestStop(.finish, now: at(1))
        s.completed(ok(1), now: at(2))
        guard case .settle = step(&s, at: at(2)) else { return }
        s.databaseFailed(now: at(2))  // once
        guard case .settle(let again, 0, _, _) = step(&s, at: at(100)) else {
            Issue.record("the result is recorded on a later turn")
            return
        }
        s.settled(again, claimed: [], claimWanted: 0, now: at(100))
        // Job 1's result is recorded; at the end of the grace only job 2, still running, goes back.
        s.completed(ok(2), now: at(6000))
        guard case .settle(let last, 0, _, _) = step(&s, at: at(6000)) else {
            Issue.record("a finished job is recorded, not handed back, once the database is back")
            return
        }
        #expect(last.map(\.id) == [2])
        _ = subs
    }

    @Test func aPoolThatRefusesWorkStopsTheWorkerWithEverythingHandedBack() {
        var s = worker(concurrency: 2) { $0.localBuffer = 0 }
        claim(&s, [job(1), job(2)], at: t0)
        s.refused(now: at(1))
        guard case .handBack(let ids, _) = step(&s, at: at(1)) else {
            Issue.record("expected a hand-back")
            return
        }
        #expect(ids == [1, 2])
        #expect(step(&s, at: at(1)) == .exit)
    }

    // MARK: the database

    @Test func aFailedSettleKeepsTheResultsAndRetriesAfterThePollInterval() {
        var s = worker(concurrency: 1) { $0.localBuffer = 0 }
        claim(&s, [job(1)], at: t0)
        s.completed(ok(1), now: at(1))
        guard case .settle(let records, _, _, _) = step(&s, at: at(1)) else { return }
        s.databaseFailed(now: at(1))
        #expect(step(&s, at: at(1)) == .wait(until: at(51)))
        #expect(step(&s, at: at(51)) == .settle(records, claim: 1, skipping: []))
    }

    @Test func aDatabaseUnreachableForALeaseMakesTheWorkerGiveUpAndCancelItsTasks() {
        var s = worker(concurrency: 2) {
            $0.localBuffer = 0
            $0.lease = .seconds(3)
        }
        let subs = claim(&s, [job(1), job(2)], at: t0)
        for ms in [1000, 2000] {
            #expect(step(&s, at: at(ms)) == .heartbeat)
            s.databaseFailed(now: at(ms))
        }
        #expect(step(&s, at: at(3000)) == .heartbeat)
        s.databaseFailed(now: at(3001))
        #expect(step(&s, at: at(3001)) == .giveUp(cancelling: tokens(subs).sorted()))
    }

    @Test func exitWhenDrainedCountsWhatIsLeftAfterAnEmptyClaim() {
        var s = worker(concurrency: 2) { $0.exitWhenDrained = true }
        claim(&s, [], at: t0)
        #expect(step(&s, at: t0) == .checkDrained(skipping: []))
        let stoppedEarly = s.drained(left: 3, now: t0)
        #expect(!stoppedEarly)  // running elsewhere, or due later
        #expect(step(&s, at: t0) == .wait(until: at(50)))
        claim(&s, [], at: at(50))
        #expect(step(&s, at: at(50)) == .checkDrained(skipping: []))
        let stopped = s.drained(left: 0, now: at(50))
        #expect(stopped)
        #expect(step(&s, at: at(50)) == .exit)
    }

    // MARK: the worker's own row (the console's list of workers)

    /// A worker that reads its limited queues.
    func limited() -> State {
        var config = State.Config(QueueWorkerOptions(concurrency: 2), workers: 2, canListen: false)
        config.readsLimits = true
        return State(config, now: t0, seed: 42)
    }

    /// The limited queues are read before the first claim and again every second; each claim takes them
    /// along, starting at the next one each time, with the free pool workers as their room; a failed read
    /// waits the poll interval like any database call, and claims go on with what was last read (the
    /// ordinary claim leaves limited queues alone whatever the worker knows).
    @Test func limitedQueuesAreReadBeforeTheFirstClaimAndEverySecond() {
        var s = limited()
        #expect(step(&s, at: t0) == .readLimits)
        s.limitsRead(["a", "b"], now: t0)
        guard case .settle(_, let n, _, let first) = step(&s, at: t0) else {
            Issue.record("expected a claim")
            return
        }
        #expect(n > 0 && first == .init(queues: ["a", "b"], room: 2))
        // One job claimed and running: one free pool worker; the other queue first.
        s.settled([], claimed: [job(1)], claimWanted: n, now: t0)
        guard case .submit = step(&s, at: t0) else {
            Issue.record("expected the job to go to the pool")
            return
        }
        // The queues were seen empty: the next claim is a poll later.
        guard case .settle(_, _, _, let second) = step(&s, at: at(50)) else {
            Issue.record("expected a claim")
            return
        }
        #expect(second == .init(queues: ["b", "a"], room: 1))
        s.settled([], claimed: [], claimWanted: 1, now: at(50))
        var reads = 0
        var now = 51
        while now <= 3000 {
            switch step(&s, at: at(now)) {
            case .readLimits:
                reads += 1
                s.limitsRead(reads == 1 ? [] : ["a"], now: at(now))
            case .settle(let r, let n, _, let claim):
                if now >= 1000 && now < 2000 { #expect(claim == .none) }
                if now >= 2000 { #expect(claim.queues == ["a"]) }
                s.settled(r, claimed: [], claimWanted: n, now: at(now))
            case .wait(let until): now = max(now + 1, Int((until - t0) / .milliseconds(1)))
            default: now += 1
            }
        }
        #expect(reads == 3)  // at 1 s, 2 s, 3 s
        // A failed read: the next claim a poll interval later, with the queues last read (none).
        var f = limited()
        #expect(step(&f, at: t0) == .readLimits)
        f.databaseFailed(now: t0)
        #expect(step(&f, at: t0) == .wait(until: at(50)))
        guard case .settle(_, _, _, let after) = step(&f, at: at(50)) else {
            Issue.record("expected a claim after the poll interval")
            return
        }
        #expect(after == .none)
    }

    /// Periodic schedules are run before the first claim, then when the earliest next occurrence falls
    /// due, and at least every second (to see schedules declared meanwhile); a turn that queued jobs makes
    /// the worker claim at once; a failed statement is tried again a second later while claims go on.
    @Test func schedulesRunBeforeTheFirstClaimThenWhenDue() {
        var config = State.Config(QueueWorkerOptions(concurrency: 2), workers: 2, canListen: false)
        config.runsSchedules = true
        var s = State(config, now: t0, seed: 42)
        #expect(step(&s, at: t0) == .runSchedules)
        s.schedulesRan(queued: 0, nextDueIn: .milliseconds(300), now: t0)
        var turns: [Int] = []
        var claims = 0
        var now = 0
        while now <= 2500 {
            switch step(&s, at: at(now)) {
            case .runSchedules:
                turns.append(now)
                // The turn at 300 ms queues a job: a claim follows at once.
                s.schedulesRan(queued: now == 300 ? 1 : 0, nextDueIn: nil, now: at(now))
                if now == 300 {
                    guard case .settle(_, let n, _, _) = step(&s, at: at(now)) else {
                        Issue.record("expected a claim right after jobs were queued")
                        return
                    }
                    s.settled([], claimed: [], claimWanted: n, now: at(now))
                }
            case .settle(let r, let n, _, _):
                claims += 1
                s.settled(r, claimed: [], claimWanted: n, now: at(now))
            case .wait(let until): now = max(now + 1, Int((until - t0) / .milliseconds(1)))
            default: now += 1
            }
        }
        #expect(turns == [300, 1300, 2300])
        #expect(claims > 20)  // the poll goes on between turns
        // A statement that fails: claims are not held up; the next turn is a second later.
        var f = State(config, now: t0, seed: 42)
        #expect(step(&f, at: t0) == .runSchedules)
        f.schedulesFailed(now: t0)
        guard case .settle = step(&f, at: t0) else {
            Issue.record("expected a claim after the failed turn")
            return
        }
        f.settled([], claimed: [], claimWanted: 1, now: t0)
        var steps: [Step] = []
        var t = 1
        while t <= 1000 {
            let st = step(&f, at: at(t))
            steps.append(st)
            switch st {
            case .settle(let r, let n, _, _): f.settled(r, claimed: [], claimWanted: n, now: at(t))
            case .runSchedules: t = 1001
            case .wait(let until): t = max(t + 1, Int((until - t0) / .milliseconds(1)))
            default: t += 1
            }
        }
        #expect(steps.last == .runSchedules, "\(steps.suffix(3))")
        #expect(steps.dropLast().allSatisfy { $0 != .runSchedules })
        // Occurrences still due after a turn (a capped catch-up, a schedule this worker cannot read):
        // the next turn a poll interval later, not at once ahead of everything else.
        var d = State(config, now: t0, seed: 42)
        #expect(step(&d, at: t0) == .runSchedules)
        d.schedulesRan(queued: 1000, nextDueIn: .seconds(-30), now: t0)
        guard case .settle(_, let n, _, _) = step(&d, at: t0) else {
            Issue.record("expected a claim after the turn")
            return
        }
        d.settled([], claimed: [], claimWanted: n, now: t0)
        #expect(step(&d, at: t0) != .runSchedules)
        #expect(step(&d, at: at(50)) == .runSchedules)
    }

    /// A worker that announces.
    func announcing(_ configure: (inout QueueWorkerOptions) -> Void = { _ in }) -> State {
        var o = QueueWorkerOptions(concurrency: 2)
        configure(&o)
        var config = State.Config(o, workers: 2, canListen: false)
        config.announces = true
        return State(config, now: t0, seed: 42)
    }

    @Test func aWorkerAnnouncesItselfEveryThirdOfItsLeaseHeldJobsOrNot() {
        var s = announcing { $0.lease = .seconds(3) }
        claim(&s, [], at: t0)
        #expect(step(&s, at: t0) == .announce)
        s.announced(now: t0)
        // Idle, nothing held: the next announcement is a heartbeat (1 s) away, and the worker wakes for it.
        #expect(step(&s, at: t0) == .wait(until: at(50)))
        var announcements = 0
        var now = 50
        while now <= 3000 {
            switch step(&s, at: at(now)) {
            case .announce:
                announcements += 1
                s.announced(now: at(now))
            case .settle(let r, let n, _, _): s.settled(r, claimed: [], claimWanted: n, now: at(now))
            case .wait(let until): now = max(now + 1, Int((until - t0) / .milliseconds(1)))
            default: now += 1
            }
        }
        #expect(announcements == 3)  // at 1 s, 2 s, 3 s
    }

    @Test func anAnnouncementWhoseConnectionFailedIsRetriedAfterThePollInterval() {
        var s = announcing()
        claim(&s, [], at: t0)
        #expect(step(&s, at: t0) == .announce)
        s.databaseFailed(now: t0)
        #expect(step(&s, at: at(10)) == .wait(until: at(50)))
        claim(&s, [], at: at(50))
        #expect(step(&s, at: at(50)) == .announce)
    }

    /// The table refused the row (a role without rights on it, say): the jobs do not wait, and it is tried
    /// again a heartbeat later, not at every poll.
    @Test func anAnnouncementThatFailsHoldsUpNoJobAndWaitsAHeartbeat() {
        var s = announcing { $0.localBuffer = 0 }
        claim(&s, [], at: t0)
        #expect(step(&s, at: t0) == .announce)
        s.announceFailed(now: t0)
        // The claim at the poll interval is not held back.
        let subs = claim(&s, [job(1)], at: at(50))
        #expect(jobIDs(subs) == [[1]])
        s.completed(ok(1), now: at(60))
        guard case .settle(let records, _, _, _) = step(&s, at: at(60)) else {
            Issue.record("the result is recorded at once")
            return
        }
        #expect(records.map(\.id) == [1])
        s.settled(records, claimed: [], claimWanted: 0, now: at(60))
        // Next announcement: a heartbeat (10 s) after the failure.
        var now = 60
        var announcedAt: Int?
        while announcedAt == nil && now < 20_000 {
            switch step(&s, at: at(now)) {
            case .announce: announcedAt = now
            case .settle(let r, let n, _, _): s.settled(r, claimed: [], claimWanted: n, now: at(now))
            case .wait(let until): now = max(now + 1, Int((until - t0) / .milliseconds(1)))
            default: now += 1
            }
        }
        #expect(announcedAt == 10_000)
    }

    /// A failed announcement while stopping does not stop the results held from being recorded.
    @Test func aFailedAnnouncementWhileStoppingLosesNoResult() {
        var s = announcing {
            $0.localBuffer = 0
            $0.shutdownGrace = .milliseconds(20)
        }
        claim(&s, [job(1)], at: t0)
        #expect(step(&s, at: t0) == .announce)
        s.announced(now: t0)
        _ = s.requestStop(.finish, now: at(1))
        #expect(step(&s, at: at(1)) == .announce)  // "stopping", at once
        s.announceFailed(now: at(1))
        s.completed(ok(1), now: at(11))
        guard case .settle(let records, 0, _, _) = step(&s, at: at(11)) else {
            Issue.record("the result is recorded, not handed back")
            return
        }
        #expect(records.map(\.id) == [1])
        s.settled(records, claimed: [], claimWanted: 0, now: at(11))
        #expect(step(&s, at: at(11)) == .retire)
        #expect(step(&s, at: at(11)) == .exit)
    }

    @Test func aWorkerThatAnnouncedDeletesItsRowBeforeItExits() {
        var s = announcing()
        claim(&s, [], at: t0)
        #expect(step(&s, at: t0) == .announce)
        s.announced(now: t0)
        _ = s.requestStop(.finish, now: at(1))
        #expect(step(&s, at: at(1)) == .retire)
        #expect(step(&s, at: at(1)) == .exit)
        #expect(step(&s, at: at(2)) == .exit)
    }

    @Test func aWorkerThatNeverAnnouncedHasNoRowToDelete() {
        var s = announcing()
        _ = s.requestStop(.handBack, now: t0)
        #expect(step(&s, at: t0) == .exit)
        var quiet = worker()
        claim(&quiet, [], at: t0)
        _ = quiet.requestStop(.finish, now: at(1))
        #expect(step(&quiet, at: at(1)) == .exit)
    }

    @Test func aWorkerHandingBackDeletesItsRowAfterTheHandBack() {
        var s = announcing { $0.localBuffer = 0 }
        let subs = claim(&s, [job(1)], at: t0)
        #expect(step(&s, at: t0) == .announce)
        s.announced(now: t0)
        _ = s.requestStop(.handBack, now: at(1))
        #expect(step(&s, at: at(1)) == .handBack([1], cancelling: tokens(subs)))
        #expect(step(&s, at: at(1)) == .retire)
        #expect(step(&s, at: at(1)) == .exit)
    }
}
