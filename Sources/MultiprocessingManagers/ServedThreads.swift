import Threading

/// The threads a manager server runs its waiting calls on (a queue's `get` on an empty queue, an
/// `acquire`, a `wait`, any call of an object that may block): one thread per call waiting now, started
/// when no idle one is left and ended after ``idleLimit`` without work, at most ``limit`` at once (more
/// calls wait for one to finish, in order). Every other call runs on the server's event loop, so the
/// threads follow the calls that wait, not the clients connected.
final class ServedThreads: Sendable {
    private struct State {
        /// Threads waiting for a call and not yet promised one.
        var idle = 0
        var total = 0
        /// Calls submitted while `limit` threads were busy (run in order as threads free up).
        var queued = 0
    }

    private let jobs = BlockingQueue<@Sendable () -> Void>()
    private let state = TrackedMutex(State())
    let limit: Int
    /// How long a thread without work stays.
    let idleLimit: Duration
    /// Called (outside any lock) with the number of threads when it changes.
    private let onCount: @Sendable (Int) -> Void
    /// Starts a thread running its argument (tests put a failing one in its place).
    private let startThread: @Sendable (@escaping @Sendable () -> Void) throws(ThreadingError) -> Void

    init(
        limit: Int,
        idleLimit: Duration = .seconds(10),
        startThread: @escaping @Sendable (@escaping @Sendable () -> Void) throws(ThreadingError) -> Void = {
            body throws(ThreadingError) in try OSThread(name: "mp-manager-call", daemon: true, body).start()
        },
        onCount: @escaping @Sendable (Int) -> Void
    ) {
        self.limit = max(1, limit)
        self.idleLimit = idleLimit
        self.startThread = startThread
        self.onCount = onCount
    }

    /// Threads alive now.
    var count: Int { state.withLock { $0.total } }

    /// Runs `job` on a thread of the pool: an idle one, a new one, or — with `limit` busy — the first to
    /// free up. Throws when no thread could be started and none is busy (the job is not run).
    func submit(_ job: @escaping @Sendable () -> Void) throws(ThreadingError) {
        enum Plan { case reuse, start, queue }
        let plan = state.withLock { s -> Plan in
            if s.idle > 0 {
                s.idle -= 1
                return .reuse
            }
            if s.total < limit {
                s.total += 1
                return .start
            }
            s.queued += 1
            return .queue
        }
        if plan == .start {
            do {
                try startThread { [self] in work() }
            } catch {
                // With other threads alive the call goes to one of them (an idle one, or the first to free
                // up: decided in the same lock round as the count, so no thread leaves meanwhile); with none
                // it cannot run.
                let placed = state.withLock { s -> Bool in
                    s.total -= 1
                    guard s.total > 0 else { return false }
                    if s.idle > 0 { s.idle -= 1 } else { s.queued += 1 }
                    return true
                }
                guard placed else { throw error }
            }
            onCount(count)
        }
        try? jobs.put(job)
    }

    private func work() {
        while true {
            let job: @Sendable () -> Void
            do {
                job = try jobs.get(timeout: idleLimit)
            } catch {
                // No work for a while: leave, unless a job was promised to the idle threads meanwhile.
                let leave = state.withLock { s -> Bool in
                    guard s.idle > 0 else { return false }
                    s.idle -= 1
                    s.total -= 1
                    return true
                }
                if leave {
                    onCount(count)
                    return
                }
                continue
            }
            job()
            state.withLock { s in
                // A job queued while every thread was busy is this thread's next one: it stays promised.
                if s.queued > 0 { s.queued -= 1 } else { s.idle += 1 }
            }
        }
    }
}
