import Glibc
import Synchronization

/// Runs tasks one at a time on one thread of its own, in the order they become ready: cooperative
/// multitasking, as greenlet, gevent and asyncio's event loop give Python.
///
/// A task runs until it suspends (`await Task.yield()` — gevent's `sleep(0)` — or an `await` that waits
/// for I/O, a timer or another task); the next ready task then runs. Because there is one thread and
/// the ready queue is first in, first out, a program whose tasks only wait for one another prints the
/// same lines in the same order every time. Blocking the thread (a blocking system call, a long
/// computation) blocks every task of the executor: wait with `await` instead.
///
/// ```swift
/// try await CooperativeExecutor.run { loop in
///     let a = loop.spawn { print("Running in foo"); await Task.yield(); print("foo again") }
///     let b = loop.spawn { print("Explicit context to bar"); await Task.yield(); print("bar again") }
///     try await a.value
///     try await b.value
/// }
/// ```
///
/// The executor is a `TaskExecutor` (tasks prefer it: `Task(executorPreference:)`,
/// `withTaskExecutorPreference`; ``spawn(_:)`` does this) and a `SerialExecutor` (an actor may run on it
/// by returning ``asUnownedSerialExecutor()`` from its `unownedExecutor`). Code isolated to another actor
/// (the main actor included) still runs there.
public final class CooperativeExecutor: TaskExecutor, SerialExecutor, Sendable {
    private struct State {
        var ready: [UnownedJob] = []
        var head = 0
        var stopping = false
        var stopped = false
    }

    private let state = TrackedMutex(State())
    private let wake = Semaphore(0)
    private let finished = Event()
    /// `pthread_self()` of the executor's thread, once it runs.
    private let threadID = Atomic<UInt>(0)
    /// The executor's thread's name.
    public let name: String

    /// Starts the executor's thread. It runs until `shutdown()` (which ``run(name:_:)`` calls).
    public init(name: String = "cooperative") throws(ThreadingError) {
        self.name = name
        let thread = OSThread(name: name, daemon: true) { self.loop() }
        try thread.start()
    }

    /// Runs `body` on a new executor, then shuts it down — asyncio's `run(main)`. `body` runs on the
    /// executor too, so tasks it spawns start only when it suspends (in the order spawned).
    public static func run<T: Sendable>(
        name: String = "cooperative",
        _ body: @Sendable (CooperativeExecutor) async throws -> T
    ) async throws -> T {
        let executor = try CooperativeExecutor(name: name)
        let result: Result<T, any Error>
        do {
            result = .success(try await withTaskExecutorPreference(executor) { try await body(executor) })
        } catch {
            result = .failure(error)
        }
        await executor.shutdown()
        return try result.get()
    }

    /// Starts `body` as a task that runs on this executor — gevent's `spawn`.
    @discardableResult
    public func spawn<T: Sendable>(
        _ body: @escaping @Sendable () async throws -> T
    ) -> Task<T, any Error> {
        Task(executorPreference: self) { try await body() }
    }

    /// Appends `job` to the ready queue, to run on the executor's thread after the jobs already there (the
    /// `Executor` requirement the Swift runtime calls; not called directly). Thread-safe. A job enqueued
    /// after the executor has stopped runs on the global concurrent executor instead.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let accepted = state.withLock { s in
            if s.stopped { return false }
            s.ready.append(job)
            return true
        }
        if accepted {
            try? wake.release()
        } else {
            // Work that outlives the executor (a task still waiting when it was shut down) goes on in
            // the global pool rather than never.
            globalConcurrentExecutor.enqueue(job)
        }
    }

    /// This executor as a `SerialExecutor` reference: return it from an actor's `unownedExecutor` to run
    /// the actor on this executor's thread.
    public func asUnownedSerialExecutor() -> UnownedSerialExecutor { UnownedSerialExecutor(ordinary: self) }

    /// Whether the calling thread is this executor's.
    public var isCurrent: Bool { threadID.load(ordering: .acquiring) == UInt(pthread_self()) }

    /// Stops the thread once the ready queue is empty and waits for that, at most `timeout` (from the
    /// executor's own thread it cannot wait: the thread stops after the current job). Tasks that resume
    /// later run on the global pool. Idempotent. In async code, `await shutdown()` waits without a thread.
    @available(*, noasync, message: "use `await shutdown()`: it waits without holding a thread")
    public func shutdown(timeout: Duration = .seconds(30)) {
        requestStop()
        if !isCurrent { _ = finished.wait(timeout: timeout) }
    }

    /// Stops the thread once the ready queue is empty; suspends the task (no thread held) until it has.
    /// Cancellation ends the wait early (the executor still stops).
    public func shutdown() async {
        requestStop()
        if !isCurrent { try? await finished.wait() }
    }

    private func requestStop() {
        state.withLock { $0.stopping = true }
        try? wake.release()
    }

    private func loop() {
        threadID.store(UInt(pthread_self()), ordering: .releasing)
        while true {
            wake.acquire()
            let next: UnownedJob? = state.withLock { s in
                if s.head < s.ready.count {
                    let j = s.ready[s.head]
                    s.head += 1
                    if s.head > 1024 && s.head * 2 > s.ready.count {
                        s.ready.removeFirst(s.head)
                        s.head = 0
                    }
                    return j
                }
                if s.stopping { s.stopped = true }
                return nil
            }
            guard let job = next else {
                if state.withLock({ $0.stopped }) {
                    finished.set()
                    return
                }
                continue
            }
            job.runSynchronously(isolatedTo: asUnownedSerialExecutor(), taskExecutor: asUnownedTaskExecutor())
        }
    }
}
