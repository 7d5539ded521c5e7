import Glibc
import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import Threading

@Suite(.serialized, .timeLimit(.minutes(3)))
struct OSThreadTests {
    @Test func nameIdentsAndAlive() throws {
        let release = Event()
        let t = OSThread(name: "LoopThread") { release.wait() }
        #expect(!t.isAlive)
        #expect(t.ident == nil)
        #expect(t.nativeID == nil)
        try t.start()
        #expect(t.isAlive)
        #expect(t.ident != nil)
        let tid = t.nativeID
        #expect(tid != nil && tid != getpid())
        #expect(t.name == "LoopThread")
        release.set()
        #expect(try t.join(timeout: .seconds(30)))
        #expect(!t.isAlive)
    }

    @Test func currentThreadInsideAndMain() throws {
        let names = Collected<String>()
        let t = OSThread(name: "worker-x") { names.append(OSThread.current.name) }
        try t.start()
        try t.join()
        #expect(names.all == ["worker-x"])
        #expect(OSThread.main.name == "MainThread")
        #expect(OSThread.main.nativeID == getpid())
    }

    @Test func startTwiceAndJoinErrors() throws {
        let t = OSThread {}
        do {
            try t.join()
            Issue.record("expected error")
        } catch { #expect(error.code == .cannotJoin) }
        try t.start()
        do {
            try t.start()
            Issue.record("expected error")
        } catch { #expect(error.code == .alreadyStarted) }
        try t.join()
        let selfJoin = Atomic<Bool>(false)
        let box = TrackedMutex<OSThread?>(nil)
        let s = OSThread {
            let me = box.withLock { $0 }!
            do { try me.join() } catch {
                selfJoin.store(ThreadingError.Code.cannotJoin.matches(error), ordering: .relaxed)
            }
        }
        box.withLock { $0 = s }
        try s.start()
        try s.join()
        let ok = selfJoin.load(ordering: .relaxed)
        #expect(ok)
    }

    @Test func joinTimeoutOnASleepingThread() throws {
        let release = Event()
        let t = OSThread { release.wait(timeout: .seconds(30)) }
        try t.start()
        var finished = true
        let d = try elapsed { finished = try t.join(timeout: .milliseconds(80)) }
        #expect(!finished)
        #expect(d >= .milliseconds(75) && d < .seconds(30))  // upper bound: only "it did not hang"
        release.set()
        #expect(try t.join(timeout: .seconds(30)))
    }

    @Test func activeCountAndEnumerate() throws {
        let release = Event()
        let threads = (0..<3).map { i in OSThread(name: "enum-\(i)") { release.wait(timeout: .seconds(30)) } }
        for t in threads { try t.start() }
        // Other suites start and end threads concurrently: count ours, not a before/after difference.
        #expect(OSThread.activeCount >= 4)
        #expect(OSThread.enumerate().filter { e in threads.contains { $0 === e } }.count == 3)
        let names = Set(OSThread.enumerate().map(\.name))
        #expect(names.isSuperset(of: ["MainThread", "enum-0", "enum-1", "enum-2"]))
        release.set()
        for t in threads { try t.join() }
        #expect(!OSThread.enumerate().contains { $0 === threads[0] })
    }

    @Test func daemonInheritanceAndSetting() throws {
        // Inherited from the creating thread: test-runner threads are foreign ("dummy") threads, daemons.
        let t = OSThread {}
        #expect(t.isDaemon == OSThread.current.isDaemon)
        let d = OSThread(daemon: true) {}
        #expect(d.isDaemon)
        try d.setDaemon(false)
        #expect(!d.isDaemon)
        try d.start()
        do {
            try d.setDaemon(true)
            Issue.record("expected error")
        } catch { #expect(error.code == .alreadyStarted) }
        try d.join()
        let inner = TrackedMutex<Bool?>(nil)
        let parent = OSThread(daemon: true) {
            let child = OSThread {}
            inner.withLock { $0 = child.isDaemon }
        }
        try parent.start()
        try parent.join()
        #expect(inner.withLock { $0 } == true)
    }

    @Test func excepthookReceivesUncaughtErrors() throws {
        struct Boom: Error {}
        let seen = Collected<String>()
        let previous = OSThread.excepthook
        OSThread.excepthook = { args in seen.append("\(args.thread.name):\(args.error)") }
        defer { OSThread.excepthook = previous }
        let t = OSThread(name: "thrower") { throw Boom() }
        try t.start()
        try t.join()
        #expect(seen.all == ["thrower:Boom()"])
    }

    @Test func joinNonDaemonThreads() throws {
        let release = Event()
        let t = OSThread(daemon: false) { release.wait(timeout: .seconds(30)) }
        try t.start()
        #expect(!OSThread.joinNonDaemonThreads(timeout: .milliseconds(30)))
        release.set()
        #expect(OSThread.joinNonDaemonThreads(timeout: .seconds(30)))
    }

    @Test func asyncJoin() async throws {
        let release = Event()
        let t = OSThread { release.wait(timeout: .seconds(30)) }
        try t.start()
        // The join is awaited while the thread is still held (alive); it returns once the thread ended.
        let joiner = Task {
            try await t.join()
            return t.isAlive
        }
        #expect(t.isAlive)
        release.set()
        let aliveAfterJoin = try await joiner.value
        #expect(!aliveAfterJoin)
    }

    /// The seed notes' balance example: with the lock the balance stays 0.
    @Test func balanceWithLockStaysZero() throws {
        final class Bank: @unchecked Sendable { var balance = 0 }
        let bank = Bank()
        let lock = Lock()
        try runThreads(2) { i in
            let n = i == 0 ? 5 : 8
            for _ in 0..<100_000 {
                try lock.withLock { () throws(ThreadingError) in
                    bank.balance += n
                    bank.balance -= n
                }
            }
        }
        #expect(bank.balance == 0)
    }
}
