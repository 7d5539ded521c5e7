internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import Threading

/// A child process started by this library: its pid, a waitable sentinel, its exit status, signals.
///
/// ``ChildProcess`` wraps one; ``Processes/activeChildren()`` lists them. Every handle is reaped: by
/// `join`, by reading `exitCode` after the child ended, by `activeChildren()`, or at exit.
public final class ProcessHandle: @unchecked Sendable {  // mutable state behind `state`
    private struct State {
        var pidfd: Int32
        var status: Int32?  // raw wait status, once reaped
        var peakResidentKiB: Int = 0
        /// Waits (`join`) polling the pidfd now; while any does, `closeSentinel` only marks it.
        var borrowers = 0
        var closeRequested = false
    }

    /// The process id — Python's `Process.pid`.
    public let pid: Int32
    /// The name given at creation — Python's `Process.name`.
    public let name: String
    /// Whether the child is terminated when this program exits — Python's `Process.daemon`.
    public let isDaemon: Bool
    private let state: TrackedMutex<State>

    /// `registered`: listed by `activeChildren()` and handled by the exit-time clean-up (the library's
    /// own helpers, such as the shared-memory tracker, handle themselves).
    init(pid: Int32, pidfd: Int32, name: String, daemon: Bool, registered: Bool = true) {
        self.pid = pid
        self.name = name
        isDaemon = daemon
        state = TrackedMutex(State(pidfd: pidfd))
        if registered { ChildRegistry.add(self) }
    }

    deinit {
        let fd = state.withLock { $0.pidfd }
        if fd >= 0 { Syscall.close(fd) }
    }

    /// A descriptor that becomes readable when the process ends (a pidfd) — Python's `Process.sentinel`.
    /// Valid while this handle lives; usable with ``waitReady(_:timeout:)`` and `poll(2)`.
    public var sentinel: Int32 { state.withLock { $0.pidfd } }

    /// Closes the pidfd of a reaped child (its sentinel is then -1). Does nothing while it runs. If a
    /// `join` is polling it at this moment, the last such waiter closes it when it returns: a waiter never
    /// polls a closed descriptor, nor a number reused by another one.
    func closeSentinel() {
        state.withLock { s in
            guard s.status != nil, s.pidfd >= 0 else { return }
            if s.borrowers > 0 {
                s.closeRequested = true
                return
            }
            Syscall.close(s.pidfd)
            s.pidfd = -1
        }
    }

    /// Runs `body` with the pidfd, which stays open until `body` returns; `nil` once it was closed (the
    /// child was reaped before).
    private func withBorrowedSentinelAsync<R>(_ body: (Int32) async throws -> R) async rethrows -> R? {
        guard let fd = borrowSentinel() else { return nil }
        defer { returnSentinel() }
        return try await body(fd)
    }

    private func withBorrowedSentinel<R>(_ body: (Int32) throws -> R) rethrows -> R? {
        guard let fd = borrowSentinel() else { return nil }
        defer { returnSentinel() }
        return try body(fd)
    }

    private func borrowSentinel() -> Int32? {
        state.withLock { s in
            guard s.pidfd >= 0, !s.closeRequested else { return nil }
            s.borrowers += 1
            return s.pidfd
        }
    }

    private func returnSentinel() {
        state.withLock { s in
            s.borrowers -= 1
            if s.borrowers == 0, s.closeRequested {
                Syscall.close(s.pidfd)
                s.pidfd = -1
                s.closeRequested = false
            }
        }
    }

    /// Reaps the child if it has ended; returns whether it has.
    @discardableResult
    func reapIfExited() -> Bool {
        let ended = state.withLock { s in
            if s.status != nil { return true }
            var status: Int32 = 0
            var maxrss = 0
            guard (try? SystemCall.reapIfEnded(pid, status: &status, peakKiB: &maxrss)) == pid else { return false }
            s.status = status
            s.peakResidentKiB = maxrss
            return true
        }
        if ended { ChildRegistry.remove(self) }
        return ended
    }

    /// The exit code once the process has ended, else `nil` — Python's `Process.exitcode`: the value
    /// passed to `exit`, or minus the signal number that killed it.
    public var exitCode: Int32? {
        _ = reapIfExited()
        return state.withLock { s in
            guard let st = s.status else { return nil }
            if mp_wifexited(st) != 0 { return mp_wexitstatus(st) }
            if mp_wifsignaled(st) != 0 { return -mp_wtermsig(st) }
            return nil
        }
    }

    /// The process's peak resident memory in bytes (its rusage `ru_maxrss`), once it has been reaped.
    public var peakMemoryBytes: Int? {
        _ = reapIfExited()
        return state.withLock { s in s.status == nil ? nil : s.peakResidentKiB * 1024 }
    }

    /// Whether the process is running — Python's `Process.is_alive()`.
    public var isAlive: Bool { !reapIfExited() }

    /// Waits for the process to end and reaps it — Python's `Process.join(timeout)`.
    ///
    /// - Returns: `true` if it has ended, `false` if the timeout expired first.
    @discardableResult
    public func join(timeout: Duration? = nil) throws -> Bool {
        let deadline = Deadline.after(timeout)
        while !reapIfExited() {
            // The pidfd is readable once the child has ended, whoever reaps it; it is borrowed so that
            // another owner (a pool's reactor) cannot close it, or let its number be reused, meanwhile.
            let ready = try withBorrowedSentinel { fd in try Syscall.poll(fd, events: Int16(POLLIN), deadline: deadline)
            }
            // nil: the descriptor was closed, which happens only after the child was reaped.
            if ready != true { return reapIfExited() }
        }
        return true
    }

    /// Suspends the task until the process ends, without blocking a thread.
    public func join() async throws {
        while !reapIfExited() {
            let waited: Void? = try await withBorrowedSentinelAsync { fd in try await Reactor.shared.wait(fd) }
            if waited == nil {
                _ = reapIfExited()
                return
            }
        }
    }

    /// Sends `SIGTERM` — Python's `Process.terminate()`. Does nothing once the process has ended.
    public func terminate() { signal(SIGTERM) }

    /// Sends `SIGKILL` — Python's `Process.kill()`.
    public func kill() { signal(SIGKILL) }

    /// Sends `sig` through the pidfd, so a recycled pid is never hit.
    public func signal(_ sig: Int32) {
        state.withLock { s in
            if s.status == nil { _ = mp_pidfd_send_signal(s.pidfd, sig) }
        }
    }

    /// Asks the process to stop: `SIGTERM`, then `SIGKILL` after `grace`; reaps it.
    func stop(grace: Duration) {
        terminate()
        if (try? join(timeout: grace)) != true {
            kill()
            _ = try? join(timeout: .seconds(5))
        }
    }
}

/// The children not yet reaped, for `activeChildren()` and the exit-time clean-up.
enum ChildRegistry {
    private static let children = TrackedMutex<[ObjectIdentifier: ProcessHandle]>([:])
    private static let exitHookInstalled = Atomic<Bool>(false)

    static func add(_ h: ProcessHandle) {
        children.withLock { $0[ObjectIdentifier(h)] = h }
        if exitHookInstalled.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged {
            atexit { ChildRegistry.cleanUpAtExit() }
        }
    }

    static func remove(_ h: ProcessHandle) { children.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(h)) } }

    static var all: [ProcessHandle] { children.withLock { Array($0.values) } }

    /// Set when the program has begun to exit: no child may be started any more (a pool's supervisor
    /// would otherwise replace the workers the clean-up stops, and the replacements would outlive us).
    static let exiting = Atomic<Bool>(false)

    /// As Python at exit: daemon children are terminated, the others joined; all are reaped.
    static func cleanUpAtExit() {
        exiting.store(true, ordering: .sequentiallyConsistent)
        // A child being started as the flag was set registers after the first look: look again until
        // no child is left (twice is enough; the bound is a safety net).
        for _ in 0..<4 {
            let children = all
            if children.isEmpty { break }
            let daemons = children.filter(\.isDaemon)
            // Every daemon is asked at once and they share one grace period, so exit costs at most about
            // one grace whatever their number (one after the other, each could take a whole grace).
            for h in daemons { h.terminate() }
            let deadline = Deadline.after(.seconds(1))
            for h in daemons { _ = try? h.join(timeout: deadline?.remaining ?? .zero) }
            for h in daemons where h.isAlive { h.kill() }
            for h in daemons { _ = try? h.join(timeout: .seconds(5)) }
            for h in children where !h.isDaemon { _ = try? h.join() }
        }
        ForkServers.shutDownAll()
    }
}

/// Facts about this process and its children — Python's `multiprocessing.current_process()`,
/// `parent_process()`, `active_children()` and `cpu_count()`.
public enum Processes {
    /// This process's id.
    public static var currentPID: Int32 { getpid() }
    /// The parent's id.
    public static var parentPID: Int32 { getppid() }
    /// The CPUs this process may run on (its affinity mask) — Python's `os.process_cpu_count()`.
    public static var cpuCount: Int { mp_cpu_count() }
    /// Makes standard output line-buffered (as workers' is), so that parent and child output interleave
    /// line by line when piped.
    public static func lineBufferStandardOutput() { mp_stdout_line_buffered() }

    /// Whether this process is a worker started by this library.
    public static var isWorker: Bool { WorkerRuntime.isWorker }

    /// Makes this process the "subreaper" of its descendants (`PR_SET_CHILD_SUBREAPER`): a grandchild
    /// orphaned by a dying child is re-parented here instead of to PID 1, so
    /// ``reapAdoptedOrphan(_:timeout:)`` can reap it. Useful for supervisors and tests.
    public static func adoptOrphans() throws {
        try Syscall.check("prctl(PR_SET_CHILD_SUBREAPER)", mp_set_child_subreaper(1))
    }

    /// Reaps `pid`, an orphan re-parented here after ``adoptOrphans()``, once it has ended.
    ///
    /// Only the named process is reaped, never "any child": other code in this process (Foundation's
    /// `Process`, swift-subprocess) waits for its own children, and a blanket `waitpid(-1)` would steal
    /// their exit statuses.
    /// - Returns: `true` if `pid` ended and was reaped within `timeout`; `false` otherwise, or if `pid`
    ///   is a child started by this library (its ``ProcessHandle`` reaps it).
    @discardableResult
    public static func reapAdoptedOrphan(_ pid: Int32, timeout: Duration? = .zero) -> Bool {
        if ChildRegistry.all.contains(where: { $0.pid == pid }) { return false }
        let deadline = Deadline.after(timeout)
        var status: Int32 = 0
        var peak = 0
        // An error: not our child.
        guard let r = try? SystemCall.reapIfEnded(pid, status: &status, peakKiB: &peak) else { return false }
        if r == pid { return true }
        // Still running: wait on a pidfd of our own (readable when it ends) rather than polling.
        guard let pidfd = try? Syscall.check("pidfd_open", mp_pidfd_open(pid)) else { return false }
        defer { Syscall.close(pidfd) }
        guard (try? Syscall.poll(pidfd, events: Int16(POLLIN), deadline: deadline)) == true else { return false }
        return (try? SystemCall.reapIfEnded(pid, status: &status, peakKiB: &peak)) == pid
    }

    /// Children started by this library that are still running; reaps those that have ended —
    /// Python's `active_children()`.
    public static func activeChildren() -> [ProcessHandle] {
        ChildRegistry.all.filter { !$0.reapIfExited() }
    }
}
