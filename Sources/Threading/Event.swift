import Synchronization

/// A flag that threads and tasks can wait for — Python's `threading.Event`, with an async `wait`.
public final class Event: Sendable {
    private let flag = Atomic<Bool>(false)
    private let monitor = Monitor<Bool>(false, lists: 1)

    /// Creates an event whose flag is false.
    public init() {}

    /// Whether the flag is set — Python's `Event.is_set()`.
    public var isSet: Bool { flag.load(ordering: .acquiring) }

    /// Threads and tasks waiting now for the flag (for tests that must see a waiter block).
    package var waiterCount: Int { monitor.waiterCount() }

    /// Sets the flag and wakes every waiter — Python's `Event.set()`.
    public func set() {
        monitor.update { state, wakes in
            state = true
            flag.store(true, ordering: .releasing)
            wakes.wakeAll(0)
        }
    }

    /// Resets the flag — Python's `Event.clear()`.
    public func clear() {
        monitor.update { state, _ in
            state = false
            flag.store(false, ordering: .releasing)
        }
    }

    /// Blocks until the flag is set or `timeout` passes — Python's `Event.wait(timeout)`.
    ///
    /// - Returns: the flag's value on return (`false` only after a timeout).
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Bool { wait(timeout: timeout, spin: true) }

    /// `spin: false` sleeps at once: right for waits expected to be long (thread join), where spinning
    /// would keep this CPU busy and push the thread we wait for onto another, possibly halted, CPU.
    func wait(timeout: Duration?, spin: Bool) -> Bool {
        if isSet { return true }
        let got = try? monitor.wait(on: 0, until: Deadline.after(timeout), parkSpin: spin) { state, _ in
            state ? true : nil
        }
        return got ?? false
    }

    /// Suspends the task until the flag is set, without blocking a thread.
    ///
    /// - Throws: `CancellationError` if the task is cancelled first.
    public func wait() async throws {
        if isSet { return }
        _ = try await monitor.waitAsync(on: 0) { state, _ in state ? true : nil }
    }
}
