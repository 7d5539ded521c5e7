internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import SystemPackage
import Threading

/// One background thread running `epoll`, so that tasks can wait for descriptors without blocking a
/// thread of the cooperative pool.
package final class Reactor: Sendable {
    /// What every registration waits for: readable, or hung up.
    private static let readable = UInt32(UInt32(EPOLLIN.rawValue) | UInt32(EPOLLRDHUP.rawValue))

    /// One `wait` call. Guarded by the reactor's mutex.
    private final class Registration: @unchecked Sendable {
        let events: UInt32
        var continuation: CheckedContinuation<Void, any Error>?
        var cancelled = false
        var finished = false
        init(events: UInt32) { self.events = events }
    }

    private struct State {
        var waiters: [Int32: [Registration]] = [:]
        var handlers: [Int32: @Sendable () -> Bool] = [:]
    }

    private static let instance = TrackedMutex<Reactor?>(nil)
    /// The reactor once made, read without the lock (every async wait asks for it).
    private static let published = AtomicLazyReference<Reactor>()

    /// The process's reactor, started by the first call that needs one.
    ///
    /// - Throws: ``MultiprocessingError/Code/resourceExhausted`` when the system refuses its descriptor or
    ///   its thread (a process at its descriptor limit); the next call tries again. Nothing traps.
    package static var shared: Reactor {
        get throws(MultiprocessingError) {
            if let r = published.load() { return r }
            return try instance.withLock { (r: inout Reactor?) throws(MultiprocessingError) -> Reactor in
                if let r { return r }
                let made = try Reactor()
                r = made
                return published.storeIfNil(made)
            }
        }
    }

    /// The reactor if one was started (`nil`: nothing can be waiting on any descriptor).
    package static var started: Reactor? { published.load() ?? instance.withLock { $0 } }

    private let epfd: Int32
    private let state = TrackedMutex<State>(State())

    private init() throws(MultiprocessingError) {
        let fd = try Syscall.mapped { () throws(SystemCallError) in try SystemCall.epollCreate() }
        epfd = fd
        let t = OSThread(name: "mp-reactor", daemon: true) { Reactor.loop(fd) }
        do {
            try t.start()
        } catch {
            Syscall.close(fd)
            throw MultiprocessingError(.resourceExhausted, "cannot start the reactor's thread: \(error)")
        }
    }

    private static func loop(_ epfd: Int32) {
        // The thread starts after `shared` has stored the reactor (its lock is held until then).
        guard let reactor = started else { fatalError("swift-multiprocessing reactor: started without an instance") }
        thread.store(UInt(pthread_self()), ordering: .releasing)
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let n: Int
            do {
                n = try Syscall.epollWait(epfd, &events)
            } catch {
                // EBADF, EFAULT, EINVAL: the reactor itself is broken; spinning would hide it at 100 % CPU.
                fatalError("swift-multiprocessing reactor: \(error)")
            }
            for i in 0..<Int(n) {
                reactor.fire(Int32(truncatingIfNeeded: events[i].data.fd), events[i].events)
                let later = afterEvent
                afterEvent = []
                for body in later { body() }
            }
        }
    }

    /// Work a handler leaves for after its event is fully handled (reactor thread only).
    nonisolated(unsafe) private static var afterEvent: [() -> Void] = []
    /// The reactor's thread (`pthread_t`; 0 until the thread has started), read from any thread.
    private static let thread = Atomic<UInt>(0)

    /// From a handler, on the reactor thread: runs `body` once the reactor is done with the current
    /// event — in particular after it has unregistered the handler's descriptor, so `body` may close it
    /// (closing it inside the handler would let a new descriptor reuse the number before the reactor
    /// unregisters it, and unregister the newcomer instead). Called on another thread, where no event is
    /// being handled, `body` runs at once.
    static func afterCurrentEvent(_ body: @escaping () -> Void) {
        let t = thread.load(ordering: .acquiring)
        guard t != 0, pthread_equal(pthread_t(t), pthread_self()) != 0 else { return body() }
        Reactor.afterEvent.append(body)
    }

    private func fire(_ fd: Int32, _ got: UInt32) {
        // A callback watcher first (on this thread), then the suspended tasks; both may share the fd.
        var keepHandler = false
        var failure = MultiprocessingError(.resourceExhausted, "cannot watch the descriptor")
        if let handler = state.withLock({ s in s.handlers[fd] }) { keepHandler = handler() }
        let (ready, failed): ([CheckedContinuation<Void, any Error>], [CheckedContinuation<Void, any Error>]) =
            state.withLock { s in
                // One-shot: the descriptor is disarmed until re-armed below.
                if !keepHandler { s.handlers[fd] = nil }
                let all = s.waiters[fd] ?? []
                let hup = got & (UInt32(EPOLLHUP.rawValue) | UInt32(EPOLLERR.rawValue)) != 0
                let fired = all.filter { hup || $0.events & got != 0 }
                let rest = all.filter { !(hup || $0.events & got != 0) }
                var unarmed: [Registration] = []
                s.waiters[fd] = rest.isEmpty ? nil : rest
                if !rest.isEmpty || s.handlers[fd] != nil {
                    let e = arm(fd, &s)
                    if e != 0 {
                        // Not re-armed: the waiters left would wait for ever; fail them instead.
                        s.waiters[fd] = nil
                        unarmed = rest
                        failure = MultiprocessingError.system("epoll_ctl", e)
                        // A watcher whose descriptor cannot be re-armed (it was closed and its number
                        // reused) would never fire again: it is dropped, not left silently unarmed.
                        s.handlers[fd] = nil
                    }
                } else {
                    SystemCall.epollRemove(epfd, fd)
                }
                let take: (Registration) -> CheckedContinuation<Void, any Error>? = { r in
                    r.finished = true
                    defer { r.continuation = nil }
                    return r.continuation
                }
                return (fired.compactMap(take), unarmed.compactMap(take))
            }
        for c in ready { c.resume() }
        for c in failed { c.resume(throwing: failure) }
    }

    /// (Re-)arms `fd` for the union of what its watcher and its waiting tasks want; the `errno` when the
    /// kernel refuses (out of memory, `max_user_watches` reached, a closed descriptor), 0 when armed.
    @discardableResult
    private func arm(_ fd: Int32, _ s: inout State) -> Int32 {
        var ev = epoll_event()
        let watcher = s.handlers[fd] != nil ? Reactor.readable : 0
        ev.events = (s.waiters[fd] ?? []).reduce(UInt32(EPOLLONESHOT.rawValue) | watcher) { $0 | $1.events }
        ev.data.fd = fd
        if SystemCall.epollControl(epfd, EPOLL_CTL_MOD, fd, &ev) == nil { return 0 }
        return SystemCall.epollControl(epfd, EPOLL_CTL_ADD, fd, &ev)?.rawValue ?? 0
    }

    /// Calls `handler` on the reactor thread each time `fd` becomes readable (or hangs up), until it
    /// returns `false`. The handler must not block. Progress made this way needs no thread of the
    /// cooperative pool, so blocking callers elsewhere cannot starve it.
    /// - Throws: ``MultiprocessingError/Code/resourceExhausted`` (or `system`) when the kernel refuses to
    ///   watch the descriptor; nothing is registered then.
    func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Bool) throws(MultiprocessingError) {
        let e = state.withLock { s -> Int32 in
            s.handlers[fd] = handler
            let e = arm(fd, &s)
            if e != 0 { s.handlers[fd] = nil }
            return e
        }
        if e != 0 { throw MultiprocessingError.system("epoll_ctl", e) }
    }

    /// Suspends until `fd` is readable (or, with `writable`, writable), or hung up. Throws
    /// `CancellationError` if the task is cancelled, and ``MultiprocessingError/Code/closed`` if the
    /// descriptor is closed through `cancelWaits(on:)`.
    ///
    /// `closed` is asked under the reactor's lock before the descriptor is armed: an object whose close
    /// marks itself closed before calling `cancelWaits(on:)` (``SystemCalls/DescriptorLifetime``) then
    /// either sees its waiter cancelled or the waiter sees it closed, never a wait on a number whose
    /// close is only deferred (the kernel would drop the registration when it closes, and the task
    /// would wait for ever).
    package func wait(_ fd: Int32, writable: Bool = false, unless closed: () -> Bool = { false }) async throws {
        let registration = Registration(events: writable ? UInt32(EPOLLOUT.rawValue) : Reactor.readable)
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let refused: (any Error)? = state.withLock { s in
                    if registration.cancelled { return CancellationError() }
                    if closed() {
                        registration.finished = true
                        return MultiprocessingError(.closed, "the descriptor was closed")
                    }
                    registration.continuation = c
                    s.waiters[fd, default: []].append(registration)
                    let e = arm(fd, &s)
                    guard e != 0 else { return nil }
                    // Never armed: fail now rather than wait for an event that cannot come.
                    registration.continuation = nil
                    registration.finished = true
                    s.waiters[fd]?.removeAll { $0 === registration }
                    if s.waiters[fd]?.isEmpty == true { s.waiters[fd] = nil }
                    return MultiprocessingError.system("epoll_ctl", e)
                }
                if let refused { c.resume(throwing: refused) }
            }
        } onCancel: {
            let c: CheckedContinuation<Void, any Error>? = state.withLock { s in
                if registration.finished { return nil }  // already fired or closed: nothing to undo
                registration.cancelled = true
                guard let c = registration.continuation else { return nil }  // not registered yet
                registration.continuation = nil
                registration.finished = true
                s.waiters[fd]?.removeAll { $0 === registration }
                if s.waiters[fd]?.isEmpty == true { s.waiters[fd] = nil }
                return c
            }
            c?.resume(throwing: CancellationError())
        }
    }

    /// Fails every task waiting on `fd` (called before the descriptor is closed).
    package func cancelWaits(on fd: Int32) {
        let continuations: [CheckedContinuation<Void, any Error>] = state.withLock { s in
            s.handlers[fd] = nil
            return (s.waiters.removeValue(forKey: fd) ?? []).compactMap { r in
                r.finished = true
                defer { r.continuation = nil }
                return r.continuation
            }
        }
        SystemCall.epollRemove(epfd, fd)
        for c in continuations { c.resume(throwing: MultiprocessingError(.closed, "the descriptor was closed")) }
    }
}
