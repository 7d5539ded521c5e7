import Glibc
import MultiprocessingTestSupport
import Testing
import Threading

@testable import Multiprocessing

// Jobs for the process-shared synchronisation tests.

/// Takes `permits` permits, says so, and hangs (to be SIGKILLed holding them).
struct HoldPermits: Job {
    let semaphore: ProcessSemaphore
    let permits: Int
    let held: RawSharedValue<Int32>
    func run() -> NoOutput {
        for _ in 0..<permits { semaphore.acquire() }
        held.store(1)
        while true { sleep(60) }
    }
}

struct WaitForEvent: Job {
    let event: ProcessEvent
    let milliseconds: Int
    func run() -> Bool { event.wait(timeout: .milliseconds(milliseconds)) }
}

/// Waits under the condition until the value reaches 1, then sets it to 2 and notifies.
struct WaitForCondition: Job {
    let condition: ProcessCondition
    let value: SharedValue<Int>
    func run() throws -> Int {
        try condition.lock.withLock {
            guard try condition.wait(for: { value.value >= 1 }, timeout: .seconds(20)) else { return -1 }
            value.value = 2
            try condition.notifyAll()
            return value.value
        }
    }
}

/// Waits on the barrier `rounds` times; returns the arrival indices.
struct BarrierParty: Job {
    let barrier: ProcessBarrier
    let rounds: Int
    func run() throws -> [Int] { try (0..<rounds).map { _ in try barrier.wait(timeout: .seconds(20)) } }
}

/// A member of the barrier (it received it) that never arrives: it hangs to be killed.
struct BarrierDeserter: Job {
    let barrier: ProcessBarrier
    let held: RawSharedValue<Int32>
    func run() -> NoOutput {
        held.store(1)
        while true { sleep(60) }
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct ProcessSyncTests {
    func waitFor(_ flag: RawSharedValue<Int32>) -> Bool {
        let deadline = ContinuousClock.now + .seconds(30)
        while flag.load() == 0 {
            if ContinuousClock.now > deadline { return false }
            usleep(1_000)
        }
        return true
    }

    @Test func permitsOfAKilledHolderGoBackToTheSemaphore() throws {
        let sem = try ProcessSemaphore(value: 2)
        let held = try RawSharedValue<Int32>(0)
        let p = ChildProcess(job: HoldPermits(semaphore: sem, permits: 2, held: held))
        try p.start()
        #expect(waitFor(held))
        #expect(sem.currentValue == 0)
        #expect(sem.acquire(timeout: .milliseconds(50)) == .timedOut)
        p.kill()
        var outcome = LockOutcome.timedOut
        let t = elapsed { outcome = sem.acquire(timeout: .seconds(5)) }
        #expect(outcome == .acquiredFromDeadOwner)
        #expect(t < .seconds(2))
        #expect(sem.currentValue == 1)
        #expect(sem.deadHolderCount == 1)
        try sem.release()
        #expect(sem.currentValue == 2)
        #expect(try p.join(timeout: .seconds(10)))
    }

    @Test func aBoundedSemaphoreRefusesAnExtraRelease() async throws {
        let sem = try ProcessSemaphore(value: 1, bounded: true)
        #expect(throws: MultiprocessingError.self) { try sem.release() }
        #expect(try await sem.acquire() == .acquired)
        let waiter = Task { try await sem.acquire(timeout: .seconds(10)) }
        try await Task.sleep(for: .milliseconds(50))
        try sem.release()
        #expect(try await waiter.value == .acquired)
        #expect(try await sem.acquire(timeout: .milliseconds(30)) == .timedOut)
        #expect(throws: MultiprocessingError.self) { try ProcessSemaphore(value: -1) }
    }

    @Test func anEventSetInOneProcessWakesAnother() async throws {
        let event = try ProcessEvent()
        let p = ChildProcess(job: WaitForEvent(event: event, milliseconds: 20_000))
        try p.start()
        usleep(100_000)
        event.set()
        #expect(try p.result(timeout: .seconds(30)))
        #expect(event.isSet)
        event.clear()
        let q = ChildProcess(job: WaitForEvent(event: event, milliseconds: 100))
        try q.start()
        #expect(try q.result(timeout: .seconds(30)) == false)
        #expect(try await event.wait(timeout: .milliseconds(20)) == false)
        let waiter = Task { try await event.wait() }
        try await Task.sleep(for: .milliseconds(30))
        event.set()
        #expect(try await waiter.value)
        _ = try p.join(timeout: .seconds(10))
        _ = try q.join(timeout: .seconds(10))
    }

    @Test func aConditionNotifiesAcrossProcesses() throws {
        let value = try SharedValue<Int>(0)
        let condition = try ProcessCondition(lock: value.lock)
        let p = ChildProcess(job: WaitForCondition(condition: condition, value: value))
        try p.start()
        usleep(100_000)
        try condition.lock.withLock {
            value.value = 1
            try condition.notify()
            // The child answers under the same condition.
            #expect(try condition.wait(for: { value.value == 2 }, timeout: .seconds(20)))
        }
        #expect(try p.result(timeout: .seconds(30)) == 2)
        #expect(throws: MultiprocessingError.self) { try condition.notify() }  // lock not held
        let notified = try condition.lock.withLock { try condition.wait(timeout: .milliseconds(50)) }
        #expect(!notified)
        _ = try p.join(timeout: .seconds(10))
    }

    @Test func aConditionWaitsAsync() async throws {
        let condition = try ProcessCondition()
        let flag = try RawSharedValue<Int32>(0)
        try await condition.lock.acquire()
        let notifier = background {
            try condition.lock.withLock {
                flag.store(1)
                try condition.notifyAll()
            }
        }
        var woke = false
        while flag.load() == 0 { woke = try await condition.wait(timeout: .seconds(10)) }
        #expect(woke || flag.load() == 1)
        try condition.lock.release()
        _ = try notifier.result(timeout: .seconds(10))
    }

    @Test func threePartiesPassTheBarrierTogether() throws {
        let barrier = try ProcessBarrier(parties: 3)
        let ps = (0..<2).map { _ in ChildProcess(job: BarrierParty(barrier: barrier, rounds: 3)) }
        for p in ps { try p.start() }
        var mine: [Int] = []
        for _ in 0..<3 { mine.append(try barrier.wait(timeout: .seconds(20))) }
        let theirs = try ps.map { try $0.result(timeout: .seconds(30)) }
        for round in 0..<3 {
            #expect(Set([mine[round], theirs[0][round], theirs[1][round]]) == [0, 1, 2])
        }
        #expect(!barrier.isBroken)
        for p in ps { _ = try p.join(timeout: .seconds(10)) }
    }

    @Test func aBarrierWithADeadMemberBreaks() throws {
        let barrier = try ProcessBarrier(parties: 2)
        let held = try RawSharedValue<Int32>(0)
        let p = ChildProcess(job: BarrierDeserter(barrier: barrier, held: held))
        try p.start()
        #expect(waitFor(held))
        let killer = background {
            usleep(200_000)
            p.kill()
        }
        let t = elapsed {
            #expect(throws: BrokenBarrierError.self) { try barrier.wait(timeout: .seconds(20)) }
        }
        #expect(t < .seconds(5))
        #expect(barrier.isBroken)
        #expect(throws: BrokenBarrierError.self) { try barrier.wait(timeout: .seconds(1)) }
        barrier.reset()
        #expect(!barrier.isBroken)
        _ = try killer.result(timeout: .seconds(10))
        _ = try p.join(timeout: .seconds(10))
    }

    @Test func aBarrierWaitThatTimesOutBreaksIt() async throws {
        let barrier = try ProcessBarrier(parties: 2)
        await #expect(throws: BrokenBarrierError.self) { try await barrier.wait(timeout: .milliseconds(100)) }
        #expect(barrier.isBroken)
    }
}
