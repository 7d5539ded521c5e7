package import CMultiprocessingShims
internal import Glibc
package import SystemPackage

/// Reading, writing and waiting: each one call through ``SystemCall/loop(_:resetIsEndOfInput:_:)``.
extension SystemCall {
    /// `recv(2)`: the bytes read (0 at end of input, a reset included), or ``IOResult/wouldBlock``.
    /// `MSG_DONTWAIT` unless `blocking`.
    @inlinable
    package static func recv(
        _ fd: Int32,
        _ p: UnsafeMutableRawBufferPointer,
        blocking: Bool = false
    ) throws(SystemCallError) -> IOResult {
        try loop("recv", resetIsEndOfInput: true) {
            libc(Glibc.recv(fd, p.baseAddress, p.count, blocking ? 0 : Int32(MSG_DONTWAIT)))
        }
    }

    /// `read(2)`: the bytes read (0 at end of input, a reset included), or ``IOResult/wouldBlock`` on a
    /// non-blocking descriptor.
    @inlinable
    package static func read(_ fd: Int32, _ p: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> IOResult {
        try loop("read", resetIsEndOfInput: true) { libc(Glibc.read(fd, p.baseAddress, p.count)) }
    }

    /// `send(2)` without `SIGPIPE`: the bytes the socket took, or ``IOResult/wouldBlock``. `MSG_DONTWAIT`
    /// unless `blocking`. A peer that is gone: a ``SystemCallError`` with ``SystemCallError/peerClosed``.
    @inlinable
    package static func send(
        _ fd: Int32,
        _ p: UnsafeRawBufferPointer,
        blocking: Bool = false
    ) throws(SystemCallError) -> IOResult {
        let flags = Int32(MSG_NOSIGNAL) | (blocking ? 0 : Int32(MSG_DONTWAIT))
        return try loop("send") { libc(Glibc.send(fd, p.baseAddress, p.count, flags)) }
    }

    /// `sendmsg(2)` of the `count` `iovec`s at `vectors`, in order, without `SIGPIPE` and without
    /// blocking: the bytes the socket took, or ``IOResult/wouldBlock``. A peer that is gone:
    /// ``SystemCallError/peerClosed``.
    package static func send(
        _ fd: Int32,
        vectors: UnsafeMutableRawPointer,
        count: Int
    ) throws(SystemCallError) -> IOResult {
        var msg = msghdr()
        msg.msg_iov = vectors.assumingMemoryBound(to: iovec.self)
        msg.msg_iovlen = count
        let flags = Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)
        return try loop("sendmsg") { libc(Glibc.sendmsg(fd, &msg, flags)) }
    }

    /// `write(2)`: the bytes written, or ``IOResult/wouldBlock`` on a non-blocking descriptor. A pipe
    /// whose reader is gone: ``SystemCallError/peerClosed`` (the package ignores `SIGPIPE` in its
    /// processes; see `WorkerMain`).
    @inlinable
    package static func write(_ fd: Int32, _ p: UnsafeRawBufferPointer) throws(SystemCallError) -> IOResult {
        try loop("write") { libc(Glibc.write(fd, p.baseAddress, p.count)) }
    }

    /// `recvmsg(2)` with `SCM_RIGHTS`: the bytes read (0 at end of input, a reset included) and up to 8
    /// received descriptors (close-on-exec) appended to `fds`; or ``IOResult/wouldBlock``.
    package static func recvWithDescriptors(
        _ fd: Int32,
        _ p: UnsafeMutableRawBufferPointer,
        fds: inout [Int32],
        blocking: Bool = false
    ) throws(SystemCallError) -> IOResult {
        var got: (Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32) = (-1, -1, -1, -1, -1, -1, -1, -1)
        var n: Int32 = 0
        let r = try loop("recvmsg", resetIsEndOfInput: true) {
            withUnsafeMutableBytes(of: &got) { g in
                mp_recv_with_fds(
                    fd,
                    p.baseAddress,
                    p.count,
                    g.baseAddress!.assumingMemoryBound(to: Int32.self),
                    8,
                    &n,
                    blocking ? 0 : Int32(MSG_DONTWAIT)
                )
            }
        }
        if n > 0 { withUnsafeBytes(of: got) { fds.append(contentsOf: $0.bindMemory(to: Int32.self)[0..<Int(n)]) } }
        return r
    }

    /// `sendmsg(2)` of `p` with `fds` as `SCM_RIGHTS` (at most 64): the bytes sent (the descriptors go
    /// with the first byte), or ``IOResult/wouldBlock``. A closed descriptor among `fds` (they come from
    /// the user's message) is an error, `EBADF`, not a trap.
    package static func sendWithDescriptors(
        _ fd: Int32,
        _ p: UnsafeRawBufferPointer,
        fds: [Int32],
        blocking: Bool = true
    ) throws(SystemCallError) -> IOResult {
        try loop("sendmsg", trapsBadDescriptor: fds.isEmpty) {
            fds.withUnsafeBufferPointer { f in
                mp_send_with_fds(
                    fd,
                    p.baseAddress,
                    p.count,
                    f.baseAddress,
                    Int32(f.count),
                    blocking ? 0 : Int32(MSG_DONTWAIT)
                )
            }
        }
    }

    /// `poll(2)` of one descriptor for `timeoutMs` (-1: no limit): the events that occurred (`revents`),
    /// 0 if none in time. `timeoutMs` is evaluated for each attempt, so that an interrupted poll waits only
    /// for what is left of a deadline.
    @inlinable
    package static func poll(
        _ fd: Int32,
        events: Int16,
        timeoutMs: @autoclosure () -> Int32
    ) throws(SystemCallError) -> Int16 {
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        let n = try blocking("poll") { libc(Glibc.poll(&pfd, 1, timeoutMs())) }
        return n == 0 ? 0 : pfd.revents
    }

    /// `poll(2)` of several descriptors: how many have events (their `revents` set in `fds`).
    @inlinable
    package static func poll(_ fds: inout [pollfd], timeoutMs: @autoclosure () -> Int32) throws(SystemCallError) -> Int
    {
        try blocking("poll") { libc(Glibc.poll(&fds, nfds_t(fds.count), timeoutMs())) }
    }

    /// `epoll_wait(2)`: the number of events stored at the start of `events`.
    @inlinable
    package static func epollWait(
        _ epfd: Int32,
        _ events: inout [epoll_event],
        timeoutMs: Int32 = -1
    ) throws(SystemCallError) -> Int {
        try blocking("epoll_wait") { libc(epoll_wait(epfd, &events, Int32(events.count), timeoutMs)) }
    }
}

/// The reactor's epoll set.
extension SystemCall {
    /// `epoll_create1(EPOLL_CLOEXEC)`.
    package static func epollCreate() throws(SystemCallError) -> Int32 {
        Int32(try blocking("epoll_create1") { libc(epoll_create1(Int32(EPOLL_CLOEXEC))) })
    }

    /// `epoll_ctl(2)` (never interrupted): `nil` when done, else why not. A descriptor that is not
    /// open (`EBADF`) is an answer here, not a trap: the reactor arms descriptors that other objects
    /// own, and reports a closed one to the task that asked.
    package static func epollControl(_ epfd: Int32, _ op: Int32, _ fd: Int32, _ event: inout epoll_event) -> Errno? {
        epoll_ctl(epfd, op, fd, &event) == 0 ? nil : Errno(rawValue: Glibc.errno)
    }
}

extension SystemCall {
    /// `EPOLL_CTL_DEL` of `fd` (a descriptor not in the set, or closed already, is no error: it is out).
    package static func epollRemove(_ epfd: Int32, _ fd: Int32) { _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil) }
}

extension SystemCall {
    /// Takes an eventfd's count (non-blocking eventfd): the count, `nil` if another read took it first.
    package static func takeCount(_ eventfd: Int32) -> UInt64? {
        var n: UInt64 = 0
        let r = try? withUnsafeMutableBytes(of: &n) { p throws(SystemCallError) in try read(eventfd, p) }
        return r?.value == 8 ? n : nil
    }
}

extension SystemCall {
    /// Writes what it can of `p` to a stream of diagnostics (standard error, a progress bar's terminal):
    /// interruptions and short writes go on; any failure — a closed descriptor, a full non-blocking
    /// stream, a reader gone — ends it silently. Never traps: a program may close its standard error,
    /// and a message about something else must not crash it.
    package static func writeDiagnostic(_ fd: Int32, _ p: UnsafeRawBufferPointer) {
        var off = 0
        while off < p.count {
            let n = Glibc.write(fd, p.baseAddress! + off, p.count - off)
            if n > 0 {
                off += n
            } else if n < 0 && Glibc.errno == EINTR {
                continue
            } else {
                return
            }
        }
    }
}
