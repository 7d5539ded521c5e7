package import CMultiprocessingShims
package import Glibc
internal import SystemPackage

/// Opening, closing and configuring descriptors, sockets and child processes.
extension SystemCall {
    /// `close(2)`. `EINTR` is not retried (Linux has released the number already: a retry could close a
    /// descriptor another thread just opened); a bad descriptor traps, as in the loop.
    package static func close(_ fd: Int32) {
        if Glibc.close(fd) == 0 { return }
        let e = Glibc.errno
        if e == EBADF { badDescriptorOrBuffer("close", e) }
    }

    /// `open(2)` with `O_CLOEXEC`.
    package static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws(SystemCallError) -> Int32 {
        Int32(try blocking("open \(path)") { libc(Glibc.open(path, flags | O_CLOEXEC, mode)) })
    }

    /// A close-on-exec, non-blocking stream socket of `family`.
    package static func streamSocket(family: Int32) throws(SystemCallError) -> Int32 {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        return Int32(try blocking("socket") { libc(Glibc.socket(family, type, 0)) })
    }

    /// A close-on-exec `AF_UNIX` socket pair of `type`.
    package static func socketpair(_ type: Int32) throws(SystemCallError) -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        _ = try blocking("socketpair") { libc(Glibc.socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)) }
        return (fds[0], fds[1])
    }

    /// A close-on-exec pipe.
    package static func pipe() throws(SystemCallError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        _ = try blocking("pipe2") { Int(mp_pipe_cloexec(&fds)) }
        return (fds[0], fds[1])
    }

    /// `accept4(2)` of a listening socket, the new socket close-on-exec and non-blocking; or
    /// ``IOResult/wouldBlock``. `ECONNABORTED` (a client that left before being accepted) is retried.
    package static func accept(_ fd: Int32) throws(SystemCallError) -> IOResult {
        while true {
            do throws(SystemCallError) {
                return try loop("accept", { Int(mp_accept_nonblocking(fd)) })
            } catch  where error.errno == .connectionAbort {
                continue
            }
        }
    }

    /// `connect(2)` of a non-blocking socket: `true` when connected at once, `false` when in progress
    /// (wait for the socket to be writable, then ask ``pendingError(_:)``).
    package static func connect(
        _ s: Int32,
        _ sa: UnsafePointer<sockaddr>,
        _ len: socklen_t
    ) throws(SystemCallError) -> Bool {
        // EINTR on a non-blocking connect means it goes on in the background, like EINPROGRESS: never
        // call connect again (that would fail with EALREADY).
        let r = Glibc.connect(s, sa, len)
        if r == 0 { return true }
        let e = Glibc.errno
        // (EAGAIN is not "in progress": a Unix socket's listener has a full backlog, or TCP is out of
        // local ports; nothing is connecting.)
        if e == EINPROGRESS || e == EINTR { return false }
        if e == EBADF || e == EFAULT { badDescriptorOrBuffer("connect", e) }
        throw SystemCallError("connect", .init(rawValue: e))
    }

    /// `SO_ERROR`: the error of a connect that was in progress, `nil` if it succeeded.
    package static func pendingError(_ s: Int32) throws(SystemCallError) -> SystemCallError? {
        var err: Int32 = 0
        var l = socklen_t(MemoryLayout<Int32>.size)
        _ = try blocking("getsockopt") { libc(getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &l)) }
        return err == 0 ? nil : SystemCallError("connect", .init(rawValue: err))
    }

    /// Binds `s` to `sa` and listens (with `SO_REUSEADDR` on TCP).
    package static func listen(
        _ s: Int32,
        family: Int32,
        _ sa: UnsafePointer<sockaddr>,
        _ len: socklen_t,
        backlog: Int32
    ) throws(SystemCallError) {
        if family != AF_UNIX { try setOption(s, SOL_SOCKET, SO_REUSEADDR, 1 as Int32) }
        _ = try blocking("bind") { libc(bind(s, sa, len)) }
        _ = try blocking("listen") { libc(Glibc.listen(s, backlog)) }
    }

    /// `setsockopt(2)` of one value.
    package static func setOption<T: BitwiseCopyable>(
        _ s: Int32,
        _ level: Int32,
        _ name: Int32,
        _ value: T
    ) throws(SystemCallError) {
        var v = value
        _ = try blocking("setsockopt") { libc(setsockopt(s, level, name, &v, socklen_t(MemoryLayout<T>.size))) }
    }

    /// `TCP_NODELAY` on a TCP socket (requests and replies go out at once).
    package static func setNoDelay(_ s: Int32) throws(SystemCallError) {
        try setOption(s, Int32(IPPROTO_TCP), TCP_NODELAY, 1 as Int32)
    }

    /// `shutdown(2)`; a socket that is not connected (any more) is not an error.
    package static func shutdown(_ s: Int32, _ how: Int32) {
        if Glibc.shutdown(s, how) == 0 { return }
        let e = Glibc.errno
        if e == EBADF { badDescriptorOrBuffer("shutdown", e) }
    }

    /// `waitpid(2)` with `WNOHANG` (`wait4`, for the peak resident set in KiB): the pid if it ended and
    /// was reaped, 0 while it runs.
    package static func reapIfEnded(
        _ pid: pid_t,
        status: inout Int32,
        peakKiB: inout Int
    ) throws(SystemCallError) -> pid_t {
        pid_t(try blocking("wait4") { Int(mp_wait4_nohang(pid, &status, &peakKiB)) })
    }

    /// `waitpid(2)` until `pid` ends: its pid.
    package static func reap(_ pid: pid_t, status: inout Int32) throws(SystemCallError) -> pid_t {
        pid_t(try blocking("waitpid") { Int(mp_waitpid_blocking(pid, &status)) })
    }
}

extension SystemCall {
    /// A close-on-exec duplicate of `fd` (`F_DUPFD_CLOEXEC`). Never interrupted, and not through the
    /// loop: `fd` may be a user's descriptor (one sent in a message), so a bad one is an error here.
    package static func duplicate(_ fd: Int32) throws(SystemCallError) -> Int32 {
        let r = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard r >= 0 else { throw SystemCallError("dup", Errno(rawValue: Glibc.errno)) }
        return r
    }

    /// Whether process `pid` exists (`kill(pid, 0)`; a process of another user exists too).
    package static func processExists(_ pid: pid_t) -> Bool {
        Glibc.kill(pid, 0) == 0 || Glibc.errno != ESRCH
    }
}

extension SystemCall {
    /// Whether `fd` is an open descriptor (`F_GETFD`): the check at the door for descriptors a user
    /// hands over, before the package owns them and a bad one would be a trap.
    package static func isOpen(_ fd: Int32) -> Bool { fd >= 0 && fcntl(fd, F_GETFD) >= 0 }
}
