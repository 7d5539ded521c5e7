import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import Threading

@Suite(.timeLimit(.minutes(1)))
struct ThreadPoolTests {
    struct Boom: Error, Equatable { let n: Int }

    @Test func submitResultAndError() throws {
        let pool = ThreadPool(maxWorkers: 2)
        let f = try pool.submit { 6 * 7 }
        #expect(try f.result(timeout: .seconds(5)) == 42)
        #expect(f.isDone && !f.isCancelled && !f.isRunning)
        let g = try pool.submit { () throws -> Int in throw Boom(n: 1) }
        #expect(throws: Boom(n: 1)) { try g.result(timeout: .seconds(5)) }
        #expect(try g.error(timeout: .seconds(5)) as? Boom == Boom(n: 1))
        #expect(try f.error() == nil)
        pool.shutdown()
    }

    @Test func resultTimeout() throws {
        let pool = ThreadPool(maxWorkers: 1)
        let release = Event()
        let f = try pool.submit { release.wait(timeout: .seconds(10)) }
        do {
            _ = try f.result(timeout: .milliseconds(30))
            Issue.record("expected timeout")
        } catch {
            #expect(ThreadingError.Code.timedOut.matches(error))
        }
        release.set()
        #expect(try f.result(timeout: .seconds(5)))
        pool.shutdown()
    }

    @Test func cancelBeforeStart() throws {
        let pool = ThreadPool(maxWorkers: 1)
        let release = Event()
        let blocker = try pool.submit { release.wait(timeout: .seconds(10)) }
        let ran = Counter()
        let queued = try pool.submit { ran.increment() }
        #expect(queued.cancel())
        #expect(queued.isCancelled)
        #expect(!blocker.cancel() || !blocker.isRunning)  // a running future cannot be cancelled
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
        #expect(called.wait(timeout: .seconds(5)))
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
        sleep(ms: 30)
        #expect(started.count <= 8)  // lazy: only the buffer was submitted
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
        let fs = try [30, 1, 15].map { ms in
            try pool.submit {
                sleep(ms: ms)
                return ms
            }
        }
        var order: [Int] = []
        let seq = Futures.asCompleted(fs, timeout: .seconds(10))
        while let f = try seq.next() { order.append(try f.result()) }
        #expect(order.sorted() == [1, 15, 30])
        #expect(order.first == 1)

        let slow = try pool.submit {
            sleep(ms: 300)
            return 0
        }
        let fast = try pool.submit { 1 }
        let (done, notDone) = Futures.wait([slow, fast], timeout: .seconds(10), returnWhen: .firstCompleted)
        #expect(done.contains { $0 === fast })
        #expect(notDone.contains { $0 === slow })

        let failing = try pool.submit { () throws -> Int in throw Boom(n: 0) }
        let r = Futures.wait([slow, failing], timeout: .seconds(10), returnWhen: .firstException)
        #expect(r.done.contains { $0 === failing })

        let timed = Futures.wait(
            [
                try pool.submit {
                    sleep(ms: 400)
                    return 0
                }
            ],
            timeout: .milliseconds(20)
        )
        #expect(timed.notDone.count == 1)

        let all = Futures.wait(fs + [slow], timeout: .seconds(10))
        #expect(all.notDone.isEmpty)

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
        let f = try pool.submit { release.wait(timeout: .seconds(10)) }
        let seq = Futures.asCompleted([f], timeout: .milliseconds(30))
        #expect(throws: ThreadingError.self) { _ = try seq.next() }
        release.set()
        pool.shutdown()
    }

    @Test func shutdownCancelPendingAndRejectsNewWork() throws {
        let pool = ThreadPool(maxWorkers: 1)
        let release = Event()
        let running = try pool.submit { release.wait(timeout: .seconds(10)) }
        let pending = try (0..<5).map { _ in try pool.submit { 1 } }
        sleep(ms: 20)
        let stopper = OSThread { pool.shutdown(wait: true, cancelPending: true) }
        try stopper.start()
        sleep(ms: 20)
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
        .map { try $0.result(timeout: .seconds(5)) }
        #expect(names.allSatisfy { $0.hasPrefix("px_") })
        pool.shutdown()
        #expect(inits.count >= 1 && inits.count <= 2)
    }

    @Test func failingInitializerBreaksThePool() throws {
        let pool = ThreadPool(maxWorkers: 1) { throw Boom(n: 9) }
        let f = try pool.submit { 1 }
        #expect(throws: ThreadingError.self) { try f.result(timeout: .seconds(5)) }
        #expect(pool.join(timeout: .seconds(5)))
        do {
            _ = try pool.submit { 2 }
            Issue.record("expected brokenPool")
        } catch { #expect(error.code == .brokenPool) }
    }

    @Test func threadsAreStartedLazily() throws {
        let pool = ThreadPool(maxWorkers: 8)
        for _ in 0..<20 { _ = try pool.submit { 1 }.result(timeout: .seconds(5)) }
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
        #expect(pool.join(timeout: .seconds(10)))
        #expect(ok.count == 19 && failed.count == 1)
        #expect(throws: ThreadingError.self) { try pool.run({ 0 }, callback: { _, _ in }) }
    }

    @Test func seedCallbackFormTerminateDropsQueue() throws {
        let pool = ThreadPool(maxWorkers: 1)
        let release = Event()
        let ran = Counter()
        let cancelledCallbacks = Counter()
        try pool.run({ release.wait(timeout: .seconds(10)) }, callback: { _, _ in ran.increment() })
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
        sleep(ms: 20)
        pool.terminate()
        release.set()
        #expect(pool.join(timeout: .seconds(10)))
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
