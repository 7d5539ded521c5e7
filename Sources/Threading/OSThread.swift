internal import CMultiprocessingShims
import Glibc
import Synchronization

/// A thread of the operating system running a closure — Python's `threading.Thread`.
///
/// ```swift
/// let t = OSThread(name: "LoopThread") { print("running in", OSThread.current.name) }
/// try t.start()
/// t.join()
/// ```
///
/// **Daemon threads.** As in Python, a thread is a *daemon* or not, inherited from the thread that creates
/// it (the main thread is not a daemon). When the program exits (`main` returns or `exit()` is called), the
/// exit waits for every started non-daemon thread to finish (an `atexit` handler joins them); daemon
/// threads are simply abandoned mid-flight by the process exit. Use daemons for background helpers that
/// hold nothing that must be flushed.
///
/// - Important: Named `OSThread`, not `Thread`, so that files importing both Foundation and Threading
///   still compile. Uncaught errors thrown by the closure go to ``OSThread/excepthook``.
public final class OSThread: @unchecked Sendable {  // mutable fields are guarded by `state`
    private struct State {
        var name: String
        var isDaemon: Bool
        var started = false
        var ident: UInt64?
        var nativeID: Int32?
        var explicitName: Bool
        /// The pthread from `pthread_create`, while it still needs a `pthread_join` or `pthread_detach`.
        var joinable: UInt64?
        var joining = false
    }

    private let state: TrackedMutex<State>
    private let body: (@Sendable () throws -> Void)?
    private let stackSize: Int
    private let finished = Event()
    private let ready = Event()
    private let isDummy: Bool

    /// Creates a thread that will run `body` once started.
    ///
    /// - Parameters:
    ///   - name: the thread's name (default `Thread-N`); also given to the kernel (first 15 bytes).
    ///   - daemon: `nil` inherits from the current thread.
    ///   - stackSize: bytes of stack, `nil` for the system default.
    ///   - body: the work; an error it throws is passed to ``excepthook``.
    public init(
        name: String? = nil,
        daemon: Bool? = nil,
        stackSize: Int? = nil,
        _ body: @escaping @Sendable () throws -> Void
    ) {
        let n = name ?? "Thread-\(OSThread.counter.add(1, ordering: .relaxed).newValue)"
        state = TrackedMutex(State(name: n, isDaemon: daemon ?? OSThread.current.isDaemon, explicitName: name != nil))
        self.body = body
        self.stackSize = stackSize ?? 0
        isDummy = false
    }

    /// A thread object for a thread we did not start (the main thread, Dispatch or Swift concurrency
    /// threads) — Python's `_MainThread` / `_DummyThread`.
    private init(foreignNamed name: String, daemon: Bool) {
        var s = State(name: name, isDaemon: daemon, explicitName: true)
        s.started = true
        s.ident = mp_pthread_self()
        s.nativeID = mp_gettid()
        state = TrackedMutex(s)
        body = nil
        stackSize = 0
        isDummy = true
        ready.set()
    }

    deinit {
        // Never joined: let the system reclaim the thread when it ends.
        if let t = state.withLock({ $0.joinable }) { _ = mp_thread_detach(t) }
    }

    // MARK: - Properties

    /// The thread's name — Python's `Thread.name`. A name given to `init` is also given to the kernel
    /// (first 15 bytes, visible in `ps`/`top`); default `Thread-N` names are not, to keep start cheap.
    public var name: String {
        get { state.withLock { $0.name } }
        set { state.withLock { $0.name = newValue } }
    }

    /// Whether this is a daemon thread; settable only before `start()` — Python's `Thread.daemon`.
    public var isDaemon: Bool { state.withLock { $0.isDaemon } }

    /// Makes the thread a daemon or not. Must be called before `start()`.
    public func setDaemon(_ daemon: Bool) throws(ThreadingError) {
        try state.withLock { (s: inout State) throws(ThreadingError) in
            if s.started { throw ThreadingError(.alreadyStarted, "cannot set daemon status of an active thread") }
            s.isDaemon = daemon
        }
    }

    /// The `pthread_t` of the thread once started, else `nil` — Python's `Thread.ident`.
    public var ident: UInt64? { state.withLock { $0.ident } }

    /// The kernel thread id (`gettid`) once the thread runs, else `nil` — Python's `Thread.native_id`.
    /// Waits briefly for a thread that was started but has not run yet.
    public var nativeID: Int32? {
        guard state.withLock({ $0.started }) else { return nil }
        ready.wait()
        return state.withLock { $0.nativeID }
    }

    /// Whether the thread has started and not finished — Python's `Thread.is_alive()`.
    public var isAlive: Bool { state.withLock { $0.started } && !finished.isSet }

    // MARK: - Life cycle

    /// Starts the thread — Python's `Thread.start()`.
    ///
    /// - Throws: ``ThreadingError/Code/alreadyStarted`` on a second call, or
    ///   ``ThreadingError/Code/threadCreation`` if the system refuses a new thread.
    public func start() throws(ThreadingError) {
        let daemon: Bool = try state.withLock { (s: inout State) throws(ThreadingError) -> Bool in
            if s.started { throw ThreadingError(.alreadyStarted, "threads can only be started once") }
            s.started = true
            return s.isDaemon
        }
        OSThread.registry.withLock { $0[ObjectIdentifier(self)] = self }
        if !daemon { OSThread.registerExitJoin() }
        var pt: UInt64 = 0
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = mp_thread_start(
            { raw in
                Unmanaged<OSThread>.fromOpaque(raw!).takeRetainedValue().run()
            },
            context,
            stackSize,
            &pt
        )
        if rc != 0 {
            Unmanaged<OSThread>.fromOpaque(context).release()
            OSThread.registry.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(self)) }
            state.withLock { $0.started = false }
            throw ThreadingError(.threadCreation, "pthread_create failed: \(String(cString: strerror(-rc)))")
        }
        state.withLock { s in
            if s.ident == nil { s.ident = pt }
            s.joinable = pt
        }
    }

    private func run() {
        let me = mp_pthread_self()
        let name: String? = state.withLock { s in
            s.ident = me
            s.nativeID = mp_gettid()
            return s.explicitName ? s.name : nil
        }
        ready.set()
        if let name { _ = name.withCString { mp_set_thread_name($0) } }
        do {
            try body?()
        } catch {
            let hook = OSThread.hook.withLock { $0 }
            hook(ExceptHookArguments(error: error, thread: self))
        }
        OSThread.registry.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(self)) }
        finished.set()
    }

    /// Waits for the thread to finish — Python's `Thread.join(timeout)`.
    ///
    /// - Returns: `true` if the thread has finished, `false` if the timeout expired first.
    /// - Throws: ``ThreadingError/Code/cannotJoin`` if the thread was not started or is the calling thread.
    @discardableResult
    public func join(timeout: Duration? = nil) throws(ThreadingError) -> Bool {
        guard state.withLock({ $0.started }) else {
            throw ThreadingError(.cannotJoin, "cannot join thread before it is started")
        }
        if OSThread.current === self { throw ThreadingError(.cannotJoin, "cannot join current thread") }
        if isDummy { return false }
        // The first joiner sleeps in pthread_join, woken by the kernel as the thread exits (one wake-up,
        // as in C); concurrent joiners wait for the thread's own "finished" event.
        let pthread: UInt64? = state.withLock { s in
            guard let t = s.joinable, !s.joining else { return nil }
            s.joining = true
            return t
        }
        guard let pthread else { return finished.wait(timeout: timeout, spin: false) }
        // A timed join waits for the body to end, then joins the thread, which is then exiting: a join
        // with a deadline (pthread_clockjoin_np) would save a wake-up, but ThreadSanitizer does not
        // intercept it, takes the joined thread for alive, and aborts when its pthread_t is reused.
        if let timeout, !finished.wait(timeout: timeout, spin: false) {
            state.withLock { $0.joining = false }
            return false
        }
        let rc = mp_thread_join(pthread)
        state.withLock { s in
            s.joining = false
            if rc == 0 { s.joinable = nil }
        }
        if rc == 0 { finished.wait() }  // already set: run() sets it before returning
        return rc == 0
    }

    /// Suspends the task until the thread finishes, without blocking a thread.
    public func join() async throws {
        try await finished.wait()
    }
}

// MARK: - Process-wide thread registry

extension OSThread {
    private static let counter = Atomic<Int>(0)
    /// Threads started by `OSThread` and not finished (registered by `start`, before the thread runs).
    private static let registry = TrackedMutex<[ObjectIdentifier: OSThread]>([:])
    private static let currentSlot = ThreadLocal<OSThread?>()
    private static let exitJoinRegistered = Atomic<Bool>(false)

    /// The main thread — Python's `threading.main_thread()`.
    public static let main = OSThread(foreignMain: ())

    private convenience init(foreignMain: Void) {
        self.init(foreignNamed: "MainThread", daemon: false)
        state.withLock {
            $0.ident = mp_main_pthread()
            $0.nativeID = getpid()
        }
    }

    /// The thread calling this — Python's `threading.current_thread()`.
    ///
    /// For a thread not started through `OSThread` this is a dummy object named `Dummy-N` (always alive,
    /// a daemon, not joinable), as in Python.
    public static var current: OSThread {
        if let t = currentSlot.value { return t }
        let me = mp_pthread_self()
        let t: OSThread
        // First call in this thread: find it among ours (by pthread_t, set as the thread begins), then cache.
        if let started = registry.withLock({ $0.values.first { $0.state.withLock { $0.ident } == me } }) {
            t = started
        } else if me == mp_main_pthread() {
            t = main
        } else {
            t = OSThread(foreignNamed: "Dummy-\(counter.add(1, ordering: .relaxed).newValue)", daemon: true)
        }
        currentSlot.value = t
        return t
    }

    /// The number of live threads started by `OSThread`, plus the main thread — Python's
    /// `threading.active_count()`.
    public static var activeCount: Int { registry.withLock { $0.count } + 1 }

    /// The live threads started by `OSThread`, and the main thread — Python's `threading.enumerate()`.
    public static func enumerate() -> [OSThread] {
        [main] + registry.withLock { Array($0.values) }
    }

    /// Joins every live non-daemon thread, waiting at most `timeout` in all.
    ///
    /// - Returns: `true` if all of them finished.
    @discardableResult
    public static func joinNonDaemonThreads(timeout: Duration? = nil) -> Bool {
        let deadline = Deadline.after(timeout)
        while true {
            let pending = registry.withLock { $0.values.filter { !$0.isDaemon } }
            guard let t = pending.first else { return true }
            if t === current { return false }
            if !t.finished.wait(timeout: deadline?.remaining) { return false }
        }
    }

    private static func registerExitJoin() {
        guard exitJoinRegistered.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
        else { return }
        atexit { OSThread.joinNonDaemonThreads() }
    }
}

// MARK: - Uncaught errors

/// What ``OSThread/excepthook`` receives — Python's `threading.ExceptHookArgs`.
public struct ExceptHookArguments: Sendable {
    /// The error the thread's closure threw.
    public let error: any Error
    /// The thread that threw it.
    public let thread: OSThread
}

extension OSThread {
    fileprivate static let hook = TrackedMutex<@Sendable (ExceptHookArguments) -> Void>(OSThread.defaultExcepthook)

    /// Prints `Exception in thread NAME: ERROR` to standard error — Python's default `excepthook`.
    public static let defaultExcepthook: @Sendable (ExceptHookArguments) -> Void = { args in
        let line = "Exception in thread \(args.thread.name): \(args.error)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }

    /// Called with any error a thread's closure throws — Python's `threading.excepthook`.
    public static var excepthook: @Sendable (ExceptHookArguments) -> Void {
        get { hook.withLock { $0 } }
        set { hook.withLock { $0 = newValue } }
    }
}
