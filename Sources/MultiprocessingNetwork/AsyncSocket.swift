import Glibc
import Multiprocessing
import SystemCalls
import SystemPackage
import Threading

/// A stream socket (TCP or Unix) for async code: connecting, reading and writing suspend the task and
/// never a thread. The socket is non-blocking; while it has nothing to give or no room, the task waits
/// in the library's one epoll thread (the reactor `Connection`'s async receive uses). This is what
/// gevent's monkey-patched sockets give Python: many transfers in flight on a few threads.
///
/// One task may read while another writes; two concurrent readers (or writers) interleave their bytes,
/// as with any stream socket. Every call honours task cancellation (`CancellationError`, and the socket
/// stays usable); to bound a call in time, cancel it (for example from a task that sleeps).
public final class AsyncSocket: Sendable {
    /// The socket, closed only once no call uses it.
    private let descriptor: DescriptorLifetime
    private var fd: Int32 { descriptor.fd }

    /// Takes ownership of a connected stream socket (made non-blocking here): nothing else may close it
    /// from now on.
    /// - Precondition: `fileDescriptor` is open.
    public init(fileDescriptor: Int32) {
        precondition(
            SystemCall.isOpen(fileDescriptor),
            "AsyncSocket(fileDescriptor: \(fileDescriptor)): not an open descriptor"
        )
        descriptor = DescriptorLifetime(fileDescriptor)
        Syscall.setNonBlocking(fileDescriptor)
    }

    /// The descriptor (owned by this object).
    public var fileDescriptor: Int32 { fd }

    /// Connects to `address`. A TCP host that is not a numeric address is resolved on a helper thread
    /// (`getaddrinfo` may block on DNS), never on a thread of the cooperative pool. Sets `TCP_NODELAY`.
    public static func connect(to address: Address) async throws -> AsyncSocket {
        let numeric: Bool
        switch address {
        case .unix: numeric = true
        case .tcp(let host, _): numeric = isNumericHost(host)
        }
        let start: @Sendable () throws -> (Int32, Bool) = {
            try address.withSockaddrs { family, sa, len -> (Int32, Bool)? in
                let s = try Syscall.streamSocket(family: family)
                do throws(SystemCallError) {
                    return (s, !(try SystemCall.connect(s, sa, len)))
                } catch {
                    SystemCall.close(s)
                    throw MultiprocessingError.system("connect to \(address)", error.errno.rawValue)
                }
            }
        }
        let (s, inProgress) = numeric ? try start() : try await onHelperThread(start)
        let socket = AsyncSocket(fileDescriptor: s)
        if inProgress {
            try await Reactor.shared.wait(s, writable: true)
            if let e = try Syscall.mapped({ () throws(SystemCallError) in try SystemCall.pendingError(s) }) {
                throw MultiprocessingError.system("connect to \(address)", e.errno.rawValue)
            }
        }
        if case .tcp = address { try? SystemCall.setNoDelay(s) }
        return socket
    }

    /// Up to `maxLength` bytes, as soon as some are there; empty at end of file.
    public func read(upTo maxLength: Int = 64 * 1024) async throws -> [UInt8] {
        precondition(maxLength > 0, "maxLength must be positive")
        var buffer = [UInt8](repeating: 0, count: maxLength)
        while true {
            let r = try withDescriptor { fd in
                try buffer.withUnsafeMutableBytes { p in try Syscall.receive(fd, into: p) }
            }
            if let n = r {
                buffer.removeLast(maxLength - n)
                return buffer
            }
            try await Reactor.shared.wait(fd, unless: { descriptor.isClosed })
        }
    }

    /// Everything until the peer closes its side (at most `maxLength` bytes, else `messageTooLarge`).
    public func readToEnd(maxLength: Int = 64 << 20) async throws -> [UInt8] {
        var all: [UInt8] = []
        while true {
            let part = try await read()
            if part.isEmpty { return all }
            all += part
            if all.count > maxLength {
                throw MultiprocessingError(.messageTooLarge, "more than \(maxLength) bytes before end of file")
            }
        }
    }

    /// Writes all of `bytes`, waiting for room as needed.
    public func write(_ bytes: some Collection<UInt8>) async throws {
        let bytes = Array(bytes)
        var offset = 0
        while offset < bytes.count {
            let r = try withDescriptor { fd in
                try bytes.withUnsafeBytes { p in try Syscall.sendNow(fd, UnsafeRawBufferPointer(rebasing: p[offset...]))
                }
            }
            if let n = r {
                offset += n
                continue
            }
            try await Reactor.shared.wait(fd, writable: true, unless: { descriptor.isClosed })
        }
    }

    /// Closes the sending side (the peer reads end of file); reading still works.
    public func shutdownWrite() { _ = descriptor.use { fd in SystemCall.shutdown(fd, Int32(SHUT_WR)) } }

    /// Closes the socket; tasks waiting on it fail with `MultiprocessingError.Code.closed`. Idempotent.
    public func close() {
        descriptor.close { fd in Reactor.started?.cancelWaits(on: fd) }
    }

    /// `body` with the descriptor, open until it returns; `MultiprocessingError.Code.closed` after
    /// ``close()``.
    private func withDescriptor<T>(_ body: (Int32) throws -> T) throws -> T {
        guard let fd = descriptor.beginUse() else { throw MultiprocessingError(.closed, "the socket is closed") }
        defer { descriptor.endUse() }
        return try body(fd)
    }

    static func isNumericHost(_ host: String) -> Bool {
        var a4 = in_addr()
        var a6 = in6_addr()
        return host.isEmpty || inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1
    }

    /// Runs `body` on a new thread and waits for it without holding a thread of the cooperative pool.
    static func onHelperThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            let t = OSThread(name: "mp-resolver", daemon: true) { c.resume(with: Result { try body() }) }
            do { try t.start() } catch { c.resume(throwing: error) }
        }
    }
}

/// Accepts stream connections for async code — the server side of ``AsyncSocket``. No authkey: for
/// CPython's authenticated connections use ``Listener``.
public final class AsyncListener: Sendable {
    /// The listening socket, closed only once no accept uses it.
    private let descriptor: DescriptorLifetime
    /// Where it listens (with the port the system chose when asked for port 0).
    public let address: Address

    /// Binds and listens (`SO_REUSEADDR` on TCP). A Unix socket path must not exist yet.
    public init(address: Address = .tcp(host: "127.0.0.1", port: 0), backlog: Int32 = 128) throws {
        var unixPath: String?
        if case .unix(let p) = address { unixPath = p }
        let fd = try address.withSockaddrs { family, sa, len -> Int32? in
            let s = try Syscall.streamSocket(family: family)
            do {
                try Syscall.listen(s, family: family, sa, len, backlog: backlog)
            } catch {
                SystemCall.close(s)
                throw error
            }
            return s
        }
        descriptor = DescriptorLifetime(fd)
        self.address = Address.local(of: fd, unixPath: unixPath)
    }

    /// The next connection (with `TCP_NODELAY` on TCP), waiting for one without holding a thread.
    public func accept() async throws -> AsyncSocket {
        while true {
            let accepted = try descriptor.use { fd throws(MultiprocessingError) in
                try Syscall.mapped { () throws(SystemCallError) in try SystemCall.accept(fd).value.map(Int32.init) }
            }
            guard let accepted else { throw MultiprocessingError(.closed, "the listener is closed") }
            if let s = accepted {
                if case .tcp = address { try? SystemCall.setNoDelay(s) }
                return AsyncSocket(fileDescriptor: s)
            }
            try await Reactor.shared.wait(descriptor.fd, unless: { descriptor.isClosed })
        }
    }

    /// Stops listening; a task waiting in ``accept()`` fails with `MultiprocessingError.Code.closed`.
    public func close() {
        guard descriptor.close(before: { fd in Reactor.started?.cancelWaits(on: fd) }) else { return }
        if case .unix(let path) = address, !path.isEmpty { unlink(path) }
    }
}
