internal import CMultiprocessingShims
package import Glibc
package import Threading

/// Thin wrappers over the system calls this module uses: each retries `EINTR` and throws a
/// ``MultiprocessingError`` carrying `errno`. No raw `errno` reads happen elsewhere.
package enum Syscall {
    static func describe(_ e: Int32) -> String { String(cString: strerror(e)) }

    static func socketpair(_ type: Int32) throws -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        guard Glibc.socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw MultiprocessingError.system("socketpair", errno)
        }
        return (fds[0], fds[1])
    }

    static func pipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        try check("pipe2", mp_pipe_cloexec(&fds))
        return (fds[0], fds[1])
    }

    /// A new anonymous shared-memory file of `size` bytes (sparse until written), close-on-exec.
    static func sharedMemory(name: String, size: Int) throws -> Int32 {
        let fd = try check("memfd_create", mp_memfd_create(name))
        do {
            try check("ftruncate", mp_ftruncate(fd, size))
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Maps `size` bytes of `fd`, shared and writable.
    static func mapShared(_ fd: Int32, size: Int) throws -> UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer?
        try check("mmap", mp_map_shared(fd, size, &p))
        return p!
    }

    /// `open(2)` with `O_CLOEXEC`, retried on EINTR.
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw MultiprocessingError.system("open \(path)", errno) }
        }
    }

    /// `unlink(2)`.
    static func unlink(_ path: String) throws {
        guard Glibc.unlink(path) == 0 else { throw MultiprocessingError.system("unlink \(path)", errno) }
    }

    /// Whether process `pid` has ended: it does not exist, or it is a zombie (dead, not yet reaped — its
    /// parent may be the very process asking, waiting for a lock the dead one held).
    static func processHasEnded(_ pid: UInt32) -> Bool {
        if Glibc.kill(pid_t(bitPattern: pid), 0) != 0 { return errno == ESRCH }
        guard let fd = try? open("/proc/\(pid)/stat", O_RDONLY) else { return access("/proc/\(pid)", F_OK) != 0 }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 512)
        guard let n = try? buf.withUnsafeMutableBytes({ try receive(fd, into: $0, socket: false) }), n > 0 else {
            return false
        }
        // "pid (comm) S ...": the state follows the last ')' (comm may contain parentheses).
        guard let close = buf[0..<n].lastIndex(of: UInt8(ascii: ")")), close + 2 < n else { return false }
        let state = buf[close + 2]
        return state == UInt8(ascii: "Z") || state == UInt8(ascii: "X")
    }

    /// The inode number of the file behind `fd`.
    static func inode(_ fd: Int32) throws -> Int { try check("fstat", mp_fd_inode(fd)) }

    /// Unmaps a mapping made by ``mapShared(_:size:)``.
    static func unmap(_ p: UnsafeMutableRawPointer, size: Int) { _ = mp_unmap(p, size) }

    /// The size of the file behind `fd`.
    static func fileSize(_ fd: Int32) throws -> Int { try check("fstat", mp_fd_size(fd)) }

    /// A shim's result (the one convention: >= 0 on success, -errno on failure), or its error.
    @discardableResult
    package static func check(_ call: String, _ rc: Int32) throws -> Int32 {
        guard rc >= 0 else { throw MultiprocessingError.system(call, -rc) }
        return rc
    }

    /// The same for shims that return a `long`.
    @discardableResult
    package static func check(_ call: String, _ rc: Int) throws -> Int {
        guard rc >= 0 else { throw MultiprocessingError.system(call, Int32(truncatingIfNeeded: -rc)) }
        return rc
    }

    package static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    /// Reads what is available: the bytes read, 0 at end of input (a reset connection counts as one),
    /// `nil` when nothing is available now. `recv` on sockets (`MSG_DONTWAIT` unless `blocking`), `read`
    /// on other descriptors (which must then be non-blocking unless `blocking`).
    static func receive(
        _ fd: Int32,
        into p: UnsafeMutableRawBufferPointer,
        socket: Bool = true,
        blocking: Bool = false
    ) throws -> Int? {
        while true {
            let n =
                socket
                ? Glibc.recv(fd, p.baseAddress!, p.count, blocking ? 0 : Int32(MSG_DONTWAIT))
                : Glibc.read(fd, p.baseAddress!, p.count)
            if n >= 0 { return n }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            if e == ECONNRESET { return 0 }
            throw MultiprocessingError.system(socket ? "recv" : "read", e)
        }
    }

    /// Sends what the socket takes now, without SIGPIPE: the bytes sent, `nil` if it would block.
    /// A peer that is gone throws ``MultiprocessingError/Code/endOfFile``.
    static func sendNow(_ fd: Int32, _ p: UnsafeRawBufferPointer) throws -> Int? {
        while true {
            let n = Glibc.send(fd, p.baseAddress!, p.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
            if n >= 0 { return n }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw writeError(e)
        }
    }

    /// `epoll_wait` without a timeout, `EINTR` retried: the number of events.
    static func epollWait(_ epfd: Int32, _ events: inout [epoll_event]) throws -> Int {
        while true {
            let n = epoll_wait(epfd, &events, Int32(events.count), -1)
            if n >= 0 { return Int(n) }
            let e = errno
            if e == EINTR { continue }
            throw MultiprocessingError.system("epoll_wait", e)
        }
    }

    /// A close-on-exec, non-blocking stream socket.
    package static func streamSocket(family: Int32) throws -> Int32 {
        let s = Glibc.socket(
            family,
            Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
            0
        )
        guard s >= 0 else { throw MultiprocessingError.system("socket", errno) }
        return s
    }

    /// Binds `s` to `address` and listens (with `SO_REUSEADDR` on TCP).
    package static func listen(
        _ s: Int32,
        family: Int32,
        _ sa: UnsafePointer<sockaddr>,
        _ len: socklen_t,
        backlog: Int32
    ) throws {
        var one: Int32 = 1
        if family != AF_UNIX { setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
        guard bind(s, sa, len) == 0 else { throw MultiprocessingError.system("bind", errno) }
        guard Glibc.listen(s, backlog) == 0 else { throw MultiprocessingError.system("listen", errno) }
    }

    /// Connects the non-blocking socket `s` before `deadline`; `false` if the deadline passed first.
    package static func connect(
        _ s: Int32,
        _ sa: UnsafePointer<sockaddr>,
        _ len: socklen_t,
        deadline: Deadline?
    ) throws -> Bool {
        if Glibc.connect(s, sa, len) == 0 { return true }
        let e = errno
        guard e == EINPROGRESS || e == EINTR else { throw MultiprocessingError.system("connect", e) }
        if try !poll(s, events: Int16(POLLOUT), deadline: deadline) { return false }
        var err: Int32 = 0
        var l = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &l) == 0 else {
            throw MultiprocessingError.system("getsockopt", errno)
        }
        guard err == 0 else { throw MultiprocessingError.system("connect", err) }
        return true
    }

    /// Sets or clears `O_NONBLOCK`; whether it could.
    @discardableResult
    package static func setNonBlocking(_ fd: Int32, _ on: Bool = true) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        return flags >= 0 && fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) == 0
    }

    static func dup(_ fd: Int32) throws -> Int32 {
        let r = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard r >= 0 else { throw MultiprocessingError.system("dup", errno) }
        return r
    }

    /// Writes the whole buffer before `deadline`; returns the bytes written (less than the buffer only
    /// when the deadline passed). Sockets: `send(MSG_DONTWAIT)` first, `poll` only when the socket is
    /// full (a request-reply exchange then costs one system call, not two); pipes: `poll` + writes of at
    /// most 4 KiB, which a writable pipe always takes without blocking. (`isSocket` as the caller knows it;
    /// a wrong `true` costs one failed `send` and is corrected.)
    static func writeAll(_ fd: Int32, _ p: UnsafeRawBufferPointer, deadline: Deadline, isSocket: Bool) throws -> Int {
        var off = 0
        var isSocket = isSocket
        while off < p.count {
            if isSocket {
                let n = Glibc.send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
                if n >= 0 {
                    off += n
                    continue
                }
                let e = errno
                if e == EINTR { continue }
                if e == ENOTSOCK {
                    isSocket = false
                } else if e != EAGAIN {
                    throw writeError(e)
                }
            }
            guard try poll(fd, events: Int16(POLLOUT), deadline: deadline) else { return off }
            if isSocket { continue }
            let w = Glibc.write(fd, p.baseAddress! + off, min(4096, p.count - off))
            if w >= 0 {
                off += w
                continue
            }
            if errno == EINTR || errno == EAGAIN { continue }
            throw writeError(errno)
        }
        return off
    }

    /// `write` of the whole buffer (looping on short writes).
    static func writeAll(_ fd: Int32, _ p: UnsafeRawBufferPointer) throws {
        var off = 0
        while off < p.count {
            let n = Glibc.send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
            if n >= 0 {
                off += n
                continue
            }
            let e = errno
            if e == EINTR { continue }
            if e == ENOTSOCK {
                // A pipe end: plain write(2).
                let w = Glibc.write(fd, p.baseAddress! + off, p.count - off)
                if w >= 0 {
                    off += w
                    continue
                }
                if errno == EINTR { continue }
                throw writeError(errno)
            }
            throw writeError(e)
        }
    }

    package static func writeError(_ e: Int32) -> MultiprocessingError {
        if e == EPIPE || e == ECONNRESET {
            return MultiprocessingError(.endOfFile, "the peer closed the connection", errno: e)
        }
        return .system("write", e)
    }

    /// One `recvmsg` (sockets) or `read` (pipes); non-blocking unless `blocking` (then one syscall that
    /// sleeps until data arrives). `nil` means "nothing now", 0 end of file. Received descriptors are
    /// appended to `fds`.
    static func readNow(
        _ fd: Int32,
        into p: UnsafeMutableRawBufferPointer,
        fds: inout [Int32],
        isSocket: Bool,
        blocking: Bool = false
    ) throws -> Int? {
        while true {
            if isSocket {
                var got: (Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32) = (-1, -1, -1, -1, -1, -1, -1, -1)
                var n: Int32 = 0
                let r = withUnsafeMutableBytes(of: &got) { g in
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
                if r >= 0 {
                    if n > 0 {
                        withUnsafeBytes(of: got) { g in fds.append(contentsOf: g.bindMemory(to: Int32.self)[0..<Int(n)])
                        }
                    }
                    return r
                }
                let e = Int32(-r)
                if e == EINTR { continue }
                if e == EAGAIN { return nil }
                if e == ECONNRESET { return 0 }
                throw MultiprocessingError.system("recvmsg", e)
            }
            if !blocking { guard try poll(fd, events: Int16(POLLIN), deadline: Deadline.now()) else { return nil } }
            let r = Glibc.read(fd, p.baseAddress, p.count)
            if r >= 0 { return r }
            if errno == EINTR { continue }
            throw MultiprocessingError.system("read", errno)
        }
    }

    /// `poll` of one descriptor; true when ready (or hung up) within the deadline.
    package static func poll(_ fd: Int32, events: Int16, deadline: Deadline?) throws -> Bool {
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        while true {
            let r = Glibc.poll(&pfd, 1, Deadline.pollTimeout(deadline))
            if r > 0 { return true }
            if r == 0 { return false }
            if errno == EINTR { continue }
            throw MultiprocessingError.system("poll", errno)
        }
    }

    /// `poll` of many descriptors; returns the indices that are ready.
    static func poll(_ fds: [(fd: Int32, events: Int16)], deadline: Deadline?) throws -> [Int] {
        var pfds = fds.map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
        while true {
            let r = Glibc.poll(&pfds, nfds_t(pfds.count), Deadline.pollTimeout(deadline))
            if r >= 0 { return pfds.indices.filter { pfds[$0].revents != 0 } }
            if errno == EINTR { continue }
            throw MultiprocessingError.system("poll", errno)
        }
    }

    static func isSocket(_ fd: Int32) -> Bool {
        var st = stat()
        return fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }
}
