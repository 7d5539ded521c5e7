import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import Threading

@Suite(.timeLimit(.minutes(3)))
struct ConditionTests {
    @Test func waitWithoutLockIsAnError() {
        let c = Condition(Lock())
        #expect(throws: ThreadingError.self) { try c.wait(timeout: .milliseconds(1)) }
        #expect(throws: ThreadingError.self) { try c.notify() }
        let r = Condition()
        #expect(throws: ThreadingError.self) { try r.notifyAll() }
    }

    @Test func waitTimesOutAndReacquires() throws {
        for c in [Condition(Lock()), Condition(RLock())] {
            c.acquire()
            var ok = true
            let d = try elapsed { ok = try c.wait(timeout: .milliseconds(50)) }
            #expect(!ok)
            #expect(d >= .milliseconds(45))
            try c.notify()  // still owned after the wait
            try c.release()
        }
    }

    @Test func rlockHeldRecursivelyIsFullyReleasedDuringWait() throws {
        let r = RLock()
        let c = Condition(r)
        let flag = Atomic<Bool>(false)
        r.acquire()
        r.acquire()
        let t = OSThread {
            try c.withLock {
                flag.store(true, ordering: .relaxed)
                try c.notify()
            }
        }
        try t.start()
        let ok = try c.wait(for: { flag.load(ordering: .relaxed) }, timeout: .seconds(30))
        #expect(ok)
        try r.release()
        #expect(r.isOwnedByCurrentThread)  // recursion level restored
        try r.release()
        try t.join()
    }

    @Test func producerConsumerNotifyN() throws {
        let c = Condition(Lock())
        final class Box: @unchecked Sendable { var items: [Int] = [] }
        let box = Box()
        let got = Collected<Int>()
        let consumers = (0..<4).map { _ in
            OSThread {
                try c.withLock {
                    // On a timeout nothing is taken, and the final expectation fails.
                    if try c.wait(for: { !box.items.isEmpty }, timeout: .seconds(30)) {
                        got.append(box.items.removeLast())
                    }
                }
            }
        }
        for t in consumers { try t.start() }
        // Every consumer waits before the first item: each one is woken by a notify(1).
        try eventually("4 consumers to wait") { c.waiterCount == 4 }
        for i in 0..<4 {
            try c.withLock {
                box.items.append(i)
                try c.notify(1)
            }
        }
        for t in consumers { try t.join() }
        #expect(got.all.sorted() == [0, 1, 2, 3])
    }

    @Test func notifyAllWakesEveryone() throws {
        let c = Condition()
        let go = Atomic<Bool>(false)
        let woke = Counter()
        let threads = (0..<5).map { _ in
            OSThread {
                try c.withLock {
                    if try c.wait(for: { go.load(ordering: .relaxed) }, timeout: .seconds(30)) { woke.increment() }
                }
            }
        }
        for t in threads { try t.start() }
        try eventually("5 threads to wait") { c.waiterCount == 5 }
        try c.withLock {
            go.store(true, ordering: .relaxed)
            try c.notifyAll()
        }
        for t in threads { try t.join() }
        #expect(woke.count == 5)
    }

    /// Ping-pong through one condition: a lost wake-up would hang (caught by the time limit).
    @Test func pingPongHasNoLostWakeups() throws {
        let c = Condition(Lock())
        final class Turn: @unchecked Sendable { var value = 0 }
        let turn = Turn()
        let rounds = 5_000
        try runThreads(2) { me in
            for _ in 0..<rounds {
                try c.withLock {
                    while turn.value != me { try c.wait() }
                    turn.value = 1 - me
                    try c.notify()
                }
            }
        }
        #expect(turn.value == 0)
    }
}
