internal import CMultiprocessingShims
package import Glibc
internal import SystemCalls
import SystemPackage
package import Threading

/// The module's system calls, on the package's one path to the kernel (`SystemCalls`: one retry loop,
/// one errno policy): these add deadlines and report failures as ``MultiprocessingError`` (a peer that
/// is gone as ``MultiprocessingError/Code/endOfFile``). Nothing in the package reads `errno` elsewhere.
package enum Syscall {
    static func socketpair(_ type: Int32) throws(MultiprocessingError) -> (Int32, Int32) {
        try mapped { () throws(SystemCallError) in try SystemCall.socketpair(type) }
    }

    static func pipe() throws(MultiprocessingError) -> (read: Int32, write: Int32) {
        try mapped { () throws(SystemCallError) in try SystemCall.pipe() }
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

    /// `open(2)` with `O_CLOEXEC`.
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws(MultiprocessingError) -> Int32 {
        try mapped { () throws(SystemCallError) in try SystemCall.open(path, flags, mode: mode) }
    }

    /// `unlink(2)`.
    static func unlink(_ path: String) throws(MultiprocessingError) {
        _ = try mapped { () throws(SystemCallError) in
            try SystemCall.blocking("unlink \(path)") { SystemCall.libc(Glibc.unlink(path)) }
        }
    }

    /// Whether process `pid` has ended: it does not exist, or it is a zombie (dead, not yet reaped — its
    /// parent may be the very process asking, waiting for a lock the dead one held).
    static func processHasEnded(_ pid: UInt32) -> Bool {
        if !SystemCall.processExists(pid_t(bitPattern: pid)) { return true }
        guard let fd = try? open("/proc/\(pid)/stat", O_RDONLY) else { return access("/proc/\(pid)", F_OK) != 0 }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 512)
        guard let n = try? buf.withUnsafeMutableBytes({ try SystemCall.read(fd, $0).value }), n > 0 else {
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

    /// A shim's result (the one convention: >= 0 on success, -errno on failure), or its error. For
    /// calls that cannot be interrupted or block (`fstat`, `mmap`, `eventfd`); the others go through
    /// `SystemCall.loop`.
    @discardableResult
    package static func check(_ call: String, _ rc: Int32) throws(MultiprocessingError) -> Int32 {
        guard rc >= 0 else { throw MultiprocessingError.system(call, -rc) }
        return rc
    }

    /// The same for shims that return a `long`.
    @discardableResult
    package static func check(_ call: String, _ rc: Int) throws(MultiprocessingError) -> Int {
        guard rc >= 0 else { throw MultiprocessingError.system(call, Int32(truncatingIfNeeded: -rc)) }
        return rc
    }

    /// `close(2)` (a bad descriptor traps: see `SystemCall.close`).
    package static func close(_ fd: Int32) { SystemCall.close(fd) }

    /// Reads what is available: the bytes read, 0 at end of input (a reset connection counts as one),
    /// `nil` when nothing is available now. `recv` on sockets (`MSG_DONTWAIT` unless `blocking`), `read`
    /// on other descriptors (which must then be non-blocking unless `blocking`).
    package static func receive(
        _ fd: Int32,
        into p: UnsafeMutableRawBufferPointer,
        socket: Bool = true,
        blocking: Bool = false
    ) throws(MultiprocessingError) -> Int? {
        try mapped { () throws(SystemCallError) in
            socket ? try SystemCall.recv(fd, p, blocking: blocking).value : try SystemCall.read(fd, p).value
        }
    }

    /// Sends what the socket takes now, without SIGPIPE: the bytes sent, `nil` if it would block.
    /// A peer that is gone throws ``MultiprocessingError/Code/endOfFile``.
    package static func sendNow(_ fd: Int32, _ p: UnsafeRawBufferPointer) throws(MultiprocessingError) -> Int? {
        try mapped { () throws(SystemCallError) in try SystemCall.send(fd, p).value }
    }

    /// ``sendNow(_:_:)`` of several buffers in order, in one system call.
    package static func sendNow(
        _ fd: Int32,
        vectors: UnsafeMutableBufferPointer<iovec>
    ) throws(MultiprocessingError) -> Int? {
        try mapped { () throws(SystemCallError) in
            try SystemCall.send(fd, vectors: UnsafeMutableRawPointer(vectors.baseAddress!), count: vectors.count).value
        }
    }

    /// `epoll_wait` without a timeout: the number of events.
    static func epollWait(_ epfd: Int32, _ events: inout [epoll_event]) throws(MultiprocessingError) -> Int {
        try mapped { () throws(SystemCallError) in try SystemCall.epollWait(epfd, &events) }
    }

    /// A close-on-exec, non-blocking stream socket.
    package static func streamSocket(family: Int32) throws(MultiprocessingError) -> Int32 {
        try mapped { () throws(SystemCallError) in try SystemCall.streamSocket(family: family) }
    }

    /// Binds `s` to `address` and listens (with `SO_REUSEADDR` on TCP).
    package static func listen(
        _ s: Int32,
        family: Int32,
        _ sa: UnsafePointer<sockaddr>,
        _ len: socklen_t,
        backlog: Int32
    ) throws(MultiprocessingError) {
        try mapped { () throws(SystemCallError) in try SystemCall.listen(s, family: family, sa, len, backlog: backlog) }
    }

    /// Connects the non-blocking socket `s` before `deadline`; `false` if the deadline passed first.
    package static func connect(
        _ s: Int32,
        _ sa: UnsafePointer<sockaddr>,
        _ len: socklen_t,
        deadline: Deadline?
    ) throws(MultiprocessingError) -> Bool {
        if try mapped({ () throws(SystemCallError) in try SystemCall.connect(s, sa, len) }) { return true }
        if try !poll(s, events: Int16(POLLOUT), deadline: deadline) { return false }
        if let e = try mapped({ () throws(SystemCallError) in try SystemCall.pendingError(s) }) {
            throw MultiprocessingError(e)
        }
        return true
    }

    /// Sets or clears `O_NONBLOCK`; whether it could.
    @discardableResult
    package static func setNonBlocking(_ fd: Int32, _ on: Bool = true) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        return flags >= 0 && fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) == 0
    }

    static func dup(_ fd: Int32) throws(MultiprocessingError) -> Int32 {
        try mapped { () throws(SystemCallError) in try SystemCall.duplicate(fd) }
    }

    /// Writes the whole buffer before `deadline`; returns the bytes written (less than the buffer only
    /// when the deadline passed). Sockets: `send(MSG_DONTWAIT)` first, `poll` only when the socket is
    /// full (a request-reply exchange then costs one system call, not two); pipes: `poll` + writes of at
    /// most 4 KiB, which a writable pipe always takes without blocking. (`isSocket` as the caller knows it;
    /// a wrong `true` costs one failed `send` and is corrected.)
    static func writeAll(
        _ fd: Int32,
        _ p: UnsafeRawBufferPointer,
        deadline: Deadline,
        isSocket: Bool
    ) throws(MultiprocessingError) -> Int {
        var off = 0
        var isSocket = isSocket
        while off < p.count {
            let rest = UnsafeRawBufferPointer(rebasing: p[off...])
            if isSocket {
                do throws(SystemCallError) {
                    if let n = try SystemCall.send(fd, rest).value {
                        off += n
                        continue
                    }
                } catch  where error.errno == .notSocket {
                    isSocket = false
                } catch {
                    throw MultiprocessingError(error)
                }
            }
            guard try poll(fd, events: Int16(POLLOUT), deadline: deadline) else { return off }
            if isSocket { continue }
            let chunk = UnsafeRawBufferPointer(rebasing: rest.prefix(4096))
            off += try mapped { () throws(SystemCallError) in try SystemCall.write(fd, chunk).value ?? 0 }
        }
        return off
    }

    /// Writes the whole buffer, blocking as long as it takes (looping on short writes).
    static func writeAll(_ fd: Int32, _ p: UnsafeRawBufferPointer) throws(MultiprocessingError) {
        var off = 0
        var isSocket = true
        while off < p.count {
            let rest = UnsafeRawBufferPointer(rebasing: p[off...])
            do throws(SystemCallError) {
                // A pipe end answers ENOTSOCK to send(2) once; plain write(2) from then on.
                let r = isSocket ? try SystemCall.send(fd, rest, blocking: true) : try SystemCall.write(fd, rest)
                if let n = r.value {
                    off += n
                    continue
                }
                // A descriptor someone made non-blocking: wait for room rather than spin.
                _ = try SystemCall.poll(fd, events: Int16(POLLOUT), timeoutMs: -1)
            } catch  where error.errno == .notSocket && isSocket {
                isSocket = false
            } catch {
                throw MultiprocessingError(error)
            }
        }
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
    ) throws(MultiprocessingError) -> Int? {
        if isSocket {
            return try mapped { () throws(SystemCallError) in
                try SystemCall.recvWithDescriptors(fd, p, fds: &fds, blocking: blocking).value
            }
        }
        if !blocking { guard try poll(fd, events: Int16(POLLIN), deadline: Deadline.now()) else { return nil } }
        return try mapped { () throws(SystemCallError) in try SystemCall.read(fd, p).value }
    }

    /// `poll` of one descriptor; true when ready (or hung up) within the deadline (the timeout computed
    /// again after an interruption).
    package static func poll(_ fd: Int32, events: Int16, deadline: Deadline?) throws(MultiprocessingError) -> Bool {
        try mapped { () throws(SystemCallError) in
            try SystemCall.poll(fd, events: events, timeoutMs: Deadline.pollTimeout(deadline)) != 0
        }
    }

    /// `poll` of many descriptors; returns the indices that are ready.
    static func poll(_ fds: [(fd: Int32, events: Int16)], deadline: Deadline?) throws(MultiprocessingError) -> [Int] {
        var pfds = fds.map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
        _ = try mapped { () throws(SystemCallError) in
            try SystemCall.poll(&pfds, timeoutMs: Deadline.pollTimeout(deadline))
        }
        return pfds.indices.filter { pfds[$0].revents != 0 }
    }

    /// Whether `fd` is a socket; `nil` when it is not an open descriptor.
    static func isSocket(_ fd: Int32) -> Bool? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return (st.st_mode & S_IFMT) == S_IFSOCK
    }
}
