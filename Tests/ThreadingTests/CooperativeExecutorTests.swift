import MultiprocessingTestSupport
import Synchronization
import Testing

@testable import Threading

/// An actor whose code runs on a cooperative executor.
actor OnLoop {
    let executor: CooperativeExecutor
    var log: [String] = []
    init(_ executor: CooperativeExecutor) { self.executor = executor }
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    func note(_ s: String) -> Bool {
        log.append(s)
        return executor.isCurrent
    }
}

// Each `run` hops back to the cooperative pool when it ends, and the suite's blocking tests can hold both
// of its threads on two cores: under scripts/stress-tests the 50 rounds below took over a minute in 2 runs
// of 5 while every round passed. The limit means "did not hang".
@Suite(.timeLimit(.minutes(3)))
struct CooperativeExecutorTests {
    /// gevent's foo/bar: with `Task.yield()` as `gevent.sleep(0)`, the lines interleave the same way
    /// every time.
    @Test func yieldingTasksInterleaveTheSameWayEveryTime() async throws {
        for _ in 0..<50 {
            let lines = TrackedMutex<[String]>([])
            let out: @Sendable (String) -> Void = { s in lines.withLock { $0.append(s) } }
            try await CooperativeExecutor.run { loop in
                let a = loop.spawn {
                    out("Running in foo")
                    await Task.yield()
                    out("Explicit context switch to foo again")
                }
                let b = loop.spawn {
                    out("Explicit context to bar")
                    await Task.yield()
                    out("Implicit context switch back to bar")
                }
                try await a.value
                try await b.value
            }
            #expect(
                lines.withLock { $0 } == [
                    "Running in foo", "Explicit context to bar", "Explicit context switch to foo again",
                    "Implicit context switch back to bar",
                ]
            )
        }
    }

    /// Every task, the body of `run` and an actor placed on the executor run on its one thread.
    @Test func everythingRunsOnTheExecutorsThread() async throws {
        try await CooperativeExecutor.run { loop in
            #expect(loop.isCurrent)
            let tasks = (0..<20).map { _ in
                loop.spawn { () async -> Bool in
                    await Task.yield()
                    return loop.isCurrent
                }
            }
            for t in tasks {
                let onLoop = try await t.value
                #expect(onLoop)
            }
            let actor = OnLoop(loop)
            #expect(await actor.note("x"))
        }
        let outside = try CooperativeExecutor(name: "outside")
        #expect(!outside.isCurrent)
        await outside.shutdown()
    }

    /// A task waiting on the executor honours cancellation; a task still waiting when the executor shuts
    /// down finishes on the global pool instead of never.
    @Test func cancellationAndWorkThatOutlivesTheExecutor() async throws {
        let loop = try CooperativeExecutor(name: "short-lived")
        let never = Event()
        let waiter = loop.spawn { try await never.wait() }
        try await eventually("the task to wait") { () async in never.waiterCount == 1 }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }

        // Suspended when the executor stops, resumed only after that.
        let go = Event()
        let late = loop.spawn { () async throws -> Int in
            try await go.wait()
            return 7
        }
        try await eventually("the late task to wait") { () async in go.waiterCount == 1 }
        await loop.shutdown()
        go.set()
        #expect(try await late.value == 7)
    }
}
