import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import Threading

@Suite(.timeLimit(.minutes(3)))
struct BarrierTests {
    @Test func releasesAllPartiesAndRunsActionOnce() throws {
        let actions = Counter()
        let b = Barrier(parties: 3) { actions.increment() }
        let indices = Collected<Int>()
        try runThreads(3) { _ in
            for _ in 0..<100 { indices.append(try b.wait(timeout: .seconds(30))) }
        }
        #expect(actions.count == 100)
        let counts = Dictionary(grouping: indices.all, by: { $0 }).mapValues(\.count)
        #expect(counts == [0: 100, 1: 100, 2: 100])
        #expect(!b.isBroken)
    }

    @Test func abortMidWaitBreaksEveryWaiter() throws {
        let b = Barrier(parties: 4)
        let broken = Counter()
        let threads = (0..<3).map { _ in
            OSThread {
                do { try b.wait(timeout: .seconds(30)) } catch {
                    if ThreadingError.Code.brokenBarrier.matches(error) { broken.increment() }
                }
            }
        }
        for t in threads { try t.start() }
        try eventually("3 threads to wait") { b.waitingCount == 3 }
        b.abort()
        for t in threads { try t.join() }
        #expect(broken.count == 3)
        #expect(b.isBroken)
        #expect(throws: ThreadingError.self) { try b.wait() }
        b.reset()
        #expect(!b.isBroken)
        try runThreads(4) { _ in try b.wait(timeout: .seconds(30)) }
    }

    @Test func timeoutBreaksTheBarrier() throws {
        let b = Barrier(parties: 2)
        let d = elapsed {
            #expect(throws: ThreadingError.self) { try b.wait(timeout: .milliseconds(50)) }
        }
        #expect(d >= .milliseconds(45))
        #expect(b.isBroken)
    }

    @Test func resetBreaksCurrentWaiters() throws {
        let b = Barrier(parties: 2)
        let broken = Counter()
        let t = OSThread {
            do { try b.wait(timeout: .seconds(30)) } catch { broken.increment() }
        }
        try t.start()
        try eventually("the thread to wait") { b.waitingCount == 1 }
        b.reset()
        try t.join()
        #expect(broken.count == 1)
        #expect(!b.isBroken)
    }

    @Test func failingActionBreaksBarrier() throws {
        struct Boom: Error {}
        let b = Barrier(parties: 2) { throw Boom() }
        let errors = Collected<String>()
        try runThreads(2) { _ in
            do { try b.wait(timeout: .seconds(30)) } catch { errors.append("\(type(of: error))") }
        }
        #expect(errors.all.sorted() == ["Boom", "ThreadingError"])
    }
}

@Suite(.timeLimit(.minutes(3)))
struct TimerTests {
    @Test func firesAfterInterval() throws {
        let fired = Event()
        let timer = ThreadTimer(after: .milliseconds(30)) { fired.set() }
        var ok = false
        let d = try elapsed {
            try timer.start()
            ok = fired.wait(timeout: .seconds(30))
        }
        #expect(ok)
        #expect(d >= .milliseconds(25))  // not before its interval
        try timer.join()
    }

    @Test func cancelPreventsFiring() throws {
        let fired = Counter()
        // An interval far longer than the test: the timer can fire only if cancel() failed (cancel wakes
        // the timer's thread, so join returns at once).
        let timer = ThreadTimer(after: .seconds(30)) { fired.increment() }
        try timer.start()
        timer.cancel()
        try timer.join()
        #expect(fired.count == 0)
        #expect(timer.isCancelled)
    }
}

@Suite(.timeLimit(.minutes(3)))
struct ThreadLocalTests {
    /// The seed notes' example: each thread binds its own student.
    @Test func aliceAndBob() throws {
        let localSchool = ThreadLocal<String?>()
        let lines = Collected<String>()
        @Sendable func processStudent() {
            let std = localSchool.value!
            lines.append("Hello, \(std) (in \(OSThread.current.name))")
        }
        // Interleaved on purpose: Bob's thread binds its student after Alice's and before Alice's is read.
        let aliceBound = Event()
        let bobBound = Event()
        let missedTurns = Counter()
        let t1 = OSThread(name: "Thread-A") {
            localSchool.value = "Alice"
            aliceBound.set()
            if !bobBound.wait(timeout: .seconds(30)) { missedTurns.increment() }
            processStudent()
        }
        let t2 = OSThread(name: "Thread-B") {
            if !aliceBound.wait(timeout: .seconds(30)) { missedTurns.increment() }
            localSchool.value = "Bob"
            bobBound.set()
            processStudent()
        }
        try t1.start()
        try t2.start()
        try t1.join()
        try t2.join()
        #expect(missedTurns.count == 0)
        #expect(lines.all.sorted() == ["Hello, Alice (in Thread-A)", "Hello, Bob (in Thread-B)"])
        #expect(localSchool.value == nil)  // the main thread never set it
    }

    @Test func defaultFactoryPerThread() throws {
        let made = Counter()
        let local = ThreadLocal<[Int]>(default: {
            made.increment()
            return []
        })
        try runThreads(3) { i in
            local.value.append(i)
            local.value.append(i)
            #expect(local.value == [i, i])
        }
        #expect(made.count == 3)
    }

    @Test func valueReleasedWhenThreadEnds() throws {
        final class Tracked: Sendable {
            let released: Event
            init(_ e: Event) { released = e }
            deinit { released.set() }
        }
        let released = Event()
        let local = ThreadLocal<Tracked?>()
        let t = OSThread { local.value = Tracked(released) }
        try t.start()
        try t.join()
        #expect(released.wait(timeout: .seconds(30)))
    }

    @Test func valuesReleasedWhenLocalDeinits() throws {
        final class Tracked: Sendable {
            let counter: Counter
            init(_ c: Counter) { counter = c }
            deinit { counter.increment() }
        }
        let released = Counter()
        do {
            let local = ThreadLocal<Tracked?>()
            local.value = Tracked(released)
            #expect(released.count == 0)
        }
        #expect(released.count == 1)
    }
}
