import Synchronization

/// A counting semaphore — Python's `threading.Semaphore`, with an async twin of `acquire`.
///
/// The counter lives in an atomic word: an uncontended acquire is one compare-and-swap and a release one
/// add, with no lock; only when threads or tasks are waiting does a release take the slow path.
public class Semaphore: @unchecked Sendable {  // mutable state is atomic or inside `monitor`
    let value: Atomic<Int>
    private let waiting = Atomic<Int>(0)
    private let monitor = Monitor<Void>((), lists: 1)

    /// Creates a semaphore with `value` permits.
    ///
    /// - Precondition: `value >= 0` (Python raises `ValueError`).
    public init(_ value: Int = 1) {
        precondition(value >= 0, "Semaphore initial value must be >= 0")
        self.value = Atomic(value)
    }

    @inline(__always)
    private func tryTake() -> Bool {
        var v = value.load(ordering: .relaxed)
        while v > 0 {
            let (exchanged, original) = value.compareExchange(
                expected: v,
                desired: v - 1,
                successOrdering: .acquiring,
                failureOrdering: .relaxed
            )
            if exchanged { return true }
            v = original
        }
        return false
    }

    /// Takes a permit — Python's `Semaphore.acquire(blocking, timeout)`.
    ///
    /// - Returns: `true` if a permit was taken, `false` on a failed non-blocking call or a timeout.
    @discardableResult
    public func acquire(blocking: Bool = true, timeout: Duration? = nil) -> Bool {
        if tryTake() { return true }
        guard blocking else { return false }
        let deadline = Deadline.after(timeout)
        waiting.add(1, ordering: .sequentiallyConsistent)
        defer { waiting.subtract(1, ordering: .sequentiallyConsistent) }
        let got = try? monitor.wait(on: 0, until: deadline) { _, _ in tryTake() ? true : nil }
        return got ?? false
    }

    /// Takes a permit, suspending the task (not blocking a thread) while none is available.
    ///
    /// - Throws: `CancellationError` if the task is cancelled while waiting.
    public func acquire() async throws {
        if tryTake() { return }
        waiting.add(1, ordering: .sequentiallyConsistent)
        defer { waiting.subtract(1, ordering: .sequentiallyConsistent) }
        _ = try await monitor.waitAsync(on: 0) { _, _ in tryTake() ? true : nil }
    }

    /// Returns `n` permits — Python's `Semaphore.release(n)`.
    public func release(_ n: Int = 1) throws(ThreadingError) {
        guard n >= 1 else { throw ThreadingError(.invalidArgument, "n must be one or more") }
        try add(n)
        if waiting.load(ordering: .sequentiallyConsistent) > 0 {
            monitor.update { _, wakes in wakes.wake(0, n) }
        }
    }

    func add(_ n: Int) throws(ThreadingError) {
        value.add(n, ordering: .sequentiallyConsistent)
    }

    /// The number of permits available now (a snapshot).
    public var availablePermits: Int { value.load(ordering: .relaxed) }

    /// Threads and tasks waiting now for a permit (for tests that must see a waiter block).
    package var waiterCount: Int { monitor.waiterCount() }

    /// Runs `body` holding a permit — Python's `with semaphore:`.
    public func withPermit<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        acquire()
        defer { try? release() }
        return try body()
    }
}

/// A semaphore that refuses to be released above its initial value — Python's
/// `threading.BoundedSemaphore`.
public final class BoundedSemaphore: Semaphore, @unchecked Sendable {
    /// The initial (and maximum) number of permits.
    public let limit: Int

    /// A bounded semaphore whose count starts, and may never rise above, `value`.
    public override init(_ value: Int = 1) {
        limit = value
        super.init(value)
    }

    /// - Throws: ``ThreadingError/Code/overRelease`` if the release would exceed the initial value;
    ///   then nothing is released.
    override func add(_ n: Int) throws(ThreadingError) {
        var v = value.load(ordering: .relaxed)
        while true {
            if v + n > limit { throw ThreadingError(.overRelease, "Semaphore released too many times") }
            let (exchanged, original) = value.compareExchange(
                expected: v,
                desired: v + n,
                ordering: .sequentiallyConsistent
            )
            if exchanged { return }
            v = original
        }
    }
}
