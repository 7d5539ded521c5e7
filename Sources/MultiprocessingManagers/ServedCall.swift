internal import CMultiprocessingShims
import Synchronization
import Threading

/// What a served call knows about the request it serves: whether anyone still waits for its answer.
///
/// A call that blocks on the server (a queue's `get`, a lock's `acquire`, an event's `wait`) waits in
/// slices of 250 ms and gives up between two when its client is gone (its process died, keep-alive found
/// its machine dead, it closed the connection) or the server shuts down. CPython's server waits the whole
/// timeout out, and a `get` then takes an item for a client that is no longer there, which is lost; here
/// the item stays in the queue for the next worker.
enum ServedCall {
    /// Set by the server around each call (on its event loop, or on the thread that runs a call that
    /// waits). (A thread-local, not a `@TaskLocal`: these calls run on plain threads.)
    private static let current = ThreadLocal<Context?>(default: { nil })

    /// The serving side of a call: how to tell that its answer can no longer be delivered, where its
    /// server counts the calls blocked now, which connection it serves, and whether it may wait.
    struct Context: Sendable {
        let abandoned: @Sendable () -> Bool
        let blocked: BlockedCalls
        /// The client connection the call serves: the owner of what the call acquires.
        let connection: UInt64
        /// On the server's event loop, a call must not wait: ``wait(_:_:)`` throws ``WouldBlock`` (having
        /// taken nothing) and the server runs the call again on a thread where it may.
        let onLoop: Bool
    }

    /// Thrown on the server's event loop by a call that would have to wait: it did nothing, and is run
    /// again on a thread of the server's pool.
    struct WouldBlock: Error {}

    /// The connection the current call serves (outside a server: the calling thread, so that objects
    /// used directly keep a thread's semantics).
    static var connection: UInt64 { current.value?.connection ?? (mp_pthread_self() | 1 << 63) }

    /// The calls of one server blocked now in ``wait(_:_:)`` (``ManagerServer/blockedCallCount``).
    final class BlockedCalls: Sendable {
        private let value = Atomic<Int>(0)
        var count: Int { value.load(ordering: .relaxed) }
        func add(_ n: Int) { value.add(n, ordering: .relaxed) }
    }

    /// Whether the current call runs on the server's event loop (where it must not wait).
    static var onLoop: Bool { current.value?.onLoop ?? false }

    static var abandoned: (@Sendable () -> Bool)? { current.value?.abandoned }

    /// Runs `body` as a call serving `connection` of a server whose blocked calls are counted in
    /// `blocked`, with `check` as its abandonment test; `onLoop`: on the server's event loop.
    static func with<T>(
        abandoned check: @escaping @Sendable () -> Bool,
        blocked: BlockedCalls,
        connection: UInt64,
        onLoop: Bool,
        _ body: () throws -> T
    ) rethrows -> T {
        current.value = Context(abandoned: check, blocked: blocked, connection: connection, onLoop: onLoop)
        defer { current.value = nil }
        return try body()
    }

    /// Thrown by a blocking call that gave up: the server closes the connection without an answer.
    struct Abandoned: Error {}

    static let slice = Duration.milliseconds(250)

    /// Runs `attempt` (which waits at most the limit it is given and returns nil when that passed) until
    /// it succeeds or `timeout` (`nil`: none) has passed; nil then.
    static func wait<T>(_ timeout: Duration?, _ attempt: (Duration) throws -> T?) throws -> T? {
        guard let context = current.value else { return try attempt(timeout ?? .seconds(Int64.max / 4)) }
        // Counted as blocked only once it has found that it must wait.
        if let r = try attempt(.zero) { return r }
        if let timeout, timeout <= .zero { return nil }
        if context.onLoop { throw WouldBlock() }
        context.blocked.add(1)
        defer { context.blocked.add(-1) }
        let abandoned = context.abandoned
        let clock = ContinuousClock()
        let deadline = timeout.map { clock.now + $0 }
        while true {
            let step = deadline.map { min(max($0 - clock.now, .zero), slice) } ?? slice
            if let r = try attempt(step) { return r }
            if let deadline, clock.now >= deadline { return nil }
            if abandoned() { throw Abandoned() }
        }
    }

    /// `wait` for the Python-style `(blocking, timeout)` of a Bool-returning acquire.
    static func acquire(blocking: Bool, timeout: Duration?, _ attempt: (Duration?) -> Bool) throws -> Bool {
        guard blocking else { return attempt(nil) }
        return try wait(timeout) { attempt($0) ? true : nil } ?? false
    }
}
