// A second, minimal PostgreSQL client: the frontend/backend protocol spoken directly on a blocking
// socket, for one job only — streaming a large query's rows to the calling thread. A profile of the table
// pipeline on postgres-nio showed half of each worker's time on its event loop, turning `DataRow`s into
// cells; here a row is read straight from the socket's buffer into `SQLValue`s on the thread that uses
// it. Built only with the PostgreSQL trait.
#if PostgreSQL
import Crypto
import Foundation
import Glibc
import Multiprocessing
import MultiprocessingSQL
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
final class PostgresWireReader {
    private var fd: Int32 = -1
    private var buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    private let timeout: Duration
    private var deadline: Deadline?
    /// Prepared statements by text: their names, column names, types and result formats.
    private var statements: [String: Prepared] = [:]
    private var broken = false
    /// Whether the server is waiting for a query (its last ReadyForQuery read, nothing sent since).
    private var idle = false

    /// What this reader cannot do (TLS, an authentication method): the caller reads another way.
    struct Unsupported: Error {
        var reason: String
    }

    struct Prepared {
        var columns: [String]
        var types: [UInt32]
        var binary: [Bool]
    }

    init(_ url: DatabaseURL, timeout: Duration) throws {
        self.timeout = timeout
        buffer = .allocate(byteCount: 1 << 16, alignment: 8)
        deadline = Deadline.after(timeout)
        do {
            let asks = try Self.asksForTLS(url)
            try connect(url)
            if asks, try askForTLS() {
                throw Unsupported(reason: "the server offers TLS, which this reader does not speak")
            }
            try startUp(url)
        } catch {
            close()
            throw error
        }
    }

    /// What a server answered before authentication, for a connection that may go unencrypted.
    enum Probe: Equatable {
        /// It offers TLS (it answered the SSLRequest with yes).
        case offersTLS
        /// No TLS; its first authentication request has this code (0: none needed, 3: the password in
        /// clear text, 5: MD5, 10: SASL).
        case plain(authentication: Int32)
    }

    /// Asks the server whether it offers TLS and, when it does not, which authentication it wants, then
    /// hangs up (before any password is sent). For `allow`/`prefer` connections made by a client that
    /// cannot refuse to send a password in clear (postgres-nio): their caller decides first.
    static func probe(_ url: DatabaseURL, timeout: Duration) throws -> Probe {
        let r = PostgresWireReader(timeout: timeout)
        defer { r.close() }
        try r.connect(url)
        if try r.askForTLS() { return .offersTLS }
        try r.send(startupMessage(url))
        let (type, payload) = try r.readMessage()
        var reader = Reader(payload)
        switch type {
        case UInt8(ascii: "R"): return .plain(authentication: try reader.int32())
        case UInt8(ascii: "E"): throw Self.error(payload, "cannot connect to \(url)")
        default: throw Self.malformed("a message of type \(type) before authentication")
        }
    }

    /// A reader with no connection yet (for `probe`).
    private init(timeout: Duration) {
        self.timeout = timeout
        buffer = .allocate(byteCount: 256, alignment: 8)
        deadline = Deadline.after(timeout)
    }

    /// Whether this reader asks the server for TLS first (`allow`, `prefer`: it reads only if the answer
    /// is no) or not (`disable`).
    /// - Throws: ``Unsupported`` when the mode requires TLS; `SQLError` for an unknown mode.
    static func asksForTLS(_ url: DatabaseURL) throws -> Bool {
        switch url.options["sslmode"] ?? "prefer" {
        case "disable": return false
        case "allow", "prefer": return true
        case "require", "verify-ca", "verify-full":
            throw Unsupported(reason: "sslmode=\(url.options["sslmode"] ?? ""): this reader speaks no TLS")
        case let mode:
            throw SQLError(
                .statement,
                "unknown sslmode \(mode): disable, allow, prefer, require, verify-ca or verify-full"
            )
        }
    }

    /// Sends the SSLRequest; true when the server would speak TLS (`S`), false when it would not (`N`).
    private func askForTLS() throws -> Bool {
        try send([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])  // length 8, code 80877103
        try fill(1)
        let answer = buffer[start]
        start += 1
        switch answer {
        case UInt8(ascii: "S"): return true
        case UInt8(ascii: "N"): return false
        default: throw Self.malformed("an answer of \(answer) to the SSLRequest")
        }
    }

    /// The StartupMessage for `url`'s user and database.
    private static func startupMessage(_ url: DatabaseURL) -> [UInt8] {
        var body = Message(type: nil)
        body.int32(196_608)  // protocol 3.0
        for (k, v) in [
            ("user", url.user), ("database", url.database.isEmpty ? url.user : url.database),
            ("client_encoding", "UTF8"), ("DateStyle", "ISO"), ("application_name", "swift-multiprocessing"),
        ] {
            body.cString(k)
            body.cString(v)
        }
        body.byte(0)
        return body.finished()
    }

    deinit {
        close()
        buffer.deallocate()
    }

    var isOpen: Bool { fd >= 0 && !broken }

    func close() {
        if fd >= 0 {
            var terminate: [UInt8] = [UInt8(ascii: "X"), 0, 0, 0, 4]
            _ = terminate.withUnsafeMutableBytes {
                Glibc.send(fd, $0.baseAddress, 5, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            _ = Glibc.close(fd)
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
            do {
                let s = try Syscall.streamSocket(family: a.pointee.ai_family)
                if try Syscall.connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen, deadline: deadline) {
                    var one: Int32 = 1
                    setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    fd = s
                    return
                }
                Syscall.close(s)
                failure = "no answer within \(timeout)"
            } catch {
                failure = "\(error)"
            }
        }
        throw SQLError(.connection, "cannot connect to \(url.host):\(url.port): \(failure)")
    }

    private func startUp(_ url: DatabaseURL) throws {
        try send(Self.startupMessage(url))
        var scram: SCRAM?
        while true {
            let (type, payload) = try readMessage()
            var r = Reader(payload)
            switch type {
            case UInt8(ascii: "R"):
                let code = try r.int32()
                switch code {
                case 0: break  // AuthenticationOk
                case 3:
                    // This connection is not encrypted: the password would cross the network as it is.
                    guard url.options["sslmode"] == "disable" else { throw Self.cleartextRefused(url) }
                    var m = Message(type: UInt8(ascii: "p"))
                    m.cString(url.password)
                    try send(m.finished())
                case 5:
                    let salt = try r.bytes(4)
                    func hex(_ d: some Sequence<UInt8>) -> String { d.map { String(format: "%02x", $0) }.joined() }
                    let inner = hex(Insecure.MD5.hash(data: Array((url.password + url.user).utf8)))
                    let outer = hex(Insecure.MD5.hash(data: Array(inner.utf8) + salt))
                    var m = Message(type: UInt8(ascii: "p"))
                    m.cString("md5" + outer)
                    try send(m.finished())
                case 10:
                    var mechanisms: [String] = []
                    while let s = try? r.cString(), !s.isEmpty { mechanisms.append(s) }
                    guard mechanisms.contains("SCRAM-SHA-256") else {
                        throw Unsupported(reason: "the server offers \(mechanisms), not SCRAM-SHA-256")
                    }
                    let s = SCRAM(password: url.password)
                    scram = s
                    var m = Message(type: UInt8(ascii: "p"))
                    m.cString("SCRAM-SHA-256")
                    let first = Array(s.clientFirst.utf8)
                    m.int32(Int32(first.count))
                    m.bytes(first)
                    try send(m.finished())
                case 11:
                    guard var s = scram else { throw SQLError(.connection, "SCRAM continued before it started") }
                    let final = try s.clientFinal(serverFirst: String(decoding: r.rest(), as: UTF8.self))
                    scram = s
                    var m = Message(type: UInt8(ascii: "p"))
                    m.bytes(Array(final.utf8))
                    try send(m.finished())
                case 12:
                    guard let s = scram, s.verify(serverFinal: String(decoding: r.rest(), as: UTF8.self)) else {
                        throw SQLError(
                            .connection,
                            "the server's SCRAM signature does not match: not the server we asked"
                        )
                    }
                default:
                    throw Unsupported(reason: "authentication method \(code) (GSS, SSPI or Kerberos)")
                }
            case UInt8(ascii: "E"):
                let e = Self.error(payload, "cannot connect to \(url)")
                // Refused without TLS (a `hostssl` rule) where the URL allows TLS: the connection's own
                // session, which speaks TLS, reads instead.
                if e.code == "SQLSTATE 28000", url.options["sslmode"] != "disable" {
                    throw Unsupported(reason: "the server wants TLS: \(e.message)")
                }
                throw e
            case UInt8(ascii: "Z"):
                return
            default:
                continue  // ParameterStatus, BackendKeyData, notices
            }
        }
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
        guard parameters.count <= Int(Int16.max) else {
            throw SQLError(.statement, "\(parameters.count) parameters: PostgreSQL takes at most \(Int16.max)")
        }
        deadline = Deadline.after(timeout)
        do {
            let prepared = try prepare(sql)
            // Parse again (unnamed), bind, describe the portal (to check the columns still are what they
            // were), execute, sync: one round trip.
            var p = Message(type: UInt8(ascii: "P"))
            p.cString("")
            p.cString(sql)
            p.int16(0)
            var m = Message(type: UInt8(ascii: "B"))
            m.cString("")
            m.cString("")
            m.int16(0)  // every parameter in text
            m.int16(Int16(parameters.count))
            for p in parameters {
                if let bytes = Self.text(p) {
                    guard bytes.count < Int(Int32.max) else {
                        throw SQLError(.statement, "a parameter of \(bytes.count) bytes: PostgreSQL takes under 2 GB")
                    }
                    m.int32(Int32(bytes.count))
                    m.bytes(bytes)
                } else {
                    m.int32(-1)
                }
            }
            m.int16(Int16(prepared.binary.count))
            for b in prepared.binary { m.int16(b ? 1 : 0) }
            var out = p.finished() + m.finished()
            var describe = Message(type: UInt8(ascii: "D"))
            describe.byte(UInt8(ascii: "P"))
            describe.cString("")
            out += describe.finished()
            var e = Message(type: UInt8(ascii: "E"))
            e.cString("")
            e.int32(0)
            out += e.finished()
            out += Message(type: UInt8(ascii: "S")).finished()
            try send(out)
            try columns(prepared.columns)
            var failure: SQLError?
            var values: [SQLValue] = []
            loop: while true {
                let (type, payload) = try readMessage()
                switch type {
                case UInt8(ascii: "D"):
                    guard failure == nil else { continue }
                    values.removeAll(keepingCapacity: true)
                    try Self.decodeRow(payload, prepared, into: &values)
                    try body(values)
                case UInt8(ascii: "T"):
                    // The table changed under the statement since it was described: say so, and describe
                    // it afresh next time.
                    if try Self.rowDescription(payload).types != prepared.types {
                        statements[sql] = nil
                        failure = SQLError(
                            .statement,
                            "the columns of \(sql.prefix(200)) changed while it was read; run it again"
                        )
                    }
                case UInt8(ascii: "E"):
                    // Described afresh next time: the error may come of a changed table (a column more
                    // than the result formats bound).
                    statements[sql] = nil
                    failure = Self.error(payload, "cannot run \(sql.prefix(200))")
                case UInt8(ascii: "Z"):
                    break loop
                default:
                    continue  // BindComplete, CommandComplete, notices
                }
            }
            if let failure { throw failure }
            return prepared.columns
        } catch {
            // A timeout, a lost server, or the caller's own error mid-stream: the session is in an unknown
            // state, so it is closed (cheap here, unlike postgres-nio, which must not close mid-query). An
            // error the server reported leaves it ready for the next query.
            if !idle {
                broken = true
                close()
            }
            throw error
        }
    }

    /// The statement's columns, types and result formats: described once per statement text (an unnamed
    /// statement, so nothing is left on the server and poolers such as PgBouncer see no named statements),
    /// then remembered.
    private func prepare(_ sql: String) throws -> Prepared {
        if let p = statements[sql] { return p }
        if statements.count >= 64 { statements = [:] }
        var m = Message(type: UInt8(ascii: "P"))
        m.cString("")
        m.cString(sql)
        m.int16(0)
        var out = m.finished()
        var d = Message(type: UInt8(ascii: "D"))
        d.byte(UInt8(ascii: "S"))
        d.cString("")
        out += d.finished()
        out += Message(type: UInt8(ascii: "S")).finished()
        try send(out)
        var prepared = Prepared(columns: [], types: [], binary: [])
        var failure: SQLError?
        while true {
            let (type, payload) = try readMessage()
            switch type {
            case UInt8(ascii: "T"):
                (prepared.columns, prepared.types) = try Self.rowDescription(payload)
                prepared.binary = prepared.types.map(Self.readsBinary)
            case UInt8(ascii: "E"):
                failure = Self.error(payload, "cannot run \(sql.prefix(200))")
            case UInt8(ascii: "Z"):
                if let failure { throw failure }
                statements[sql] = prepared
                return prepared
            default:
                continue
            }
        }
    }

    /// A RowDescription's column names and type oids.
    static func rowDescription(_ payload: UnsafeRawBufferPointer) throws -> (columns: [String], types: [UInt32]) {
        var r = Reader(payload)
        let n = Int(try r.int16())
        // A negative count would make the range below trap (found by reading the decoder for fuzzing).
        guard n >= 0 else { throw malformed("a RowDescription of \(n) columns") }
        var columns: [String] = []
        var types: [UInt32] = []
        for _ in 0..<n {
            columns.append(try r.cString())
            _ = try r.bytes(6)  // table oid, column number
            types.append(UInt32(bitPattern: try r.int32()))
            _ = try r.bytes(8)  // size, modifier, format
        }
        return (columns, types)
    }

    private func awaitReady(_ what: String) throws {
        var failure: SQLError?
        while true {
            let (type, payload) = try readMessage()
            if type == UInt8(ascii: "E") { failure = Self.error(payload, "cannot run \(what)") }
            if type == UInt8(ascii: "Z") { break }
        }
        if let failure { throw failure }
    }

    // MARK: Values

    static let bool: UInt32 = 16
    static let bytea: UInt32 = 17
    static let name: UInt32 = 19
    static let int8: UInt32 = 20
    static let int2: UInt32 = 21
    static let int4: UInt32 = 23
    static let textType: UInt32 = 25
    static let oid: UInt32 = 26
    static let float4: UInt32 = 700
    static let float8: UInt32 = 701
    static let bpchar: UInt32 = 1042
    static let varchar: UInt32 = 1043
    static let timestamp: UInt32 = 1114
    static let timestamptz: UInt32 = 1184
    static let uuid: UInt32 = 2950

    /// The types read in binary (as ``PostgresSQLConnection`` reads them); every other one as text.
    static func readsBinary(_ type: UInt32) -> Bool {
        [bool, bytea, int8, int2, int4, oid, float4, float8, timestamp, timestamptz, uuid].contains(type)
    }

    /// A parameter in PostgreSQL's text form (nil: NULL).
    static func text(_ v: SQLValue) -> [UInt8]? {
        switch v {
        case .null: return nil
        case .int(let i): return Array(String(i).utf8)
        case .double(let d):
            return Array((d.isNaN ? "NaN" : d.isInfinite ? (d < 0 ? "-Infinity" : "Infinity") : "\(d)").utf8)
        case .text(let s): return Array(s.utf8)
        case .blob(let b):
            var out: [UInt8] = [UInt8(ascii: "\\"), UInt8(ascii: "x")]
            out.reserveCapacity(2 + b.count * 2)
            hex(b, into: &out)
            return out
        }
    }

    /// Appends each byte as two lowercase hex digits.
    static func hex(_ bytes: some Sequence<UInt8>, into out: inout [UInt8]) {
        let digits: StaticString = "0123456789abcdef"
        for byte in bytes {
            out.append(digits.utf8Start[Int(byte >> 4)])
            out.append(digits.utf8Start[Int(byte & 15)])
        }
    }

    static func decodeRow(_ p: UnsafeRawBufferPointer, _ prepared: Prepared, into values: inout [SQLValue]) throws {
        guard p.count >= 2 else { throw malformed("a short DataRow") }
        let n = Int(UInt16(bigEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt16.self)))
        guard n == prepared.types.count else {
            throw malformed("a DataRow of \(n) columns, not \(prepared.types.count)")
        }
        var at = 2
        for i in 0..<n {
            guard at + 4 <= p.count else { throw malformed("a DataRow cut short") }
            let length = Int(Int32(bigEndian: p.loadUnaligned(fromByteOffset: at, as: Int32.self)))
            at += 4
            if length < 0 {
                values.append(.null)
                continue
            }
            guard at + length <= p.count else { throw malformed("a DataRow cut short") }
            let cell = UnsafeRawBufferPointer(rebasing: p[at..<(at + length)])
            at += length
            values.append(try value(cell, type: prepared.types[i], binary: prepared.binary[i]))
        }
    }

    static func value(_ cell: UnsafeRawBufferPointer, type: UInt32, binary: Bool) throws -> SQLValue {
        guard binary else { return .text(String(decoding: cell, as: UTF8.self)) }
        func be<T: FixedWidthInteger>(_: T.Type) throws -> T {
            guard cell.count == MemoryLayout<T>.size else { throw malformed("a \(T.self) of \(cell.count) bytes") }
            return T(bigEndian: cell.loadUnaligned(as: T.self))
        }
        switch type {
        case bool: return .int(cell.first == 0 ? 0 : 1)
        case int2: return .int(Int64(try be(Int16.self)))
        case int4: return .int(Int64(try be(Int32.self)))
        case int8: return .int(try be(Int64.self))
        case oid: return .int(Int64(try be(UInt32.self)))
        case float4: return .double(Double(Float(bitPattern: try be(UInt32.self))))
        case float8: return .double(Double(bitPattern: try be(UInt64.self)))
        case bytea: return .blob(Array(cell))
        case timestamp, timestamptz: return .text(PostgresSQLConnection.timestampText(try be(Int64.self)))
        case uuid:
            guard cell.count == 16 else { throw malformed("a uuid of \(cell.count) bytes") }
            var out: [UInt8] = []
            out.reserveCapacity(36)
            for (i, group) in [0..<4, 4..<6, 6..<8, 8..<10, 10..<16].enumerated() {
                if i > 0 { out.append(UInt8(ascii: "-")) }
                hex(cell[group], into: &out)
            }
            return .text(String(decoding: out, as: UTF8.self))
        default: return .text(String(decoding: cell, as: UTF8.self))
        }
    }

    /// The error for a server that asks for the password in clear text over an unencrypted connection.
    static func cleartextRefused(_ url: DatabaseURL) -> SQLError {
        SQLError(
            .connection,
            "cannot connect to \(url.host):\(url.port): the server asks for the password in clear text over a "
                + "connection without TLS; refused (turn TLS on at the server, use md5 or scram-sha-256 "
                + "authentication, or say sslmode=disable to send it anyway)"
        )
    }

    static func malformed(_ what: String) -> SQLError {
        SQLError(.connection, "PostgreSQL sent \(what): the session is closed")
    }

    /// An ErrorResponse as an ``SQLError`` of the kind its SQLSTATE says.
    static func error(_ payload: UnsafeRawBufferPointer, _ what: String) -> SQLError {
        var fields: [UInt8: String] = [:]
        var r = Reader(payload)
        while let code = try? r.byte(), code != 0, let text = try? r.cString() { fields[code] = text }
        let state = fields[UInt8(ascii: "C")] ?? ""
        return SQLError(
            PostgresSQLConnection.kind(ofState: state),
            "\(what): \(fields[UInt8(ascii: "M")] ?? "an error")",
            code: "SQLSTATE \(state)"
        )
    }

    // MARK: The socket

    private func send(_ bytes: [UInt8]) throws {
        idle = false
        try bytes.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let n = Glibc.send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
                if n > 0 {
                    off += n
                    continue
                }
                let e = errno
                if e == EINTR { continue }
                guard e == EAGAIN else {
                    throw SQLError(.connection, "the server went away (send: \(String(cString: strerror(e))))")
                }
                guard try Syscall.poll(fd, events: Int16(POLLOUT), deadline: deadline) else {
                    throw SQLError(.connection, "PostgreSQL did not take a request within \(timeout)")
                }
            }
        }
    }

    /// The next message: its type and body, valid until the next read.
    private func readMessage() throws -> (UInt8, UnsafeRawBufferPointer) {
        try fill(5)
        let type = buffer[start]
        let length = Int(
            Int32(bigEndian: UnsafeRawPointer(buffer.baseAddress! + start + 1).loadUnaligned(as: Int32.self))
        )
        guard length >= 4, length < 1 << 30 else { throw Self.malformed("a message of length \(length)") }
        try fill(1 + length)
        let body = UnsafeRawBufferPointer(start: buffer.baseAddress! + start + 5, count: length - 4)
        start += 1 + length
        if type == UInt8(ascii: "Z") { idle = true }
        return (type, body)
    }

    /// Makes `n` bytes available from `start`, reading as needed before the deadline.
    private func fill(_ n: Int) throws {
        if end - start >= n { return }
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
            let r = Glibc.recv(fd, buffer.baseAddress! + end, buffer.count - end, 0)
            if r > 0 {
                end += r
                continue
            }
            if r == 0 { throw SQLError(.connection, "the server closed the connection") }
            let e = errno
            if e == EINTR { continue }
            guard e == EAGAIN else {
                throw SQLError(.connection, "the server went away (recv: \(String(cString: strerror(e))))")
            }
            guard try Syscall.poll(fd, events: Int16(POLLIN), deadline: deadline) else {
                throw SQLError(.connection, "PostgreSQL did not answer within \(timeout)")
            }
        }
    }
}

/// The fuzz target for the reading session's decoders (`Tests/Fuzz`, `scripts/fuzz postgres`): a server's
/// RowDescription, then DataRows decoded against it, as the reading session decodes them.
package enum PostgresDecoderFuzzing {
    /// A RowDescription of int4, text, bytea, float8, bool, timestamp and uuid columns, and two DataRows
    /// (values, then NULLs), as a server sends them.
    package static func seeds() -> [[UInt8]] {
        let types: [UInt32] = [23, 25, 17, 701, 16, 1114, 2950]
        var description = Message(type: nil)
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
        var row = Message(type: nil)
        row.int16(Int16(cells.count))
        for c in cells {
            row.int32(Int32(c.count))
            row.bytes(c)
        }
        var nulls = Message(type: nil)
        nulls.int16(Int16(cells.count))
        for _ in cells { nulls.int32(-1) }
        // Without their length headers (Message(type: nil) puts a 4-byte length first): the bodies.
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
            let (columns, types) = try? first.withUnsafeBytes({ try PostgresWireReader.rowDescription($0) })
        else { return }
        let prepared = PostgresWireReader.Prepared(
            columns: columns,
            types: types,
            binary: types.map(PostgresWireReader.readsBinary)
        )
        var values: [SQLValue] = []
        for row in parts.dropFirst() {
            values.removeAll(keepingCapacity: true)
            _ = try? row.withUnsafeBytes { try PostgresWireReader.decodeRow($0, prepared, into: &values) }
        }
    }
}

/// A frontend message being built: type byte, length (filled in by `finished`), body.
struct Message {
    var bytes: [UInt8]
    let hasType: Bool
    init(type: UInt8?) {
        bytes = type.map { [$0] } ?? []
        hasType = type != nil
        bytes += [0, 0, 0, 0]
    }
    mutating func byte(_ b: UInt8) { bytes.append(b) }
    mutating func bytes(_ b: [UInt8]) { bytes += b }
    mutating func int16(_ v: Int16) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func int32(_ v: Int32) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func cString(_ s: String) {
        bytes += s.utf8
        bytes.append(0)
    }
    func finished() -> [UInt8] {
        var out = bytes
        let at = hasType ? 1 : 0
        let length = Int32(out.count - at).bigEndian
        withUnsafeBytes(of: length) { for i in 0..<4 { out[at + i] = $0[i] } }
        return out
    }
}

/// Reads a backend message's body.
struct Reader {
    let p: UnsafeRawBufferPointer
    var at = 0
    init(_ p: UnsafeRawBufferPointer) { self.p = p }
    mutating func byte() throws -> UInt8 {
        guard at < p.count else { throw PostgresWireReader.malformed("a message cut short") }
        defer { at += 1 }
        return p[at]
    }
    mutating func int16() throws -> Int16 {
        guard at + 2 <= p.count else { throw PostgresWireReader.malformed("a message cut short") }
        defer { at += 2 }
        return Int16(bigEndian: p.loadUnaligned(fromByteOffset: at, as: Int16.self))
    }
    mutating func int32() throws -> Int32 {
        guard at + 4 <= p.count else { throw PostgresWireReader.malformed("a message cut short") }
        defer { at += 4 }
        return Int32(bigEndian: p.loadUnaligned(fromByteOffset: at, as: Int32.self))
    }
    mutating func bytes(_ n: Int) throws -> [UInt8] {
        guard at + n <= p.count else { throw PostgresWireReader.malformed("a message cut short") }
        defer { at += n }
        return Array(p[at..<(at + n)])
    }
    mutating func cString() throws -> String {
        guard let nul = p[at...].firstIndex(of: 0) else {
            throw PostgresWireReader.malformed("a string without its end")
        }
        defer { at = nul + 1 }
        return String(decoding: p[at..<nul], as: UTF8.self)
    }
    mutating func rest() -> [UInt8] {
        defer { at = p.count }
        return Array(p[at...])
    }
}

/// SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL speaks it: no channel binding, the user name left empty
/// (the server takes the startup message's).
struct SCRAM {
    let password: String
    let nonce: String
    var clientFirstBare: String { "n=,r=\(nonce)" }
    var clientFirst: String { "n,," + clientFirstBare }
    private var authMessage = ""
    private var salted: [UInt8] = []

    init(password: String) {
        self.password = password
        nonce = Data((0..<18).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
    }

    static func hmac(_ key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    /// The client's final message (with its proof) for the server's first.
    mutating func clientFinal(serverFirst: String) throws -> String {
        var fields: [Character: String] = [:]
        for part in serverFirst.split(separator: ",") where part.count >= 2 {
            fields[part.first!] = String(part.dropFirst(2))
        }
        guard let r = fields["r"], r.hasPrefix(nonce), let s = fields["s"], let salt = Data(base64Encoded: s),
            let i = fields["i"].flatMap({ Int($0) }), i > 0, i <= 10_000_000
        else {
            throw SQLError(.connection, "a malformed SCRAM challenge from the server (or over 10 million iterations)")
        }
        // Hi(password, salt, i): PBKDF2 with HMAC-SHA-256, one block.
        let key = SymmetricKey(data: Array(password.utf8))
        var u = Array(HMAC<SHA256>.authenticationCode(for: Array(salt) + [0, 0, 0, 1], using: key))
        var result = u
        for _ in 1..<i {
            u = Array(HMAC<SHA256>.authenticationCode(for: u, using: key))
            for j in 0..<result.count { result[j] ^= u[j] }
        }
        salted = result
        let withoutProof = "c=biws,r=\(r)"
        authMessage = clientFirstBare + "," + serverFirst + "," + withoutProof
        let clientKey = Self.hmac(salted, Array("Client Key".utf8))
        let storedKey = Array(SHA256.hash(data: clientKey))
        let signature = Self.hmac(storedKey, Array(authMessage.utf8))
        let proof = zip(clientKey, signature).map { $0 ^ $1 }
        return withoutProof + ",p=" + Data(proof).base64EncodedString()
    }

    /// Whether the server proved that it knows the password too.
    func verify(serverFinal: String) -> Bool {
        guard serverFinal.hasPrefix("v="), let v = Data(base64Encoded: String(serverFinal.dropFirst(2))) else {
            return false
        }
        let serverKey = Self.hmac(salted, Array("Server Key".utf8))
        return Array(v) == Self.hmac(serverKey, Array(authMessage.utf8))
    }
}
#endif
