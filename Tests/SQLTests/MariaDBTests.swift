import Glibc
import Multiprocessing
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingSQL

/// The MariaDB server the tests use: `$MP_MARIADB_URL`, else the one `scripts/start-mariadb` starts
/// (`mysql://root:123456@127.0.0.1:3306/db1`, the notes' settings).
let mariaDBURL: DatabaseURL? = {
    let text = environmentValue("MP_MARIADB_URL") ?? "mysql://root:123456@127.0.0.1:3306/db1"
    return try? DatabaseURL(text)
}()

func environmentValue(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

/// Why the MariaDB tests cannot run here, or nil when a server answers.
let mariaDBUnavailable: String? = {
    guard let url = mariaDBURL else { return "MP_MARIADB_URL is not a database URL" }
    do {
        let c = try MariaDBConnection(url, timeout: .seconds(3))
        c.close()
        return nil
    } catch {
        return "no MariaDB server at \(url) (\(error)); scripts/start-mariadb starts one, .ci/run does"
    }
}()

/// Whether the MariaDB tests run: a server answers, or the run requires one (`MP_TEST_REQUIRE=mariadb`:
/// they then fail without it).
let mariaDBTestsRun = runs(needing: "mariadb", unavailable: mariaDBUnavailable)

/// Why the tests' account cannot turn the server's `local_infile` off and back on (nil when it can):
/// setting it to its own value takes the same privilege and changes nothing.
let mariaDBLocalInfileFixed: String? = {
    if let why = mariaDBUnavailable { return why }
    do {
        let c = try MariaDBConnection(mariaDBURL!, timeout: .seconds(5))
        defer { c.close() }
        try c.execute("SET GLOBAL local_infile = @@GLOBAL.local_infile")
        return nil
    } catch {
        return "cannot SET GLOBAL local_infile here: \(error)"
    }
}()

/// Why the MariaDB server cannot be reached over TLS (nil when it can).
let mariaDBTLSUnavailable: String? = {
    if let why = mariaDBUnavailable { return why }
    do {
        let c = try MariaDBConnection(mariaDBURL!, timeout: .seconds(5))
        defer { c.close() }
        guard try c.scalar("SELECT @@have_ssl") == .text("YES") else {
            return "the MariaDB server has no TLS (scripts/start-mariadb turns it on)"
        }
        return nil
    } catch {
        return "cannot ask the MariaDB server about TLS: \(error)"
    }
}()

/// The certificate a verifying client trusts: `$MP_MARIADB_CA`, else the one `scripts/start-mariadb` makes.
let mariaDBCA = environmentValue("MP_MARIADB_CA") ?? "/tmp/mp-databases/mariadb/tls/server.crt"

/// `count` users in `table`, the notes' columns (`pwd` of 1 to 12 characters).
func makeMariaDBUsers(_ db: MariaDBConnection, table: String, count: Int) throws {
    try db.execute(
        "CREATE TABLE \(table) (id BIGINT PRIMARY KEY, name VARCHAR(64), pwd VARCHAR(64), email VARCHAR(128), created_at VARCHAR(32))"
    )
    var batch = SQLRowBatch(columns: ["id", "name", "pwd", "email", "created_at"])
    for i in 1...count {
        batch.append([
            .int(Int64(i)), .text("user\(i)"), .text(String(repeating: "x", count: i % 12 + 1)),
            .text("u\(i)@example.com"), .text("2026-11-28 12:00:00"),
        ])
    }
    try db.insert(into: table, batch)
}

/// A table name of this test run's own.
func uniqueTable(_ stem: String) -> String { "\(stem)_\(getpid())_\(UInt16.random(in: 0...UInt16.max))" }

@Suite(.serialized, .timeLimit(.minutes(3)))
struct MariaDBTests {
    init() {
        if let why = mariaDBUnavailable { print("MariaDB tests skipped: \(why)") }
    }

    @Test(.enabled(if: mariaDBTestsRun, "no MariaDB server (see the log)"))
    func valuesRoundTripAndErrorsAreClear() throws {
        let db = try MariaDBConnection(mariaDBURL!)
        let t = uniqueTable("mp_values")
        defer { _ = try? db.execute("DROP TABLE IF EXISTS \(t)") }
        try db.execute("CREATE TABLE \(t) (a BIGINT, b DOUBLE, c TEXT, d BLOB, e TEXT)")
        let row: [SQLValue] = [
            .int(-42), .double(2.5), .text("héllo 'quoted' \\ ? `x`"), .blob([0, 1, 255, 39]), .null,
        ]
        #expect(try db.execute("INSERT INTO \(t) VALUES (?, ?, ?, ?, ?)", row) == 1)
        #expect(try db.query("SELECT a, b, c, d, e FROM \(t)").first?.values == row)
        do {
            try db.execute("SELECT * FROM nowhere_\(getpid())")
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .statement)
            #expect(e.message.contains("doesn't exist"))
        }
        #expect(throws: SQLError.self) { try db.execute("SELECT ?", [1, 2]) }
    }

    @Test(.enabled(if: mariaDBTestsRun, "no MariaDB server (see the log)"))
    func aWrongPasswordIsRefusedClearly() throws {
        var url = mariaDBURL!
        url.password = "wrong"
        do {
            _ = try MariaDBConnection(url, timeout: .seconds(5))
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .connection)
            #expect(e.message.contains("Access denied"), "\(e)")
            #expect(!e.message.contains("wrong"), "the password is not in the message")
        }
    }

    /// The server drops the connection (its thread is killed, as a restart would): the next call fails
    /// at once with a connection error, the connection says it is closed, and a new one works.
    @Test(.enabled(if: mariaDBTestsRun, "no MariaDB server (see the log)"))
    func aDroppedConnectionFailsClearlyAndANewOneWorks() throws {
        let a = try MariaDBConnection(mariaDBURL!, timeout: .seconds(60))
        let b = try MariaDBConnection(mariaDBURL!, timeout: .seconds(5))
        let id = try a.scalar("SELECT CONNECTION_ID()")!
        try b.execute("KILL CONNECTION \(id)")
        let start = ContinuousClock.now
        do {
            _ = try a.scalar("SELECT 1")
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .connection, "\(e)")
        }
        #expect(ContinuousClock.now - start < .seconds(30), "at once, not at the connection's 60 s read timeout")
        #expect(throws: SQLError.self) { try a.scalar("SELECT 1") }
        #expect(try MariaDBConnection(mariaDBURL!).scalar("SELECT 1") == .int(1))
    }

    /// How many LOAD DATA and INSERT statements this session has run.
    func statementCounts(_ db: MariaDBConnection) throws -> (load: Int64, insert: Int64) {
        let rows = try db.query("SHOW SESSION STATUS WHERE Variable_name IN ('Com_load', 'Com_insert')")
        let v = Dictionary(uniqueKeysWithValues: rows.map { ($0.values[0].textValue!, $0.values[1].intValue ?? 0) })
        return (v["Com_load"] ?? 0, v["Com_insert"] ?? 0)
    }

    /// Batches go through LOAD DATA LOCAL, served from memory: tabs, newlines, backslashes, NUL,
    /// Unicode, empty text and NULL arrive intact (a non-finite double as NULL, as INSERT writes it); a
    /// batch with bytes goes through INSERT.
    @Test(.enabled(if: mariaDBTestsRun, "no MariaDB server (see the log)"))
    func batchInsertsGoThroughLoadData() throws {
        let db = try MariaDBConnection(mariaDBURL!)
        let t = uniqueTable("mp_load")
        defer { _ = try? db.execute("DROP TABLE IF EXISTS \(t)") }
        try db.execute("CREATE TABLE \(t) (a BIGINT, b DOUBLE, c TEXT, d DATETIME(6) NULL, e BLOB)")
        var batch = SQLRowBatch(columns: ["a", "b", "c", "d"])
        let texts = ["tab\there", "new\nline\r\n", "back\\slash \\N", "nul\u{0}byte", "héllo 😀", "", "\\"]
        for (i, text) in texts.enumerated() {
            batch.append([.int(Int64(i) - 3), .double(Double(i) / 3), .text(text), .text("2024-02-29 13:45:0\(i).25")])
        }
        batch.append([.int(Int64.max), .double(.infinity), .null, .null])
        let before = try statementCounts(db)
        #expect(try db.insert(into: t, batch) == texts.count + 1)
        let after = try statementCounts(db)
        #expect(after.load == before.load + 1 && after.insert == before.insert, "\(before) → \(after)")
        let back = try db.query("SELECT a, b, c, d FROM \(t) ORDER BY a")
        #expect(back.count == texts.count + 1)
        for (i, text) in texts.enumerated() {
            #expect(back[i].values[0] == .int(Int64(i) - 3))
            #expect(back[i].values[1] == .double(Double(i) / 3))
            #expect(back[i].values[2] == .text(text), "row \(i)")
            #expect(back[i].values[3] == .text("2024-02-29 13:45:0\(i).250000"))
        }
        #expect(back.last?.values == [.int(Int64.max), .null, .null, .null])
        // Bytes: INSERT.
        var bytes = SQLRowBatch(columns: ["a", "e"])
        bytes.append([.int(100), .blob([0, 9, 10, 92, 255])])
        #expect(try db.insert(into: t, bytes) == 1)
        #expect(try statementCounts(db).insert == after.insert + 1)
        #expect(try db.scalar("SELECT e FROM \(t) WHERE a = 100") == .blob([0, 9, 10, 92, 255]))
    }

    /// LOCAL makes a duplicate key or a value too long a warning; the connection rolls the load back and
    /// lets INSERT fail as it should: nothing of the batch stays, in a transaction or not, and a
    /// transaction's earlier rows are kept.
    @Test(.enabled(if: mariaDBTestsRun, "no MariaDB server (see the log)"))
    func aLoadThatWouldDropRowsFailsAsInsertWould() throws {
        let db = try MariaDBConnection(mariaDBURL!)
        let t = uniqueTable("mp_load_strict")
        defer { _ = try? db.execute("DROP TABLE IF EXISTS \(t)") }
        try db.execute("CREATE TABLE \(t) (id BIGINT PRIMARY KEY, code VARCHAR(3)) ENGINE=InnoDB")
        func rows(_ ids: [Int], code: String = "ok") -> SQLRowBatch {
            var b = SQLRowBatch(columns: ["id", "code"])
            for i in ids { b.append([.int(Int64(i)), .text(code)]) }
            return b
        }
        #expect(try db.insert(into: t, rows([1, 2, 3])) == 3)
        do {
            try db.insert(into: t, rows([4, 5, 2]))
            Issue.record("a duplicate key was taken")
        } catch let e as SQLError {
            #expect(e.kind == .constraint, "\(e)")
        }
        do {
            try db.insert(into: t, rows([6], code: "too long"))
            Issue.record("a value too long was taken")
        } catch let e as SQLError {
            #expect(e.kind == .conversion, "\(e)")
        }
        #expect(try db.scalar("SELECT count(*) FROM \(t)") == .int(3))
        try db.begin(immediate: false)
        #expect(try db.insert(into: t, rows([10, 11])) == 2)
        #expect(throws: SQLError.self) { try db.insert(into: t, rows([12, 10])) }
        #expect(try db.insert(into: t, rows([13])) == 1)
        try db.commit()
        #expect(
            try db.query("SELECT id FROM \(t) ORDER BY id").map { $0.values[0] }
                == [1, 2, 3, 10, 11, 13].map { .int($0) }
        )
        // A transaction begun with a plain BEGIN: the load joins it and goes with its rollback.
        try db.execute("BEGIN")
        #expect(try db.insert(into: t, rows([20, 21])) == 2)
        try db.execute("ROLLBACK")
        #expect(try db.scalar("SELECT count(*) FROM \(t)") == .int(6))
    }

    /// A server cannot make the connection read a file: a LOAD DATA LOCAL the server answers with a file
    /// request, other than the connection's own batch, is refused.
    @Test(.enabled(if: mariaDBTestsRun, "no MariaDB server (see the log)"))
    func noLocalFileIsEverRead() throws {
        let db = try MariaDBConnection(mariaDBURL!)
        let t = uniqueTable("mp_load_file")
        defer { _ = try? db.execute("DROP TABLE IF EXISTS \(t)") }
        try db.execute("CREATE TABLE \(t) (line TEXT)")
        #expect(throws: SQLError.self) { try db.execute("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE \(t)") }
        #expect(try db.scalar("SELECT count(*) FROM \(t)") == .int(0))
        #expect(try db.scalar("SELECT 1") == .int(1))
    }

    /// A server with `local_infile` off: batches go through INSERT, and nothing is lost.
    @Test(
        .enabled(
            if: runs(needing: "mariadb", unavailable: mariaDBLocalInfileFixed),
            Comment(rawValue: mariaDBLocalInfileFixed ?? "")
        )
    )
    func aServerThatRefusesLocalFilesGetsInserts() throws {
        let admin = try MariaDBConnection(mariaDBURL!)
        try admin.execute("SET GLOBAL local_infile = 0")
        defer { _ = try? admin.execute("SET GLOBAL local_infile = 1") }
        let db = try MariaDBConnection(mariaDBURL!)
        let t = uniqueTable("mp_load_off")
        defer { _ = try? db.execute("DROP TABLE IF EXISTS \(t)") }
        try db.execute("CREATE TABLE \(t) (id BIGINT PRIMARY KEY)")
        var b = SQLRowBatch(columns: ["id"])
        for i in 1...50 { b.append([.int(Int64(i))]) }
        #expect(try db.insert(into: t, b) == 50)
        try db.begin(immediate: false)
        var c = SQLRowBatch(columns: ["id"])
        c.append([.int(51)])
        #expect(try db.insert(into: t, c) == 1)
        try db.commit()
        #expect(try db.scalar("SELECT count(*) FROM \(t)") == .int(51))
    }

    /// The TLS cipher of a new connection with `options` added to its URL ("" without TLS).
    func cipher(_ options: [String: String]) throws -> String {
        var url = mariaDBURL!
        url.options.merge(options) { $1 }
        let c = try MariaDBConnection(url, timeout: .seconds(10))
        defer { c.close() }
        return try c.query("SHOW SESSION STATUS LIKE 'Ssl_cipher'").first?.values[1].textValue ?? ""
    }

    /// `ssl-mode` (MySQL's names; libpq's `sslmode` too): no TLS by default or under DISABLED, an unknown
    /// mode refused.
    @Test(.enabled(if: mariaDBTestsRun, "no MariaDB server (see the log)"))
    func noTLSUnlessSSLModeAsks() throws {
        #expect(try cipher([:]) == "")
        #expect(try cipher(["ssl-mode": "DISABLED"]) == "")
        #expect(throws: SQLError.self) { try cipher(["ssl-mode": "sometimes"]) }
    }

    /// TLS as `ssl-mode` asks: encrypted under REQUIRED and PREFERRED, refused under VERIFY_IDENTITY
    /// without the server's certificate (it is self-signed); a copy over TLS.
    @Test(
        .enabled(
            if: runs(needing: "mariadb", unavailable: mariaDBTLSUnavailable),
            Comment(rawValue: mariaDBTLSUnavailable ?? "")
        )
    )
    func tlsAsSSLModeAsks() throws {
        #expect(try !cipher(["ssl-mode": "REQUIRED"]).isEmpty)
        #expect(try !cipher(["sslmode": "prefer"]).isEmpty)
        #expect(throws: SQLError.self) { try cipher(["ssl-mode": "VERIFY_IDENTITY"]) }
        // The notes' job over TLS.
        var tls = mariaDBURL!
        tls.options["ssl-mode"] = "REQUIRED"
        let db = try MariaDBConnection(tls)
        let source = uniqueTable("user")
        let sink = uniqueTable("user_copy")
        defer {
            _ = try? db.execute("DROP TABLE IF EXISTS \(source)")
            _ = try? db.execute("DROP TABLE IF EXISTS \(sink)")
        }
        try makeMariaDBUsers(db, table: source, count: 3_000)
        let pool = try ProcessPool(workers: 2)
        defer { pool.terminate() }
        let report = try TablePipeline(
            from: .table(source, in: tls),
            to: tls,
            table: sink,
            transform: AddSex(),
            chunkSize: 500
        ).run(on: pool)
        #expect(report.rowsWritten == 3_000)
        try checkCopy(db, n: 3_000, table: sink)
    }

    /// VERIFY_IDENTITY against the server's certificate (`$MP_MARIADB_CA`, else the one
    /// `scripts/start-mariadb` makes): verified, encrypted.
    @Test(
        .enabled(
            if: runs(needing: "mariadb", unavailable: mariaDBTLSUnavailable) && access(mariaDBCA, R_OK) == 0,
            Comment(rawValue: mariaDBTLSUnavailable ?? "no \(mariaDBCA) to verify the server with (set MP_MARIADB_CA)")
        )
    )
    func tlsVerifiesTheServerWithItsCertificate() throws {
        #expect(try !cipher(["ssl-mode": "VERIFY_IDENTITY", "ssl-ca": mariaDBCA]).isEmpty)
    }

    /// A port where nothing listens: a connection error at once, never a hang.
    @Test func anUnreachableServerFailsFast() throws {
        let start = ContinuousClock.now
        do {
            _ = try MariaDBConnection(try DatabaseURL("mysql://root:x@127.0.0.1:1/db1"), timeout: .seconds(60))
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .connection || e.kind == .unavailable, "\(e)")
        }
        #expect(ContinuousClock.now - start < .seconds(30), "at once, not at the 60 s connect timeout")
    }

    /// The notes' own job on their own database: `user` in MariaDB to `user_copy`, a killed run restarted,
    /// every row once; then from MariaDB into SQLite.
    @Test(.enabled(if: mariaDBTestsRun, "no MariaDB server (see the log)"))
    func theNotesJobOnMariaDBExactlyOnce() throws {
        let url = mariaDBURL!
        let db = try MariaDBConnection(url)
        let source = uniqueTable("user")
        let sink = uniqueTable("user_copy")
        defer {
            _ = try? db.execute("DROP TABLE IF EXISTS \(source)")
            _ = try? db.execute("DROP TABLE IF EXISTS \(sink)")
            _ = try? db.execute("DELETE FROM mp_pipeline_chunks WHERE pipeline LIKE ?", [.text("%\(sink)%")])
        }
        try makeMariaDBUsers(db, table: source, count: 12_000)
        let pool = try ProcessPool(workers: 2)
        defer { pool.terminate() }
        let failing = TablePipeline(
            from: .table(source, in: url),
            to: url,
            table: sink,
            transform: AddSex(crashAt: 7777),
            chunkSize: 1000
        )
        #expect(throws: PoolError.self) { try failing.run(on: pool) }
        #expect(try db.scalar("SELECT count(*) FROM \(sink)") == .int(11_000))
        let report = try TablePipeline(
            from: .table(source, in: url),
            to: url,
            table: sink,
            transform: AddSex(),
            chunkSize: 1000
        ).run(on: pool)
        #expect(report.rowsWritten == 1000)
        #expect(report.chunksSkipped == 11)
        try checkCopy(db, n: 12_000, table: sink)
        // MariaDB to SQLite.
        try withTemporaryDatabase { path in
            let out = try TablePipeline(
                from: .table(source, in: url),
                to: DatabaseURL(sqlite: path),
                table: "user_copy",
                transform: AddSex(),
                chunkSize: 2500
            ).run(on: pool)
            #expect(out.rowsWritten == 12_000)
            try checkCopy(try SQLiteConnection(path: path), n: 12_000)
        }
    }

    /// The server drops every connection of a running copy (its threads killed, as a restart would cut
    /// them): the run ends by itself with a clear error, not a hang, and a second run writes the rest,
    /// every row exactly once.
    @Test(.enabled(if: mariaDBTestsRun, "no MariaDB server (see the log)"))
    func connectionsCutMidRunLoseAndDuplicateNothing() throws {
        let admin = try MariaDBConnection(mariaDBURL!)
        let schema = uniqueTable("mp_gone")
        try admin.execute("CREATE DATABASE \(schema)")
        defer { _ = try? admin.execute("DROP DATABASE IF EXISTS \(schema)") }
        var scratch = mariaDBURL!
        scratch.database = schema
        let url = scratch
        let db = try MariaDBConnection(url)
        try makeMariaDBUsers(db, table: "user", count: 20_000)
        let pool = try ProcessPool(workers: 2)
        defer { pool.terminate() }
        let pipeline: @Sendable () -> TablePipeline<AddSex> = {
            TablePipeline(
                from: .table("user", in: url),
                to: url,
                table: "user_copy",
                transform: AddSex(pauseMs: 15),
                chunkSize: 250
            )
        }
        let first = background { try pipeline().run(on: pool) }
        try eventually("10 chunks written") { chunksWritten(db) >= 10 }
        let own = try db.scalar("SELECT CONNECTION_ID()")!
        /// Kills every connection to the scratch database but the test's own; how many.
        func cutAll() throws -> Int {
            let victims = try admin.query(
                "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> ?",
                [.text(schema), own]
            )
            for v in victims { _ = try? admin.execute("KILL CONNECTION \(v.values[0].intValue!)") }
            return victims.count
        }
        #expect(try cutAll() > 0)
        let cut = ContinuousClock.now
        do {
            let report = try first.result(timeout: .seconds(120))
            print("the first run finished across the cut: \(report)")
        } catch {
            #expect(!("\(error)".contains("did not finish within")), "\(error)")
            print("the first run failed clearly: \(error)")
        }
        #expect(ContinuousClock.now - cut < .seconds(30), "ended at once, not at a timeout")
        // The workers' connections, idle between runs, cut too: the next run finds them dead on first use
        // and opens new ones.
        #expect(try cutAll() > 0)
        let again = try pipeline().run(on: pool)
        print("second run: \(again)")
        try checkCopy(db, n: 20_000)
    }

}
