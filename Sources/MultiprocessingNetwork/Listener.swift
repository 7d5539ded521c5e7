internal import CMultiprocessingShims
import Glibc
public import Multiprocessing
import SystemCalls
import SystemPackage
import Threading

/// Accepts connections on a TCP or Unix socket, optionally requiring an authkey —
/// Python's `multiprocessing.connection.Listener(address, authkey=...)`.
///
/// Interoperates with CPython's `Client` (3.11's HMAC-MD5 and 3.12+'s `{sha256}` handshakes) and sets
/// `TCP_NODELAY` (CPython does not, and pays ~400 ms per manager connection to Nagle's algorithm and
/// delayed ACKs). A client that fails the handshake, sends garbage or stays silent makes `accept` throw
/// for that client only; the listener stays usable.
public final class Listener: @unchecked Sendable {  // immutable after init, except the descriptor's state
    /// The bound address (with the actual port when 0 was asked for).
    public let address: Address
    private let authkey: [UInt8]?
    /// How long a connecting client may take over the handshake.
    public let handshakeTimeout: Duration
    /// The listening socket, closed only once no accept or poll uses it (a close racing an accept on
    /// another thread must not let that thread accept on a number the system gave to someone else).
    private let descriptor: DescriptorLifetime
    private var fd: Int32 { descriptor.fd }
    private let unixPath: String?
    private let last = TrackedMutex<Address?>(nil)
    /// A descriptor held in reserve (`/dev/null`; -1: none): when the process is out of descriptors,
    /// it is given up for a moment to accept the waiting connection and close it, so that the client
    /// learns at once instead of waiting in the backlog (and the listener does not spin on it).
    private let reserve = TrackedMutex<Int32>(-1)
    /// How accepted TCP connections detect a peer that vanished (`nil`: the system's defaults, which
    /// take over two hours).
    public let keepAlive: KeepAlive?

    /// - Parameters:
    ///   - address: default: TCP on 127.0.0.1 with a free port.
    ///   - backlog: the `listen` backlog.
    ///   - authkey: when set, every connection must prove it knows the key (both directions).
    ///   - handshakeTimeout: the longest a client may take to authenticate.
    ///   - keepAlive: how accepted TCP connections notice a peer that vanished (see ``KeepAlive``).
    public init(
        address: Address = .tcp(host: "127.0.0.1", port: 0),
        backlog: Int32 = 128,
        authkey: [UInt8]? = nil,
        handshakeTimeout: Duration = .seconds(10),
        keepAlive: KeepAlive? = .standard
    ) throws {
        self.authkey = authkey
        self.keepAlive = keepAlive
        self.handshakeTimeout = handshakeTimeout
        var path: String?
        if case .unix(let p) = address { path = p }
        unixPath = path
        let fd = try address.withSockaddrs { family, sa, len -> Int32? in
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
        descriptor = DescriptorLifetime(fd)
        self.address = Address.local(of: fd, unixPath: path)
        reserve.withLock { $0 = Listener.openReserve() }
    }

    deinit { close() }

    private static func openReserve() -> Int32 { (try? SystemCall.open("/dev/null", O_RDONLY)) ?? -1 }

    /// The listening descriptor, for a server's own event loop (which must stop watching it before
    /// ``close()``).
    package var fileDescriptor: Int32 { fd }

    /// Whether the listener holds its reserve descriptor, and so refuses connections it cannot take
    /// (out of descriptors) by closing them at once. When false (the process ran out before the
    /// reserve could be taken back), a server should back off before accepting again.
    package var refusesWhenExhausted: Bool { reserve.withLock { $0 >= 0 } }

    /// Out of descriptors: accepts the waiting connection on the reserve's number and closes it, then
    /// takes the reserve back.
    private func refuseOne(_ fd: Int32) {
        reserve.withLock { r in
            guard r >= 0 else {
                r = Listener.openReserve()
                return
            }
            SystemCall.close(r)
            if case .done(let s)? = try? SystemCall.accept(fd) { SystemCall.close(Int32(s)) }
            r = Listener.openReserve()
        }
    }

    /// Stops listening; a Unix socket's path is removed — Python's `Listener.close()`.
    public func close() {
        // Waiting tasks fail, threads in poll wake (shutdown); the number is released when the last
        // call using it returns.
        let first = descriptor.close { fd in
            Reactor.started?.cancelWaits(on: fd)
            SystemCall.shutdown(fd, Int32(SHUT_RDWR))
        }
        guard first else { return }
        reserve.withLock { r in
            if r >= 0 { SystemCall.close(r) }
            r = -1
        }
        if let unixPath { unlink(unixPath) }
    }

    /// Accepts one connection and authenticates it — Python's `Listener.accept()`.
    ///
    /// A server with many clients should rather take connections with ``acceptConnection(timeout:)``
    /// and authenticate each on its own thread or task (``authenticate(_:)``): here a client that connects
    /// and stays silent holds up the next for up to ``handshakeTimeout``.
    ///
    /// - Parameter timeout: the longest wait for a client to connect (`nil`: forever). The handshake has
    ///   its own limit, ``handshakeTimeout``.
    /// - Throws: ``ClientError`` when the client failed (wrong key — it was told `#FAILURE#` —, silence,
    ///   garbage, a reset): the listener is fine and the next `accept` may succeed.
    ///   `MultiprocessingError` when the listener itself failed: `MultiprocessingError.Code.timedOut`
    ///   (no client within `timeout`), `MultiprocessingError.Code.closed`,
    ///   `MultiprocessingError.Code.resourceExhausted` (the process is out of descriptors: the waiting
    ///   client was disconnected at once, and the listener goes on; call again, after a pause), a system
    ///   error.
    public func accept(timeout: Duration? = nil) throws -> Connection {
        try authenticate(try acceptConnection(timeout: timeout)).connection
    }

    /// Accepts one connection, suspending the task (not a thread) until a client connects. The handshake
    /// runs on a helper thread within ``handshakeTimeout`` (cancelling the task cuts it short).
    public func accept() async throws -> Connection {
        let accepted = try await acceptConnection()
        guard authkey != nil else { return accepted.connection }
        let c = accepted.connection
        let closeOnCancel: @Sendable () -> Void = { c.close() }
        return try await AsyncBridge.offload(onCancel: closeOnCancel) { try self.authenticate(accepted).connection }
    }

    /// Accepts one connection without authenticating it: call ``authenticate(_:)`` next (on a thread or
    /// task of the connection's own, so that one slow client never holds up another).
    /// - Throws: only errors of the listener (`MultiprocessingError`).
    public func acceptConnection(timeout: Duration? = nil) throws -> AcceptedConnection {
        let deadline = Deadline.after(timeout)
        enum Attempt {
            case accepted(AcceptedConnection)
            case ready
            case timedOut
        }
        while true {
            let attempt = try descriptor.use { fd throws -> Attempt in
                if let c = try acceptNow(fd) { return .accepted(c) }
                return try Syscall.poll(fd, events: Int16(POLLIN), deadline: deadline) ? .ready : .timedOut
            }
            switch attempt {
            case .accepted(let c): return c
            case .ready: continue
            case .timedOut: throw MultiprocessingError(.timedOut, "no connection within the timeout")
            case nil: throw MultiprocessingError(.closed, "the listener is closed")
            }
        }
    }

    /// The async form of ``acceptConnection(timeout:)``: suspends the task until a client connects.
    public func acceptConnection() async throws -> AcceptedConnection {
        while true {
            guard let accepted = try descriptor.use({ fd in try acceptNow(fd) }) else {
                throw MultiprocessingError(.closed, "the listener is closed")
            }
            if let c = accepted { return c }
            try await Reactor.shared.wait(fd, unless: { descriptor.isClosed })
        }
    }

    /// The peer of the last connection accepted — Python's `Listener.last_accepted`.
    public var lastAccepted: Address? { last.withLock { $0 } }

    /// With the descriptor in use: a connection if one is waiting, `nil` if none is.
    private func acceptNow(_ fd: Int32) throws -> AcceptedConnection? {
        let s: Int32
        do throws(SystemCallError) {
            guard case .done(let accepted) = try SystemCall.accept(fd) else { return nil }
            s = Int32(accepted)
        } catch  where error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem {
            refuseOne(fd)
            throw MultiprocessingError(
                .resourceExhausted,
                "accept failed: out of file descriptors (a waiting connection was closed); the listener "
                    + "keeps listening and accepts again once descriptors are freed",
                errno: error.errno
            )
        } catch {
            if descriptor.isClosed { throw MultiprocessingError(.closed, "the listener is closed") }
            throw MultiprocessingError(error)
        }
        // Back to blocking mode: Connection polls before every read and write.
        Syscall.setNonBlocking(s, false)
        if unixPath == nil {
            try? SystemCall.setNoDelay(s)
            keepAlive?.apply(to: s)
        }
        let peer = Address.peer(of: s)
        last.withLock { $0 = peer }
        return AcceptedConnection(connection: Connection(fileDescriptor: s), peer: peer)
    }

    /// Runs the authkey handshake (if the listener has a key) on an accepted connection, within
    /// ``handshakeTimeout``. On failure the connection is closed.
    /// - Throws: ``ClientError``, naming the peer and what went wrong.
    public func authenticate(_ accepted: AcceptedConnection) throws(ClientError) -> AcceptedConnection {
        guard let authkey else { return accepted }
        let deadline = Deadline.after(handshakeTimeout)
        do {
            try Handshake.deliver(accepted.connection, authkey: authkey, deadline: deadline)
            try Handshake.answer(accepted.connection, authkey: authkey, deadline: deadline)
            return accepted
        } catch {
            accepted.connection.close()
            let e =
                error as? MultiprocessingError
                ?? MultiprocessingError(.authenticationFailed, "handshake failed: \(error)")
            throw ClientError(peer: accepted.peer, error: e)
        }
    }
}

/// A connection a ``Listener`` accepted, with the address of its peer.
public struct AcceptedConnection: Sendable {
    /// The connection, not yet authenticated when it came from ``Listener/acceptConnection(timeout:)``:
    /// pass this value to ``Listener/authenticate(_:)`` before trusting what it says.
    public let connection: Connection
    /// The client's address (a TCP host and port; for Unix sockets usually unnamed).
    public let peer: Address?
}

/// A failure of one client of a ``Listener`` (not of the listener): a wrong key, a silent client (its
/// handshake timed out), garbage, a reset connection. The listener keeps accepting.
public struct ClientError: Error, CustomStringConvertible, Sendable {
    /// Who the client was.
    public let peer: Address?
    /// What went wrong (`MultiprocessingError.Code.authenticationFailed`, `MultiprocessingError.Code.timedOut`, …).
    public let error: MultiprocessingError
    /// The code of ``ClientError/error``: what went wrong, to compare with `.authenticationFailed`,
    /// `.timedOut` and the other `MultiprocessingError.Code` members.
    public var code: MultiprocessingError.Code { error.code }
    /// `client <peer>: <error>`, with `(unknown)` for a peer without an address.
    public var description: String { "client \(peer.map { "\($0)" } ?? "(unknown)"): \(error)" }
}

/// Connects to a ``Listener`` (ours or CPython's) — Python's `multiprocessing.connection.Client`.
///
/// - Parameters:
///   - address: where to connect.
///   - authkey: the shared key, if the listener requires one.
///   - timeout: for connecting and for the handshake together.
///   - keepAlive: how the connection notices a server that vanished (TCP only; see ``KeepAlive``).
/// - Throws: `MultiprocessingError.Code.authenticationFailed` on a wrong key (either side),
///   `MultiprocessingError.Code.timedOut`, or a system error such as connection refused.
public func connect(
    to address: Address,
    authkey: [UInt8]? = nil,
    timeout: Duration? = .seconds(30),
    keepAlive: KeepAlive? = .standard
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
        if family != AF_UNIX {
            try? SystemCall.setNoDelay(s)
            keepAlive?.apply(to: s)
        }
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
