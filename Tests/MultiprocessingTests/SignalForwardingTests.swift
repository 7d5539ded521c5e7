import Glibc
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import Multiprocessing

/// Signals delivered as events on the reactor thread (what `QueueWorker.stopOnSignals` uses): the handler
/// sees each signal, counted, with no thread polling for it.
@Suite struct SignalForwardingTests {
    @Test func eachSignalReachesTheHandlerOnTheReactorThread() throws {
        let seen = TrackedMutex<(count: Int, onReactor: Bool)>((0, true))
        try SignalForwarding.forward(SIGUSR2) { n in
            let onReactor = OSThread.current.name == "mp-reactor"
            seen.withLock {
                $0.count += n
                $0.onReactor = $0.onReactor && onReactor
            }
        }
        kill(getpid(), SIGUSR2)
        try eventually("the first signal is seen") { seen.withLock { $0.count } == 1 }
        kill(getpid(), SIGUSR2)
        try eventually("the second signal is seen") { seen.withLock { $0.count } == 2 }
        #expect(seen.withLock { $0.onReactor })
        // A second forward replaces the handler: the first one sees no more.
        let replaced = TrackedMutex(0)
        try SignalForwarding.forward(SIGUSR2) { n in replaced.withLock { $0 += n } }
        kill(getpid(), SIGUSR2)
        try eventually("the replacing handler sees the signal") { replaced.withLock { $0 } == 1 }
        #expect(seen.withLock { $0.count } == 2)
    }
}
