internal import CMultiprocessingShims
import Glibc
public import Multiprocessing
import Synchronization
import Threading

/// Accepts connections on a TCP or Unix socket, optionally requiring an authkey —
/// Python's `multiprocessing.connection.Listener(address, authkey=...)`.
///
/// Interoperates with CPython's `Client` (3.11's HMAC-MD5 and 3.12+'s `{sha256}` handshakes) and sets
/// `TCP_NODELAY` (CPython does not, and pays ~400 ms per manager connection to Nagle's algorithm and
/// delayed ACKs). A client that fails the handshake, sends garbage or stays silent makes `accept` throw
/// for that client only; the listener stays usable.
public final class Listener: @unchecked Sendable {  // immutable after init, except `closed`
    /// The bound address (with the actual port when 0 was asked for).
    public let address: Address
    private let authkey: [UInt8]?
    /// How long a connecting client may take over the handshake.
    public let handshakeTimeout: Duration
    private let fd: Int32
    private let unixPath: String?
    private let closed = Atomic<Bool>(false)

    /// - Parameters:
    ///   - address: default: TCP on 127.0.0.1 with a free port.
    ///   - backlog: the `listen` backlog.
    ///   - authkey: when set, every connection must prove it knows the key (both directions).
    ///   - handshakeTimeout: the longest a client may take to authenticate.
    public init(
        address: Address = .tcp(host: "127.0.0.1", port: 0),
        backlog: Int32 = 128,
        authkey: [UInt8]? = nil,
        handshakeTimeout: Duration = .seconds(10)
    ) throws {
        self.authkey = authkey
        self.handshakeTimeout = handshakeTimeout
        var path: String?
        if case .unix(let p) = address { path = p }
        unixPath = path
        fd = try address.withSockaddrs { family, sa, len -> Int32? in
            // Non-blocking: accept is always preceded by poll (or the reactor), never blocks by itself.
            let s = try Syscall.streamSocket(family: family)
            do {
                try Syscall.listen(s, family: family, sa, len, backlog: backlog)
            } catch let e as MultiprocessingError {
                Syscall.close(s)
                throw MultiprocessingError(.system, "cannot listen on \(address): \(e.message)", errno: e.errno)
            }
            return s
        }
        self.address = Address.local(of: fd, unixPath: path)
    }

    deinit { close() }

    /// Stops listening; a Unix socket's path is removed — Python's `Listener.close()`.
    public func close() {
        guard closed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        Reactor.shared.cancelWaits(on: fd)
        _ = shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
        if let unixPath { unlink(unixPath) }
    }

    /// Accepts one connection and authenticates it — Python's `Listener.accept()`.
    ///
    /// - Parameter timeout: the longest wait for a client to connect (`nil`: forever). The handshake has
    ///   its own limit, ``handshakeTimeout``.
    /// - Throws: ``MultiprocessingError/Code/authenticationFailed`` (the client was told `#FAILURE#` and
    ///   disconnected), ``MultiprocessingError/Code/timedOut``, ``MultiprocessingError/Code/closed``.
    public func accept(timeout: Duration? = nil) throws -> Connection {
        let deadline = Deadline.after(timeout)
        while true {
            if closed.load(ordering: .relaxed) { throw MultiprocessingError(.closed, "the listener is closed") }
            if let c = try acceptNow() { return try authenticate(c) }
            if try !Syscall.poll(fd, events: Int16(POLLIN), deadline: deadline) {
                throw MultiprocessingError(.timedOut, "no connection within the timeout")
            }
        }
    }

    /// Accepts one connection, suspending the task (not a thread) until a client connects. The handshake
    /// runs on a helper thread within ``handshakeTimeout`` (cancelling the task cuts it short).
    public func accept() async throws -> Connection {
        while true {
            if closed.load(ordering: .relaxed) { throw MultiprocessingError(.closed, "the listener is closed") }
            if let c = try acceptNow() {
                guard authkey != nil else { return c }
                let closeOnCancel: @Sendable () -> Void = { c.close() }
                return try await AsyncBridge.offload(onCancel: closeOnCancel) { try self.authenticate(c) }
            }
            try await Reactor.shared.wait(fd)
        }
    }

    private func acceptNow() throws -> Connection? {
        while true {
            let s = mp_accept_nonblocking(fd)
            if s >= 0 {
                // Back to blocking mode: Connection polls before every read and write.
                let flags = fcntl(s, F_GETFL)
                _ = fcntl(s, F_SETFL, flags & ~O_NONBLOCK)
                if unixPath == nil { _ = mp_set_nodelay(s) }
                return Connection(fileDescriptor: s)
            }
            let e = -s
            if e == EINTR || e == ECONNABORTED { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            if closed.load(ordering: .relaxed) { throw MultiprocessingError(.closed, "the listener is closed") }
            throw MultiprocessingError.system("accept", e)
        }
    }

    private func authenticate(_ c: Connection) throws -> Connection {
        guard let authkey else { return c }
        let deadline = Deadline.after(handshakeTimeout)
        do {
            try Handshake.deliver(c, authkey: authkey, deadline: deadline)
            try Handshake.answer(c, authkey: authkey, deadline: deadline)
            return c
        } catch {
            c.close()
            throw error
        }
    }
}

/// Connects to a ``Listener`` (ours or CPython's) — Python's `multiprocessing.connection.Client`.
///
/// - Parameters:
///   - address: where to connect.
///   - authkey: the shared key, if the listener requires one.
///   - timeout: for connecting and for the handshake together.
/// - Throws: ``MultiprocessingError/Code/authenticationFailed`` on a wrong key (either side),
///   ``MultiprocessingError/Code/timedOut``, or a system error such as connection refused.
public func connect(
    to address: Address,
    authkey: [UInt8]? = nil,
    timeout: Duration? = .seconds(30)
) throws -> Connection {
    let deadline = Deadline.after(timeout)
    let fd = try address.withSockaddrs { family, sa, len -> Int32? in
        let s = try Syscall.streamSocket(family: family)
        let connected: Bool
        do {
            connected = try Syscall.connect(s, sa, len, deadline: deadline)
        } catch let e as MultiprocessingError {
            Syscall.close(s)
            throw MultiprocessingError(.system, "cannot connect to \(address): \(e.message)", errno: e.errno)
        }
        guard connected else {
            Syscall.close(s)
            throw MultiprocessingError(.timedOut, "connecting to \(address) timed out")
        }
        Syscall.setNonBlocking(s, false)
        if family != AF_UNIX { _ = mp_set_nodelay(s) }
        return s
    }
    let c = Connection(fileDescriptor: fd)
    if let authkey {
        do {
            try Handshake.answer(c, authkey: authkey, deadline: deadline)
            try Handshake.deliver(c, authkey: authkey, deadline: deadline)
        } catch {
            c.close()
            throw error
        }
    }
    return c
}
