internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import Threading

/// Signals delivered as events on the reactor thread: the C handler only adds 1 to an eventfd (all that is
/// async-signal-safe), the reactor reads it and calls the Swift handler with the number of signals since
/// the last call. The same path as the pools' Ctrl-C (`Interrupts`); no thread polls.
package enum SignalForwarding {
    private static let installed = TrackedMutex<[Int32: Int32]>([:])

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
        do {
            try reactor.watch(fd) {
                guard let n = SystemCall.takeCount(fd) else { return true }  // another read took it
                handler(Int(n))
                return true
            }
        } catch {
            Syscall.close(fd)
            throw error
        }
        let e = mp_forward_signal(signal, fd)
        guard e == 0 else {
            reactor.cancelWaits(on: fd)
            Syscall.close(fd)
            throw MultiprocessingError.system("sigaction", -e)
        }
        installed.withLock { $0[signal] = fd }
        // Only now is the previous handler let go: had anything above failed, it would still be in place.
        if let previous {
            reactor.cancelWaits(on: previous)
            Syscall.close(previous)
        }
    }
}
