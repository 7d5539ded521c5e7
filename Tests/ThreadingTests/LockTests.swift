import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import Threading

@Suite(.timeLimit(.minutes(3)))
struct LockTests {
    @Test func acquireReleaseAndLocked() throws {
        let lock = Lock()
        #expect(!lock.isLocked)
        #expect(lock.acquire())
        #expect(lock.isLocked)
        #expect(!lock.acquire(blocking: false))
        try lock.release()
        #expect(lock.acquire(blocking: false))
        try lock.release()
    }

    @Test func releaseUnlockedIsAnError() {
        let lock = Lock()
        #expect(throws: ThreadingError.self) { try lock.release() }
        do { try lock.release() } catch { #expect(error.code == .releaseUnlocked) }
    }

    @Test func timeoutExpires() throws {
        let lock = Lock()
        lock.acquire()
        var got = true
        let d = elapsed { got = lock.acquire(timeout: .milliseconds(100)) }
        #expect(!got)
        #expect(d >= .milliseconds(95))
        #expect(d < .seconds(30))  // only "it did not hang": the machine may be busy
        try lock.release()
    }

    @Test func anotherThreadMayRelease() throws {
        let lock = Lock()
        lock.acquire()
        let t = OSThread { try lock.release() }
        try t.start()
        #expect(lock.acquire(timeout: .seconds(30)))
        try t.join()
    }

    @Test func timedAcquireSucceedsWhenReleased() throws {
        let lock = Lock()
        lock.acquire()
        // Released only once the timed acquire below is waiting in the kernel for it.
        let t = OSThread {
            try eventually(within: .seconds(30), "the timed acquire to block") { lock.isContended }
            try lock.release()
        }
        try t.start()
        #expect(lock.acquire(timeout: .seconds(40)))
        try t.join()
    }

    /// N threads × M locked increments of a plain (non-atomic) counter give exactly N·M.
    @Test func noLostUpdates() throws {
        final class Box: @unchecked Sendable { var n = 0 }
        let box = Box()
        let lock = Lock()
        let threads = 8
        let increments = 50_000
        try runThreads(threads) { _ in
            for _ in 0..<increments { lock.withLock { box.n += 1 } }
        }
        #expect(box.n == threads * increments)
    }

    @Test func rlockReentryAndOwnership() throws {
        let r = RLock()
        r.acquire()
        r.acquire()
        #expect(r.isOwnedByCurrentThread)
        // Another thread cannot take it nor release it.
        let otherFailedRelease = Atomic<Bool>(false)
        let otherGot = Atomic<Bool>(true)
        let t = OSThread {
            otherGot.store(r.acquire(blocking: false), ordering: .relaxed)
            do { try r.release() } catch {
                otherFailedRelease.store(ThreadingError.Code.notOwner.matches(error), ordering: .relaxed)
            }
        }
        try t.start()
        try t.join()
        let got = otherGot.load(ordering: .relaxed)
        let failed = otherFailedRelease.load(ordering: .relaxed)
        #expect(!got)
        #expect(failed)
        try r.release()
        #expect(r.isOwnedByCurrentThread)
        try r.release()
        #expect(!r.isOwnedByCurrentThread)
        #expect(throws: ThreadingError.self) { try r.release() }
    }

    @Test func rlockTimeoutAndStress() throws {
        final class Box: @unchecked Sendable { var n = 0 }
        let box = Box()
        let r = RLock()
        try runThreads(4) { _ in
            for _ in 0..<20_000 {
                r.withLock { r.withLock { box.n += 1 } }
            }
        }
        #expect(box.n == 80_000)
        r.acquire()
        let got = Atomic<Bool>(true)
        let t = OSThread { got.store(r.acquire(timeout: .milliseconds(50)), ordering: .relaxed) }
        try t.start()
        try t.join()
        let gotIt = got.load(ordering: .relaxed)
        #expect(!gotIt)
        try r.release()
    }
}
