import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import Threading

@Suite(.timeLimit(.minutes(3)))
struct SemaphoreTests {
    @Test func countsPermits() throws {
        let s = Semaphore(2)
        #expect(s.acquire(blocking: false))
        #expect(s.acquire(blocking: false))
        #expect(!s.acquire(blocking: false))
        try s.release(2)
        #expect(s.availablePermits == 2)
        #expect(throws: ThreadingError.self) { try s.release(0) }
    }

    @Test func timeout() {
        let s = Semaphore(0)
        var ok = true
        let d = elapsed { ok = s.acquire(timeout: .milliseconds(60)) }
        #expect(!ok)
        #expect(d >= .milliseconds(55))
    }

    @Test func releaseNWakesN() throws {
        let s = Semaphore(0)
        let passed = Counter()
        let threads = (0..<3).map { _ in OSThread { if s.acquire(timeout: .seconds(30)) { passed.increment() } } }
        for t in threads { try t.start() }
        try eventually("3 threads to wait") { s.waiterCount == 3 }
        try s.release(3)
        for t in threads { try t.join() }
        #expect(passed.count == 3)
    }

    @Test func boundedOverReleaseIsAnError() throws {
        let b = BoundedSemaphore(1)
        b.acquire()
        try b.release()
        do {
            try b.release()
            Issue.record("expected over-release error")
        } catch {
            #expect(error.code == .overRelease)
        }
        #expect(b.availablePermits == 1)
    }

    @Test func limitsConcurrency() throws {
        let s = Semaphore(3)
        let inside = Atomic<Int>(0)
        let peak = Atomic<Int>(0)
        try runThreads(8) { _ in
            for _ in 0..<200 {
                s.withPermit {
                    let now = inside.add(1, ordering: .relaxed).newValue
                    peak.max(now, ordering: .relaxed)
                    inside.subtract(1, ordering: .relaxed)
                }
            }
        }
        let p = peak.load(ordering: .relaxed)
        #expect(p <= 3)
    }

    @Test func asyncAcquireSuspendsAndIsCancellable() async throws {
        let s = Semaphore(0)
        let waiter = Task { try await s.acquire() }
        try await eventually("the task to wait") { () async in s.waiterCount == 1 }
        try s.release()
        try await waiter.value
        let cancelled = Task { try await s.acquire() }
        try await eventually("the task to wait") { () async in s.waiterCount == 1 }
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        #expect(s.waiterCount == 0)
        // The cancelled waiter took nothing.
        try s.release()
        #expect(s.acquire(blocking: false))
    }

    /// Many tasks waiting at once on a semaphore run on the cooperative pool (2 threads here): if async
    /// acquire blocked a thread, this would deadlock.
    @Test func asyncWaitersDoNotBlockThreads() async throws {
        let s = Semaphore(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<50 { group.addTask { try await s.acquire() } }
            group.addTask {
                // `async in` picks the overload that suspends between checks (a plain closure would pick
                // the one that blocks a thread of the pool).
                try await eventually("50 tasks to wait at once") { () async in s.waiterCount == 50 }
                try s.release(50)
            }
            try await group.waitForAll()
        }
    }
}

@Suite(.timeLimit(.minutes(3)))
struct EventTests {
    @Test func setClearWait() throws {
        let e = Event()
        #expect(!e.isSet)
        #expect(!e.wait(timeout: .milliseconds(10)))
        e.set()
        #expect(e.isSet)
        #expect(e.wait(timeout: .milliseconds(10)))
        e.clear()
        #expect(!e.isSet)
    }

    @Test func setWakesAllThreadWaiters() throws {
        let e = Event()
        let woke = Counter()
        let threads = (0..<4).map { _ in OSThread { if e.wait(timeout: .seconds(30)) { woke.increment() } } }
        for t in threads { try t.start() }
        try eventually("4 threads to wait") { e.waiterCount == 4 }
        e.set()
        for t in threads { try t.join() }
        #expect(woke.count == 4)
    }

    @Test func asyncWaitAndCancellation() async throws {
        let e = Event()
        let t = Task { try await e.wait() }
        try await eventually("the task to wait") { () async in e.waiterCount == 1 }
        e.set()
        try await t.value
        let e2 = Event()
        let c = Task { try await e2.wait() }
        c.cancel()
        await #expect(throws: CancellationError.self) { try await c.value }
    }

    /// The seed notes' Event example: workers wait for a go signal.
    @Test func pingPong() throws {
        let e1 = Event()
        let e2 = Event()
        let rounds = 2_000
        let a = OSThread {
            for _ in 0..<rounds {
                e1.set()
                e2.wait()
                e2.clear()
            }
        }
        let b = OSThread {
            for _ in 0..<rounds {
                e1.wait()
                e1.clear()
                e2.set()
            }
        }
        try a.start()
        try b.start()
        #expect(try a.join(timeout: .seconds(30)))
        #expect(try b.join(timeout: .seconds(30)))
    }
}
