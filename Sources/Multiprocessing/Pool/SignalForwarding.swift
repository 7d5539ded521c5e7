internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import Threading

/// Signals delivered as events on the reactor thread: the C handler only adds 1 to an eventfd (all that is
/// async-signal-safe), the reactor reads it and calls the Swift handler with the number of signals since
/// the last call. The same path as the pools' Ctrl-C (`Interrupts`); no thread polls.
package enum SignalForwarding {
    /// A signal's eventfd: the reactor thread reads it while a replacement may close it.
    private final class Counter: Sendable {
        let descriptor: DescriptorLifetime
        init(_ fd: Int32) { descriptor = DescriptorLifetime(fd) }
        /// What arrived since the last look (`nil`: nothing, or closed).
        func take() -> UInt64? { descriptor.use { SystemCall.takeCount($0) } ?? nil }
        func close() {
            descriptor.close { fd in Reactor.started?.cancelWaits(on: fd) }
        }
    }

    private static let installed = TrackedMutex<[Int32: Counter]>([:])

    /// From now on, each `signal` calls `handler` on the reactor thread with how many arrived since its
    /// last call (signals that arrive together are counted together). The handler must not block. A
    /// second call for the same signal replaces the handler.
    /// - Throws: ``MultiprocessingError`` when the eventfd, the reactor or `sigaction` fails; the
    ///   signal's action is then unchanged.
    package static func forward(
        _ signal: Int32,
        _ handler: @escaping @Sendable (Int) -> Void
    ) throws(MultiprocessingError) {
        let reactor = try Reactor.shared
        let previous = installed.withLock { $0[signal] }
        let fd = mp_eventfd(0)
        guard fd >= 0 else { throw MultiprocessingError.system("eventfd", -fd) }
        let counter = Counter(fd)
        do {
            try reactor.watch(fd) {
                guard let n = counter.take() else { return true }  // another read took it
                handler(Int(n))
                return true
            }
        } catch {
            counter.close()
            throw error
        }
        let e = mp_forward_signal(signal, fd)
        guard e == 0 else {
            counter.close()
            throw MultiprocessingError.system("sigaction", -e)
        }
        installed.withLock { $0[signal] = counter }
        // Only now is the previous handler let go: had anything above failed, it would still be in place.
        // (Its close waits for a read the reactor thread may be making.)
        previous?.close()
    }
}
