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
    private static let current = ThreadLocal<(@Sendable () -> Bool)?>(default: { nil })

    static var abandoned: (@Sendable () -> Bool)? { current.value }

    /// Runs `body` with `check` as the current call's abandonment test.
    static func with<T>(abandoned check: @escaping @Sendable () -> Bool, _ body: () throws -> T) rethrows -> T {
        current.value = check
        defer { current.value = nil }
        return try body()
    }

    /// Thrown by a blocking call that gave up: the server closes the connection without an answer.
    struct Abandoned: Error {}

    static let slice = Duration.milliseconds(250)

    /// Runs `attempt` (which waits at most the limit it is given and returns nil when that passed) until
    /// it succeeds or `timeout` (`nil`: none) has passed; nil then.
    static func wait<T>(_ timeout: Duration?, _ attempt: (Duration) throws -> T?) throws -> T? {
        guard let abandoned else { return try attempt(timeout ?? .seconds(Int64.max / 4)) }
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
