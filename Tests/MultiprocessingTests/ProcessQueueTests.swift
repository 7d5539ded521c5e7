import Glibc
import MultiprocessingTestSupport
import Testing
import Threading

@testable import Multiprocessing

@Suite(.serialized, .timeLimit(.minutes(2)))
struct ProcessQueueTests {
    struct Item: Codable, Equatable {
        var id: Int
        var name: String
        var data: [Double]
    }

    @Test func inProcessPutGetAndErrors() throws {
        let q = try ProcessQueue<Item>(maxsize: 2)
        #expect(q.isEmpty)
        try q.put(Item(id: 1, name: "a", data: [1]))
        try q.put(Item(id: 2, name: "b", data: []))
        #expect(q.count == 2 && q.isFull)
        do {
            try q.putNowait(Item(id: 3, name: "c", data: []))
            Issue.record("expected full")
        } catch let e as MultiprocessingError {
            #expect(e.code == .full)
        }
        let t0 = ContinuousClock.now
        #expect(throws: MultiprocessingError.self) {
            try q.put(Item(id: 3, name: "c", data: []), timeout: .milliseconds(50))
        }
        #expect(ContinuousClock.now - t0 >= .milliseconds(45))
        #expect(try q.get().id == 1)
        #expect(try q.get(timeout: .seconds(1)).id == 2)
        do {
            _ = try q.getNowait()
            Issue.record("expected empty")
        } catch let e as MultiprocessingError {
            #expect(e.code == .empty)
        }
        #expect(throws: MultiprocessingError.self) { try q.get(timeout: .milliseconds(30)) }
        q.close()
        #expect(throws: MultiprocessingError.self) { try q.put(Item(id: 9, name: "", data: [])) }
    }

    @Test func wrapAroundAndTooLargeItems() throws {
        let q = try ProcessQueue<[UInt8]>(capacity: 10_000)
        for round in 0..<50 {
            let item = [UInt8](repeating: UInt8(round), count: 3_000)
            try q.put(item)
            try q.put(item)
            #expect(try q.get() == item)
            #expect(try q.get() == item)
        }
        #expect(throws: MultiprocessingError.self) { try q.put([UInt8](repeating: 0, count: 20_000)) }
    }

    @Test func seedWriterReaderAcrossProcesses() throws {
        let q = try ProcessQueue<String>()
        let w = ChildProcess(job: Writer(queue: q))
        try w.start()
        try w.join(timeout: .seconds(30))
        #expect(w.exitCode == 0)
        // Delivered although the writer has exited.
        #expect(try (0..<3).map { _ in try q.get(timeout: .seconds(5)) } == ["A", "B", "C"])
    }

    @Test func fourProducersTenThousandEachExactlyOnce() throws {
        let q = try ProcessQueue<Int>(maxsize: 1_000)
        let producers = (0..<4).map { ChildProcess(job: Producer(queue: q, producer: $0, count: 10_000)) }
        for p in producers { try p.start() }
        var seen = Set<Int>()
        var duplicates = 0
        for _ in 0..<40_000 {
            let x = try q.get(timeout: .seconds(30))
            if !seen.insert(x).inserted { duplicates += 1 }
        }
        for p in producers {
            try p.join(timeout: .seconds(30))
            #expect(p.exitCode == 0)
        }
        #expect(duplicates == 0)
        #expect(seen.count == 40_000)
        #expect((0..<4).allSatisfy { k in (0..<10_000).allSatisfy { seen.contains(k * 1_000_000 + $0) } })
        #expect(q.isEmpty)
    }

    @Test func manyProducersAndManyConsumersExactlyOnce() throws {
        let q = try ProcessQueue<Int>(maxsize: 500)
        let producers = (0..<3).map { ChildProcess(job: Producer(queue: q, producer: $0, count: 5_000)) }
        let consumers = (0..<3).map { _ in ChildProcess(job: Collector(queue: q)) }
        for c in consumers { try c.start() }
        for p in producers { try p.start() }
        for p in producers { try p.join(timeout: .seconds(60)) }
        for _ in consumers { try q.put(-1) }  // one stop marker per consumer, after all items
        var all: [Int] = []
        for c in consumers { all += try c.result(timeout: .seconds(60)) }
        for c in consumers { try c.join(timeout: .seconds(10)) }
        #expect(all.count == 15_000)
        #expect(Set(all).count == 15_000)
        #expect(Set(all) == Set((0..<3).flatMap { k in (0..<5_000).map { k * 1_000_000 + $0 } }))
    }

    @Test func oneProducerAndEightConsumersExactlyOnce() throws {
        // The wake-ups are passed on from getter to getter (one at a time): every item still reaches one
        // consumer, however the eight share them.
        let q = try ProcessQueue<Int>()
        let consumers = (0..<8).map { _ in ChildProcess(job: Collector(queue: q)) }
        for c in consumers { try c.start() }
        for i in 0..<40_000 { try q.put(i) }
        for _ in consumers { try q.put(-1) }
        var all: [Int] = []
        for c in consumers { all += try c.result(timeout: .seconds(60)) }
        for c in consumers { try c.join(timeout: .seconds(10)) }
        #expect(all.count == 40_000)
        #expect(Set(all) == Set(0..<40_000))
    }

    @Test func aWokenGetterThatNeverComesBackStopsNoOtherGetter() throws {
        // A getter killed between its wake-up and the lock leaves the wake-up flag set, and puts send no
        // more wake-ups while it is. A sleeping getter looks again by itself after its slice and clears it.
        let q = try ProcessQueue<Int>()
        let consumer = ChildProcess(job: Collector(queue: q))
        try consumer.start()
        try eventually("the consumer sleeps in get") {
            q.ring.sleepingGettersForTesting == 1 && KernelView.aThreadSleepsOnASharedFutex(pid: consumer.pid!)
        }
        q.ring.strandWakeUpForTesting()
        try q.put(7)
        try q.put(-1)
        // Its `get` gives up after 30 s by itself; 10 s here is the slice (50 ms) with room to spare.
        do {
            #expect(try consumer.result(timeout: .seconds(10)) == [7])
        } catch {
            Issue.record("the sleeping getter never took the item: \(error)")
            consumer.kill()
        }
        try consumer.join(timeout: .seconds(10))
    }

    @Test func aGetterKilledAsleepHoldsNoWakeUpForTheNextItem() throws {
        // A getter killed while asleep stays counted (it never takes its count back), so a put sets the
        // wake-up flag for a getter that will never come. Whoever empties the ring clears it, or the next
        // getter to sleep would wait a whole slice for every item.
        let q = try ProcessQueue<Int>()
        let doomed = ChildProcess(job: Collector(queue: q))
        try doomed.start()
        try eventually("the getter sleeps in get") {
            q.ring.sleepingGettersForTesting == 1 && KernelView.aThreadSleepsOnASharedFutex(pid: doomed.pid!)
        }
        doomed.kill()
        try doomed.join(timeout: .seconds(10))
        #expect(q.ring.sleepingGettersForTesting == 1)
        try q.put(1)
        #expect(q.ring.wakeUpInFlightForTesting)
        #expect(try q.getNowait() == 1)
        #expect(!q.ring.wakeUpInFlightForTesting)
    }

    @Test func consumerKilledMidGetDoesNotCorruptTheQueue() throws {
        let seed = replayableSeed()
        var rng = SplitMix64(state: seed)
        let q = try ProcessQueue<Int>()
        let n = 3_000
        for i in 0..<n { try q.put(i) }
        for _ in 0..<3 {
            let before = q.count
            let c = ChildProcess(job: SlowConsumer(queue: q))
            try c.start()
            try eventually("the consumer is taking items") { q.count < before }
            // The sleep is the subject: the kill lands at a random moment of the consumer's gets.
            usleep(useconds_t(Int.random(in: 0..<30_000, using: &rng)))
            c.kill()
            try c.join(timeout: .seconds(10))
            #expect(c.exitCode == -SIGKILL, "seed \(seed) (MP_TEST_SEED replays it)")
        }
        // What is left is intact, in order, and a suffix of what was put.
        var rest: [Int] = []
        while true {
            do {
                rest.append(try q.getNowait())
            } catch let e as MultiprocessingError where e.code == .empty {
                break
            }
        }
        #expect(!rest.isEmpty, "seed \(seed) (MP_TEST_SEED replays it)")
        #expect(rest == Array((n - rest.count)..<n), "seed \(seed) (MP_TEST_SEED replays it)")
    }

    @Test func processDyingWhileHoldingTheLockDoesNotWedgeTheQueue() throws {
        let q = try ProcessQueue<Int>()
        try q.put(1)
        let p = ChildProcess(job: DieHoldingQueueLock(queue: q))
        try p.start()
        try p.join(timeout: .seconds(10))
        #expect(p.exitCode == 9)
        // The robust mutex is recovered by the next locker, which rebuilds the count from the records.
        #expect(q.count == 1)
        try q.put(2)
        #expect(try q.get(timeout: .seconds(5)) == 1)
        #expect(try q.get(timeout: .seconds(5)) == 2)
    }

    @Test func joinableAcrossProcesses() throws {
        let q = try JoinableProcessQueue<Int>()
        for i in 0..<100 { try q.put(i) }
        #expect(!q.join(timeout: .milliseconds(20)))
        let c = ChildProcess(job: TaskDoneConsumer(queue: q, count: 100))
        try c.start()
        #expect(q.join(timeout: .seconds(30)))
        #expect(q.unfinishedTasks == 0)
        try c.join(timeout: .seconds(30))
        #expect(throws: MultiprocessingError.self) { try q.taskDone() }
    }

    @Test func asyncPutGetAndCancellation() async throws {
        let q = try ProcessQueue<String>(maxsize: 1)
        try await q.put("x")
        #expect(try await q.get() == "x")
        let waiting = Task { try await q.get() }
        let header = try #require(KernelView.mapping(of: q.ring.fd), "the queue's mapping")
        // TODO(hook): `ProcessQueue.waitingGetters` (the ring counts them in its header) would say this.
        try await eventually("the getter sleeps on the queue") { () async in
            KernelView.aThreadSleepsOnFutex(in: header, count: 4096)
        }
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        try q.put("y", timeout: nil)
        #expect(try q.get(timeout: .seconds(1)) == "y")  // the cancelled getter took nothing
    }

    /// Many rounds of "cancel a waiting async get, then put": the item must never vanish into the
    /// cancelled getter.
    @Test func cancelledAsyncGetNeverLosesAnItem() async throws {
        let seed = replayableSeed()
        var rng = SplitMix64(state: seed)
        let q = try ProcessQueue<Int>()
        for i in 0..<20 {
            let waiting = Task { try await q.get() }
            // The sleep is the subject: the cancellation lands at a random moment of the get.
            try await Task.sleep(for: .milliseconds(Int.random(in: 0..<60, using: &rng)))
            waiting.cancel()
            try q.put(i, timeout: nil)
            let got: Int?
            do {
                got = try await waiting.value
            } catch is CancellationError {
                got = nil
            }
            let left: Int?
            do {
                left = try q.get(timeout: .milliseconds(200))
            } catch let e as MultiprocessingError where e.code == .empty {
                left = nil
            }
            // Exactly one of them has it.
            #expect(
                (got == i) != (left == i),
                "round \(i): got \(String(describing: got)), left \(String(describing: left)); seed \(seed) (MP_TEST_SEED replays it)"
            )
        }
    }

    @Test func simpleQueue() throws {
        let q = try SimpleProcessQueue<Int>()
        try q.put(5)
        #expect(!q.isEmpty)
        #expect(try q.get(timeout: .seconds(1)) == 5)
        #expect(q.isEmpty)
    }
}
