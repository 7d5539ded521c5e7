import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import Threading

@Suite(.timeLimit(.minutes(3)))
struct ThreadPoolTests {
    struct Boom: Error, Equatable { let n: Int }

    @Test func submitResultAndError() throws {
        let pool = ThreadPool(maxWorkers: 2)
        let f = try pool.submit { 6 * 7 }
        #expect(try f.result(timeout: .seconds(30)) == 42)
        #expect(f.isDone && !f.isCancelled && !f.isRunning)
        let g = try pool.submit { () throws -> Int in throw Boom(n: 1) }
        #expect(throws: Boom(n: 1)) { try g.result(timeout: .seconds(30)) }
        #expect(try g.error(timeout: .seconds(30)) as? Boom == Boom(n: 1))
        #expect(try f.error() == nil)
        pool.shutdown()
    }

    @Test func resultTimeout() throws {
        let pool = ThreadPool(maxWorkers: 1)
        let release = Event()
        let f = try pool.submit { release.wait(timeout: .seconds(30)) }
        do {
            _ = try f.result(timeout: .milliseconds(30))
            Issue.record("expected timeout")
        } catch {
            #expect(ThreadingError.Code.timedOut.matches(error))
        }
        release.set()
        #expect(try f.result(timeout: .seconds(30)))
        pool.shutdown()
    }

    @Test func cancelBeforeStart() throws {
        let pool = ThreadPool(maxWorkers: 1)
        let release = Event()
        let blocker = try pool.submit { release.wait(timeout: .seconds(30)) }
        let ran = Counter()
        let queued = try pool.submit { ran.increment() }
        try eventually("the blocker to run") { blocker.isRunning }
        #expect(queued.cancel())
        #expect(queued.isCancelled)
        #expect(!blocker.cancel())  // a running future cannot be cancelled
        #expect(blocker.isRunning && !blocker.isCancelled)
        release.set()
        pool.shutdown()
        #expect(ran.count == 0)
        do {
            _ = try queued.result()
            Issue.record("expected cancelled")
        } catch {
            #expect(ThreadingError.Code.cancelled.matches(error))
        }
    }

    @Test func doneCallbacksAndAsyncValue() async throws {
        let pool = ThreadPool(maxWorkers: 2)
        let called = Event()
        let f = try pool.submit { "hi" }
        f.addDoneCallback { fut in if (try? fut.result()) == "hi" { called.set() } }
        #expect(try await f.value == "hi")
        // Callbacks run after the waiters are woken: wait for it without holding a cooperative thread.
        try await eventually("the done callback to run") { () async in called.isSet }
        // A callback added after completion runs at once.
        let late = Counter()
        f.addDoneCallback { _ in late.increment() }
        #expect(late.count == 1)
        pool.shutdown()
    }

    @Test func orderedLazyMap() async throws {
        let pool = ThreadPool(maxWorkers: 4)
        let started = Counter()
        let m = try pool.map(0..<1_000, bufferSize: 8) { x -> Int in
            started.increment()
            if x % 7 == 0 { sleep(ms: 1) }
            return x * x
        }
        // Lazy: only the buffer was submitted. Once it has all been taken, nothing else has started (an
        // eager map would have queued every input, and taken them all before the queue emptied).
        try await eventually("the buffer to be taken") { () async in started.count >= 8 && pool.pendingCount == 0 }
        #expect(started.count == 8)
        var out: [Int] = []
        while let x = try m.next() { out.append(x) }
        #expect(out == (0..<1_000).map { $0 * $0 })
        var asyncOut: [Int] = []
        for try await x in try pool.map(0..<50, { $0 + 1 }) { asyncOut.append(x) }
        #expect(asyncOut == Array(1...50))
        pool.shutdown()
    }

    @Test func mapSurfacesErrors() throws {
        let pool = ThreadPool(maxWorkers: 2)
        let m = try pool.map(0..<10) { x -> Int in
            if x == 3 { throw Boom(n: x) }
            return x
        }
        var got: [Int] = []
        #expect(throws: Boom(n: 3)) { while let x = try m.next() { got.append(x) } }
        #expect(got == [0, 1, 2])
        pool.shutdown()
    }

    @Test func asCompletedAndWait() async throws {
        let pool = ThreadPool(maxWorkers: 3)
        // Each job ends when the test opens its gate: the completion order is the test's, not the clock's.
        let gates = (0..<3).map { _ in Event() }
        let fs = try [30, 1, 15].enumerated().map { i, n in
            try pool.submit { () throws -> Int in
                guard gates[i].wait(timeout: .seconds(30)) else { throw Boom(n: -n) }
                return n
            }
        }
        var order: [Int] = []
        let seq = Futures.asCompleted(fs, timeout: .seconds(30))
        for i in [1, 2, 0] {
            gates[i].set()
            if let f = try seq.next() { order.append(try f.result()) }
        }
        #expect(try seq.next() == nil)
        #expect(order == [1, 15, 30])

        let releaseSlow = Event()
        let slow = try pool.submit { () throws -> Int in
            guard releaseSlow.wait(timeout: .seconds(30)) else { throw Boom(n: -1) }
            return 0
        }
        let fast = try pool.submit { 1 }
        let (done, notDone) = Futures.wait([slow, fast], timeout: .seconds(30), returnWhen: .firstCompleted)
        #expect(done.contains { $0 === fast })
        #expect(notDone.contains { $0 === slow })

        // A cancelled future is not an exception (Python's FIRST_EXCEPTION skips cancelled futures): the
        // wait goes on until one fails.
        let cancelled = Future<Int>()
        #expect(cancelled.cancel())
        let failing = try pool.submit { () throws -> Int in throw Boom(n: 0) }
        let r = Futures.wait([slow, cancelled, failing], timeout: .seconds(30), returnWhen: .firstException)
        #expect(r.done.contains { $0 === failing })
        #expect(!cancelled.hasFailed)
        let onlyCancelled = Futures.wait([slow, cancelled], timeout: .milliseconds(50), returnWhen: .firstException)
        #expect(onlyCancelled.notDone.contains { $0 === slow })  // it waited: the timeout ended it

        // A job that cannot end before the wait's timeout: it waits for the gate opened after.
        let releaseHeld = Event()
        let held = try pool.submit { () throws -> Int in
            guard releaseHeld.wait(timeout: .seconds(30)) else { throw Boom(n: -2) }
            return 0
        }
        let timed = Futures.wait([held], timeout: .milliseconds(20))
        #expect(timed.notDone.count == 1)
        releaseHeld.set()
        releaseSlow.set()

        let all = Futures.wait(fs + [slow, held], timeout: .seconds(30))
        #expect(all.notDone.isEmpty)
        #expect(try slow.result() == 0 && held.result() == 0)  // both ran until their gate opened

        var asyncOrder: [Int] = []
        for try await f in Futures.asCompleted(
            try [5, 1].map { ms in
                try pool.submit {
                    sleep(ms: ms)
                    return ms
                }
            }
        ) {
            asyncOrder.append(try f.result())
        }
        #expect(asyncOrder.sorted() == [1, 5])
        pool.shutdown()
    }

    @Test func asCompletedTimeout() throws {
        let pool = ThreadPool(maxWorkers: 1)
        let release = Event()
        let f = try pool.submit { release.wait(timeout: .seconds(30)) }
        let seq = Futures.asCompleted([f], timeout: .milliseconds(30))
        #expect(throws: ThreadingError.self) { _ = try seq.next() }
        release.set()
        pool.shutdown()
    }

    @Test func shutdownCancelPendingAndRejectsNewWork() throws {
        let pool = ThreadPool(maxWorkers: 1)
        let release = Event()
        let running = try pool.submit { release.wait(timeout: .seconds(30)) }
        let pending = try (0..<5).map { _ in try pool.submit { 1 } }
        try eventually("the first job to run") { running.isRunning }
        let stopper = OSThread { pool.shutdown(wait: true, cancelPending: true) }
        try stopper.start()
        // The running job is released only once the shutdown has dropped the queue.
        try eventually("the shutdown to drop the queue") { pool.pendingCount == 0 }
        release.set()
        try stopper.join()
        #expect(try running.result())
        #expect(pending.allSatisfy { $0.isCancelled })
        do {
            _ = try pool.submit { 0 }
            Issue.record("expected poolShutDown")
        } catch {
            #expect(error.code == .poolShutDown)
        }
        #expect(pool.workerCount == 0)
    }

    @Test func initializerAndThreadNamePrefix() throws {
        let inits = Counter()
        let pool = ThreadPool(maxWorkers: 2, threadNamePrefix: "px") { inits.increment() }
        let names = try (0..<20).map { _ in
            try pool.submit {
                sleep(ms: 2)
                return OSThread.current.name
            }
        }
        .map { try $0.result(timeout: .seconds(30)) }
        #expect(names.allSatisfy { $0.hasPrefix("px_") })
        pool.shutdown()
        #expect(inits.count >= 1 && inits.count <= 2)
    }

    @Test func failingInitializerBreaksThePool() throws {
        let pool = ThreadPool(maxWorkers: 1) { throw Boom(n: 9) }
        let f = try pool.submit { 1 }
        #expect(throws: ThreadingError.self) { try f.result(timeout: .seconds(30)) }
        #expect(pool.join(timeout: .seconds(30)))
        do {
            _ = try pool.submit { 2 }
            Issue.record("expected brokenPool")
        } catch { #expect(error.code == .brokenPool) }
    }

    @Test func threadsAreStartedLazily() throws {
        let pool = ThreadPool(maxWorkers: 8)
        for _ in 0..<20 { _ = try pool.submit { 1 }.result(timeout: .seconds(30)) }
        #expect(pool.workerCount <= 2)  // sequential work reuses the idle thread
        pool.shutdown()
    }

    /// The seed notes' callback pool: run(job, callback(success, result)), close, terminate, join.
    @Test func seedCallbackFormCloseFinishesQueue() throws {
        let pool = ThreadPool(maxWorkers: 3)
        let ok = Counter()
        let failed = Counter()
        for i in 0..<20 {
            try pool.run(
                { () throws -> Int in
                    if i == 13 { throw Boom(n: i) }
                    sleep(ms: 1)
                    return i
                },
                callback: { success, _ in success ? ok.increment() : failed.increment() }
            )
        }
        pool.close()
        #expect(pool.join(timeout: .seconds(30)))
        #expect(ok.count == 19 && failed.count == 1)
        #expect(throws: ThreadingError.self) { try pool.run({ 0 }, callback: { _, _ in }) }
    }

    @Test func seedCallbackFormTerminateDropsQueue() throws {
        let pool = ThreadPool(maxWorkers: 1)
        let release = Event()
        let ran = Counter()
        let cancelledCallbacks = Counter()
        try pool.run({ release.wait(timeout: .seconds(30)) }, callback: { _, _ in ran.increment() })
        for _ in 0..<10 {
            try pool.run(
                { ran.increment() },
                callback: { success, result in
                    if !success, case .failure(let e) = result, ThreadingError.Code.cancelled.matches(e) {
                        cancelledCallbacks.increment()
                    }
                }
            )
        }
        try eventually("the first job to start") { pool.pendingCount == 10 }
        pool.terminate()
        release.set()
        #expect(pool.join(timeout: .seconds(30)))
        #expect(ran.count == 1)  // only the running job's callback
        #expect(cancelledCallbacks.count == 10)
    }

    @Test func joinWithoutCloseTimesOut() throws {
        let pool = ThreadPool(maxWorkers: 1)
        _ = try pool.submit { 1 }.result()
        #expect(!pool.join(timeout: .milliseconds(20)))
        pool.shutdown()
    }
}
