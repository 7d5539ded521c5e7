#if PostgreSQL
import MultiprocessingSQL
import Testing

@testable import MultiprocessingPostgres

/// The reading session's protocol (``PostgresProtocol``) driven with byte arrays, without a server: what it
/// sends for what a server says, the rows it decodes, and how it fails on malformed or hostile bytes (a
/// clear error and the session closed — never a crash, never a wait for bytes that cannot come).
@Suite struct PostgresProtocolTests {
    /// What the machine asks of its shell.
    typealias Action = PostgresProtocol.Action

    // MARK: Happy paths

    /// SCRAM-SHA-256 by itself on RFC 7677's example (user `user`, password `pencil`): the client's
    /// messages and proof are the RFC's, its server signature verifies, and one bit off does not.
    @Test func scramFollowsRFC7677sExample() throws {
        var scram = SCRAM(password: "pencil", user: "user", nonce: "rOprNGfwEbeRWgbNEkqO")
        #expect(scram.clientFirst == "n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        #expect(!scram.verify(serverFinal: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))  // not yet
        let final = try scram.clientFinal(serverFirst: Self.rfcServerFirst)
        #expect(
            final
                == "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        )
        #expect(scram.verify(serverFinal: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
        #expect(!scram.verify(serverFinal: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl96G4="))
        #expect(!scram.verify(serverFinal: "e=invalid-proof"))
    }

    /// Startup with SCRAM-SHA-256 as PostgreSQL speaks it (no user name in SCRAM; the RFC's password,
    /// salt, nonces and iterations, the proof and signature computed independently with Python's
    /// hashlib): SSLRequest answered no, StartupMessage, SASL, the proof sent, the signature verified,
    /// then parameters, key, a notice and ReadyForQuery: connected.
    @Test func startupWithSCRAM() throws {
        var s = try Session("postgres://alice:pencil@db.example/app")
        #expect(s.start() == .send([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F]))
        #expect(s.feed(Array("N".utf8)) == [.send(Self.startup(user: "alice", database: "app"))])
        let first: [UInt8] = Array("SCRAM-SHA-256".utf8) + [0] + int32(28) + Array("n,,n=,r=rOprNGfwEbeRWgbNEkqO".utf8)
        #expect(
            s.feed(message("R", int32(10) + cString("SCRAM-SHA-256-PLUS") + cString("SCRAM-SHA-256") + [0]))
                == [.send(message("p", first))]
        )
        let final =
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=qvT2SWdEH5Q06albL+hjSYuUhCG7VndFyzIb7CK4n9k="
        #expect(
            s.feed(message("R", int32(11) + Array(Self.rfcServerFirst.utf8))) == [
                .send(message("p", Array(final.utf8)))
            ]
        )
        let rest =
            message("R", int32(12) + Array("v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg=".utf8))
            + message("R", int32(0)) + message("S", cString("server_version") + cString("16.2"))
            + message("S", cString("client_encoding") + cString("UTF8")) + message("K", int32(4242) + int32(99))
            + notice("welcome") + ready()
        #expect(s.feed(rest) == [.connected])
        #expect(s.machine.isReady && s.inbox.isEmpty)
        #expect(s.machine.parameters == ["server_version": "16.2", "client_encoding": "UTF8"])
        #expect(s.machine.backendKey?.processID == 4242 && s.machine.backendKey?.secret == int32(99))
    }

    /// Startup with MD5 (`sslmode=disable`: no SSLRequest): the answer is `md5` + md5(md5(password + user)
    /// + salt) in hex, as computed independently.
    @Test func startupWithMD5() throws {
        var s = try Session("postgres://postgres:secret@127.0.0.1/db1?sslmode=disable")
        #expect(s.start() == .send(Self.startup(user: "postgres", database: "db1")))
        #expect(
            s.feed(message("R", int32(5) + [1, 2, 3, 4]))
                == [.send(message("p", cString("md5bb41a296aab6baccb36ff243a562abff")))]
        )
        #expect(s.feed(message("R", int32(0)) + ready()) == [.connected])
    }

    /// Trust: no password asked; and the password in clear text, sent only under `sslmode=disable`.
    @Test func startupWithTrustAndWithCleartextUnderDisable() throws {
        var trust = try Session("postgres://postgres@127.0.0.1/db1")
        _ = trust.start()
        _ = trust.feed(Array("N".utf8))
        #expect(trust.feed(message("R", int32(0)) + ready()) == [.connected])

        var clear = try Session("postgres://u:pa55@127.0.0.1/db1?sslmode=disable")
        _ = clear.start()
        #expect(clear.feed(message("R", int32(3))) == [.send(message("p", cString("pa55")))])
        #expect(clear.feed(message("R", int32(0)) + ready()) == [.connected])
    }

    /// A statement described (Parse, Describe, Sync), then run (Parse, Bind with its parameters in text and
    /// a result format per column, Describe, Execute, Sync), its rows decoded in binary and in text, then
    /// run again without a second description.
    @Test func describeThenRowsInBinaryAndText() throws {
        var s = try Session.connected()
        let sql = "SELECT * FROM t WHERE a = $1"
        #expect(try s.machine.query(sql, [.int(7), .text("x"), .null, .blob([0xAB])]) == .send(Self.describe(sql)))
        let described = message("1", []) + message("t", int16(0)) + Self.description + ready()
        let bind =
            cString("") + cString("") + int16(0) + int16(4) + int32(1) + Array("7".utf8) + int32(1)
            + Array("x".utf8) + int32(-1) + int32(4) + Array("\\xab".utf8) + int16(Int16(Self.types.count))
            + [1, 0, 1, 1, 1, 1, 1, 0].flatMap { int16($0) }
        let run =
            message("P", cString("") + cString(sql) + int16(0)) + message("B", bind)
            + message("D", Array("P".utf8) + [0])
            + message("E", cString("") + int32(0)) + message("S", [])
        #expect(s.feed(described) == [.execute(run, columns: Self.columns)])
        #expect(s.machine.statements[sql]?.types == Self.types)
        let rows = message("1", []) + message("2", []) + Self.description + Self.row + Self.nulls + complete() + ready()
        #expect(s.feed(rows) == [.row(Self.values), .row(Array(repeating: .null, count: Self.types.count)), .finished])
        #expect(s.machine.isReady && s.inbox.isEmpty)
        // Described once: the second run goes straight to Execute.
        guard case .execute(_, let columns) = try s.machine.query(sql, [.int(8), .text("y"), .null, .blob([])]) else {
            Issue.record("described again")
            return
        }
        #expect(columns == Self.columns)
        #expect(s.feed(message("2", []) + Self.row + complete() + ready()) == [.row(Self.values), .finished])
    }

    /// The whole exchange fed one byte at a time: every split of every message waits for the rest, and the
    /// actions are those of the exchange fed at once.
    @Test func theExchangeFedOneByteAtATime() throws {
        var s = try Session("postgres://postgres:secret@127.0.0.1/db1?sslmode=disable")
        _ = s.start()
        var actions: [Action] = []
        for b in message("R", int32(5) + [1, 2, 3, 4]) { actions += s.feed([b]) }
        for b in message("R", int32(0)) + message("S", cString("a") + cString("b")) + notice("hello") + ready() {
            actions += s.feed([b])
        }
        _ = try s.machine.query("SELECT 1", [])
        for b in Self.description + ready() + Self.row + Self.row + complete() + ready() { actions += s.feed([b]) }
        let expected: [Action] = [
            .send(message("p", cString("md5bb41a296aab6baccb36ff243a562abff"))), .connected,
            .execute(
                PostgresCodec.executeMessages(
                    "SELECT 1",
                    [],
                    PostgresCodec.Prepared(columns: Self.columns, types: Self.types)
                ),
                columns: Self.columns
            ), .row(Self.values), .row(Self.values), .finished,
        ]
        #expect(actions.filter { if case .read = $0 { false } else { true } } == expected)
        #expect(s.machine.isReady && s.machine.parameters["a"] == "b")
    }

    /// A row kept by the caller stays as it was when the next row is decoded into the machine's storage.
    @Test func aRowKeptByTheCallerIsNotOverwritten() throws {
        var s = try Session.executing(types: [PostgresCodec.int4])
        let first = s.feed(dataRow([int32(1)]))
        #expect(s.feed(dataRow([int32(2)])) == [.row([.int(2)])])
        #expect(first == [.row([.int(1)])])
    }

    /// Notices, parameter changes and notifications are taken in any phase once connected.
    @Test func asynchronousMessagesAreTakenInAnyPhase() throws {
        var s = try Session.connected()
        let noise =
            notice("n") + message("S", cString("TimeZone") + cString("UTC"))
            + message("A", int32(1) + cString("c") + cString("p"))
        #expect(s.feed(noise) == [] && s.waiting == 5)
        #expect(s.machine.parameters["TimeZone"] == "UTC")
        _ = try s.machine.query("SELECT 1", [])
        #expect(s.feed(noise + message("n", []) + noise + ready()).count == 1)
        #expect(s.feed(noise + message("n", []) + noise + complete() + ready()) == [.finished])
    }

    // MARK: Framing

    /// A length below 4, a negative one, one over the maximum, and a short-type message over libpq's 30000
    /// bytes: closed at once, without waiting for a body that would never be taken.
    @Test(arguments: [
        [UInt8(ascii: "R"), 0, 0, 0, 3], [UInt8(ascii: "R"), 0, 0, 0, 0], [UInt8(ascii: "Z"), 0xFF, 0xFF, 0xFF, 0xFF],
        [UInt8(ascii: "D"), 0, 0, 0x10, 0x01], [UInt8(ascii: "Z"), 0, 0, 0x75, 0x31],
    ])
    func aBadLengthClosesAtOnce(header: [UInt8]) throws {
        for phase in Phase.allCases {
            var s = try Session.at(phase, maximumMessageSize: 4096)
            let e = try #require(s.feed(header).closeError, "\(phase)")
            #expect(e.kind == .connection && e.message.contains("message of"), "\(phase): \(e)")
            #expect(s.machine.isClosed)
        }
    }

    /// The framing by itself: a message needs its whole length; the maximum is its own.
    @Test func framing() throws {
        let bytes = message("C", cString("SELECT 1")) + [UInt8(ascii: "Z"), 0]
        try bytes.withUnsafeBytes { p in
            guard case .message(let type, let body, let size) = try PostgresCodec.frame(p, maximum: 100) else {
                Issue.record("no message")
                return
            }
            #expect(type == UInt8(ascii: "C") && size == 14 && Array(body) == cString("SELECT 1"))
            guard
                case .incomplete(let needs) = try PostgresCodec.frame(
                    UnsafeRawBufferPointer(rebasing: p[size...]),
                    maximum: 100
                )
            else {
                Issue.record("a message in 2 bytes")
                return
            }
            #expect(needs == 5)
            #expect(throws: SQLError.self) { try PostgresCodec.frame(p, maximum: 12) }
        }
    }

    /// A message cut short by the connection's end: the machine waits for exactly the rest, then reports the
    /// end clearly; a message whose length is too short for its own fields closes the session.
    @Test func truncatedMessages() throws {
        for phase in Phase.allCases {
            var s = try Session.at(phase)
            let whole = message("C", cString("SELECT 1"))
            #expect(s.feed(Array(whole.prefix(3))) == [] && s.waiting == 5, "\(phase)")
            #expect(s.feed(Array(whole[3..<9])) == [] && s.waiting == whole.count, "\(phase)")
            let e = try #require(s.closed().closeError, "\(phase)")
            #expect(e.kind == .connection && e.message.contains("closed the connection"), "\(phase): \(e)")
            #expect(s.machine.isClosed)
            #expect(s.closed().closeError?.message.contains("closed") == true)
        }
        var auth = try Session.at(.authenticating)
        #expect(auth.feed(message("R", [0, 0])).closeError?.message.contains("cut short") == true)
        var connected = try Session.at(.authenticated)
        #expect(connected.feed(message("S", cString("a"))).closeError?.message.contains("without its end") == true)
        for body in [[], Array("X".utf8), Array("II".utf8)] {
            var starting = try Session.at(.authenticated)
            let e = starting.feed(message("Z", body)).closeError
            #expect(e?.message.contains("a ReadyForQuery of \(body.count) bytes") == true, "\(String(describing: e))")
        }
    }

    // MARK: Messages out of turn

    /// An unknown type, and a known one the phase does not allow, close the session with an error naming
    /// it, in every phase.
    @Test func anUnexpectedMessageClosesInEveryPhase() throws {
        let strangers: [(UInt8, [UInt8])] = [
            (0xFF, []), (UInt8(ascii: "Q"), cString("x")), (UInt8(ascii: "H"), [0, 0, 0]),
            (UInt8(ascii: "v"), int32(0)),
        ]
        for phase in Phase.allCases {
            for (type, body) in strangers {
                var s = try Session.at(phase)
                let e = try #require(
                    s.feed([type] + int32(Int32(4 + body.count)) + body).closeError,
                    "\(phase) \(type)"
                )
                #expect(e.kind == .connection && e.message.contains("unexpected"), "\(phase): \(e)")
                #expect(s.machine.isClosed)
            }
        }
        // Known messages out of their phase.
        var auth = try Session.at(.authenticating)
        #expect(auth.feed(dataRow([])).closeError?.message.contains("DataRow (D)") == true)
        var idle = try Session.at(.ready)
        #expect(idle.feed(Self.row).closeError?.message.contains("while idle") == true)
        var connected = try Session.at(.authenticated)
        #expect(connected.feed(message("R", int32(0))).closeError?.message.contains("Authentication (R)") == true)
        var describing = try Session.at(.describing)
        #expect(describing.feed(Self.row).closeError?.message.contains("describing") == true)
        var executing = try Session.at(.executing)
        #expect(
            executing.feed(message("K", int32(1) + int32(2))).closeError?.message.contains("BackendKeyData") == true
        )
    }

    /// Bytes before the machine asked anything, after it closed, and a machine started twice.
    @Test func bytesOutOfTheSession() throws {
        var s = try Session("postgres://u@h/d")
        #expect(s.feed(ready()).closeError?.message.contains("before") == true)
        #expect(s.feed(ready()).closeError?.message.contains("closed") == true)
        #expect(s.start().closeError != nil)
        #expect(throws: SQLError.self) { try s.machine.query("SELECT 1", []) }
    }

    /// Authentication requests out of turn: SCRAM continued before it started, finished before its
    /// challenge, a second password request, and AuthenticationOk with bytes after it.
    @Test func authenticationRequestsOutOfTurn() throws {
        var early = try Session.at(.authenticating)
        #expect(
            early.feed(message("R", int32(11) + Array("r=x".utf8))).closeError?.message.contains("out of turn") == true
        )
        var final = try Session.at(.authenticating)
        #expect(
            final.feed(message("R", int32(12) + Array("v=".utf8))).closeError?.message.contains("out of turn") == true
        )
        var twice = try Session.at(.authenticating)
        _ = twice.feed(message("R", int32(5) + [1, 2, 3, 4]))
        #expect(twice.feed(message("R", int32(5) + [1, 2, 3, 4])).closeError?.message.contains("out of turn") == true)
        var okPlus = try Session.at(.authenticating)
        #expect(okPlus.feed(message("R", int32(0) + [1])).closeError != nil)
    }

    // MARK: Errors from the server

    /// An ErrorResponse during startup ends the session with the server's message and SQLSTATE; `28000`
    /// (no `hostssl` match) where TLS is allowed is left to the TLS session (unsupported).
    @Test func anErrorDuringStartup() throws {
        var s = try Session.at(.authenticating)
        let e = try #require(s.feed(errorResponse("28P01", "password authentication failed for user \"u\"")).closeError)
        #expect(e.kind == .connection && e.code == "SQLSTATE 28P01")
        #expect(e.message.contains("cannot connect") && e.message.contains("password authentication failed"), "\(e)")
        #expect(s.machine.isClosed)

        var tls = try Session("postgres://u:p@h/d")
        _ = tls.start()
        _ = tls.feed(Array("N".utf8))
        guard case .unsupported(let why) = tls.feed(errorResponse("28000", "no pg_hba.conf entry")).last else {
            Issue.record("28000 without TLS not left to the TLS session")
            return
        }
        #expect(why.reason.contains("no pg_hba.conf entry"))
        var plain = try Session("postgres://u:p@h/d?sslmode=disable")
        _ = plain.start()
        #expect(plain.feed(errorResponse("28000", "no pg_hba.conf entry")).closeError?.code == "SQLSTATE 28000")
        // After AuthenticationOk, before ReadyForQuery (too many connections).
        var late = try Session.at(.authenticated)
        #expect(
            late.feed(errorResponse("53300", "sorry, too many clients already")).closeError?.code == "SQLSTATE 53300"
        )
    }

    /// An ErrorResponse while describing: reported at ReadyForQuery, as a statement error; the session
    /// ready, nothing remembered of the statement.
    @Test func anErrorWhileDescribingLeavesTheSessionReady() throws {
        var s = try Session.connected()
        _ = try s.machine.query("SELECT * FROM nowhere", [])
        let actions = s.feed(message("1", []) + errorResponse("42P01", "relation \"nowhere\" does not exist") + ready())
        guard case .failed(let e) = actions.last, actions.count == 1 else {
            Issue.record("\(actions)")
            return
        }
        #expect(e.kind == .statement && e.code == "SQLSTATE 42P01")
        #expect(e.message.contains("cannot run SELECT * FROM nowhere") && e.message.contains("does not exist"))
        #expect(s.machine.isReady && s.machine.statements.isEmpty)
        #expect(try s.machine.query("SELECT * FROM nowhere", []) == .send(Self.describe("SELECT * FROM nowhere")))
    }

    /// An ErrorResponse among the rows: the rows before it delivered, those after it (none should come)
    /// not, the error reported at ReadyForQuery; the session ready and the statement described afresh.
    @Test func anErrorAmongTheRowsLeavesTheSessionReady() throws {
        var s = try Session.executing(types: [PostgresCodec.int4])
        let actions = s.feed(
            dataRow([int32(1)]) + errorResponse("22012", "division by zero") + dataRow([int32(2)]) + ready()
        )
        #expect(actions.count == 2 && actions.first == .row([.int(1)]))
        guard case .failed(let e) = actions.last else {
            Issue.record("\(actions)")
            return
        }
        #expect(e.kind == .conversion && e.message.contains("division by zero"))
        #expect(s.machine.isReady && s.machine.statements.isEmpty)
    }

    /// A FATAL error mid-query, then the connection's end: the server's error is the one reported.
    @Test func aFatalErrorThenTheEnd() throws {
        var s = try Session.executing(types: [PostgresCodec.int4])
        #expect(
            s.feed(errorResponse("57P01", "terminating connection due to administrator command")) == []
                && s.waiting == 5
        )
        let e = try #require(s.closed().closeError)
        #expect(e.kind == .connection && e.code == "SQLSTATE 57P01" && e.message.contains("administrator"))
    }

    /// The statement's columns changed between its description and its run: its rows are not decoded
    /// against the old types, the run fails clearly, and the statement is described afresh next time.
    @Test func columnsThatChangedFailTheRun() throws {
        var s = try Session.executing(types: [PostgresCodec.int4])
        let changed = rowDescription([("a", PostgresCodec.textType)])
        let actions = s.feed(changed + dataRow([Array("text".utf8)]) + complete() + ready())
        guard case .failed(let e) = actions.last, actions.count == 1 else {
            Issue.record("\(actions)")
            return
        }
        #expect(e.kind == .statement && e.message.contains("changed"))
        #expect(s.machine.isReady && s.machine.statements.isEmpty)
        var none = try Session.executing(types: [PostgresCodec.int4])
        #expect(
            none.feed(message("n", []) + ready()).first.map { if case .failed = $0 { true } else { false } } == true
        )
    }

    // MARK: Authentication refused

    /// A server that asks for the password in clear over a connection without TLS, where the URL did not
    /// say `sslmode=disable`: refused, nothing sent.
    @Test func cleartextIsRefusedUnlessDisabled() throws {
        for query in ["", "?sslmode=prefer", "?sslmode=allow"] {
            var s = try Session("postgres://u:secret@h/d\(query)")
            _ = s.start()
            _ = s.feed(Array("N".utf8))
            let actions = s.feed(message("R", int32(3)))
            #expect(actions.count == 1, "\(query): \(actions)")
            let e = try #require(actions.last?.closeError)
            #expect(e.kind == .connection && e.message.contains("clear text"), "\(e)")
        }
    }

    /// A SCRAM server signature that does not verify, and AuthenticationOk without one: refused.
    @Test func aSCRAMSignatureThatDoesNotVerify() throws {
        for last in [
            message("R", int32(12) + Array("v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSPg=".utf8)),
            message("R", int32(12) + Array("e=other-error".utf8)), message("R", int32(0)),
        ] {
            var s = try Session.scramChallenged()
            let e = try #require(s.feed(last + ready()).closeError)
            #expect(e.kind == .connection && e.message.contains("not the server we asked"), "\(e)")
            #expect(s.machine.isClosed)
        }
    }

    /// A server nonce that does not start with the client's (or adds nothing to it), and malformed
    /// challenges: refused before any proof is sent.
    @Test(arguments: [
        "r=someoneElsesNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=rOprNGfwEbeRWgbNEkqOx,s=,i=4096", "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=20000000", "r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=4096",
        "m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "garbage",
    ])
    func aBadSCRAMChallengeIsRefused(serverFirst: String) throws {
        var s = try Session.scramStarted()
        let actions = s.feed(message("R", int32(11) + Array(serverFirst.utf8)))
        #expect(actions.count == 1, "\(actions)")
        let e = try #require(actions.last?.closeError)
        #expect(e.kind == .connection && e.message.contains("SCRAM"), "\(e)")
    }

    /// Methods this reader does not speak: left to postgres-nio (unsupported), not a failure of the server.
    @Test func unsupportedAuthentication() throws {
        for request in [int32(7), int32(2), int32(9), int32(10) + cString("SCRAM-SHA-256-PLUS") + [0]] {
            var s = try Session.at(.authenticating)
            guard case .unsupported = s.feed(message("R", request)).last else {
                Issue.record("\(request) not unsupported")
                continue
            }
            #expect(s.machine.isClosed)
        }
    }

    // MARK: TLS, and the probe

    /// The SSLRequest's answer: yes is left to a session with TLS; no lets the startup go, unless bytes
    /// follow it (injected before TLS could be refused); anything else closes.
    @Test func theAnswerToTheSSLRequest() throws {
        var yes = try Session("postgres://u@h/d")
        _ = yes.start()
        guard case .unsupported(let why) = yes.feed(Array("S".utf8)).last else {
            Issue.record("TLS offered, and the reader went on")
            return
        }
        #expect(why.reason.contains("TLS"))
        var injected = try Session("postgres://u@h/d")
        _ = injected.start()
        #expect(
            injected.feed(Array("N".utf8) + message("R", int32(0)) + ready()).closeError?.message.contains("after")
                == true
        )
        var other = try Session("postgres://u@h/d")
        _ = other.start()
        #expect(other.feed(Array("E".utf8)).closeError?.message.contains("SSLRequest") == true)
        #expect(throws: PostgresProtocol.Unsupported.self) {
            try PostgresProtocol(try DatabaseURL("postgres://u@h/d?sslmode=require"))
        }
        #expect(throws: SQLError.self) { try PostgresProtocol(try DatabaseURL("postgres://u@h/d?sslmode=sometimes")) }
    }

    /// The probe: TLS offered, or the first authentication request's code, before any password is sent.
    @Test func theProbe() throws {
        let url = try DatabaseURL("postgres://u:secret@h/d?sslmode=require")
        var tls = Session(machine: try PostgresProtocol(url, purpose: .probe))
        #expect(tls.start() == .send(PostgresCodec.sslRequest))
        #expect(tls.feed(Array("S".utf8)) == [.probed(.offersTLS)])
        for code: Int32 in [0, 3, 5, 10] {
            var plain = Session(machine: try PostgresProtocol(url, purpose: .probe))
            _ = plain.start()
            #expect(plain.feed(Array("N".utf8)) == [.send(Self.startup(user: "u", database: "d"))])
            #expect(plain.feed(message("R", int32(code) + [0, 0, 0, 0])) == [.probed(.plain(authentication: code))])
            #expect(plain.machine.isClosed)
        }
        var refused = Session(machine: try PostgresProtocol(url, purpose: .probe))
        _ = refused.start()
        _ = refused.feed(Array("N".utf8))
        #expect(refused.feed(errorResponse("28000", "no entry")).closeError?.code == "SQLSTATE 28000")
    }

    // MARK: Rows and descriptions

    /// DataRows that do not fit their description: a column count other than the statement's, a cell
    /// length past the end, a row cut short, bytes left over, a binary int4 of 3 bytes.
    @Test(arguments: [
        int16(1) + int32(4) + int32(1),
        int16(2) + int32(4) + int32(1) + int32(100) + [1, 2, 3],
        int16(2) + int32(4) + int32(1),
        int16(2) + int32(4) + int32(1) + int32(-1) + [9],
        int16(2) + int32(3) + [0, 0, 1] + int32(-1),
        [0],
    ])
    func aDataRowThatDoesNotFitCloses(body: [UInt8]) throws {
        var s = try Session.executing(types: [PostgresCodec.int4, PostgresCodec.textType])
        let e = try #require(s.feed(message("D", body) + ready()).closeError)
        #expect(e.kind == .connection && (e.message.contains("DataRow") || e.message.contains("Int32")), "\(e)")
        #expect(s.machine.isClosed)
    }

    /// RowDescriptions with absurd counts (negative, more columns than the bytes can hold), a field cut
    /// short and bytes left over: closed while describing, and refused by the decoder itself.
    @Test func aRowDescriptionWithAbsurdCounts() throws {
        let field = cString("a") + [UInt8](repeating: 0, count: 6) + int32(23) + [UInt8](repeating: 0, count: 8)
        for body in [
            int16(-1), int16(32_767) + field, int16(2) + field, int16(1) + field + [0],
            int16(2) + field + Array(field.prefix(19)),
        ] {
            var s = try Session.at(.describing)
            let e = try #require(s.feed(message("T", body) + ready()).closeError, "\(body)")
            #expect(
                e.kind == .connection && (e.message.contains("RowDescription") || e.message.contains("cut short")),
                "\(e)"
            )
            #expect(throws: SQLError.self) { try body.withUnsafeBytes { try PostgresCodec.rowDescription($0) } }
        }
        let good = int16(1) + field
        #expect(try good.withUnsafeBytes { try PostgresCodec.rowDescription($0) }.types == [23])
    }

    /// A ReadyForQuery that ends a description that never came (no RowDescription, no NoData, no error).
    @Test func aDescriptionThatNeverCame() throws {
        var s = try Session.at(.describing)
        #expect(s.feed(message("1", []) + ready()).closeError?.message.contains("without describing") == true)
    }

    /// The machine refuses a query while not ready, and parameters PostgreSQL would refuse, without
    /// changing: still ready for the next.
    @Test func queriesRefusedBeforeAnythingIsSent() throws {
        var s = try Session.at(.authenticating)
        #expect(throws: SQLError.self) { try s.machine.query("SELECT 1", []) }
        var ready = try Session.connected()
        #expect(throws: SQLError.self) { try ready.machine.query("SELECT 1", Array(repeating: .null, count: 40_000)) }
        #expect(ready.machine.isReady)
        var busy = try Session.at(.executing)
        #expect(throws: SQLError.self) { try busy.machine.query("SELECT 1", []) }
    }

    // MARK: The server's bytes

    /// RFC 7677's server-first-message.
    static let rfcServerFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"

    /// The columns of the test statement: binary int4, text, bool, bytea, timestamp, float8, uuid, and
    /// numeric (read as text).
    static let columns = ["id", "name", "ok", "data", "at", "f", "u", "n"]
    /// Their type oids.
    static let types: [UInt32] = [23, 25, 16, 17, 1114, 701, 2950, 1700]
    /// Their RowDescription.
    static let description = rowDescription(Array(zip(columns, types)))
    /// A DataRow of them (binary where the reader asks for binary).
    static let row = dataRow([
        int32(42), Array("forty-two".utf8), [1], [0xDE, 0xAD], int64(86_400_000_000),
        int64(Int64(bitPattern: 2.5.bitPattern)), (0..<16).map { UInt8($0) }, Array("3.14".utf8),
    ])
    /// ``row`` decoded.
    static let values: [SQLValue] = [
        .int(42), .text("forty-two"), .int(1), .blob([0xDE, 0xAD]), .text("2000-01-02 00:00:00"), .double(2.5),
        .text("00010203-0405-0607-0809-0a0b0c0d0e0f"), .text("3.14"),
    ]
    /// A DataRow of NULLs.
    static let nulls = dataRow(Array(repeating: nil, count: types.count))

    /// The StartupMessage, byte by byte as the protocol defines it.
    static func startup(user: String, database: String) -> [UInt8] {
        let body =
            int32(196_608) + cString("user") + cString(user) + cString("database") + cString(database)
            + cString("client_encoding") + cString("UTF8") + cString("DateStyle") + cString("ISO")
            + cString("application_name") + cString("swift-multiprocessing") + [0]
        return int32(Int32(body.count + 4)) + body
    }

    /// Parse, Describe (statement), Sync for `sql`.
    static func describe(_ sql: String) -> [UInt8] {
        message("P", cString("") + cString(sql) + int16(0)) + message("D", Array("S".utf8) + [0]) + message("S", [])
    }
}

// MARK: A session on byte arrays

/// The phases a session can be fed bytes in, reached with a scripted server.
private enum Phase: CaseIterable {
    case authenticating, authenticated, ready, describing, executing
}

/// A machine and the bytes it has not consumed, fed as the shell feeds it.
private struct Session {
    /// The machine under test.
    var machine: PostgresProtocol
    /// The bytes the server sent that the machine has not consumed.
    var inbox: [UInt8] = []
    /// How many bytes the machine waits for after the last ``feed(_:)`` (nil: it ended the exchange).
    var waiting: Int?

    /// A session around `machine`.
    init(machine: PostgresProtocol) { self.machine = machine }

    /// A reading session for `url`, with RFC 7677's client nonce.
    init(_ url: String, maximumMessageSize: Int = PostgresCodec.defaultMaximumMessageSize) throws {
        machine = try PostgresProtocol(
            try DatabaseURL(url),
            maximumMessageSize: maximumMessageSize,
            nonce: "rOprNGfwEbeRWgbNEkqO"
        )
    }

    /// The connection is open.
    mutating func start() -> PostgresProtocol.Action { machine.start() }

    /// The server's end of file.
    mutating func closed() -> PostgresProtocol.Action { machine.connectionClosed() }

    /// Appends `bytes` to those not consumed and feeds them until the machine waits for more than there
    /// are (``waiting``) or ends the exchange; returns the actions but that last `read`. A machine that asks to read bytes it already has
    /// would make the shell spin: recorded as an issue.
    mutating func feed(_ bytes: [UInt8]) -> [PostgresProtocol.Action] {
        inbox += bytes
        waiting = nil
        var actions: [PostgresProtocol.Action] = []
        for _ in 0..<10_000 {
            let available = inbox
            let step = available.withUnsafeBytes { machine.received($0) }
            #expect(step.consumed >= 0 && step.consumed <= inbox.count)
            inbox.removeFirst(step.consumed)
            switch step.action {
            case .read(let n):
                if n <= inbox.count { Issue.record("asked to read \(n) bytes with \(inbox.count) in hand") }
                waiting = n
                return actions
            case .send, .execute, .row: actions.append(step.action)
            case .connected, .probed, .finished, .failed, .unsupported, .close:
                actions.append(step.action)
                return actions
            }
        }
        Issue.record("the machine did not stop")
        return actions
    }

    /// A session at `phase`, after a trust startup (and `SELECT 1` described, or run, with one int4
    /// column).
    static func at(_ phase: Phase, maximumMessageSize: Int = PostgresCodec.defaultMaximumMessageSize) throws -> Session
    {
        var s = try Session("postgres://u:p@h/d?sslmode=disable", maximumMessageSize: maximumMessageSize)
        _ = s.start()
        if phase == .authenticating { return s }
        _ = s.feed(message("R", int32(0)))
        if phase == .authenticated { return s }
        _ = s.feed(ready())
        #expect(s.machine.isReady)
        if phase == .ready { return s }
        _ = try s.machine.query("SELECT 1", [])
        if phase == .describing { return s }
        _ = s.feed(rowDescription([("a", PostgresCodec.int4)]) + ready())
        #expect(s.machine.state == .executing)
        return s
    }

    /// A session ready for a query.
    static func connected() throws -> Session { try at(.ready) }

    /// A session running a statement of columns of `types`, its rows expected.
    static func executing(types: [UInt32]) throws -> Session {
        var s = try connected()
        _ = try s.machine.query("SELECT x", [])
        let columns = types.indices.map { "c\($0)" }
        guard case .execute = s.feed(rowDescription(Array(zip(columns, types))) + ready()).last else {
            Issue.record("not running")
            return s
        }
        return s
    }

    /// A session that sent SCRAM's client-first message.
    static func scramStarted() throws -> Session {
        var s = try Session("postgres://alice:pencil@db.example/app?sslmode=disable")
        _ = s.start()
        _ = s.feed(message("R", int32(10) + cString("SCRAM-SHA-256") + [0]))
        return s
    }

    /// A session that sent SCRAM's client-final message (its proof) for RFC 7677's challenge.
    static func scramChallenged() throws -> Session {
        var s = try scramStarted()
        let actions = s.feed(message("R", int32(11) + Array(PostgresProtocolTests.rfcServerFirst.utf8)))
        #expect(actions.count == 1)
        return s
    }
}

extension PostgresProtocol.Action {
    /// The error of a `close` action.
    fileprivate var closeError: SQLError? {
        if case .close(let e) = self { return e }
        return nil
    }
}

extension [PostgresProtocol.Action] {
    /// The error of the last action, a `close`.
    fileprivate var closeError: SQLError? { last?.closeError }
}

/// A backend message: type, length, body.
private func message(_ type: Character, _ body: [UInt8]) -> [UInt8] {
    [type.asciiValue!] + int32(Int32(body.count + 4)) + body
}

/// A big-endian Int16.
private func int16(_ v: Int16) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
/// A big-endian Int32.
private func int32(_ v: Int32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
/// A big-endian Int64.
private func int64(_ v: Int64) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
/// `s` in UTF-8 and a NUL.
private func cString(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }

/// ReadyForQuery (idle).
private func ready() -> [UInt8] { message("Z", Array("I".utf8)) }

/// CommandComplete.
private func complete() -> [UInt8] { message("C", cString("SELECT 1")) }

/// A NoticeResponse.
private func notice(_ text: String) -> [UInt8] {
    message("N", Array("SNOTICE".utf8) + [0] + Array("C00000".utf8) + [0] + cString("M" + text) + [0])
}

/// An ErrorResponse with its severity, SQLSTATE and message.
private func errorResponse(_ state: String, _ text: String) -> [UInt8] {
    message("E", cString("SERROR") + cString("VERROR") + cString("C" + state) + cString("M" + text) + [0])
}

/// A RowDescription of `columns` (name, type oid), as a Describe of a statement gives it (format 0).
private func rowDescription(_ columns: [(String, UInt32)]) -> [UInt8] {
    var body = int16(Int16(columns.count))
    for (i, (name, type)) in columns.enumerated() {
        body +=
            cString(name) + int32(0) + int16(Int16(i + 1)) + int32(Int32(bitPattern: type)) + int16(-1) + int32(-1)
            + int16(0)
    }
    return message("T", body)
}

/// A DataRow of `cells` (nil: NULL).
private func dataRow(_ cells: [[UInt8]?]) -> [UInt8] {
    var body = int16(Int16(cells.count))
    for c in cells { body += c.map { int32(Int32($0.count)) + $0 } ?? int32(-1) }
    return message("D", body)
}
#endif
