internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import Threading

/// Ctrl-C handling for pools: a one-shot SIGINT handler (installed only if SIGINT has its default
/// action) writes to an eventfd the reactor watches; the reactor thread then tears every live pool down.
/// The handler resets itself (`SA_RESETHAND`), so a second Ctrl-C kills the program at once; workers,
/// which ignore SIGINT, then exit when their channel to the parent closes.
enum Interrupts {
    private final class Weak: @unchecked Sendable {
        weak var core: PoolCore?
        init(_ core: PoolCore) { self.core = core }
    }

    private struct State {
        var pools: [Weak] = []
        var installed = false
        var exitAfter = false
    }

    private static let state = TrackedMutex(State())

    static func register(_ core: PoolCore) {
        let install = state.withLock { s -> Bool in
            s.pools.removeAll { $0.core == nil }
            s.pools.append(Weak(core))
            if core.options.interrupt == .tearDownAndExit { s.exitAfter = true }
            defer { s.installed = true }
            return !s.installed
        }
        guard install else { return }
        // Not installed (out of descriptors): SIGINT keeps its default action, and the next pool tries again.
        var done = false
        defer { if !done { state.withLock { $0.installed = false } } }
        guard let reactor = try? Reactor.shared else { return }
        let fd = mp_eventfd(0)
        guard fd >= 0 else { return }
        // Watched first: a handler writing to an eventfd nobody reads would swallow Ctrl-C.
        do {
            try reactor.watch(fd) {
                guard SystemCall.takeCount(fd) != nil else { return true }
                // Not on the reactor thread: tearing down waits for exits that the reactor reports.
                let t = OSThread(name: "mp-interrupt", daemon: true) {
                    let (pools, exitAfter) = state.withLock { s in (s.pools.compactMap(\.core), s.exitAfter) }
                    if exitAfter {
                        // The program ends: stop and reap every worker, then die of SIGINT as it would have.
                        for p in pools { p.stopWorkersNow() }
                        _ = mp_raise_default(SIGINT)
                    } else {
                        for p in pools { p.terminate(PoolError(.interrupted, "interrupted by SIGINT")) }
                        for p in pools { _ = try? p.join(timeout: .seconds(3)) }
                    }
                }
                try? t.start()
                return false
            }
        } catch {
            Syscall.close(fd)
            return
        }
        guard mp_install_interrupt_handler(fd) == 0 else {
            reactor.cancelWaits(on: fd)
            Syscall.close(fd)
            return
        }
        done = true
    }
}
