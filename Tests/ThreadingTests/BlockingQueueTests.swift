import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import Threading

@Suite(.timeLimit(.minutes(3)))
struct BlockingQueueTests {
    @Test func fifoLifoPriorityOrder() throws {
        let fifo = BlockingQueue<Int>()
        let lifo = BlockingQueue<Int>.lifo()
        let prio = BlockingQueue<Int>.priority()
        for x in [3, 1, 2] {
            try fifo.put(x)
            try lifo.put(x)
            try prio.put(x)
        }
        #expect(try (0..<3).map { _ in try fifo.get() } == [3, 1, 2])
        #expect(try (0..<3).map { _ in try lifo.get() } == [2, 1, 3])
        #expect(try (0..<3).map { _ in try prio.get() } == [1, 2, 3])
    }

    @Test func priorityIsStableForEqualKeys() throws {
        let q = BlockingQueue<(Int, String)>(by: { $0.0 < $1.0 })
        for (p, s) in [(1, "a"), (0, "x"), (1, "b"), (1, "c")] { try q.put((p, s)) }
        #expect(try (0..<4).map { _ in try q.get().1 } == ["x", "a", "b", "c"])
    }

    @Test func fullAndEmptyErrors() throws {
        let q = BlockingQueue<Int>(maxsize: 1)
        #expect(q.isEmpty)
        do {
            _ = try q.getNowait()
            Issue.record("expected empty")
        } catch { #expect(ThreadingError.Code.empty.matches(error)) }
        try q.put(1)
        #expect(q.isFull)
        do {
            try q.putNowait(2)
            Issue.record("expected full")
        } catch { #expect(ThreadingError.Code.full.matches(error)) }
        let d = elapsed {
            do {
                try q.put(2, timeout: .milliseconds(50))
                Issue.record("expected full")
            } catch { #expect(ThreadingError.Code.full.matches(error)) }
        }
        #expect(d >= .milliseconds(45))
        #expect(try q.get() == 1)
        let d2 = elapsed {
            do {
                _ = try q.get(timeout: .milliseconds(50))
                Issue.record("expected empty")
            } catch { #expect(ThreadingError.Code.empty.matches(error)) }
        }
        #expect(d2 >= .milliseconds(45))
        #expect(q.count == 0)
    }

    @Test func blockedPutProceedsWhenRoomAppears() throws {
        let q = BlockingQueue<Int>(maxsize: 1)
        try q.put(0)
        let t = OSThread { try q.put(1, timeout: .seconds(30)) }
        try t.start()
        try eventually("the put to block") { q.waitingPutters == 1 }
        #expect(try q.get() == 0)
        #expect(try q.get(timeout: .seconds(30)) == 1)
        try t.join()
    }

    @Test func taskDoneAndJoin() throws {
        let q = BlockingQueue<Int>()
        for i in 0..<10 { try q.put(i) }
        #expect(!q.join(timeout: .milliseconds(10)))
        let worker = OSThread {
            for _ in 0..<10 {
                _ = try q.get(timeout: .seconds(30))
                try q.taskDone()
            }
        }
        try worker.start()
        #expect(q.join(timeout: .seconds(30)))
        #expect(q.unfinishedTasks == 0)
        try worker.join()
        do {
            try q.taskDone()
            Issue.record("expected error")
        } catch { #expect(error.code == .tooManyTaskDone) }
    }

    @Test func shutdownDrainsThenFails() throws {
        let q = BlockingQueue<Int>()
        try q.put(1)
        q.shutdown()
        do {
            try q.put(2)
            Issue.record("expected shutDown")
        } catch { #expect(ThreadingError.Code.shutDown.matches(error)) }
        #expect(try q.get() == 1)
        do {
            _ = try q.get()
            Issue.record("expected shutDown")
        } catch { #expect(ThreadingError.Code.shutDown.matches(error)) }
    }

    @Test func shutdownImmediateWakesBlockedGettersAndJoin() throws {
        let q = BlockingQueue<Int>()
        let shutDownSeen = Counter()
        let getters = (0..<3).map { _ in
            OSThread {
                do { _ = try q.get(timeout: .seconds(30)) } catch {
                    if ThreadingError.Code.shutDown.matches(error) { shutDownSeen.increment() }
                }
            }
        }
        for t in getters { try t.start() }
        try eventually("3 getters to block") { q.waitingGetters == 3 }
        q.shutdown(immediate: true)
        for t in getters { try t.join() }
        #expect(shutDownSeen.count == 3)

        let q2 = BlockingQueue<Int>()
        for i in 0..<5 { try q2.put(i) }
        q2.shutdown(immediate: true)
        #expect(q2.count == 0)
        #expect(q2.join(timeout: .seconds(1)))
    }

    /// An unbounded FIFO queue hands elements to consumers in batches: the order, the count and an
    /// immediate shutdown count the elements a consumer has moved but not yet taken.
    @Test func batchedHandOffKeepsOrderAndCount() throws {
        let q = BlockingQueue<Int>()
        for i in 1...3 { try q.put(i) }
        #expect(try q.get() == 1)  // moves 1, 2, 3 into the consumers' batch
        #expect(q.count == 2)
        try q.put(4)
        #expect(q.count == 3)
        #expect(try (0..<3).map { _ in try q.get() } == [2, 3, 4])
        #expect(q.isEmpty)
        #expect(throws: ThreadingError.self) { try q.get(blocking: false) }
        // A timed get on an empty batched queue ends with `.empty`, and leaves no waiter behind.
        do {
            _ = try q.get(timeout: .milliseconds(20))
            Issue.record("expected .empty")
        } catch { #expect(error.code == .empty) }
        #expect(q.waitingGetters == 0)
        for i in 5...9 { try q.put(i) }
        #expect(try q.get() == 5)
        for _ in 1...5 { try q.taskDone() }
        q.shutdown(immediate: true)  // 6...9 are in the batch: dropped and counted as done
        #expect(q.count == 0)
        #expect(q.unfinishedTasks == 0)
        #expect(q.join(timeout: .seconds(1)))
        #expect(throws: ThreadingError.self) { try q.get(blocking: false) }
    }

    /// Several producers and consumers (threads, and tasks for the unbounded queue) get every item
    /// exactly once, each producer's items in the order it put them; bounded and unbounded (batched).
    @Test(arguments: [8, 0])
    func manyProducersManyConsumersExactlyOnce(maxsize: Int) async throws {
        let q = BlockingQueue<Int>(maxsize: maxsize)
        let producers = 4
        let consumers = 4
        let perProducer = 20_000
        let seen = TrackedMutex<[Int]>(Array(repeating: 0, count: producers * perProducer))
        let p = (0..<producers).map { id in
            OSThread { for i in 0..<perProducer { try q.put(id * perProducer + i, timeout: .seconds(150)) } }
        }
        let inOrder = TrackedMutex(true)
        @Sendable func record(_ local: [Int]) {
            // Each producer's items, as one consumer got them, in increasing order.
            var last = [Int](repeating: -1, count: producers)
            var ordered = true
            for x in local {
                if x <= last[x / perProducer] { ordered = false }
                last[x / perProducer] = x
            }
            seen.withLock { s in for x in local { s[x] += 1 } }
            if !ordered { inOrder.withLock { $0 = false } }
        }
        // A consumer may wait long for an item while the others take them (under ThreadSanitizer, with
        // builds running beside it, one once waited over 20 s): the timeout only guards against a hang,
        // well inside the suite's time limit. What a consumer got is recorded however its loop ends, so a
        // failure says whether items were lost or a consumer gave up.
        let c = (0..<consumers).map { _ in
            OSThread {
                var local: [Int] = []
                defer { record(local) }
                while true {
                    let x = try q.get(timeout: .seconds(150))
                    if x < 0 { break }
                    local.append(x)
                }
            }
        }
        // Unbounded: two consumers more, as tasks (async get).
        let tasks = (0..<(maxsize == 0 ? 2 : 0)).map { _ in
            Task.detached {
                var local: [Int] = []
                while true {
                    let x = try await q.get()
                    if x < 0 { break }
                    local.append(x)
                }
                record(local)
            }
        }
        for t in c + p { try t.start() }
        for t in p { try await t.join() }
        for _ in 0..<(consumers + tasks.count) { try await q.put(-1) }
        for t in c { try await t.join() }
        for t in tasks { try await t.value }
        let counts = seen.withLock { $0 }
        #expect(counts.allSatisfy { $0 == 1 })
        #expect(inOrder.withLock { $0 }, "a consumer got a producer's items out of order")
        #expect(q.isEmpty)
    }

    @Test func asyncPutGetAndSequence() async throws {
        let q = BlockingQueue<Int>(maxsize: 2)
        let producer = Task {
            for i in 0..<100 { try await q.put(i) }
            q.shutdown()
        }
        var got: [Int] = []
        for try await x in q { got.append(x) }
        try await producer.value
        #expect(got == Array(0..<100))
    }

    @Test func asyncGetIsCancellable() async throws {
        let q = BlockingQueue<Int>()
        let t = Task { try await q.get() }
        try await eventually("the get to suspend") { () async in q.waitingGetters == 1 }
        t.cancel()
        await #expect(throws: CancellationError.self) { try await t.value }
        try await q.put(7)
        #expect(try q.get(blocking: false) == 7)  // the cancelled getter took nothing
    }

    @Test func asyncJoin() async throws {
        let q = BlockingQueue<Int>()
        try await q.put(1)
        let consumer = Task.detached {
            _ = try await q.get()
            try q.taskDone()
        }
        try await q.join()
        try await consumer.value
    }
}
