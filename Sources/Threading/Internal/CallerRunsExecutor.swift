import Synchronization

/// Runs one Swift task on the thread that waits for it: the bridge from a blocking thread (a pool's
/// worker thread, a worker process's main thread) into async code that needs no thread of the
/// cooperative pool.
///
/// A blocking thread that starts a plain `Task` and waits for its result holds itself *and* needs a
/// cooperative thread to run the task; when the cooperative threads are all busy (held by other such
/// bridges, or by code that blocks in a syscall), the waiting thread waits for them — a blocking pool
/// call stalls for as long as the cooperative pool is full. Here the task prefers this executor
/// (`Task.immediate(executorPreference:)`), so it starts on the waiting thread, and every resumption
/// after a suspension is enqueued here and run by the same thread, which sleeps (on a futex) only while
/// the task waits for something else: a timer, I/O, another actor. Child tasks (`async let`, task
/// groups) inherit the preference and run on this thread too, one at a time; unstructured tasks do not.
///
/// Code isolated to an actor still runs on that actor's executor. A job that arrives after ``run(softTimeout:running:_:)``
/// returned (a continuation resumed late by code that escaped the task) runs on the global concurrent
/// executor rather than never.
// Not generic: unspecialised generic code (a pool worker calls this once per task) would ask the runtime
// for type metadata on every call, a quarter of a round trip's instructions in the worker.
package final class CallerRunsExecutor: TaskExecutor, Sendable {
    private struct State {
        var jobs: [UnownedJob] = []
        var head = 0
        var finished = false
        var closed = false
    }

    private let state = Mutex(State())
    private let parker = Parker()

    private init() {}

    /// Runs `body` to its end on the calling thread; returns whether its soft timeout passed.
    ///
    /// With `softTimeout`, the task is cancelled when it has not finished by then (the result is `true`)
    /// and still waited for: cancellation is cooperative. `running` receives the task as soon as it has
    /// suspended once, so another thread can cancel it, and `nil` when it has finished.
    package static func run(
        softTimeout: Duration? = nil,
        running: (Task<Void, Never>?) -> Void = { _ in },
        _ body: @escaping @Sendable () async -> Void
    ) -> Bool {
        let executor = CallerRunsExecutor()
        let task = Task.immediate(executorPreference: executor) {
            await body()
            executor.finish()
        }
        var timedOut = false
        if !executor.isFinished {
            running(task)
            if !executor.drain(until: Deadline.after(softTimeout)) {
                timedOut = true
                task.cancel()
                _ = executor.drain(until: nil)
            }
            running(nil)
        }
        executor.close()
        return timedOut
    }

    /// ``run(softTimeout:running:_:)`` for a body with a result: its outcome, and whether its soft
    /// timeout passed.
    package static func run<T: Sendable>(
        softTimeout: Duration? = nil,
        running: (Task<Void, Never>?) -> Void = { _ in },
        _ body: @escaping @Sendable () async throws -> T
    ) -> (result: Result<T, any Error>, timedOut: Bool) {
        let outcome = Outcome<T>()
        let timedOut = run(softTimeout: softTimeout, running: running) {
            do { outcome.set(.success(try await body())) } catch { outcome.set(.failure(error)) }
        }
        return (outcome.get(), timedOut)
    }

    /// The `Executor` requirement the Swift runtime calls; not called directly.
    package func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let accepted = state.withLock { s in
            if s.closed { return false }
            s.jobs.append(job)
            return true
        }
        if accepted { parker.unpark() } else { globalConcurrentExecutor.enqueue(job) }
    }

    private var isFinished: Bool { state.withLock { $0.finished } }

    private func finish() {
        state.withLock { $0.finished = true }
        parker.unpark()
    }

    /// Runs the task's jobs on this thread until it has finished (`true`) or `deadline` passed (`false`).
    private func drain(until deadline: Deadline?) -> Bool {
        while true {
            let (job, finished) = state.withLock { s -> (UnownedJob?, Bool) in
                if s.finished { return (nil, true) }
                guard s.head < s.jobs.count else {
                    s.jobs.removeAll(keepingCapacity: true)
                    s.head = 0
                    return (nil, false)
                }
                s.head += 1
                return (s.jobs[s.head - 1], false)
            }
            if finished { return true }
            if let job {
                job.runSynchronously(on: asUnownedTaskExecutor())
                continue
            }
            // Nothing to run: sleep until a job or the end arrives (an unpark between the check above and
            // this park makes it return at once).
            if !parker.park(until: deadline) { return isFinished }
            parker.reset()
        }
    }

    /// No more jobs run here: any left (none, unless code escaped the task) go to the global executor.
    private func close() {
        let left = state.withLock { s -> ArraySlice<UnownedJob> in
            s.closed = true
            defer { s.jobs = [] }
            return s.jobs[s.head...]
        }
        for job in left { globalConcurrentExecutor.enqueue(job) }
    }
}

/// A task's outcome, set by the task and read by the thread that ran it to its end.
private final class Outcome<T: Sendable>: Sendable {
    private let value = Mutex<Result<T, any Error>?>(nil)
    func set(_ r: sending Result<T, any Error>) { value.withLock { $0 = r } }
    func get() -> Result<T, any Error> { value.withLock { $0! } }
}
