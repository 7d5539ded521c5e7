// The bytes of PostgreSQL's frontend/backend protocol (version 3.0) for the reading session
// (`PostgresWireReader`): backend messages cut out of a buffer, frontend messages built, RowDescription,
// DataRow and ErrorResponse bodies decoded, SCRAM-SHA-256 computed. Pure: no socket, no clock; the only
// randomness is SCRAM's default client nonce. `PostgresProtocol` decides with it; the tests and the fuzz
// target run it on byte arrays. Built only with the PostgreSQL trait.
#if PostgreSQL
import Crypto
import Foundation
import MultiprocessingSQL

/// The pure decoding and encoding of the protocol's messages, as the reading session speaks it.
enum PostgresCodec {
    /// A prepared statement as the reading session knows it: its column names, type oids and result
    /// formats (binary or text, per column).
    struct Prepared: Equatable {
        /// The columns' names, in order.
        var columns: [String]
        /// The columns' type oids.
        var types: [UInt32]
        /// Whether each column is asked for (and read) in binary.
        var binary: [Bool]

        /// The statement with `columns` of `types`, each read in binary when ``readsBinary(_:)`` says so.
        init(columns: [String], types: [UInt32]) {
            self.columns = columns
            self.types = types
            binary = types.map(PostgresCodec.readsBinary)
        }

        /// With the formats given.
        init(columns: [String], types: [UInt32], binary: [Bool]) {
            self.columns = columns
            self.types = types
            self.binary = binary
        }
    }

    // MARK: Framing

    /// What the front of a buffer holds.
    enum Frame {
        /// A whole message: its type byte and its body (inside the buffer given), `size` bytes in all
        /// (type and length included).
        case message(type: UInt8, body: UnsafeRawBufferPointer, size: Int)
        /// Not yet a whole message: at least this many bytes (from the front) are needed.
        case incomplete(needs: Int)
    }

    /// The longest message the reading session takes by default: 1 GiB (a DataRow holds at most one
    /// such value per cell, and the session's buffer grows to the longest message).
    static let defaultMaximumMessageSize = 1 << 30

    /// The longest message of a type that carries no data of the user's (authentication requests,
    /// ParameterStatus, ReadyForQuery, …): libpq's limit, so that a hostile or broken server cannot make
    /// the session allocate a gigabyte for a ReadyForQuery.
    static let shortMessageLimit = 30_000

    /// The types whose messages may be long: RowDescription, DataRow, ErrorResponse, NoticeResponse,
    /// NotificationResponse (and CopyData, FunctionCallResponse, as libpq lists them), and
    /// ParameterDescription, which libpq does not list but which takes 4 bytes per parameter (up to 32767
    /// of them here).
    static func mayBeLong(_ type: UInt8) -> Bool {
        switch type {
        case UInt8(ascii: "T"), UInt8(ascii: "D"), UInt8(ascii: "E"), UInt8(ascii: "N"), UInt8(ascii: "A"),
            UInt8(ascii: "d"), UInt8(ascii: "V"), UInt8(ascii: "t"):
            return true
        default:
            return false
        }
    }

    /// The first backend message of `bytes` (type byte, a 4-byte big-endian length that counts itself,
    /// body), or how many bytes it needs.
    /// - Throws: `SQLError` (`.connection`) for a length below 4 or above `maximum` (above
    ///   ``shortMessageLimit`` for a type that is never long), before any of the body is awaited.
    static func frame(_ bytes: UnsafeRawBufferPointer, maximum: Int) throws -> Frame {
        guard bytes.count >= 5 else { return .incomplete(needs: 5) }
        let type = bytes[0]
        let length = Int(Int32(bigEndian: bytes.loadUnaligned(fromByteOffset: 1, as: Int32.self)))
        guard length >= 4 else { throw malformed("a \(name(of: type)) message of length \(length)") }
        let limit = mayBeLong(type) ? maximum : min(maximum, shortMessageLimit)
        guard length <= limit else {
            throw malformed("a \(name(of: type)) message of \(length) bytes, over the \(limit)-byte limit")
        }
        guard bytes.count > length else { return .incomplete(needs: 1 + length) }
        return .message(
            type: type,
            body: UnsafeRawBufferPointer(rebasing: bytes[5..<(1 + length)]),
            size: 1 + length
        )
    }

    /// A backend message type's name, for errors: `DataRow (D)`.
    static func name(of type: UInt8) -> String {
        let names: [UInt8: String] = [
            UInt8(ascii: "R"): "Authentication", UInt8(ascii: "K"): "BackendKeyData",
            UInt8(ascii: "2"): "BindComplete", UInt8(ascii: "3"): "CloseComplete",
            UInt8(ascii: "C"): "CommandComplete", UInt8(ascii: "d"): "CopyData", UInt8(ascii: "c"): "CopyDone",
            UInt8(ascii: "G"): "CopyInResponse", UInt8(ascii: "H"): "CopyOutResponse",
            UInt8(ascii: "W"): "CopyBothResponse", UInt8(ascii: "D"): "DataRow",
            UInt8(ascii: "I"): "EmptyQueryResponse", UInt8(ascii: "E"): "ErrorResponse",
            UInt8(ascii: "V"): "FunctionCallResponse", UInt8(ascii: "v"): "NegotiateProtocolVersion",
            UInt8(ascii: "n"): "NoData", UInt8(ascii: "N"): "NoticeResponse",
            UInt8(ascii: "A"): "NotificationResponse", UInt8(ascii: "t"): "ParameterDescription",
            UInt8(ascii: "S"): "ParameterStatus", UInt8(ascii: "1"): "ParseComplete",
            UInt8(ascii: "s"): "PortalSuspended", UInt8(ascii: "Z"): "ReadyForQuery",
            UInt8(ascii: "T"): "RowDescription",
        ]
        let printable = type >= 0x20 && type < 0x7F ? String(UnicodeScalar(type)) : "0x" + String(type, radix: 16)
        return "\(names[type] ?? "unknown") (\(printable))"
    }

    // MARK: Frontend messages

    /// The SSLRequest: length 8, code 80877103.
    static let sslRequest: [UInt8] = [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F]

    /// Terminate.
    static let terminate: [UInt8] = [UInt8(ascii: "X"), 0, 0, 0, 4]

    /// The StartupMessage (protocol 3.0) for `url`'s user and database (the user's name when the URL names
    /// none), in UTF-8 with ISO dates.
    static func startupMessage(_ url: DatabaseURL) -> [UInt8] {
        var body = FrontendMessage(type: nil)
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

    /// A PasswordMessage holding `text` (a password in clear, or an MD5 answer).
    static func passwordMessage(_ text: String) -> [UInt8] {
        var m = FrontendMessage(type: UInt8(ascii: "p"))
        m.cString(text)
        return m.finished()
    }

    /// The answer to AuthenticationMD5Password: `md5` and the hex MD5 of (the hex MD5 of password and
    /// user name) and the server's 4-byte salt.
    static func md5Password(user: String, password: String, salt: [UInt8]) -> String {
        func hex(_ d: some Sequence<UInt8>) -> String {
            var out: [UInt8] = []
            PostgresCodec.hex(d, into: &out)
            return String(decoding: out, as: UTF8.self)
        }
        let inner = hex(Insecure.MD5.hash(data: Array((password + user).utf8)))
        return "md5" + hex(Insecure.MD5.hash(data: Array(inner.utf8) + salt))
    }

    /// Parse (unnamed statement, `sql`, no parameter types given), Describe (the statement), Sync.
    static func describeMessages(_ sql: String) -> [UInt8] {
        var m = FrontendMessage(type: UInt8(ascii: "P"))
        m.cString("")
        m.cString(sql)
        m.int16(0)
        var out = m.finished()
        var d = FrontendMessage(type: UInt8(ascii: "D"))
        d.byte(UInt8(ascii: "S"))
        d.cString("")
        out += d.finished()
        out += FrontendMessage(type: UInt8(ascii: "S")).finished()
        return out
    }

    /// Parse (unnamed) `sql` again, Bind `parameters` (text; nil: NULL) asking for `prepared`'s result
    /// formats, Describe the portal (to see that the columns still are what they were), Execute, Sync:
    /// one round trip.
    static func executeMessages(_ sql: String, _ parameters: [[UInt8]?], _ prepared: Prepared) -> [UInt8] {
        var p = FrontendMessage(type: UInt8(ascii: "P"))
        p.cString("")
        p.cString(sql)
        p.int16(0)
        var m = FrontendMessage(type: UInt8(ascii: "B"))
        m.cString("")
        m.cString("")
        m.int16(0)  // every parameter in text
        m.int16(Int16(parameters.count))
        for p in parameters {
            if let bytes = p {
                m.int32(Int32(bytes.count))
                m.bytes(bytes)
            } else {
                m.int32(-1)
            }
        }
        m.int16(Int16(prepared.binary.count))
        for b in prepared.binary { m.int16(b ? 1 : 0) }
        var out = p.finished() + m.finished()
        var describe = FrontendMessage(type: UInt8(ascii: "D"))
        describe.byte(UInt8(ascii: "P"))
        describe.cString("")
        out += describe.finished()
        var e = FrontendMessage(type: UInt8(ascii: "E"))
        e.cString("")
        e.int32(0)
        out += e.finished()
        out += FrontendMessage(type: UInt8(ascii: "S")).finished()
        return out
    }

    // MARK: Values

    /// The oid of `bool`.
    static let bool: UInt32 = 16
    /// The oid of `bytea`.
    static let bytea: UInt32 = 17
    /// The oid of `name`.
    static let name: UInt32 = 19
    /// The oid of `int8`.
    static let int8: UInt32 = 20
    /// The oid of `int2`.
    static let int2: UInt32 = 21
    /// The oid of `int4`.
    static let int4: UInt32 = 23
    /// The oid of `text`.
    static let textType: UInt32 = 25
    /// The oid of `oid`.
    static let oid: UInt32 = 26
    /// The oid of `float4`.
    static let float4: UInt32 = 700
    /// The oid of `float8`.
    static let float8: UInt32 = 701
    /// The oid of `bpchar`.
    static let bpchar: UInt32 = 1042
    /// The oid of `varchar`.
    static let varchar: UInt32 = 1043
    /// The oid of `timestamp`.
    static let timestamp: UInt32 = 1114
    /// The oid of `timestamptz`.
    static let timestamptz: UInt32 = 1184
    /// The oid of `uuid`.
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

    // MARK: Backend messages

    /// A RowDescription's column names and type oids.
    /// - Throws: `SQLError` for a negative count, a count the body cannot hold (each field takes at least
    ///   19 bytes), a field cut short or bytes left over.
    static func rowDescription(_ payload: UnsafeRawBufferPointer) throws -> (columns: [String], types: [UInt32]) {
        var r = BackendReader(payload)
        let n = Int(try r.int16())
        // A negative count would make the range below trap (found by reading the decoder for fuzzing); a
        // count the body cannot hold is refused before anything is reserved for it.
        guard n >= 0, n * 19 <= payload.count - 2 else {
            throw malformed("a RowDescription of \(n) columns in \(payload.count) bytes")
        }
        var columns: [String] = []
        var types: [UInt32] = []
        columns.reserveCapacity(n)
        types.reserveCapacity(n)
        for _ in 0..<n {
            columns.append(try r.cString())
            try r.skip(6)  // table oid, column number
            types.append(UInt32(bitPattern: try r.int32()))
            try r.skip(8)  // size, modifier, format
        }
        guard r.atEnd else { throw malformed("a RowDescription with \(payload.count - r.at) bytes too many") }
        return (columns, types)
    }

    /// Appends a DataRow's cells to `values` as `prepared` says to read them, straight from the body (no
    /// copy of the row).
    /// - Throws: `SQLError` for a column count other than `prepared`'s, a cell past the end, bytes left
    ///   over, or a binary value of the wrong size.
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
            guard length <= p.count - at else { throw malformed("a DataRow cut short") }
            let cell = UnsafeRawBufferPointer(rebasing: p[at..<(at + length)])
            at += length
            values.append(try value(cell, type: prepared.types[i], binary: prepared.binary[i]))
        }
        guard at == p.count else { throw malformed("a DataRow with \(p.count - at) bytes too many") }
    }

    /// A cell of a column of `type`, read in binary or as text.
    static func value(_ cell: UnsafeRawBufferPointer, type: UInt32, binary: Bool) throws -> SQLValue {
        guard binary else { return .text(String(decoding: cell, as: UTF8.self)) }
        func be<T: FixedWidthInteger>(_: T.Type) throws -> T {
            guard cell.count == MemoryLayout<T>.size else { throw malformed("a \(T.self) of \(cell.count) bytes") }
            return T(bigEndian: cell.loadUnaligned(as: T.self))
        }
        switch type {
        case bool: return .int(try be(UInt8.self) == 0 ? 0 : 1)
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

    /// An ErrorResponse as an ``SQLError`` of the kind its SQLSTATE says: `what`, then the server's
    /// message; its code `SQLSTATE` and the state.
    static func error(_ payload: UnsafeRawBufferPointer, _ what: String) -> SQLError {
        let fields = self.fields(payload)
        let state = fields[UInt8(ascii: "C")] ?? ""
        return SQLError(
            PostgresSQLConnection.kind(ofState: state),
            "\(what): \(fields[UInt8(ascii: "M")] ?? "an error")",
            code: "SQLSTATE \(state)"
        )
    }

    /// An ErrorResponse's or NoticeResponse's fields by their code (`C`: SQLSTATE, `M`: message, `S`:
    /// severity, …), as far as they are well formed.
    static func fields(_ payload: UnsafeRawBufferPointer) -> [UInt8: String] {
        var fields: [UInt8: String] = [:]
        var r = BackendReader(payload)
        while let code = try? r.byte(), code != 0, let text = try? r.cString() { fields[code] = text }
        return fields
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

    /// The error for bytes that break the protocol: the session cannot go on.
    static func malformed(_ what: String) -> SQLError {
        SQLError(.connection, "PostgreSQL sent \(what): the session is closed")
    }
}

/// A frontend message being built: type byte, length (filled in by `finished`), body.
struct FrontendMessage {
    /// The message so far (its length not yet filled in).
    var bytes: [UInt8]
    /// Whether it starts with a type byte (every message but the StartupMessage and SSLRequest).
    let hasType: Bool

    /// A message of `type` (nil: none, as the StartupMessage).
    init(type: UInt8?) {
        bytes = type.map { [$0] } ?? []
        hasType = type != nil
        bytes += [0, 0, 0, 0]
    }

    /// Appends a byte.
    mutating func byte(_ b: UInt8) { bytes.append(b) }
    /// Appends bytes as they are.
    mutating func bytes(_ b: [UInt8]) { bytes += b }
    /// Appends a big-endian Int16.
    mutating func int16(_ v: Int16) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    /// Appends a big-endian Int32.
    mutating func int32(_ v: Int32) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    /// Appends `s` in UTF-8 and a NUL.
    mutating func cString(_ s: String) {
        bytes += s.utf8
        bytes.append(0)
    }

    /// The message with its length.
    func finished() -> [UInt8] {
        var out = bytes
        let at = hasType ? 1 : 0
        let length = Int32(out.count - at).bigEndian
        withUnsafeBytes(of: length) { for i in 0..<4 { out[at + i] = $0[i] } }
        return out
    }
}

/// Reads a backend message's body, every read checked against its end.
struct BackendReader {
    /// The body.
    let p: UnsafeRawBufferPointer
    /// The offset of the next read.
    private(set) var at = 0

    /// A reader at the start of `p`.
    init(_ p: UnsafeRawBufferPointer) { self.p = p }

    /// Whether the whole body has been read.
    var atEnd: Bool { at == p.count }

    /// The next byte.
    mutating func byte() throws -> UInt8 {
        guard at < p.count else { throw PostgresCodec.malformed("a message cut short") }
        defer { at += 1 }
        return p[at]
    }

    /// The next big-endian Int16.
    mutating func int16() throws -> Int16 {
        guard p.count - at >= 2 else { throw PostgresCodec.malformed("a message cut short") }
        defer { at += 2 }
        return Int16(bigEndian: p.loadUnaligned(fromByteOffset: at, as: Int16.self))
    }

    /// The next big-endian Int32.
    mutating func int32() throws -> Int32 {
        guard p.count - at >= 4 else { throw PostgresCodec.malformed("a message cut short") }
        defer { at += 4 }
        return Int32(bigEndian: p.loadUnaligned(fromByteOffset: at, as: Int32.self))
    }

    /// The next `n` bytes.
    mutating func bytes(_ n: Int) throws -> [UInt8] {
        guard n >= 0, p.count - at >= n else { throw PostgresCodec.malformed("a message cut short") }
        defer { at += n }
        return Array(p[at..<(at + n)])
    }

    /// Skips `n` bytes.
    mutating func skip(_ n: Int) throws {
        guard n >= 0, p.count - at >= n else { throw PostgresCodec.malformed("a message cut short") }
        at += n
    }

    /// The next NUL-terminated string (UTF-8, invalid bytes replaced).
    mutating func cString() throws -> String {
        guard let nul = p[at...].firstIndex(of: 0) else {
            throw PostgresCodec.malformed("a string without its end")
        }
        defer { at = nul + 1 }
        return String(decoding: p[at..<nul], as: UTF8.self)
    }

    /// The bytes left.
    mutating func rest() -> [UInt8] {
        defer { at = p.count }
        return Array(p[at...])
    }
}

/// SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL speaks it: no channel binding, the user name left empty
/// (the server takes the startup message's).
struct SCRAM: Equatable {
    /// The password, as given (not SASLprep-normalized: an ASCII password is its own normal form).
    let password: String
    /// The user name sent in the client's first message: empty for PostgreSQL (RFC 7677's example names
    /// one).
    let user: String
    /// The client's nonce.
    let nonce: String
    /// The client's first message without its GS2 header.
    var clientFirstBare: String { "n=\(user),r=\(nonce)" }
    /// The client's first message: no channel binding.
    var clientFirst: String { "n,," + clientFirstBare }
    private var authMessage = ""
    private var salted: [UInt8] = []

    /// A conversation for `password` with `nonce` (18 random bytes in base64 unless given).
    init(password: String, user: String = "", nonce: String = SCRAM.randomNonce()) {
        self.password = password
        self.user = user
        self.nonce = nonce
    }

    /// 18 random bytes in base64, as libpq makes its nonce.
    static func randomNonce() -> String {
        Data((0..<18).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
    }

    /// HMAC-SHA-256 of `data` under `key`.
    static func hmac(_ key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    /// The client's final message (with its proof) for the server's first.
    /// - Throws: `SQLError` (`.connection`) when the server's nonce does not extend the client's, the salt
    ///   or the iteration count (1 to 10 million) is missing or malformed, or the server demands an
    ///   extension.
    mutating func clientFinal(serverFirst: String) throws -> String {
        var fields: [Character: String] = [:]
        for part in serverFirst.split(separator: ",", omittingEmptySubsequences: false) {
            guard part.count >= 2, part.dropFirst().first == "=" else {
                throw SQLError(.connection, "a malformed SCRAM challenge from the server: \(serverFirst.prefix(200))")
            }
            fields[part.first!] = String(part.dropFirst(2))
        }
        guard fields["m"] == nil else {
            throw SQLError(.connection, "the server's SCRAM challenge demands an extension this client does not know")
        }
        guard let r = fields["r"], r.hasPrefix(nonce), r.count > nonce.count else {
            throw SQLError(.connection, "the server's SCRAM nonce does not extend ours: not the server we asked")
        }
        guard let s = fields["s"], let salt = Data(base64Encoded: s), !salt.isEmpty,
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

    /// Whether the server proved that it knows the password too (its final message, `v=` and its
    /// signature; false before ``clientFinal(serverFirst:)``).
    func verify(serverFinal: String) -> Bool {
        guard !salted.isEmpty, serverFinal.hasPrefix("v="),
            let v = Data(base64Encoded: String(serverFinal.dropFirst(2)))
        else {
            return false
        }
        let serverKey = Self.hmac(salted, Array("Server Key".utf8))
        return Array(v) == Self.hmac(serverKey, Array(authMessage.utf8))
    }
}
#endif
