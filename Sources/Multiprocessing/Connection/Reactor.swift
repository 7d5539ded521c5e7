internal import CMultiprocessingShims
import Glibc
import Synchronization
import Threading

/// One background thread running `epoll`, so that tasks can wait for descriptors without blocking a
/// thread of the cooperative pool.
final class Reactor: Sendable {
    enum Interest: Sendable {
        case readable, writable
        var events: UInt32 {
            switch self {
            case .readable: UInt32(UInt32(EPOLLIN.rawValue) | UInt32(EPOLLRDHUP.rawValue))
            case .writable: UInt32(UInt32(EPOLLOUT.rawValue))
            }
        }
    }

    private struct Waiter {
        let id: UInt64
        let events: UInt32
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var waiters: [Int32: [Waiter]] = [:]
        var handlers: [Int32: @Sendable () -> Bool] = [:]
        var registered: Set<Int32> = []
        var cancelledEarly: Set<UInt64> = []
        var nextID: UInt64 = 0
    }

    static let shared = Reactor()

    private let epfd: Int32
    private let state = Mutex<State>(State())

    private init() {
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        precondition(epfd >= 0, "epoll_create1 failed")
        let t = OSThread(name: "mp-reactor", daemon: true) { [epfd] in Reactor.loop(epfd) }
        try! t.start()
    }

    private static func loop(_ epfd: Int32) {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let n = epoll_wait(epfd, &events, 64, -1)
            if n < 0 { continue }  // EINTR
            for i in 0..<Int(n) {
                shared.fire(Int32(truncatingIfNeeded: events[i].data.fd), events[i].events)
            }
        }
    }

    private func fire(_ fd: Int32, _ got: UInt32) {
        // A callback watcher first (on this thread), then the suspended tasks; both may share the fd.
        var keepHandler = false
        if let handler = state.withLock({ s in s.handlers[fd] }) { keepHandler = handler() }
        let ready: [Waiter] = state.withLock { s in
            s.registered.remove(fd)  // one-shot: disarmed until re-armed
            if !keepHandler { s.handlers[fd] = nil }
            let all = s.waiters[fd] ?? []
            let hup = got & (UInt32(EPOLLHUP.rawValue) | UInt32(EPOLLERR.rawValue)) != 0
            let fired = all.filter { hup || $0.events & got != 0 }
            let rest = all.filter { !(hup || $0.events & got != 0) }
            s.waiters[fd] = rest.isEmpty ? nil : rest
            if !rest.isEmpty || s.handlers[fd] != nil {
                arm(fd, rest, &s)
            } else {
                _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil)
            }
            return fired
        }
        for w in ready { w.continuation.resume() }
    }

    private func arm(_ fd: Int32, _ waiters: [Waiter], _ s: inout State) {
        var ev = epoll_event()
        ev.events = waiters.reduce(UInt32(UInt32(EPOLLONESHOT.rawValue))) { $0 | $1.events }
        ev.data.fd = fd
        if epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) != 0 {
            _ = epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)
        }
        s.registered.insert(fd)
    }

    /// Calls `handler` on the reactor thread each time `fd` becomes readable (or hangs up), until it
    /// returns `false`. The handler must not block. Progress made this way needs no thread of the
    /// cooperative pool, so blocking callers elsewhere cannot starve it.
    func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Bool) {
        state.withLock { s in
            s.handlers[fd] = handler
            arm(fd, s.waiters[fd] ?? [], &s)
        }
    }

    /// Suspends until `fd` is ready (or hung up). Throws `CancellationError` if the task is cancelled,
    /// and ``MultiprocessingError/Code/closed`` if the descriptor is closed through `cancelWaits(on:)`.
    func wait(_ fd: Int32, for interest: Interest) async throws {
        let id = state.withLock { s in
            s.nextID += 1
            return s.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let cancelled: Bool = state.withLock { s in
                    if s.cancelledEarly.remove(id) != nil { return true }
                    var list = s.waiters[fd] ?? []
                    list.append(Waiter(id: id, events: interest.events, continuation: c))
                    s.waiters[fd] = list
                    arm(fd, list, &s)
                    return false
                }
                if cancelled { c.resume(throwing: CancellationError()) }
            }
        } onCancel: {
            let c: CheckedContinuation<Void, any Error>? = state.withLock { s in
                guard var list = s.waiters[fd], let i = list.firstIndex(where: { $0.id == id }) else {
                    s.cancelledEarly.insert(id)
                    return nil
                }
                let w = list.remove(at: i)
                s.waiters[fd] = list.isEmpty ? nil : list
                return w.continuation
            }
            c?.resume(throwing: CancellationError())
        }
    }

    /// Fails every task waiting on `fd` (called before the descriptor is closed).
    func cancelWaits(on fd: Int32) {
        let list: [Waiter] = state.withLock { s in
            s.registered.remove(fd)
            s.handlers[fd] = nil
            return s.waiters.removeValue(forKey: fd) ?? []
        }
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil)
        for w in list { w.continuation.resume(throwing: MultiprocessingError(.closed, "the descriptor was closed")) }
    }
}
