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
    /// Set by the server around each call (on the connection's thread): true when the call's answer can
    /// no longer be delivered. (A thread-local, not a `@TaskLocal`: these calls run on plain threads.)
    private static let current = ThreadLocal<Context?>(default: { nil })

    /// The serving side of a call: how to tell that its answer can no longer be delivered, and where its
    /// server counts the calls blocked now.
    struct Context: Sendable {
        let abandoned: @Sendable () -> Bool
        let blocked: BlockedCalls
    }

    /// The calls of one server blocked now in ``wait(_:_:)`` (``ManagerServer/blockedCallCount``).
    final class BlockedCalls: Sendable {
        private let value = Atomic<Int>(0)
        var count: Int { value.load(ordering: .relaxed) }
        func add(_ n: Int) { value.add(n, ordering: .relaxed) }
    }

    static var abandoned: (@Sendable () -> Bool)? { current.value?.abandoned }

    /// Runs `body` as a call of a server whose blocked calls are counted in `blocked`, with `check` as its
    /// abandonment test.
    static func with<T>(
        abandoned check: @escaping @Sendable () -> Bool,
        blocked: BlockedCalls,
        _ body: () throws -> T
    ) rethrows -> T {
        current.value = Context(abandoned: check, blocked: blocked)
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
