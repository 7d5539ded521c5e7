// A second, minimal PostgreSQL client: the frontend/backend protocol spoken directly on a blocking
// socket, for one job only — streaming a large query's rows to the calling thread. A profile of the table
// pipeline on postgres-nio showed half of each worker's time on its event loop, turning `DataRow`s into
// cells; here a row is read straight from the socket's buffer into `SQLValue`s on the thread that uses
// it. The protocol itself is `PostgresProtocol` (a state machine over bytes, in PostgresProtocol.swift,
// with its codec in PostgresCodec.swift); this file is the socket around it. Built only with the
// PostgreSQL trait.
#if PostgreSQL
import Glibc
import Multiprocessing
import MultiprocessingSQL
import SystemCalls
import Threading

/// A session of its own that reads query results (extended protocol: unnamed statements, described once
/// per statement text, parameters sent as text, results in binary for the types ``PostgresSQLConnection`` reads in binary
/// and as text for every other type, exactly as that connection turns them into ``SQLValue``s).
/// Authentication: trust, password, MD5 and SCRAM-SHA-256. It speaks no TLS, and reads only where libpq
/// would not use TLS either: under `sslmode=disable`, or `allow`/`prefer` (the default) when the server
/// answers the SSLRequest with no. Whenever TLS would be used (the server offers it, or the mode requires
/// it), it throws ``Unsupported`` and the caller reads through its TLS session. A password is never sent in
/// clear text (`AuthenticationCleartextPassword`) over this unencrypted connection unless the URL says
/// `sslmode=disable`.
///
/// The shell of ``PostgresProtocol``: it connects, sends what the machine says, reads (polling up to the
/// deadline) what the machine asks for, feeds it the bytes, and hands its rows to the caller.
final class PostgresWireReader {
    private var fd: Int32 = -1
    /// The bytes read: `start..<end` not yet consumed by the machine.
    private var buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    private let timeout: Duration
    private var deadline: Deadline?
    /// The protocol: what to send, what the bytes read mean.
    private var machine: PostgresProtocol

    /// What this reader cannot do (TLS, an authentication method): the caller reads another way.
    typealias Unsupported = PostgresProtocol.Unsupported

    /// What a server answered before authentication, for a connection that may go unencrypted.
    typealias Probe = PostgresProtocol.Probe

    /// Connects to `url` and authenticates, within `timeout`.
    /// - Throws: ``Unsupported`` where TLS would be used or the authentication is one this reader does
    ///   not speak; `SQLError` when the server cannot be reached, refuses the login or breaks the protocol.
    init(_ url: DatabaseURL, timeout: Duration) throws {
        self.timeout = timeout
        machine = try PostgresProtocol(url)
        buffer = .allocate(byteCount: 1 << 16, alignment: 8)
        deadline = Deadline.after(timeout)
        do {
            try connect(url)
            switch try drive(machine.start()) {
            case .connected: return
            case let action: throw Self.failure(action)
            }
        } catch {
            close()
            throw error
        }
    }

    /// Asks the server whether it offers TLS and, when it does not, which authentication it wants, then
    /// hangs up (before any password is sent). For `allow`/`prefer` connections made by a client that
    /// cannot refuse to send a password in clear (postgres-nio): their caller decides first.
    static func probe(_ url: DatabaseURL, timeout: Duration) throws -> Probe {
        let r = try PostgresWireReader(probing: url, timeout: timeout)
        defer { r.close() }
        try r.connect(url)
        switch try r.drive(r.machine.start()) {
        case .probed(let answer): return answer
        case let action: throw failure(action)
        }
    }

    /// A reader with no connection yet, whose machine only probes.
    private init(probing url: DatabaseURL, timeout: Duration) throws {
        self.timeout = timeout
        machine = try PostgresProtocol(url, purpose: .probe)
        buffer = .allocate(byteCount: 256, alignment: 8)
        deadline = Deadline.after(timeout)
    }

    /// Whether this reader asks the server for TLS first (`allow`, `prefer`: it reads only if the answer
    /// is no) or not (`disable`).
    /// - Throws: ``Unsupported`` when the mode requires TLS; `SQLError` for an unknown mode.
    static func asksForTLS(_ url: DatabaseURL) throws -> Bool {
        try PostgresProtocol.asksForTLS(url)
    }

    /// The error for a server that asks for the password in clear text over an unencrypted connection.
    static func cleartextRefused(_ url: DatabaseURL) -> SQLError {
        PostgresCodec.cleartextRefused(url)
    }

    /// A parameter in PostgreSQL's text form (nil: NULL).
    static func text(_ v: SQLValue) -> [UInt8]? {
        PostgresCodec.text(v)
    }

    deinit {
        close()
        buffer.deallocate()
    }

    /// Whether the session is connected and waiting for a query.
    var isOpen: Bool { fd >= 0 && machine.isReady }

    /// Sends Terminate (without waiting) and closes the socket. Idempotent.
    func close() {
        let terminate = machine.terminate()
        if fd >= 0 {
            _ = terminate.withUnsafeBytes { p in try? SystemCall.send(fd, p) }
            SystemCall.close(fd)
            fd = -1
        }
    }

    // MARK: Connecting

    private func connect(_ url: DatabaseURL) throws {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(url.host, String(url.port), &hints, &list)
        guard rc == 0, let first = list else {
            throw SQLError(.connection, "cannot resolve \(url.host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var failure = "no address"
        var node: UnsafeMutablePointer<addrinfo>? = first
        while let a = node {
            node = a.pointee.ai_next
            let s: Int32
            do {
                s = try Syscall.streamSocket(family: a.pointee.ai_family)
            } catch {
                failure = "\(error)"
                continue
            }
            do {
                if try Syscall.connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen, deadline: deadline) {
                    try? SystemCall.setNoDelay(s)
                    fd = s
                    return
                }
                failure = "no answer within \(timeout)"
            } catch {
                failure = "\(error)"  // refused, unreachable: the socket is closed below, as after a timeout
            }
            Syscall.close(s)
        }
        throw SQLError(.connection, "cannot connect to \(url.host):\(url.port): \(failure)")
    }

    // MARK: Reading rows

    /// Runs `sql` (prepared on first use) with `parameters` and hands each row to `body` as it is read.
    func forEachRow(
        _ sql: String,
        _ parameters: [SQLValue],
        columns: ([String]) throws -> Void,
        _ body: ([SQLValue]) throws -> Void
    ) throws -> [String] {
        guard isOpen else { throw SQLError(.connection, "the reading session is closed") }
        deadline = Deadline.after(timeout)
        // Refused parameters leave the session as it was (nothing is sent).
        let first = try machine.query(sql, parameters)
        var names: [String] = []
        do {
            let end = try drive(
                first,
                columns: {
                    names = $0
                    try columns($0)
                },
                row: body
            )
            switch end {
            case .finished: return names
            case .failed(let e): throw e  // the server refused the statement: the session is ready
            case let action: throw Self.failure(action)
            }
        } catch {
            // A timeout, a lost server, or the caller's own error mid-stream: the session is in an unknown
            // state, so it is closed (cheap here, unlike postgres-nio, which must not close mid-query). An
            // error the server reported leaves it ready for the next query.
            if !machine.isReady { close() }
            throw error
        }
    }

    // MARK: Performing the machine's actions

    /// Performs `first`, then what the machine says as the bytes arrive, until an action that ends the
    /// exchange (connected, probed, finished, failed, unsupported, close), which it returns.
    private func drive(
        _ first: PostgresProtocol.Action,
        columns: ([String]) throws -> Void = { _ in },
        row: ([SQLValue]) throws -> Void = { _ in }
    ) throws -> PostgresProtocol.Action {
        var pending: PostgresProtocol.Action? = first
        while true {
            // One action at a time, released before the machine is fed again: a row's storage is then
            // the machine's alone, and reused for the next row without an allocation.
            let action: PostgresProtocol.Action
            if let p = pending {
                action = p
                pending = nil
            } else {
                let step = machine.received(
                    UnsafeRawBufferPointer(start: buffer.baseAddress! + start, count: end - start)
                )
                start += step.consumed
                action = step.action
            }
            switch action {
            case .send(let bytes):
                try send(bytes)
            case .execute(let bytes, let names):
                try send(bytes)
                try columns(names)
            case .row(let values):
                try row(values)
            case .read(let n):
                if try !fill(n) { pending = machine.connectionClosed() }
            case .connected, .probed, .finished, .failed, .unsupported, .close:
                return action
            }
        }
    }

    /// The error an action that ends the session reports.
    private static func failure(_ action: PostgresProtocol.Action) -> any Error {
        switch action {
        case .close(let e), .failed(let e): return e
        case .unsupported(let e): return e
        default: return PostgresCodec.malformed("an exchange that ended out of turn (\(action))")
        }
    }

    // MARK: The socket

    private func send(_ bytes: [UInt8]) throws {
        guard fd >= 0 else { throw SQLError(.connection, "the reading session is closed") }
        try bytes.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let sent: Int?
                do throws(SystemCallError) {
                    sent = try SystemCall.send(fd, UnsafeRawBufferPointer(rebasing: p[off...])).value
                } catch {
                    throw SQLError(.connection, "the server went away (send: \(error.errno))")
                }
                if let sent {
                    off += sent
                    continue
                }
                guard try Syscall.poll(fd, events: Int16(POLLOUT), deadline: deadline) else {
                    throw SQLError(.connection, "PostgreSQL did not take a request within \(timeout)")
                }
            }
        }
    }

    /// Makes `n` bytes available from `start`, reading as needed before the deadline; false when the
    /// server closed the connection first.
    private func fill(_ n: Int) throws -> Bool {
        if end - start >= n { return true }
        guard fd >= 0 else { throw SQLError(.connection, "the reading session is closed") }
        if start > 0 {
            let have = end - start
            if have > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: have) }
            start = 0
            end = have
        }
        if n > buffer.count {
            let bigger = UnsafeMutableRawBufferPointer.allocate(byteCount: max(n, buffer.count * 2), alignment: 8)
            bigger.baseAddress!.copyMemory(from: buffer.baseAddress!, byteCount: end)
            buffer.deallocate()
            buffer = bigger
        }
        while end < n {
            let got: Int?
            do throws(SystemCallError) {
                got = try SystemCall.recv(fd, UnsafeMutableRawBufferPointer(rebasing: buffer[end...])).value
            } catch {
                throw SQLError(.connection, "the server went away (recv: \(error.errno))")
            }
            if let got {
                if got == 0 { return false }  // closed, or reset
                end += got
                continue
            }
            guard try Syscall.poll(fd, events: Int16(POLLIN), deadline: deadline) else {
                throw SQLError(.connection, "PostgreSQL did not answer within \(timeout)")
            }
        }
        return true
    }
}

/// The fuzz target for the reading session's decoders (`Tests/Fuzz`, `scripts/fuzz postgres`): a server's
/// RowDescription, then DataRows decoded against it, as the reading session decodes them.
package enum PostgresDecoderFuzzing {
    /// A RowDescription of int4, text, bytea, float8, bool, timestamp and uuid columns, and two DataRows
    /// (values, then NULLs), as a server sends them.
    package static func seeds() -> [[UInt8]] {
        let types: [UInt32] = [23, 25, 17, 701, 16, 1114, 2950]
        var description = FrontendMessage(type: nil)
        description.int16(Int16(types.count))
        for (i, t) in types.enumerated() {
            description.cString("c\(i)")
            description.int32(0)
            description.int16(Int16(i + 1))
            description.int32(Int32(bitPattern: t))
            description.bytes([0, 4, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1])
        }
        let cells: [[UInt8]] = [
            [0, 0, 0, 42], Array("forty-two".utf8), [0xDE, 0xAD], [0x40, 0x45, 0, 0, 0, 0, 0, 0], [1],
            [0, 0, 0, 0, 0, 0, 0, 1], Array(repeating: 0xAB, count: 16),
        ]
        var row = FrontendMessage(type: nil)
        row.int16(Int16(cells.count))
        for c in cells {
            row.int32(Int32(c.count))
            row.bytes(c)
        }
        var nulls = FrontendMessage(type: nil)
        nulls.int16(Int16(cells.count))
        for _ in cells { nulls.int32(-1) }
        // Without their length headers (FrontendMessage(type: nil) puts a 4-byte length first): the bodies.
        let bodies = [description, row, nulls].map { Array($0.finished().dropFirst(4)) }
        return [bodies.flatMap { [UInt8($0.count >> 8), UInt8($0.count & 0xFF)] + $0 }]
    }

    /// `data`: a 2-byte length and a RowDescription body, then DataRow bodies, each after a 2-byte length.
    package static func messages(_ data: [UInt8]) {
        var parts: [[UInt8]] = []
        var at = 0
        while at + 2 <= data.count {
            let n = Int(data[at]) << 8 | Int(data[at + 1])
            at += 2
            let end = min(data.count, at + n)
            parts.append(Array(data[at..<end]))
            at = end
        }
        guard let first = parts.first,
            let (columns, types) = try? first.withUnsafeBytes({ try PostgresCodec.rowDescription($0) })
        else { return }
        let prepared = PostgresCodec.Prepared(columns: columns, types: types)
        var values: [SQLValue] = []
        for row in parts.dropFirst() {
            values.removeAll(keepingCapacity: true)
            _ = try? row.withUnsafeBytes { try PostgresCodec.decodeRow($0, prepared, into: &values) }
        }
    }
}

#endif
