/// A barrier for a fixed number of threads — Python's `threading.Barrier`.
///
/// Each of `parties` threads calls ``wait(timeout:)``; when the last arrives, `action` runs in that thread,
/// then all are released. A timeout, an ``abort()``, a ``reset()`` while threads wait, or an action that
/// throws *breaks* the barrier: every waiter gets ``ThreadingError/Code/brokenBarrier``, as do later
/// calls until ``reset()``.
public final class Barrier: Sendable {
    private struct State {
        var generation = 0
        var count = 0
        var broken = false
        var lastBrokenGeneration = -1
    }

    /// The number of threads needed to pass the barrier.
    public let parties: Int
    private let action: (@Sendable () throws -> Void)?
    private let defaultTimeout: Duration?
    private let monitor = Monitor<State>(State(), lists: 1)

    /// - Parameters:
    ///   - parties: how many threads must call `wait` (at least one).
    ///   - timeout: the default timeout of `wait`.
    ///   - action: run by the last arriving thread before the others are released.
    public init(parties: Int, timeout: Duration? = nil, action: (@Sendable () throws -> Void)? = nil) {
        precondition(parties >= 1, "a Barrier needs at least one party")
        self.parties = parties
        self.defaultTimeout = timeout
        self.action = action
    }

    /// Waits until all parties have arrived — Python's `Barrier.wait(timeout)`.
    ///
    /// - Returns: the arrival index, from `0` to `parties - 1` (the last to arrive gets `parties - 1`).
    /// - Throws: ``ThreadingError/Code/brokenBarrier`` when the barrier is or becomes broken (a timeout
    ///   breaks it too), or the action's error in the thread that ran it.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws -> Int {
        let deadline = Deadline.after(timeout ?? defaultTimeout)
        let broken = ThreadingError(.brokenBarrier, "the barrier is broken")
        let (index, generation, isLast): (Int, Int, Bool) = try monitor.update { s, _ in
            if s.broken { throw broken }
            let index = s.count
            s.count += 1
            return (index, s.generation, s.count == parties)
        }
        if isLast {
            do {
                try action?()
            } catch {
                abort()
                throw error
            }
            monitor.update { s, wakes in
                if s.generation == generation && !s.broken {
                    s.generation += 1
                    s.count = 0
                }
                wakes.wakeAll(0)
            }
            return index
        }
        let passed = try monitor.wait(on: 0, until: deadline) { s, _ -> Bool? in
            if s.lastBrokenGeneration >= generation || (s.broken && s.generation == generation) { throw broken }
            return s.generation != generation ? true : nil
        }
        if passed == nil {
            abort()
            throw broken
        }
        return index
    }

    /// Puts the barrier into the broken state; current and future waiters fail until ``reset()``.
    public func abort() {
        monitor.update { s, wakes in
            s.broken = true
            s.lastBrokenGeneration = s.generation
            s.count = 0
            wakes.wakeAll(0)
        }
    }

    /// Returns the barrier to its initial state; threads waiting now fail with a broken-barrier error.
    public func reset() {
        monitor.update { s, wakes in
            if s.count > 0 || s.broken { s.lastBrokenGeneration = s.generation }
            s.generation += 1
            s.count = 0
            s.broken = false
            wakes.wakeAll(0)
        }
    }

    /// Whether the barrier is broken — Python's `Barrier.broken`.
    public var isBroken: Bool { monitor.read { $0.broken } }

    /// The number of threads waiting now — Python's `Barrier.n_waiting`.
    public var waitingCount: Int { monitor.read { $0.broken ? 0 : $0.count } }
}
