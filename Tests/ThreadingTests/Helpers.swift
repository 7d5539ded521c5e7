import Foundation
import Synchronization
import Threading

/// Monotonic elapsed time of `body`.
func elapsed(_ body: () throws -> Void) rethrows -> Duration {
    let clock = ContinuousClock()
    let start = clock.now
    try body()
    return clock.now - start
}

/// A thread-safe counter for assertions.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func increment(by n: Int = 1) { value.add(n, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}

/// Thread-safe list of values for assertions.
final class Collected<T: Sendable>: Sendable {
    private let items = Mutex<[T]>([])
    func append(_ x: T) { items.withLock { $0.append(x) } }
    var all: [T] { items.withLock { $0 } }
}

/// Starts `n` threads running `body(i)` and joins them.
func runThreads(_ n: Int, _ body: @escaping @Sendable (Int) throws -> Void) throws {
    let threads = (0..<n).map { i in OSThread { try body(i) } }
    for t in threads { try t.start() }
    for t in threads { try t.join() }
}

func sleep(ms: Int) { usleep(useconds_t(ms * 1000)) }

extension ThreadingError.Code {
    func matches(_ error: any Error) -> Bool { (error as? ThreadingError)?.code == self }
}
