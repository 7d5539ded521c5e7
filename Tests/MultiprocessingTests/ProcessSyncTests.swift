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
        while true { sleep(60) }  // until the test SIGKILLs it
    }
}

/// Waits for the event, at most `milliseconds`; first publishes the id of the thread that waits (so that
/// the test can see it block).
struct WaitForEvent: Job {
    let event: ProcessEvent
    let milliseconds: Int
    let waiter: RawSharedValue<Int32>
    func run() -> Bool {
        waiter.store(OSThread.current.nativeID ?? -1)
        return event.wait(timeout: .milliseconds(milliseconds))
    }
}

/// Waits under the condition until the value reaches 1, then sets it to 2 and notifies; first
/// publishes the id of the thread that waits.
struct WaitForCondition: Job {
    let condition: ProcessCondition
    let value: SharedValue<Int>
    let waiter: RawSharedValue<Int32>
    func run() throws -> Int {
        try condition.lock.withLock {
            waiter.store(OSThread.current.nativeID ?? -1)
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
        while true { sleep(60) }  // until the test SIGKILLs it
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct ProcessSyncTests {
    /// Waits until the thread whose id `child` published in `waiter` sleeps in a futex wait (the only
    /// one it makes there: on the primitive it was sent).
    func waitUntilBlocked(_ child: ChildProcess<some Job>, _ waiter: RawSharedValue<Int32>) throws {
        let pid = try #require(child.pid)
        try eventually("the child waits on the primitive") {
            let tid = waiter.load()
            return tid > 0 && KernelView.isBlocked(pid: pid, tid: tid, in: .futex)
        }
    }

    @Test func permitsOfAKilledHolderGoBackToTheSemaphore() throws {
        let sem = try ProcessSemaphore(value: 2)
        let held = try RawSharedValue<Int32>(0)
        let p = ChildProcess(job: HoldPermits(semaphore: sem, permits: 2, held: held))
        try p.start()
        try eventually("the child holds both permits") { held.load() != 0 }
        #expect(sem.currentValue == 0)
        #expect(sem.acquire(timeout: .milliseconds(50)) == .timedOut)
        p.kill()
        var outcome = LockOutcome.timedOut
        let t = elapsed { outcome = sem.acquire(timeout: .seconds(30)) }
        #expect(outcome == .acquiredFromDeadOwner)
        // Reclaimed well before the timeout (a waiter checks the holders every 20 ms), not at it; the
        // margin is for a machine loaded by other suites.
        #expect(t < .seconds(15))
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
        let waiter = Task { try await sem.acquire(timeout: .seconds(30)) }
        try await eventually("the waiter sleeps on the semaphore") { () async in
            KernelView.aThreadSleepsOnFutex(in: sem.place.segment)
        }
        try sem.release()
        #expect(try await waiter.value == .acquired)
        #expect(try await sem.acquire(timeout: .milliseconds(30)) == .timedOut)
        #expect(throws: MultiprocessingError.self) { try ProcessSemaphore(value: -1) }
    }

    @Test func anEventSetInOneProcessWakesAnother() async throws {
        let event = try ProcessEvent()
        let waiter = try RawSharedValue<Int32>(0)
        let p = ChildProcess(job: WaitForEvent(event: event, milliseconds: 60_000, waiter: waiter))
        try p.start()
        try waitUntilBlocked(p, waiter)
        event.set()
        #expect(try p.result(timeout: .seconds(30)))
        #expect(event.isSet)
        event.clear()
        let q = ChildProcess(job: WaitForEvent(event: event, milliseconds: 100, waiter: try RawSharedValue<Int32>(0)))
        try q.start()
        #expect(try q.result(timeout: .seconds(30)) == false)
        #expect(try await event.wait(timeout: .milliseconds(20)) == false)
        let task = Task { try await event.wait() }
        try await eventually("the task's wait sleeps on the event") { () async in
            KernelView.aThreadSleepsOnFutex(in: event.place.segment)
        }
        event.set()
        #expect(try await task.value)
        #expect(try p.join(timeout: .seconds(10)))
        #expect(try q.join(timeout: .seconds(10)))
    }

    @Test func aConditionNotifiesAcrossProcesses() throws {
        let value = try SharedValue<Int>(0)
        let condition = try ProcessCondition(lock: value.lock)
        let waiter = try RawSharedValue<Int32>(0)
        let p = ChildProcess(job: WaitForCondition(condition: condition, value: value, waiter: waiter))
        try p.start()
        try waitUntilBlocked(p, waiter)
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
        #expect(try p.join(timeout: .seconds(10)))
    }

    @Test func aConditionWaitsAsync() async throws {
        let condition = try ProcessCondition()
        let flag = try RawSharedValue<Int32>(0)
        try await condition.lock.acquire()
        let notifier = background {
            // Once the task's wait sleeps on the condition (its lock released), notify.
            try eventually("the task waits on the condition") {
                KernelView.aThreadSleepsOnFutex(in: condition.place.segment)
            }
            try condition.lock.withLock {
                flag.store(1)
                try condition.notifyAll()
            }
        }
        var woke = false
        while flag.load() == 0 {
            woke = try await condition.wait(timeout: .seconds(30))
            if !woke { break }
        }
        #expect(woke, "the wait timed out instead of being notified")
        #expect(flag.load() == 1)
        try condition.lock.release()
        try notifier.result(timeout: .seconds(10))
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
        for p in ps { #expect(try p.join(timeout: .seconds(10))) }
    }

    @Test func aBarrierWithADeadMemberBreaks() throws {
        let barrier = try ProcessBarrier(parties: 2)
        let held = try RawSharedValue<Int32>(0)
        let p = ChildProcess(job: BarrierDeserter(barrier: barrier, held: held))
        try p.start()
        try eventually("the deserter has the barrier") { held.load() != 0 }
        let pid = try #require(p.pid)
        let killer = background {
            // Killed while this process waits at the barrier.
            try eventually("this process waits at the barrier") { barrier.waiting == 1 }
            p.kill()
        }
        // Broken by the member's death (not by the timeout, which would break it too).
        #expect {
            try barrier.wait(timeout: .seconds(30))
        } throws: { error in
            (error as? BrokenBarrierError)?.reason == "member process \(pid) ended"
        }
        #expect(barrier.isBroken)
        #expect(throws: BrokenBarrierError.self) { try barrier.wait(timeout: .seconds(1)) }
        barrier.reset()
        #expect(!barrier.isBroken)
        try killer.result(timeout: .seconds(10))
        #expect(try p.join(timeout: .seconds(10)))
    }

    @Test func aBarrierWaitThatTimesOutBreaksIt() async throws {
        let barrier = try ProcessBarrier(parties: 2)
        await #expect(throws: BrokenBarrierError.self) { try await barrier.wait(timeout: .milliseconds(100)) }
        #expect(barrier.isBroken)
    }
}
