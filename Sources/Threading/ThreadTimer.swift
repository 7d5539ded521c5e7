/// Runs an action once after a delay, unless cancelled first — Python's `threading.Timer`.
///
/// ```swift
/// let timer = ThreadTimer(after: .seconds(1)) { print("fired") }
/// try timer.start()
/// timer.cancel()   // if called within the second, nothing is printed
/// ```
///
/// - Important: Named `ThreadTimer` so as not to clash with Foundation's `Timer`.
public final class ThreadTimer: Sendable {
    private let cancelled = Event()
    /// The thread that waits and then runs the action.
    public let thread: OSThread

    /// - Parameters:
    ///   - interval: how long to wait before running `action`.
    ///   - name: the timer thread's name.
    ///   - action: the work to run.
    public init(after interval: Duration, name: String? = nil, action: @escaping @Sendable () throws -> Void) {
        let cancelled = self.cancelled
        thread = OSThread(name: name ?? "Timer") {
            if !cancelled.wait(timeout: interval) { try action() }
        }
    }

    /// Starts the countdown.
    public func start() throws(ThreadingError) { try thread.start() }

    /// Stops the timer if it has not fired yet — Python's `Timer.cancel()`.
    public func cancel() { cancelled.set() }

    /// Whether ``cancel()`` was called.
    public var isCancelled: Bool { cancelled.isSet }

    /// Waits for the timer thread to end.
    @discardableResult
    public func join(timeout: Duration? = nil) throws(ThreadingError) -> Bool { try thread.join(timeout: timeout) }
}
