import Synchronization

/// Runs one Swift task on the thread that waits for it: the bridge from a blocking thread (a pool's
/// worker thread, a worker process's main thread) into async code without a thread of the cooperative
/// pool to run it.
///
/// A blocking thread that starts a plain `Task` and waits for its result holds itself *and* needs a
/// cooperative thread to run the task; when the cooperative threads are all busy (held by other such
/// bridges, or by code that blocks in a syscall), the waiting thread waits for them — a blocking pool
/// call stalls for as long as the cooperative pool is full. Here the task prefers this executor
/// (`Task.immediate(executorPreference:)`), so it starts on the waiting thread, and every resumption
/// after a suspension is enqueued here and run by the same thread, which sleeps (on a futex) only while
/// the task waits for something else: I/O, another actor, a timer (whose expiry the system's own
/// threads deliver).
///
/// What this changes for the code that runs: child tasks (`async let`, task groups) inherit the
/// preference and run on this one thread, one at a time (unstructured tasks do not), so children that
/// block the thread waiting for one another (on a `BlockingQueue`, an `Event`) deadlock where on the
/// cooperative pool they would not — in an item, await instead of blocking. Code isolated to an actor
/// runs on that actor's executor. A job that arrives after ``run(softTimeout:running:_:)`` returned (a
/// continuation resumed late by code that escaped the task) runs on the global concurrent executor
/// rather than never.
// Not generic: unspecialised generic code (a pool worker calls this once per task) would ask the runtime
// for type metadata on every call, a quarter of a round trip's instructions in the worker.
package final class CallerRunsExecutor: TaskExecutor, Sendable {
    private struct State {
        var jobs: [UnownedJob] = []
        var head = 0
        var finished = false
        var closed = false
    }

    private let state = TrackedMutex(State())
    private let parker = Parker()

    private init() {}

    /// Runs `body` to its end on the calling thread; returns whether its soft timeout passed.
    ///
    /// With `softTimeout`, a timer thread cancels the task when it has not finished by then (the result
    /// is then `true`), whatever it is doing; the task is still waited for: cancellation is cooperative.
    /// `running` receives the task once it has suspended (with a soft timeout: before it starts), so that
    /// another thread can cancel it, and `nil` when it has finished.
    package static func run(
        softTimeout: Duration? = nil,
        running: (Task<Void, Never>?) -> Void = { _ in },
        _ body: @escaping @Sendable () async -> Void
    ) -> Bool {
        let executor = CallerRunsExecutor()
        let timeout = softTimeout.map(SoftTimeout.init)
        let task: Task<Void, Never>
        if let timeout {
            // Known to the timer before its first job runs (through this executor's queue, on this thread
            // all the same): a first part that never suspends can still be cancelled.
            task = Task(executorPreference: executor) {
                await body()
                executor.finish()
            }
            timeout.register(task)
        } else {
            task = Task.immediate(executorPreference: executor) {
                await body()
                executor.finish()
            }
        }
        if !executor.isFinished {
            running(task)
            executor.drain()
            running(nil)
        }
        executor.close()
        return timeout?.disarm() ?? false
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
        // The wake-up is given under the lock: once the lock is released this method touches nothing of
        // the executor's, which the waiting thread may free as soon as it has run the job to the end.
        let accepted = state.withLock { s in
            if s.closed { return false }
            s.jobs.append(job)
            parker.unpark()
            return true
        }
        if !accepted { globalConcurrentExecutor.enqueue(job) }
    }

    private var isFinished: Bool { state.withLock { $0.finished } }

    private func finish() {
        state.withLock { s in
            s.finished = true
            parker.unpark()
        }
    }

    /// Runs the task's jobs on this thread until it has finished.
    private func drain() {
        while true {
            let (job, finished) = state.withLock { s -> (UnownedJob?, Bool) in
                if s.finished { return (nil, true) }
                guard s.head < s.jobs.count else {
                    s.jobs.removeAll(keepingCapacity: true)
                    s.head = 0
                    return (nil, false)
                }
                let j = s.jobs[s.head]
                s.head += 1
                // Jobs that keep coming (children taking turns) never empty the queue: drop the run part.
                if s.head > 1024 && s.head * 2 > s.jobs.count {
                    s.jobs.removeFirst(s.head)
                    s.head = 0
                }
                return (j, false)
            }
            if finished { return }
            if let job {
                job.runSynchronously(on: asUnownedTaskExecutor())
                continue
            }
            // Nothing to run: sleep until a job or the end arrives (an unpark between the check above and
            // this park makes it return at once).
            _ = parker.park(until: nil)
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

/// A soft timeout: a timer thread that cancels the task at the deadline, even while the task runs on
/// the waiting thread without suspending (a loop that checks `Task.isCancelled`).
private final class SoftTimeout: Sendable {
    private let shared = Shared()
    private let timer: ThreadTimer?

    init(_ after: Duration) {
        let shared = self.shared
        let timer = ThreadTimer(after: after, name: "mp-soft-timeout") { shared.fire() }
        // No thread to spare: the task runs without its soft timeout rather than not at all.
        self.timer = (try? timer.start()) != nil ? timer : nil
    }

    /// The task to cancel (cancelled at once if the deadline has already passed).
    func register(_ task: Task<Void, Never>) { shared.register(task) }

    /// Stops the timer; returns whether it fired.
    func disarm() -> Bool {
        timer?.cancel()
        return shared.disarm()
    }

    private final class Shared: Sendable {
        private let state = TrackedMutex<(task: Task<Void, Never>?, fired: Bool, disarmed: Bool)>((nil, false, false))

        func register(_ task: Task<Void, Never>) {
            let fired = state.withLock { s in
                s.task = task
                return s.fired
            }
            if fired { task.cancel() }
        }

        func fire() {
            let task = state.withLock { s -> Task<Void, Never>? in
                guard !s.disarmed else { return nil }
                s.fired = true
                return s.task
            }
            task?.cancel()
        }

        func disarm() -> Bool {
            state.withLock { s in
                s.disarmed = true
                s.task = nil
                return s.fired
            }
        }
    }
}

/// A task's outcome, set by the task and read by the thread that ran it to its end.
private final class Outcome<T: Sendable>: Sendable {
    private let value = TrackedMutex<Result<T, any Error>?>(nil)
    func set(_ r: sending Result<T, any Error>) { value.withLock { $0 = r } }
    /// The outcome; a task that ended without one (it cannot, but a crash is worse) counts as cancelled.
    func get() -> Result<T, any Error> { value.withLock { $0 } ?? .failure(CancellationError()) }
}
