import Glibc
import Testing
import Threading

@testable import Multiprocessing

/// The pool's state machine without processes: scripted worker events and a fake clock, checked against
/// the actions it returns (frames to send, signals, failures) and the pool's promises.
@Suite struct PoolStateTests {
    typealias State = PoolState
    typealias Action = PoolState.Action

    let t0 = PoolInstant(nanoseconds: 1_000_000_000)

    func at(_ ms: Int) -> PoolInstant { t0 + .milliseconds(ms) }

    /// A pool state with `workers` workers started (ids 1...), none ready yet.
    func pool(_ workers: Int = 1, _ options: ProcessPoolOptions = .init(), cpus: Int = 2) -> State {
        var s = State(size: workers, options: options, now: t0, cpus: cpus)
        for pid in 0..<workers {
            let id = s.startingWorker()
            _ = s.workerStarted(id, pid: Int32(100 + pid), now: t0)
        }
        return s
    }

    /// A unit of `count` items of a new call; its payload is the items' indices, and any sub-range
    /// re-encodes to the indices it covers (so requeued parts can be checked).
    func unit(_ s: inout State, count: Int, options: TaskOptions = .default, call: CallCore? = nil) -> Unit {
        let f = s.function(kind: .function, name: "F", payload: [])
        var u = Unit(
            call: call ?? CallCore(options: options),
            function: f,
            base: 0,
            count: count,
            payload: (0..<count).map { UInt8($0) },
            encodeRange: { r in r.map { UInt8($0) } }
        )
        u.id = s.makeUnitId()  // known before submitting, as the tests name units by id
        return u
    }

    /// The tasks sent, in order, as (worker, unit id, first item of the call, items).
    func sentTasks(_ actions: [Action]) -> [(worker: Int, unit: UInt64, base: Int, count: Int)] {
        actions.flatMap { a -> [(worker: Int, unit: UInt64, base: Int, count: Int)] in
            guard case .send(let w, _, let items) = a else { return [] }
            return items.compactMap {
                if case .task(let u) = $0 { (w, u.id, u.base, u.count) } else { nil }
            }
        }
    }

    func failures(_ actions: [Action]) -> [(index: Int, error: any Error)] {
        actions.compactMap { if case .fail(_, let i, let e) = $0 { (i, e) } else { nil } }
    }

    func code(_ e: any Error) -> PoolError.Code? { (e as? PoolError)?.code }

    @Test func unitsGoToTheLeastBusyWorkerWithTheFunctionDefinedOnce() throws {
        var s = pool(2)
        let units = (0..<4).map { _ in unit(&s, count: 1) }
        let a = try s.submit(units, now: t0)
        let sent = sentTasks(a)
        // Alternately (units 1 and 3 to one worker, 2 and 4 to the other), grouped per worker.
        #expect(sent.map(\.worker) == [1, 1, 2, 2])
        #expect(sent.map(\.unit) == [units[0].id, units[2].id, units[1].id, units[3].id])
        // One send per worker per event, numbered from 0, each starting with the definition.
        let sends = a.compactMap { if case .send(let w, let seq, let items) = $0 { (w, seq, items) } else { nil } }
        #expect(sends.map(\.0) == [1, 2])
        #expect(sends.map(\.1) == [0, 0])
        for (_, _, items) in sends {
            guard case .define = items.first else {
                Issue.record("the first frame to a worker defines the function")
                return
            }
        }
        // The next send to worker 1 is number 1, with no definition.
        _ = try s.received(.output(unit: units[0].id, start: 0, count: 1, busyNanos: 10), from: 1, now: at(1))
        let more = try s.submit([unit(&s, count: 1)], now: at(1))
        guard case .send(1, 1, let items)? = more.first, items.count == 1, case .task = items[0] else {
            Issue.record("expected send #1 to worker 1 with the task alone, got \(more)")
            return
        }
    }

    /// Tiny units on more workers than CPUs: they are kept on 2 × CPUs workers (each further worker woken
    /// for its share only costs context switches); units of unknown or longer length use every worker.
    @Test(arguments: [(cpus: 2, expected: 4), (cpus: 16, expected: 32)])
    func tinyUnitsStayOnAsFewWorkersAsKeepTheCPUsBusy(cpus: Int, expected: Int) throws {
        var s = pool(32, cpus: cpus)
        // Unknown length: every worker gets work.
        let first = (0..<64).map { _ in unit(&s, count: 1) }
        let sent = sentTasks(try s.submit(first, now: t0))
        #expect(Set(sent.map(\.worker)).count == 32)
        // All answer at once, 10 µs each: the units are tiny now.
        for t in sent {
            _ = try s.received(.output(unit: t.unit, start: 0, count: 1, busyNanos: 10_000), from: t.worker, now: at(1))
        }
        let tiny = sentTasks(try s.submit((0..<1100).map { _ in unit(&s, count: 1) }, now: at(2)))
        #expect(Set(tiny.map(\.worker)).count == expected)
        #expect(tiny.count == expected * 32, "each of them holds a full window")
    }

    /// A worker stuck on a long item keeps no CPU for the tiny units: once it is stalled, an idle worker
    /// takes what it held (and what waits), though the tiny units' workers were all in use.
    @Test func aStalledWorkerDoesNotCountAmongTheTinyUnitsWorkers() throws {
        var s = pool(4, cpus: 1)  // tiny units on 2 workers
        let first = (0..<8).map { _ in unit(&s, count: 1) }
        for t in sentTasks(try s.submit(first, now: t0)) {
            _ = try s.received(.output(unit: t.unit, start: 0, count: 1, busyNanos: 10_000), from: t.worker, now: at(1))
        }
        let units = (0..<100).map { _ in unit(&s, count: 1) }
        let sent = sentTasks(try s.submit(units, now: at(2)))
        #expect(Set(sent.map(\.worker)) == [1, 2] && sent.count == 64)
        // Worker 1 runs its first tiny unit for a minute: overdue; the rest of its units are taken back.
        let stuck = try #require(sent.first { $0.worker == 1 })
        let late = [1: State.RunningFacts(unit: stuck.unit, index: 0, elapsed: .seconds(60))]
        let due = try #require(s.overdue(running: late).first)
        let back = sentTasks(s.reclaim(due.id, startedThrough: 3, now: at(60_000)))
        #expect(back.contains { $0.worker == 3 }, "an idle worker takes the stalled one's place")
        #expect(!back.contains { $0.worker == 4 }, "and only one: the tiny units' workers are 2 again")
    }

    /// A worker that retires (its task quota reached) takes no more work: it keeps none of the tiny units'
    /// places, so the next worker takes over at once rather than once the retiring one's units end.
    @Test func aRetiringWorkerDoesNotCountAmongTheTinyUnitsWorkers() throws {
        var options = ProcessPoolOptions()
        options.maxTasksPerChild = 10
        var s = pool(4, options, cpus: 1)  // tiny units on 2 workers
        let first = (0..<8).map { _ in unit(&s, count: 1) }
        for t in sentTasks(try s.submit(first, now: t0)) {
            _ = try s.received(.output(unit: t.unit, start: 0, count: 1, busyNanos: 10_000), from: t.worker, now: at(1))
        }
        // Each worker has run 2 units: it takes 8 more, then retires; all four do, two at a time.
        let sent = sentTasks(try s.submit((0..<100).map { _ in unit(&s, count: 1) }, now: at(2)))
        #expect(Set(sent.map(\.worker)) == [1, 2, 3, 4])
        #expect(sent.count == 32)
    }

    /// A worker stuck on a long item: once the item is overdue (20 mean items, at least 50 ms), the units
    /// queued behind it go to the other worker, the stuck one gets nothing more until its unit ends, and
    /// its word on the taken units (which it never runs) would be ignored.
    @Test func unitsQueuedBehindAnOverdueItemGoToAnotherWorker() throws {
        var s = pool(2)
        let units = (0..<4).map { _ in unit(&s, count: 1) }
        let a = try s.submit(units, now: t0)
        #expect(sentTasks(a).map(\.worker) == [1, 1, 2, 2])
        // Worker 2 answers its units at once; worker 1 runs units[0] on and on.
        for u in [units[1], units[3]] {
            _ = try s.received(.output(unit: u.id, start: 0, count: 1, busyNanos: 10_000), from: 2, now: at(1))
        }
        let running = [1: State.RunningFacts(unit: units[0].id, index: 0, elapsed: .milliseconds(40))]
        #expect(s.overdue(running: running).isEmpty, "not yet overdue")
        #expect(s.supervise(now: at(40), running: running).wakeAt == at(50), "the supervisor looks again then")
        let late = [1: State.RunningFacts(unit: units[0].id, index: 0, elapsed: .milliseconds(60))]
        let due = s.overdue(running: late)
        #expect(due.map(\.id) == [1] && due.map(\.through) == [2], "worker 1's task frames 1 and 2")
        // The worker had started frame 1 only: frame 2 (units[2]) is taken back and sent to worker 2.
        let back = s.reclaim(1, startedThrough: 1, now: at(60))
        #expect(sentTasks(back).map(\.worker) == [2] && sentTasks(back).map(\.unit) == [units[2].id])
        #expect(s.tally.reclaimed == 1)
        // Worker 1 is stalled: new work goes to worker 2 alone, even past worker 2's window.
        let more = (0..<3).map { _ in unit(&s, count: 1) }
        let sent = sentTasks(try s.submit(more, now: at(61)))
        #expect(!sent.contains { $0.worker == 1 })
        // A reply from worker 1 for the unit it gave up is nobody's.
        let (d, _) = try s.received(.output(unit: units[2].id, start: 0, count: 1, busyNanos: 1), from: 1, now: at(62))
        #expect(d == nil)
        #expect(s.overdue(running: late).isEmpty, "a stalled worker is not taken from twice")
        // Its long unit ends: it takes work again.
        _ = try s.received(
            .output(unit: units[0].id, start: 0, count: 1, busyNanos: 5_000_000_000),
            from: 1,
            now: at(5000)
        )
        let after = sentTasks(try s.submit([unit(&s, count: 1)], now: at(5001)))
        #expect(after.map(\.worker) == [1] || sent.count < 3, "worker 1 takes work once its long unit ends")
    }

    /// A worker that answered nothing for a unit it finished before a long item: once that item is
    /// overdue the pool asks the worker (once per running unit) for the replies it holds.
    @Test func repliesHeldBeforeAnOverdueItemAreAskedForOnce() throws {
        var s = pool(1)
        let units = (0..<2).map { _ in unit(&s, count: 1) }
        let wakes = { (a: [Action]) in a.filter { if case .wakeSupervisor = $0 { true } else { false } }.count }
        // Two units on one worker: the supervisor, asleep for its idle second, is woken to watch them.
        #expect(wakes(try s.submit(units, now: t0)) == 1)
        // The first unit running long, the second queued behind it: nothing is owed before it.
        let first = [1: State.RunningFacts(unit: units[0].id, index: 0, elapsed: .milliseconds(60))]
        #expect(s.repliesOwed(running: first).isEmpty)
        // The worker finished the first unit without writing its reply and is now on the second.
        let early = [1: State.RunningFacts(unit: units[1].id, index: 0, elapsed: .milliseconds(40))]
        #expect(s.repliesOwed(running: early).isEmpty, "not yet overdue")
        #expect(s.supervise(now: at(40), running: early).wakeAt == at(50), "the supervisor looks again then")
        #expect(wakes(try s.submit([unit(&s, count: 1)], now: at(41))) == 0, "it will look within the limit")
        let late = [1: State.RunningFacts(unit: units[1].id, index: 0, elapsed: .milliseconds(60))]
        let owed = s.repliesOwed(running: late)
        #expect(owed.map(\.id) == [1] && owed.map(\.unit) == [units[1].id])
        #expect(s.repliesOwed(running: late).isEmpty, "asked once per running unit")
        // The reply arrives: nothing more is owed.
        _ = try s.received(.output(unit: units[0].id, start: 0, count: 1, busyNanos: 10), from: 1, now: at(61))
        #expect(s.repliesOwed(running: late).isEmpty)
    }

    /// A stuck worker that dies after its queued units were taken back: its long unit is dealt with as any
    /// death's, and the units taken from it are not sent again (they were already given to another worker).
    @Test func aStalledWorkersDeathDoesNotResendWhatWasTakenBack() throws {
        var s = pool(2)
        let units = (0..<4).map { _ in unit(&s, count: 1) }
        _ = try s.submit(units, now: t0)
        for u in [units[1], units[3]] {
            _ = try s.received(.output(unit: u.id, start: 0, count: 1, busyNanos: 10_000), from: 2, now: at(1))
        }
        let back = s.reclaim(1, startedThrough: 1, now: at(60))
        #expect(sentTasks(back).map(\.unit) == [units[2].id])
        let facts = State.ExitFacts(exitCode: -9, running: (units[0].id, 0), lastStarted: units[0].id)
        let (_, a) = s.exited(1, facts, now: at(100))
        #expect(!sentTasks(a).contains { $0.unit == units[2].id })
        #expect(failures(a).map(\.index) == [0] || sentTasks(a).map(\.unit) == [units[0].id])
    }

    @Test func aDeathMidChunkFailsTheRunningItemAndSendsTheRestAgain() throws {
        var s = pool(2)
        let u = unit(&s, count: 5)
        _ = try s.submit([u], now: t0)
        let (d, _) = try s.received(.output(unit: u.id, start: 0, count: 2, busyNanos: 5), from: 1, now: at(1))
        guard case .output(_, index: 0, count: 2)? = d else {
            Issue.record("items 0 and 1 are delivered: \(String(describing: d))")
            return
        }
        var facts = State.ExitFacts(exitCode: -11, running: (u.id, 2), lastStarted: u.id)
        facts.stderrTail = ["Fatal error: Index out of range"]
        // The item fails in the exit event itself, with no supervisor round to wait for: a crash reaches
        // the caller as soon as the death is read (`PoolPromiseTests.aCrashReachesTheCallerQuicklyWithItsMessage`
        // end to end; the time it takes is measured by `scripts/bench pool crash`).
        let (gone, a) = s.exited(1, facts, now: at(2))
        #expect(!gone)
        let failed = failures(a)
        #expect(failed.map(\.index) == [2])
        let e = try #require(failed.first?.error as? PoolError)
        #expect(e.code == .workerDied)
        #expect(e.message.contains("SIGSEGV"))
        #expect(e.stderrTail == ["Fatal error: Index out of range"])
        // Items 3 and 4 go again, as one unit, to the surviving worker.
        let again = sentTasks(a)
        #expect(again.count == 1)
        #expect(again.first?.worker == 2)
        #expect(again.first?.base == 3)
        #expect(again.first?.count == 2)
        #expect(s.unexpectedDeaths == 1)
        // The supervisor replaces the dead worker.
        #expect(s.supervise(now: at(3), running: [:]).spawn == 1)
    }

    @Test func aFailedItemIsRetriedAfterItsBackoff() throws {
        var s = pool()
        let policy = RetryPolicy(attempts: 2, backoff: .milliseconds(100), on: [.error])
        let u = unit(&s, count: 1, options: TaskOptions(retry: policy))
        _ = try s.submit([u], now: t0)
        let (d, a) = try s.received(.failure(unit: u.id, index: 0, busyNanos: 1), from: 1, now: at(10))
        #expect(d == nil)  // not delivered: it goes again
        #expect(a.contains { if case .wakeSupervisor = $0 { true } else { false } })
        // Not before the backoff...
        let early = s.supervise(now: at(50), running: [:])
        #expect(sentTasks(early.actions).isEmpty)
        #expect(early.wakeAt == at(110))
        // ...then as attempt 2.
        let due = s.supervise(now: at(110), running: [:])
        let sent = try #require(sentTasks(due.actions).first)
        #expect(sent.worker == 1)
        let retried = try #require(s.workers.first?.inflight.first)
        #expect(retried.attempt == 2)
        // Its second failure is final and delivered.
        let (d2, _) = try s.received(.failure(unit: retried.id, index: 0, busyNanos: 1), from: 1, now: at(120))
        guard case .failure(_, index: 0, softTimedOut: false, attempts: 2)? = d2 else {
            Issue.record("the last attempt's error is delivered: \(String(describing: d2))")
            return
        }
    }

    @Test func aHardTimeoutStopsTheWorkerThenKillsItAndFailsTheItem() throws {
        var s = pool()
        let opts = TaskOptions(timeout: .milliseconds(100), killGrace: .milliseconds(50))
        let u = unit(&s, count: 1, options: opts)
        let a = try s.submit([u], now: t0)
        #expect(a.contains { if case .wakeSupervisor = $0 { true } else { false } })  // it has a deadline
        // Queued, not started: looked at again within its limit.
        #expect(s.supervise(now: at(1), running: [:]).wakeAt == at(101))
        let running = [1: State.RunningFacts(unit: u.id, index: 0, elapsed: .milliseconds(60))]
        let r1 = s.supervise(now: at(60), running: running)
        #expect(r1.wakeAt == at(100))
        #expect(!r1.actions.contains { if case .terminate = $0 { true } else { false } })
        let late = [1: State.RunningFacts(unit: u.id, index: 0, elapsed: .milliseconds(100))]
        let r2 = s.supervise(now: at(100), running: late)
        #expect(r2.actions.contains { if case .terminate(1) = $0 { true } else { false } })
        #expect(r2.wakeAt == at(150))
        #expect(s.expectsExit(1))
        let r3 = s.supervise(now: at(150), running: late)
        #expect(r3.actions.contains { if case .kill(1) = $0 { true } else { false } })
        let (_, a2) = s.exited(1, State.ExitFacts(exitCode: -9, running: (u.id, 0), lastStarted: u.id), now: at(151))
        let e = try #require(failures(a2).first?.error as? PoolError)
        #expect(e.code == .timedOut)
        #expect(s.unexpectedDeaths == 0)  // the pool stopped it: not a crash
    }

    @Test func aSoftTimeoutAsksTheItemToStopFirst() throws {
        var s = pool()
        let opts = TaskOptions(softTimeout: .milliseconds(100), cancelGrace: .milliseconds(30))
        let u = unit(&s, count: 3, options: opts)
        _ = try s.submit([u], now: t0)
        let r = s.supervise(now: at(100), running: [1: .init(unit: u.id, index: 1, elapsed: .milliseconds(100))])
        #expect(r.actions.contains { if case .cancelItem(1, u.id, 1) = $0 { true } else { false } })
        #expect(r.wakeAt == at(130))
        // The item stopped in time: its cancellation is reported as a time-out.
        _ = try s.received(.output(unit: u.id, start: 0, count: 1, busyNanos: 1), from: 1, now: at(110))
        let (d, _) = try s.received(.failure(unit: u.id, index: 1, busyNanos: 1), from: 1, now: at(111))
        guard case .failure(_, index: 1, softTimedOut: true, attempts: 1)? = d else {
            Issue.record("expected a soft time-out: \(String(describing: d))")
            return
        }
    }

    func terminates(_ actions: [Action]) -> Bool {
        actions.contains { if case .terminate(1) = $0 { true } else { false } }
    }

    func kills(_ actions: [Action]) -> Bool { actions.contains { if case .kill(1) = $0 { true } else { false } } }

    func cancelsItem(_ actions: [Action]) -> Bool {
        actions.contains { if case .cancelItem = $0 { true } else { false } }
    }

    /// What worker 1's shared page says at `now` (ms) of a unit whose items started at `starts` (ms).
    func running(_ u: Unit, starts: [Int], at now: Int) -> [Int: State.RunningFacts] {
        let i = starts.lastIndex { $0 <= now } ?? 0
        return [1: .init(unit: u.id, index: UInt64(i), elapsed: .milliseconds(now - starts[i]))]
    }

    /// A hard timeout of any length is due at its item's start plus its limit, exactly: dispatching it
    /// wakes the supervisor, every round before asks to be woken at that instant (not later: a supervisor
    /// asleep for its default round was issue 8's late timeout), and the round at that instant stops the
    /// worker, whose SIGKILL follows at the kill grace. End to end, `PoolPromiseTests` checks that they
    /// fire and not before; how late they fire on real clocks is measured by `scripts/bench pool timeouts`
    /// (Benchmarks/Sources/bench/PoolPromises.swift).
    @Test(arguments: [100, 200, 350, 700, 5_000])
    func aHardTimeoutIsDueAtItsItemsStartPlusItsLimit(limit: Int) throws {
        var s = pool()
        let u = unit(&s, count: 1, options: TaskOptions(timeout: .milliseconds(limit), killGrace: .milliseconds(50)))
        let a = try s.submit([u], now: t0)
        #expect(a.contains { if case .wakeSupervisor = $0 { true } else { false } })
        // Sent, not started yet: no deadline of it can fall before now plus its limit.
        #expect(s.supervise(now: at(0), running: [:]).wakeAt == at(limit))
        let start = 7  // the worker starts it at 7 ms
        for now in [start, start + limit / 2, start + limit - 1] {
            let r = s.supervise(now: at(now), running: running(u, starts: [start], at: now))
            #expect(r.wakeAt == at(start + limit), "the round at \(now) ms")
            #expect(!terminates(r.actions), "the round at \(now) ms")
        }
        let due = s.supervise(now: at(start + limit), running: running(u, starts: [start], at: start + limit))
        #expect(terminates(due.actions))
        #expect(due.wakeAt == at(start + limit + 50))
        let kill = s.supervise(
            now: at(start + limit + 50),
            running: running(u, starts: [start], at: start + limit + 50)
        )
        #expect(kills(kill.actions))
        let (_, b) = s.exited(
            1,
            State.ExitFacts(exitCode: -9, running: (u.id, 0), lastStarted: u.id),
            now: at(start + limit + 51)
        )
        #expect(failures(b).map { code($0.error) } == [.timedOut])
    }

    /// Inside a chunk each item has its own deadline, from its own start (the worker stamps each item's
    /// start in its shared page; the state sees the running item's elapsed time): the third of three
    /// items, started at 80 ms with a 300 ms timeout, is stopped at 380 ms, not at the chunk's 300 ms.
    /// `PoolPromiseTests.itemTimeoutsInsideAChunkFireAtTheirDeadline` is the same chunk in a real pool.
    @Test func anItemInsideAChunkIsTimedFromItsOwnStart() throws {
        var s = pool()
        let u = unit(&s, count: 3, options: TaskOptions(timeout: .milliseconds(300), killGrace: .milliseconds(50)))
        _ = try s.submit([u], now: t0)
        let starts = [0, 40, 80]  // items 0 and 1 take 40 ms; item 2 never ends
        #expect(s.supervise(now: at(20), running: running(u, starts: starts, at: 20)).wakeAt == at(300))
        #expect(s.supervise(now: at(60), running: running(u, starts: starts, at: 60)).wakeAt == at(340))
        let (d, _) = try s.received(
            .output(unit: u.id, start: 0, count: 2, busyNanos: 80_000_000),
            from: 1,
            now: at(81)
        )
        guard case .output(_, index: 0, count: 2)? = d else {
            Issue.record("items 0 and 1 are delivered: \(String(describing: d))")
            return
        }
        for now in [100, 300, 379] {
            let r = s.supervise(now: at(now), running: running(u, starts: starts, at: now))
            #expect(r.wakeAt == at(380), "the round at \(now) ms")
            #expect(!terminates(r.actions), "the round at \(now) ms")
        }
        let due = s.supervise(now: at(380), running: running(u, starts: starts, at: 380))
        #expect(terminates(due.actions))
        let (_, a) = s.exited(1, State.ExitFacts(exitCode: -15, running: (u.id, 2), lastStarted: u.id), now: at(385))
        #expect(failures(a).map(\.index) == [2])
        #expect(failures(a).map { code($0.error) } == [.timedOut])
        #expect(sentTasks(a).isEmpty)  // items 0 and 1 were answered: nothing goes again
    }

    /// A soft timeout whose item ignores cancellation: the item is asked to stop at its start plus the
    /// limit, its worker is stopped (SIGTERM) at that plus the cancel grace and killed (SIGKILL) a kill
    /// grace later, and the item fails as timed out. `PoolPromiseTests.softTimeoutPlusGraceStopsABodyThatIgnoresCancellation`
    /// is the same in a real pool.
    @Test func anIgnoredSoftTimeoutStopsTheWorkerAtTheLimitPlusTheGrace() throws {
        var s = pool()
        let opts = TaskOptions(
            softTimeout: .milliseconds(500),
            cancelGrace: .milliseconds(500),
            killGrace: .milliseconds(200)
        )
        let u = unit(&s, count: 1, options: opts)
        _ = try s.submit([u], now: t0)
        let start = 10
        func round(_ now: Int) -> State.Round {
            s.supervise(now: at(now), running: running(u, starts: [start], at: now))
        }
        for now in [start, start + 499] {
            let r = round(now)
            #expect(r.wakeAt == at(start + 500), "the round at \(now) ms")
            #expect(!cancelsItem(r.actions) && !terminates(r.actions), "the round at \(now) ms")
        }
        let soft = round(start + 500)
        #expect(soft.actions.contains { if case .cancelItem(1, u.id, 0) = $0 { true } else { false } })
        #expect(!terminates(soft.actions))
        #expect(soft.wakeAt == at(start + 1_000))
        let grace = round(start + 999)
        #expect(!cancelsItem(grace.actions) && !terminates(grace.actions))  // asked once
        #expect(grace.wakeAt == at(start + 1_000))
        let stop = round(start + 1_000)
        #expect(terminates(stop.actions) && !kills(stop.actions))
        #expect(stop.wakeAt == at(start + 1_200))
        #expect(!kills(round(start + 1_199).actions))
        #expect(kills(round(start + 1_200).actions))
        let (_, a) = s.exited(1, State.ExitFacts(exitCode: -15, running: (u.id, 0), lastStarted: u.id), now: at(1_211))
        let e = try #require(failures(a).first?.error as? PoolError)
        #expect(e.code == .timedOut)
        #expect(e.message.contains("soft timeout"), "\(e.message)")
        #expect(s.unexpectedDeaths == 0)
    }

    @Test func tooManyDeathsInTheWindowBreakThePool() throws {
        var s = pool(1, ProcessPoolOptions(deathLimit: (2, .seconds(1))))
        let waiting = unit(&s, count: 1)
        for k in 0..<3 {
            let id = k == 0 ? 1 : s.startingWorker()
            if k > 0 { _ = s.workerStarted(id, pid: Int32(200 + k), now: at(k * 10)) }
            let (_, a) = s.exited(id, State.ExitFacts(exitCode: -9), now: at(k * 10 + 1))
            if k < 2 {
                #expect(s.isRunning)
                #expect(failures(a).isEmpty)
            }
        }
        guard case .broken(let e) = s.phase else {
            Issue.record("three deaths in 1 s break a pool whose limit is 2")
            return
        }
        #expect(e.message.contains("3 workers died"))
        // The broken pool refuses work with that error.
        #expect(throws: PoolError.self) { try s.submit([waiting], now: at(40)) }
        #expect(s.supervise(now: at(41), running: [:]).spawn == 0)
    }

    @Test func deathsOutsideTheWindowDoNotBreakThePool() throws {
        var s = pool(1, ProcessPoolOptions(deathLimit: (2, .seconds(1))))
        for k in 0..<5 {
            let id = k == 0 ? 1 : s.startingWorker()
            if k > 0 { _ = s.workerStarted(id, pid: Int32(200 + k), now: at(k * 600)) }
            _ = s.exited(id, State.ExitFacts(exitCode: -9), now: at(k * 600 + 1))
        }
        #expect(s.isRunning)
    }

    @Test func aWorkerIsRecycledAfterMaxTasksPerChild() throws {
        var s = pool(1, ProcessPoolOptions(maxTasksPerChild: 2))
        let units = (0..<3).map { _ in unit(&s, count: 1) }
        let a = try s.submit(units, now: t0)
        #expect(sentTasks(a).count == 2)  // the third waits for a new worker
        _ = try s.received(.output(unit: units[0].id, start: 0, count: 1, busyNanos: 1), from: 1, now: at(1))
        let (_, a2) = try s.received(.output(unit: units[1].id, start: 0, count: 1, busyNanos: 1), from: 1, now: at(2))
        let shutdown = a2.contains {
            if case .send(1, _, let items) = $0, case .shutdown? = items.last { true } else { false }
        }
        #expect(shutdown)
        #expect(s.expectsExit(1))
        #expect(s.supervise(now: at(3), running: [:]).spawn == 1)  // its replacement starts now
        // A clean exit of a retired worker is no death.
        _ = s.exited(1, State.ExitFacts(exitCode: 0), now: at(4))
        #expect(s.unexpectedDeaths == 0)
        let id = s.startingWorker()
        let a3 = s.workerStarted(id, pid: 300, now: at(5))
        #expect(sentTasks(a3).map(\.unit) == [units[2].id])
    }

    @Test func cancellingACallFailsWhatWaitsAndAsksRunningWorkersToStop() throws {
        var s = pool(1)
        let call = CallCore(options: TaskOptions(cancelGrace: .milliseconds(200)))
        let units = (0..<40).map { _ in unit(&s, count: 1, call: call) }
        let a = try s.submit(units, now: t0)
        let sent = sentTasks(a).count
        #expect(sent == 2)  // the worker's window
        let c = s.cancel(call, now: at(5))
        #expect(failures(c).count == 40 - sent)
        #expect(failures(c).allSatisfy { $0.error is CancellationError })
        let marks = c.filter { if case .cancelUnit(1, _, _) = $0 { true } else { false } }
        #expect(marks.count == sent)
        // Still running after the grace period: the worker is stopped.
        let r = s.supervise(now: at(205), running: [1: .init(unit: units[0].id, index: 0, elapsed: .milliseconds(205))])
        #expect(r.actions.contains { if case .terminate(1) = $0 { true } else { false } })
    }

    @Test func terminateFailsEverythingAndStopsEveryWorker() throws {
        var s = pool(2)
        let units = (0..<6).map { _ in unit(&s, count: 2) }
        _ = try s.submit(units, now: t0)
        let a = s.terminate(PoolError(.terminated, "the pool was terminated"), now: at(1))
        #expect(failures(a).count == 12)
        #expect(failures(a).allSatisfy { code($0.error) == .terminated })
        #expect(a.filter { if case .terminate = $0 { true } else { false } }.count == 2)
        // A worker that was still starting is stopped as it arrives.
        let id = s.startingWorker()
        let late = s.workerStarted(id, pid: 400, now: at(2))
        #expect(late.contains { if case .terminate(id) = $0 { true } else { false } })
        _ = s.exited(1, .init(exitCode: -15), now: at(3))
        _ = s.exited(2, .init(exitCode: -15), now: at(3))
        let (gone, _) = s.exited(id, .init(exitCode: -15), now: at(4))
        #expect(gone)
        #expect(s.supervise(now: at(5), running: [:]).finished)
    }

    @Test func closeDrainsThenShutsEveryWorkerDown() throws {
        var s = pool(1)
        let u = unit(&s, count: 1)
        _ = try s.submit([u], now: t0)
        let c = s.close(now: at(1))
        #expect(!c.contains { if case .send = $0 { true } else { false } })  // work is in flight
        let (_, a) = try s.received(.output(unit: u.id, start: 0, count: 1, busyNanos: 1), from: 1, now: at(2))
        #expect(
            a.contains { if case .send(1, _, let items) = $0, case .shutdown? = items.last { true } else { false } }
        )
        let (gone, _) = s.exited(1, .init(exitCode: 0), now: at(3))
        #expect(gone)
        #expect(s.unexpectedDeaths == 0)
    }

    @Test func aReplyThatContradictsTheUnitIsAProtocolViolation() throws {
        var s = pool()
        let u = unit(&s, count: 2)
        _ = try s.submit([u], now: t0)
        #expect(throws: MultiprocessingError.self) {
            try s.received(.output(unit: u.id, start: 1, count: 1, busyNanos: 1), from: 1, now: at(1))
        }
        let a = s.protocolViolation(1, MultiprocessingError(.malformedMessage, "test"))
        #expect(a.contains { if case .kill(1) = $0 { true } else { false } })
        // Its unit is charged although no item was running.
        let (_, b) = s.exited(1, .init(exitCode: -9, lastStarted: u.id), now: at(2))
        // Which item is at fault is unknown: each goes again alone, charged one kill.
        #expect(failures(b).isEmpty)
        #expect(s.pending.map(\.count) == [1, 1])
        #expect(s.pending.map(\.kills) == [1, 1])
        #expect(s.unexpectedDeaths == 1)
    }

    /// An outbox that cannot have its own descriptor is an error (the worker is then not started), never
    /// an outbox that drops what it is given.
    @Test func anOutboxWithoutADescriptorIsAnError() {
        #expect(throws: MultiprocessingError.self) { try Outbox(channel: -1) }
    }

    @Test func theOutboxRestoresTheOrderOfNumberedSends() throws {
        let (a, b) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        defer {
            Syscall.close(a)
            Syscall.close(b)
        }
        let outbox = try Outbox(channel: a)
        defer { outbox.release() }
        outbox.append([[3], [], [3]], seq: 2)
        outbox.append([[2]], seq: 1)
        outbox.flush()  // nothing yet: send 0 has not arrived
        outbox.append([[1]], seq: 0)
        outbox.flush()
        var buf = [UInt8](repeating: 0, count: 16)
        let n = try buf.withUnsafeMutableBytes { try Syscall.receive(b, into: $0) }
        #expect(Array(buf[0..<(n ?? 0)]) == [1, 2, 3, 3])
    }

    /// Arrays larger than the socket's buffer, many per send (more than one `sendmsg` takes): the
    /// caller's flush sends what fits, a background writer the rest, and the reader gets every byte once,
    /// in order.
    @Test func theOutboxWritesManyLargeArraysInOrderWithoutBlocking() throws {
        let (a, b) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        defer {
            Syscall.close(a)
            Syscall.close(b)
        }
        let outbox = try Outbox(channel: a)
        defer { outbox.release() }
        var arrays: [[UInt8]] = []
        for k in 0..<40 {
            let size = k % 3 == 0 ? 5 : 70_000 + k
            arrays.append((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ k) })
        }
        let expected = arrays.flatMap { $0 }
        // Flushed on a thread of its own: a flush that blocked on the full socket (nobody reads it yet)
        // would fail the test at the join rather than hang it.
        let (first, second) = (Array(arrays[..<25]), Array(arrays[25...]))
        let flusher = OSThread(name: "flusher") {
            outbox.append(first, seq: 0)
            outbox.flush()  // returns with most of it still to send: the socket holds far less
            outbox.append(second, seq: 1)
            outbox.flush()
        }
        try flusher.start()
        #expect(try flusher.join(timeout: .seconds(30)))
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while got.count < expected.count {
            #expect(try Syscall.poll(b, events: Int16(POLLIN), deadline: Deadline.after(.seconds(30))))
            guard let n = try buf.withUnsafeMutableBytes({ try Syscall.receive(b, into: $0) }), n > 0 else { break }
            got += buf[0..<n]
        }
        #expect(got.count == expected.count)
        #expect(got == expected)
    }
}

/// The age of a worker's running item as the parent tells it (coarse-clock nanoseconds, a fake clock):
/// exact from the worker's stamp where the worker stamps each item or for a unit's first item, otherwise
/// from the parent's first sight of the item, never longer than it has run.
@Suite struct ItemAgeTests {
    @Test func unstampedItemsAgeFromWhenTheParentFirstSawThem() {
        var ages = ItemAges()
        let ms: UInt64 = 1_000_000
        // The unit started (and was stamped) at 100 ms.
        let stamp = 100 * ms
        // A stamped item (a unit with a time limit): its own stamp, whenever it is seen.
        #expect(ages.age(unit: 7, index: 5, stamp: stamp, stamped: true, now: 180 * ms) == 80 * ms)
        // The first item of an unstamped unit: the unit's stamp is its start.
        #expect(ages.age(unit: 7, index: 0, stamp: stamp, stamped: false, now: 180 * ms) == 80 * ms)
        // Item 3 of an unstamped unit, first seen at 180 ms (it started somewhere after 100 ms): age 0, then
        // the time since that first sight — not the 80 ms since the unit's stamp, which would be too long.
        #expect(ages.age(unit: 7, index: 3, stamp: stamp, stamped: false, now: 180 * ms) == 0)
        #expect(ages.age(unit: 7, index: 3, stamp: stamp, stamped: false, now: 240 * ms) == 60 * ms)
        // The next item starts the count again, as does the same index of another unit.
        #expect(ages.age(unit: 7, index: 4, stamp: stamp, stamped: false, now: 250 * ms) == 0)
        #expect(ages.age(unit: 7, index: 4, stamp: stamp, stamped: false, now: 300 * ms) == 50 * ms)
        #expect(ages.age(unit: 8, index: 4, stamp: 290 * ms, stamped: false, now: 300 * ms) == 0)
        // Never longer than since the stamp (a stamp newer than the first sight: the unit restarted it).
        #expect(ages.age(unit: 8, index: 4, stamp: 310 * ms, stamped: false, now: 320 * ms) == 10 * ms)
        // A stamp from the future of this clock reading (read in the other order) counts as age 0.
        #expect(ages.age(unit: 8, index: 0, stamp: 400 * ms, stamped: false, now: 320 * ms) == 0)
    }
}
