// The reading session's side of PostgreSQL's frontend/backend protocol as a state machine over bytes:
// what `PostgresWireReader` (the socket shell) feeds it and what it must do next. Built only with the
// PostgreSQL trait.
#if PostgreSQL
import MultiprocessingSQL

/// The reading session's protocol, decided without I/O: the shell feeds it the bytes read from the socket
/// and performs the ``Action`` it returns (send bytes, read more, hand a row over, report the end of a
/// query, close). It makes no system call and reads no clock: `PostgresProtocolTests` drive it with byte
/// arrays, without a server. Modelled on `PoolState` here and on postgres-nio's `ConnectionStateMachine`:
/// one value type, events as mutating methods, actions as returned values.
///
/// The session it speaks: the SSLRequest (answered no, or TLS is left to the caller), the StartupMessage,
/// authentication (trust; the password in clear text only under `sslmode=disable`; MD5; SCRAM-SHA-256 with
/// the server's signature checked), then queries on the extended protocol — each statement text described
/// once (Parse, Describe, Sync) and remembered, then run in one round trip (Parse, Bind, Describe,
/// Execute, Sync) with its rows decoded straight from the bytes read into ``SQLValue``s.
///
/// States, in order: `initial` → (`tlsRequested`) → `authenticating` (startup sent, password or SCRAM
/// messages exchanged) → `authenticated` (until ReadyForQuery) → `ready` ⇄ `describing` / `executing` →
/// `closed`. An ErrorResponse during a query is reported at its ReadyForQuery and leaves the session
/// ready; any other error (during startup, malformed bytes, a message out of turn, the connection lost)
/// closes it.
struct PostgresProtocol {
    /// What this reader cannot do (TLS, an authentication method): the caller reads another way.
    struct Unsupported: Error, Equatable {
        /// Why, for the caller's log.
        var reason: String
    }

    /// What a server answered before authentication, for a connection that may go unencrypted.
    enum Probe: Equatable {
        /// It offers TLS (it answered the SSLRequest with yes).
        case offersTLS
        /// No TLS; its first authentication request has this code (0: none needed, 3: the password in
        /// clear text, 5: MD5, 10: SASL).
        case plain(authentication: Int32)
    }

    /// What the session is for.
    enum Purpose: Equatable {
        /// Authenticate, then run queries.
        case read
        /// Ask for TLS and, without it, for the first authentication request; then stop (``Probe``),
        /// before any password is sent.
        case probe
    }

    /// What the shell does next.
    enum Action: Equatable {
        /// Send these bytes, then feed the machine what arrives.
        case send([UInt8])
        /// Feed the machine again once at least this many bytes (counted from the first byte it did not
        /// consume) have arrived.
        case read(atLeast: Int)
        /// Authenticated, the server ready for a query.
        case connected
        /// The probe's answer; the machine is closed (hang up).
        case probed(Probe)
        /// Send these bytes (the statement run); its rows will have these columns.
        case execute([UInt8], columns: [String])
        /// A row of the running statement (the machine reuses its storage for the next one: do not keep it
        /// past the next event unless you mean to copy it).
        case row([SQLValue])
        /// The statement's rows are all delivered; the session is ready for the next.
        case finished
        /// The server refused the statement; the session is ready for the next.
        case failed(SQLError)
        /// TLS, or an authentication this reader does not speak: close, and read another way.
        case unsupported(Unsupported)
        /// A failure that ends the session (refused at startup, malformed bytes, a message out of turn,
        /// the connection lost): close, and report this error.
        case close(SQLError)
    }

    /// What ``received(_:)`` did: how many bytes it consumed (the shell drops them), and what to do next.
    struct Step: Equatable {
        /// Bytes consumed from the front of those given.
        var consumed: Int
        /// What to do next.
        var action: Action
    }

    /// Where the authentication stands.
    enum Authentication: Equatable {
        /// The StartupMessage is sent; no request read yet.
        case startupSent
        /// A password (in clear or MD5) is sent: AuthenticationOk or an error comes next.
        case passwordSent
        /// SCRAM's client-first message is sent: AuthenticationSASLContinue comes next.
        case scramFirstSent(SCRAM)
        /// SCRAM's client-final message is sent: AuthenticationSASLFinal comes next.
        case scramFinalSent(SCRAM)
        /// The server proved that it knows the password: AuthenticationOk comes next.
        case scramVerified
    }

    /// The machine's states.
    enum State: Equatable {
        /// Nothing sent.
        case initial
        /// The SSLRequest is sent: one byte, `S` or `N`, comes next.
        case tlsRequested
        /// The StartupMessage is sent; authenticating.
        case authenticating(Authentication)
        /// AuthenticationOk read: ParameterStatus and BackendKeyData until ReadyForQuery.
        case authenticated
        /// Waiting for a query.
        case ready
        /// A statement is being described (Parse, Describe, Sync sent).
        case describing
        /// A statement is running (Parse, Bind, Describe, Execute, Sync sent): its rows come.
        case executing
        /// Hung up, or failed: nothing more.
        case closed
    }

    /// The statement being described or run (its text, its parameters in text, what the server said of
    /// it): apart from ``State`` so that a row is decoded without copying it out of an enum.
    struct Statement {
        /// The SQL text.
        var sql = ""
        /// The parameters in text (nil: NULL).
        var parameters: [[UInt8]?] = []
        /// Its columns, types and formats (described, or remembered).
        var prepared = PostgresCodec.Prepared(columns: [], types: [], binary: [])
        /// Whether the describe step has read its RowDescription or NoData.
        var described = false
        /// The error to report at ReadyForQuery (the server's, or a change of columns).
        var failure: SQLError?
    }

    /// Where the machine stands.
    private(set) var state: State = .initial
    /// The URL: user, password, database and `sslmode`.
    let url: DatabaseURL
    /// What the session is for.
    let purpose: Purpose
    /// The longest backend message taken (see ``PostgresCodec/frame(_:maximum:)``).
    let maximumMessageSize: Int
    /// The SCRAM client nonce this session uses.
    let nonce: String
    /// The server's run-time parameters (ParameterStatus), as last reported.
    private(set) var parameters: [String: String] = [:]
    /// The server process and secret key for cancelling (BackendKeyData).
    private(set) var backendKey: (processID: Int32, secret: [UInt8])?
    /// The transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    private(set) var transactionStatus: UInt8 = 0
    /// Prepared statements by text: their column names, types and result formats.
    private(set) var statements: [String: PostgresCodec.Prepared] = [:]
    /// The statement being described or run.
    private(set) var statement = Statement()
    /// The row being delivered; its storage is reused from one row to the next.
    private var row: [SQLValue] = []

    /// The statements remembered at most; past it, all are forgotten.
    static let statementsKept = 64

    /// A machine for `url`.
    /// - Throws: for `.read`, ``Unsupported`` when the URL's `sslmode` requires TLS, `SQLError` for an
    ///   unknown `sslmode` (see ``asksForTLS(_:)``). A probe always asks for TLS first.
    init(
        _ url: DatabaseURL,
        purpose: Purpose = .read,
        maximumMessageSize: Int = PostgresCodec.defaultMaximumMessageSize,
        nonce: String = SCRAM.randomNonce()
    ) throws {
        if purpose == .read { _ = try Self.asksForTLS(url) }
        self.url = url
        self.purpose = purpose
        self.maximumMessageSize = maximumMessageSize
        self.nonce = nonce
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

    /// Whether the server waits for a query (its last ReadyForQuery read, nothing sent since).
    var isReady: Bool { state == .ready }

    /// Whether the session has ended.
    var isClosed: Bool { state == .closed }

    // MARK: Events

    /// The connection is open: the SSLRequest, or (`sslmode=disable`) the StartupMessage.
    mutating func start() -> Action {
        guard state == .initial else { return fail(SQLError(.connection, "the reading session started twice")) }
        if purpose == .probe || url.options["sslmode"] != "disable" {
            state = .tlsRequested
            return .send(PostgresCodec.sslRequest)
        }
        state = .authenticating(.startupSent)
        return .send(PostgresCodec.startupMessage(url))
    }

    /// Runs `sql` with `parameters`: its description first if it has none remembered.
    /// - Throws: `SQLError` when the session is not ready, for over 32767 parameters or one of 2 GB; the
    ///   machine is unchanged (and still ready).
    mutating func query(_ sql: String, _ parameters: [SQLValue]) throws -> Action {
        guard state == .ready else {
            throw SQLError(
                .connection,
                state == .closed ? "the reading session is closed" : "the reading session is busy"
            )
        }
        guard parameters.count <= Int(Int16.max) else {
            throw SQLError(.statement, "\(parameters.count) parameters: PostgreSQL takes at most \(Int16.max)")
        }
        var texts: [[UInt8]?] = []
        texts.reserveCapacity(parameters.count)
        for p in parameters {
            let bytes = PostgresCodec.text(p)
            if let bytes, bytes.count >= Int(Int32.max) {
                throw SQLError(.statement, "a parameter of \(bytes.count) bytes: PostgreSQL takes under 2 GB")
            }
            texts.append(bytes)
        }
        statement = Statement(sql: sql, parameters: texts)
        if let prepared = statements[sql] {
            statement.prepared = prepared
            statement.described = true
            return execute()
        }
        state = .describing
        return .send(PostgresCodec.describeMessages(sql))
    }

    /// Feeds the bytes read and not yet consumed: the machine takes whole messages from their front until
    /// one calls for an action (or the bytes end: ``Action/read(atLeast:)``).
    mutating func received(_ bytes: UnsafeRawBufferPointer) -> Step {
        switch state {
        case .initial:
            return Step(consumed: 0, action: fail(PostgresCodec.malformed("bytes before it was asked anything")))
        case .closed:
            return Step(consumed: 0, action: .close(SQLError(.connection, "the reading session is closed")))
        case .tlsRequested:
            return Step(consumed: min(bytes.count, 1), action: answerToTLS(bytes))
        default:
            break
        }
        var consumed = 0
        while true {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[consumed...])
            do {
                switch try PostgresCodec.frame(rest, maximum: maximumMessageSize) {
                case .incomplete(let needs):
                    return Step(consumed: consumed, action: .read(atLeast: needs))
                case .message(let type, let body, let size):
                    consumed += size
                    if let action = try handle(type, body) { return Step(consumed: consumed, action: action) }
                }
            } catch {
                return Step(consumed: consumed, action: fail(error))
            }
        }
    }

    /// The server closed the connection (end of file): the error it reported before it did, if any.
    mutating func connectionClosed() -> Action {
        let phase: String
        switch state {
        case .closed: return .close(SQLError(.connection, "the reading session is closed"))
        case .initial, .tlsRequested, .authenticating, .authenticated: phase = " while connecting"
        case .describing, .executing:
            if let failure = statement.failure { return fail(failure) }
            phase = " while running a statement"
        case .ready: phase = ""
        }
        return fail(SQLError(.connection, "the server closed the connection\(phase)"))
    }

    /// The session ends: the Terminate message to send (best effort).
    mutating func terminate() -> [UInt8] {
        state = .closed
        return PostgresCodec.terminate
    }

    // MARK: Messages by state

    /// The answer to the SSLRequest: one byte.
    private mutating func answerToTLS(_ bytes: UnsafeRawBufferPointer) -> Action {
        guard let answer = bytes.first else { return .read(atLeast: 1) }
        switch answer {
        case UInt8(ascii: "S"):
            state = .closed
            if purpose == .probe { return .probed(.offersTLS) }
            return .unsupported(Unsupported(reason: "the server offers TLS, which this reader does not speak"))
        case UInt8(ascii: "N"):
            // Nothing may follow the answer before the StartupMessage is sent: bytes that do were not sent
            // by the server in answer to it (CVE-2021-23222).
            guard bytes.count == 1 else {
                return fail(PostgresCodec.malformed("\(bytes.count - 1) bytes after its answer to the SSLRequest"))
            }
            state = .authenticating(.startupSent)
            return .send(PostgresCodec.startupMessage(url))
        default:
            return fail(PostgresCodec.malformed("an answer of \(answer) to the SSLRequest"))
        }
    }

    /// One whole message: the action it calls for, or nil to go on reading.
    private mutating func handle(_ type: UInt8, _ body: UnsafeRawBufferPointer) throws -> Action? {
        switch state {
        case .authenticating(let auth):
            return try authenticate(auth, type, body)
        case .authenticated:
            return try afterAuthentication(type, body)
        case .executing:
            return try executing(type, body)
        case .describing:
            return try describing(type, body)
        case .ready:
            guard try asynchronous(type, body) else { throw outOfTurn(type, "while idle") }
            return nil
        case .initial, .tlsRequested, .closed:
            throw outOfTurn(type, "out of turn")
        }
    }

    /// Authentication requests, and the errors and notices that may come with them.
    private mutating func authenticate(
        _ auth: Authentication,
        _ type: UInt8,
        _ body: UnsafeRawBufferPointer
    ) throws -> Action? {
        switch type {
        case UInt8(ascii: "R"):
            break
        case UInt8(ascii: "E"):
            let e = PostgresCodec.error(body, "cannot connect to \(url)")
            // Refused without TLS (a `hostssl` rule) where the URL allows TLS: the connection's own
            // session, which speaks TLS, reads instead.
            if purpose == .read, e.code == "SQLSTATE 28000", url.options["sslmode"] != "disable" {
                throw Unsupported(reason: "the server wants TLS: \(e.message)")
            }
            throw e
        case UInt8(ascii: "N"):
            return nil
        default:
            throw outOfTurn(type, "during authentication")
        }
        var r = BackendReader(body)
        let code = try r.int32()
        if purpose == .probe {
            state = .closed
            return .probed(.plain(authentication: code))
        }
        switch (code, auth) {
        case (0, .startupSent), (0, .passwordSent), (0, .scramVerified):
            guard r.atEnd else { throw PostgresCodec.malformed("an AuthenticationOk with bytes after it") }
            state = .authenticated
            return nil
        case (0, .scramFirstSent), (0, .scramFinalSent):
            // The server would let us in without proving that it knows the password.
            throw SQLError(
                .connection,
                "the server ended SCRAM authentication before proving it knows the password: not the server we asked"
            )
        case (3, .startupSent):
            // This connection is not encrypted: the password would cross the network as it is.
            guard url.options["sslmode"] == "disable" else { throw PostgresCodec.cleartextRefused(url) }
            state = .authenticating(.passwordSent)
            return .send(PostgresCodec.passwordMessage(url.password))
        case (5, .startupSent):
            let salt = try r.bytes(4)
            state = .authenticating(.passwordSent)
            let answer = PostgresCodec.md5Password(user: url.user, password: url.password, salt: salt)
            return .send(PostgresCodec.passwordMessage(answer))
        case (10, .startupSent):
            var mechanisms: [String] = []
            while !r.atEnd {
                let s = try r.cString()
                if s.isEmpty { break }
                mechanisms.append(s)
            }
            guard mechanisms.contains("SCRAM-SHA-256") else {
                throw Unsupported(reason: "the server offers \(mechanisms), not SCRAM-SHA-256")
            }
            let s = SCRAM(password: url.password, nonce: nonce)
            var m = FrontendMessage(type: UInt8(ascii: "p"))
            m.cString("SCRAM-SHA-256")
            let first = Array(s.clientFirst.utf8)
            m.int32(Int32(first.count))
            m.bytes(first)
            state = .authenticating(.scramFirstSent(s))
            return .send(m.finished())
        case (11, .scramFirstSent(var s)):
            let final = try s.clientFinal(serverFirst: String(decoding: r.rest(), as: UTF8.self))
            var m = FrontendMessage(type: UInt8(ascii: "p"))
            m.bytes(Array(final.utf8))
            state = .authenticating(.scramFinalSent(s))
            return .send(m.finished())
        case (12, .scramFinalSent(let s)):
            guard s.verify(serverFinal: String(decoding: r.rest(), as: UTF8.self)) else {
                throw SQLError(.connection, "the server's SCRAM signature does not match: not the server we asked")
            }
            state = .authenticating(.scramVerified)
            return nil
        case (0, _), (3, _), (5, _), (10, _), (11, _), (12, _):
            throw PostgresCodec.malformed("an authentication request (\(code)) out of turn")
        default:
            throw Unsupported(reason: "authentication method \(code) (GSS, SSPI or Kerberos)")
        }
    }

    /// After AuthenticationOk: the server's parameters and key, until ReadyForQuery.
    private mutating func afterAuthentication(_ type: UInt8, _ body: UnsafeRawBufferPointer) throws -> Action? {
        switch type {
        case UInt8(ascii: "K"):
            var r = BackendReader(body)
            backendKey = (try r.int32(), r.rest())
            return nil
        case UInt8(ascii: "Z"):
            try readyForQuery(body)
            return .connected
        case UInt8(ascii: "E"):
            throw PostgresCodec.error(body, "cannot connect to \(url)")
        default:
            guard try asynchronous(type, body) else { throw outOfTurn(type, "after authentication") }
            return nil
        }
    }

    /// Describing a statement: ParseComplete, ParameterDescription, RowDescription or NoData, an error,
    /// then ReadyForQuery.
    private mutating func describing(_ type: UInt8, _ body: UnsafeRawBufferPointer) throws -> Action? {
        switch type {
        case UInt8(ascii: "1"), UInt8(ascii: "t"):
            return nil
        case UInt8(ascii: "T"):
            let (columns, types) = try PostgresCodec.rowDescription(body)
            statement.prepared = PostgresCodec.Prepared(columns: columns, types: types)
            statement.described = true
            return nil
        case UInt8(ascii: "n"):
            statement.prepared = PostgresCodec.Prepared(columns: [], types: [])
            statement.described = true
            return nil
        case UInt8(ascii: "E"):
            if statement.failure == nil {
                statement.failure = PostgresCodec.error(body, "cannot run \(statement.sql.prefix(200))")
            }
            return nil
        case UInt8(ascii: "Z"):
            try readyForQuery(body)
            if let failure = statement.failure {
                statement = Statement()
                return .failed(failure)
            }
            guard statement.described else {
                throw PostgresCodec.malformed("a ReadyForQuery without describing the statement")
            }
            if statements.count >= Self.statementsKept { statements = [:] }
            statements[statement.sql] = statement.prepared
            return execute()
        default:
            guard try asynchronous(type, body) else { throw outOfTurn(type, "while describing a statement") }
            return nil
        }
    }

    /// Sends the described statement to run.
    private mutating func execute() -> Action {
        state = .executing
        let bytes = PostgresCodec.executeMessages(statement.sql, statement.parameters, statement.prepared)
        statement.parameters = []
        return .execute(bytes, columns: statement.prepared.columns)
    }

    /// Running a statement: its rows, the messages around them, an error, then ReadyForQuery.
    private mutating func executing(_ type: UInt8, _ body: UnsafeRawBufferPointer) throws -> Action? {
        switch type {
        case UInt8(ascii: "D"):
            guard statement.failure == nil else { return nil }
            row.removeAll(keepingCapacity: true)
            try PostgresCodec.decodeRow(body, statement.prepared, into: &row)
            return .row(row)
        case UInt8(ascii: "1"), UInt8(ascii: "2"), UInt8(ascii: "C"), UInt8(ascii: "I"), UInt8(ascii: "s"):
            return nil  // ParseComplete, BindComplete, CommandComplete, EmptyQueryResponse, PortalSuspended
        case UInt8(ascii: "T"), UInt8(ascii: "n"):
            // The table changed under the statement since it was described: say so, and describe it afresh
            // next time.
            let types = type == UInt8(ascii: "T") ? try PostgresCodec.rowDescription(body).types : []
            if types != statement.prepared.types, statement.failure == nil {
                statements[statement.sql] = nil
                statement.failure = SQLError(
                    .statement,
                    "the columns of \(statement.sql.prefix(200)) changed while it was read; run it again"
                )
            }
            return nil
        case UInt8(ascii: "E"):
            // Described afresh next time: the error may come of a changed table (a column more than the
            // result formats bound).
            statements[statement.sql] = nil
            if statement.failure == nil {
                statement.failure = PostgresCodec.error(body, "cannot run \(statement.sql.prefix(200))")
            }
            return nil
        case UInt8(ascii: "Z"):
            try readyForQuery(body)
            let failure = statement.failure
            statement = Statement()
            return failure.map { .failed($0) } ?? .finished
        default:
            guard try asynchronous(type, body) else { throw outOfTurn(type, "while reading rows") }
            return nil
        }
    }

    /// ReadyForQuery: its transaction status recorded, the session ready.
    private mutating func readyForQuery(_ body: UnsafeRawBufferPointer) throws {
        guard body.count == 1, [UInt8(ascii: "I"), UInt8(ascii: "T"), UInt8(ascii: "E")].contains(body[0]) else {
            throw PostgresCodec.malformed("a ReadyForQuery of \(body.count) bytes (\(Array(body.prefix(8))))")
        }
        transactionStatus = body[0]
        state = .ready
    }

    /// A message the server may send at any time once connected (NoticeResponse, ParameterStatus,
    /// NotificationResponse): true when `type` is one (taken in).
    private mutating func asynchronous(_ type: UInt8, _ body: UnsafeRawBufferPointer) throws -> Bool {
        switch type {
        case UInt8(ascii: "N"), UInt8(ascii: "A"):
            return true
        case UInt8(ascii: "S"):
            var r = BackendReader(body)
            let name = try r.cString()
            parameters[name] = try r.cString()
            return true
        default:
            return false
        }
    }

    /// The error for a message the protocol does not allow here.
    private func outOfTurn(_ type: UInt8, _ when: String) -> SQLError {
        PostgresCodec.malformed("an unexpected \(PostgresCodec.name(of: type)) message \(when)")
    }

    /// Closes the machine on `error`: the action that reports it.
    private mutating func fail(_ error: any Error) -> Action {
        state = .closed
        statement = Statement()
        switch error {
        case let e as Unsupported: return .unsupported(e)
        case let e as SQLError: return .close(e)
        default: return .close(SQLError(.connection, "\(error)"))
        }
    }
}
#endif
