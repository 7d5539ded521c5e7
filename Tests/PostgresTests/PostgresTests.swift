import Glibc
import Multiprocessing
import MultiprocessingSQL
import MultiprocessingTestSupport
import Testing
import Threading

#if PostgreSQL
@testable import MultiprocessingPostgres

/// The notes' transform (`xb`), on dynamic rows.
struct AddXB: RowTransform {
    func transform(_ rows: [SQLRow]) throws -> [SQLRow] {
        rows.map { r in
            var out = r
            out["xb"] = .text((r["pwd"]?.textValue ?? "").count == 3 ? "M" : "F")
            return out
        }
    }
}

/// ``AddXB``, a few milliseconds per chunk: a run lasts long enough to be disturbed.
struct SlowAddXB: RowTransform {
    func transform(_ rows: [SQLRow]) throws -> [SQLRow] {
        usleep(15_000)
        return try AddXB().transform(rows)
    }
}

/// The notes' job in a process of its own, so that a test can SIGKILL the whole run.
struct PostgresPipelineRun: Job {
    let url: DatabaseURL
    func run() throws -> Int {
        let pool = try ProcessPool(workers: 2)
        defer { pool.terminate() }
        return try TablePipeline(
            from: .table("user", in: url),
            to: url,
            table: "user_copy",
            transform: SlowAddXB(),
            chunkSize: 250
        ).run(on: pool).rowsWritten
    }
}

/// `count` users in a `"user"` table (quoted: unquoted, `user` is PostgreSQL's current user), in
/// `schema` if given.
func makePostgresUsers(_ db: any SQLConnection, count: Int, schema: String? = nil) throws {
    let table = schema.map { "\($0).user" } ?? "user"
    try db.execute(
        "CREATE TABLE \(db.dialect.quote(table)) (id BIGINT PRIMARY KEY, name VARCHAR(64), pwd VARCHAR(64), email VARCHAR(128))"
    )
    var batch = SQLRowBatch(columns: ["id", "name", "pwd", "email"])
    for i in 1...count {
        batch.append([
            .int(Int64(i)), .text("user\(i)"), .text(String(repeating: "x", count: i % 12 + 1)), .text("u\(i)@x"),
        ])
    }
    try db.insert(into: table, batch)
}

/// A server that takes the connection and never answers: `connect` fails with a connection error at its
/// 500 ms timeout.
func expectASilentServerFailsTheConnect(_ connect: (DatabaseURL, Duration) throws -> Void) throws {
    let (fd, port) = loopbackSocket(listening: true)
    defer { close(fd) }
    let url = try DatabaseURL("postgres://root:x@127.0.0.1:\(port)/db1")
    let start = ContinuousClock.now
    do {
        try connect(url, .milliseconds(500))
        Issue.record("connected to a silent server")
    } catch let e as SQLError {
        #expect(e.kind == .connection, "\(e)")
    }
    let took = ContinuousClock.now - start
    #expect(took >= .milliseconds(450) && took < .seconds(30), "\(took)")  // at its timeout, and no hang
}

/// Chunks a pipeline has recorded as written in `db` (0 before its bookkeeping table exists).
func chunksWritten(_ db: any SQLConnection) -> Int {
    Int((try? db.scalar("SELECT count(*) FROM mp_pipeline_chunks"))??.intValue ?? 0)
}

/// Every row the reading session returns, and the column names.
func readAll(
    _ bulk: any SQLBulkReading,
    _ sql: String,
    _ parameters: [SQLValue] = []
) throws -> (columns: [String], rows: [[SQLValue]]) {
    var rows: [[SQLValue]] = []
    let columns = try bulk.forEachRowOnReadingSession(sql, parameters, columns: { _ in }, { rows.append($0) })
    return (columns, rows)
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct PostgresTests {
    init() {
        if let why = postgresUnavailable { print("PostgreSQL tests skipped: \(why)") }
    }

    @Test(
        .enabled(
            if: runs(needing: "postgresql", unavailable: postgresUnavailable),
            "no PostgreSQL server (see the log)"
        )
    )
    func valuesRoundTripAndErrorsAreClear() throws {
        let db = try Database.connect(postgresURL!)
        let t = "mp_values_\(getpid())"
        defer { _ = try? db.execute("DROP TABLE IF EXISTS \(t)") }
        try db.execute("CREATE TABLE \(t) (a BIGINT, b DOUBLE PRECISION, c TEXT, d BYTEA, e TEXT)")
        let row: [SQLValue] = [.int(-42), .double(2.5), .text("héllo 'quoted'"), .blob([0, 1, 255]), .null]
        #expect(try db.execute("INSERT INTO \(t) VALUES ($1, $2, $3, $4, $5)", row) == 1)
        #expect(try db.query("SELECT a, b, c, d, e FROM \(t)").first?.values == row)
        do {
            try db.execute("SELECT * FROM nowhere_\(getpid())")
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .statement, "\(e)")
        }
        var wrong = postgresURL!
        wrong.password = "wrong"
        #expect(throws: SQLError.self) { try Database.connect(wrong, timeout: .seconds(5)) }
    }

    /// The reading session's connect to a port that refuses closes its socket: it used to leak one
    /// descriptor per attempt while the server was down (`forEachRowOnReadingSession` tries again on each
    /// call). 40 refused attempts must not leave 40 descriptors (other suites may open a few meanwhile).
    @Test func aRefusedReadingSessionLeavesNoDescriptor() throws {
        let (bound, port) = loopbackSocket(listening: false)  // bound, not listening: connections are refused
        defer { close(bound) }
        let url = try DatabaseURL("postgres://nobody:nothing@127.0.0.1:\(port)/none?sslmode=disable")
        func openDescriptors() -> Int { (0..<4096).count { fcntl(Int32($0), F_GETFD) != -1 } }
        let before = openDescriptors()
        for _ in 0..<40 {
            #expect(throws: SQLError.self) { _ = try PostgresWireReader(url, timeout: .seconds(5)) }
        }
        let after = openDescriptors()
        #expect(after - before < 20, "\(after - before) more descriptors after 40 refused connects")
    }

    /// A server that takes the connection and never answers (a hung server, a wrong port on a busy
    /// host): connecting fails with a connection error at its timeout, and nothing is left behind.
    @Test func aSilentServerFailsTheConnectAtItsTimeout() throws {
        try expectASilentServerFailsTheConnect { url, timeout in _ = try Database.connect(url, timeout: timeout) }
    }

    /// Timestamps come back as `YYYY-MM-DD HH:MM:SS[.ffffff]` text, whatever the era.
    @Test(
        .enabled(
            if: runs(needing: "postgresql", unavailable: postgresUnavailable),
            "no PostgreSQL server (see the log)"
        )
    )
    func timestampsReadAsText() throws {
        let db = try Database.connect(postgresURL!)
        defer { db.close() }
        for text in [
            "2024-02-29 13:45:01", "1999-12-31 23:59:59.5", "2000-01-01 00:00:00", "1970-01-01 00:00:00.000001",
            "0044-03-15 12:00:00", "9999-12-31 23:59:59.999999", "1900-03-01 00:00:00",
        ] {
            #expect(try db.scalar("SELECT $1::timestamp", [.text(text)]) == .text(text))
        }
        #expect(try db.scalar("SELECT 'infinity'::timestamp") == .text("infinity"))
    }

    /// Batch inserts go through COPY: NULLs, tabs, newlines, backslashes, Unicode, bytes and extreme
    /// numbers arrive intact; text lands in typed columns (a timestamp read from another database as text
    /// writes back as a timestamp); a batch that breaks a constraint fails as a whole with a clear error.
    @Test(
        .enabled(
            if: runs(needing: "postgresql", unavailable: postgresUnavailable),
            "no PostgreSQL server (see the log)"
        )
    )
    func batchInsertsGoThroughCopy() throws {
        let db = try Database.connect(postgresURL!)
        defer { db.close() }
        let t = "mp_copy_\(getpid())"
        defer { _ = try? db.execute("DROP TABLE IF EXISTS \(t)") }
        try db.execute(
            "CREATE TABLE \(t) (id BIGINT PRIMARY KEY, x DOUBLE PRECISION, s TEXT, b BYTEA, at TIMESTAMP, n NUMERIC)"
        )
        var batch = SQLRowBatch(columns: ["id", "x", "s", "b", "at", "n"])
        let odd = "tab\tnew\nline\rcr back\\slash \\N héllo 'q' \"d\" 🙂"
        batch.append([
            .int(1), .double(-2.5e-7), .text(odd), .blob([0, 9, 10, 92, 255]), .text("2024-02-29 13:45:01"),
            .text("12.50"),
        ])
        batch.append([.int(2), .double(.infinity), .text(""), .blob([]), .null, .null])
        batch.append([.int(Int64.min), .null, .null, .null, .null, .text("-0.001")])
        for i in 3..<5000 { batch.append([.int(Int64(i)), .double(Double(i)), .text("r\(i)"), .null, .null, .null]) }
        #expect(try db.insert(into: t, batch) == 5000)
        #expect(try db.scalar("SELECT count(*) FROM \(t)") == .int(5000))
        let one = try db.query("SELECT x, s, b, to_char(at, 'YYYY-MM-DD HH24:MI:SS'), n::text FROM \(t) WHERE id = 1")[
            0
        ].values
        #expect(
            one == [
                .double(-2.5e-7), .text(odd), .blob([0, 9, 10, 92, 255]), .text("2024-02-29 13:45:01"), .text("12.50"),
            ]
        )
        let two = try db.query("SELECT x, s, b, at FROM \(t) WHERE id = 2")[0].values
        #expect(two == [.double(.infinity), .text(""), .blob([]), .null])
        #expect(try db.scalar("SELECT n::text FROM \(t) WHERE id = $1", [.int(Int64.min)]) == .text("-0.001"))
        // A duplicate key: the whole COPY fails, nothing of it stays, and the connection still works.
        var clash = SQLRowBatch(columns: ["id", "s"])
        clash.append([.int(100_000), .text("new")])
        clash.append([.int(1), .text("duplicate")])
        do {
            try db.insert(into: t, clash)
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .constraint, "\(e)")
        }
        #expect(try db.scalar("SELECT count(*) FROM \(t)") == .int(5000))
    }

    /// The notes' job on PostgreSQL, where `user` must be quoted (unquoted, `select * from user` returns
    /// the current user's name): two workers create the sink table at once, every row is copied once, and
    /// a second run writes nothing.
    @Test(
        .enabled(
            if: runs(needing: "postgresql", unavailable: postgresUnavailable),
            "no PostgreSQL server (see the log)"
        )
    )
    func theNotesJobOnPostgreSQLExactlyOnce() throws {
        let url = postgresURL!
        let db = try Database.connect(url)
        let schema = "mp_\(getpid())"
        try db.execute("CREATE SCHEMA \(schema)")
        defer {
            _ = try? db.execute("DROP SCHEMA \(schema) CASCADE")
            _ = try? db.execute("DELETE FROM mp_pipeline_chunks WHERE pipeline LIKE $1", [.text("%\(schema)%")])
        }
        try makePostgresUsers(db, count: 6_000, schema: schema)
        let pool = try ProcessPool(workers: 2)
        defer { pool.terminate() }
        let report = try TablePipeline(
            from: .table("\(schema).user", in: url),
            to: url,
            table: "\(schema).user_copy",
            transform: AddXB(),
            chunkSize: 1000
        ).run(on: pool)
        #expect(report.rowsWritten == 6_000)
        #expect(try db.scalar("SELECT count(*) FROM \(schema).user_copy") == .int(6_000))
        #expect(try db.scalar("SELECT count(DISTINCT id) FROM \(schema).user_copy") == .int(6_000))
        let m = (1...6_000).filter { $0 % 12 + 1 == 3 }.count
        #expect(try db.scalar("SELECT count(*) FROM \(schema).user_copy WHERE xb = 'M'") == .int(Int64(m)))
        let again = try TablePipeline(
            from: .table("\(schema).user", in: url),
            to: url,
            table: "\(schema).user_copy",
            transform: AddXB(),
            chunkSize: 1000
        ).run(on: pool)
        #expect(again.rowsWritten == 0)
        #expect(again.chunksSkipped == 6)
    }

    /// The server restarted under a running pipeline (a server of the test's own, `-m fast`: every
    /// connection cut): the run ends — done, or with a clear error, never a hang — and a second run
    /// finishes the copy with every row written exactly once.
    @Test(
        .enabled(
            if: runs(needing: "private-postgres", unavailable: PrivatePostgres.unavailable),
            "needs Debian's PostgreSQL server binaries and root"
        )
    )
    func aServerRestartMidRunLosesAndDuplicatesNothing() throws {
        let server = try PrivatePostgres()
        defer { server.stop() }
        let url = server.url
        let db = try Database.connect(url)
        defer { db.close() }
        try makePostgresUsers(db, count: 20_000)
        let pool = try ProcessPool(workers: 2)
        defer { pool.terminate() }
        let pipeline: @Sendable () -> TablePipeline<SlowAddXB> = {
            TablePipeline(
                from: .table("user", in: url),
                to: url,
                table: "user_copy",
                transform: SlowAddXB(),
                chunkSize: 250
            )
        }
        let first = background { try pipeline().run(on: pool) }
        let watcher = try Database.connect(url)
        try eventually("10 chunks written") { chunksWritten(watcher) >= 10 }
        watcher.close()
        try server.restart()
        let restarted = ContinuousClock.now
        do {
            let report = try first.result(timeout: .seconds(120))
            print("the first run finished across the restart: \(report)")
        } catch {
            // Not a timeout: the run ended by itself, saying why.
            #expect(!("\(error)".contains("did not finish within")), "\(error)")
            print("the first run failed clearly: \(error)")
        }
        // Not after a statement's 60-second timeout either: a connection the server closed ends its call
        // at once (postgres-nio's COPY had waited the whole minute when the restart landed during one).
        #expect(ContinuousClock.now - restarted < .seconds(30))
        let again = try pipeline().run(on: pool)
        print("second run: \(again)")
        let check = try Database.connect(url)
        defer { check.close() }
        #expect(try check.scalar("SELECT count(*) FROM user_copy") == .int(20_000))
        #expect(try check.scalar("SELECT count(DISTINCT id) FROM user_copy") == .int(20_000))
    }

    /// The whole run SIGKILLed midway on PostgreSQL, then run again: every row written exactly once.
    @Test(
        .enabled(
            if: runs(needing: "postgresql", unavailable: postgresUnavailable),
            "no PostgreSQL server (see the log)"
        )
    )
    func aRunKilledMidwayFinishesExactlyOnceWhenRunAgain() throws {
        try withScratchDatabase(.postgresql) { scratch in
            let url = scratch.url
            let db = try Database.connect(url)
            defer { db.close() }
            try makePostgresUsers(db, count: 20_000)
            let child = ChildProcess(job: PostgresPipelineRun(url: url))
            try child.start()
            var written = 0
            try eventually("8 chunks written") {
                written = chunksWritten(db)
                return written >= 8
            }
            child.kill()
            _ = try child.join(timeout: .seconds(10))
            let copied = Int(try db.scalar("SELECT count(*) FROM user_copy")?.intValue ?? 0)
            #expect(written >= 8 && copied < 20_000, "\(written) chunks, \(copied) rows when killed")
            let pool = try ProcessPool(workers: 2)
            defer { pool.terminate() }
            let report = try TablePipeline(
                from: .table("user", in: url),
                to: url,
                table: "user_copy",
                transform: AddXB(),
                chunkSize: 250
            ).run(on: pool)
            #expect(report.chunksSkipped > 0)
            #expect(report.rowsWritten == 20_000 - copied)
            #expect(try db.scalar("SELECT count(*) FROM user_copy") == .int(20_000))
            #expect(try db.scalar("SELECT count(DISTINCT id) FROM user_copy") == .int(20_000))
        }
    }
    /// The reading session (the pipeline's chunk reads) gives the same values as the connection itself
    /// for the types read in binary, PostgreSQL's text for every other type, and takes parameters of
    /// every kind.
    @Test(
        .enabled(
            if: runs(needing: "postgresql", unavailable: postgresUnavailable),
            "no PostgreSQL server (see the log)"
        )
    )
    func theReadingSessionReadsWhatTheConnectionReads() throws {
        let db = try Database.connect(postgresURL!)
        defer { db.close() }
        let t = "mp_reader_\(getpid())"
        defer { _ = try? db.execute("DROP TABLE IF EXISTS \(t)") }
        try db.execute(
            """
            CREATE TABLE \(t) (id int PRIMARY KEY, a smallint, b bigint, c boolean, d real, e double precision,
              f text, g varchar(20), h char(4), i bytea, j timestamp, k timestamptz, l uuid, m numeric(10,2),
              n date, o json)
            """
        )
        try db.execute(
            """
            INSERT INTO \(t) VALUES
              (1, -7, 9223372036854775807, true, 1.5, -2.25e300, 'héllo\ttab', 'v', 'ab', '\\x00ff10',
               '2024-02-29 13:45:01.25', '2024-02-29 13:45:01+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
               12.5, '2024-01-02', '{"a": 1}'),
              (2, NULL, NULL, false, 'NaN', '-Infinity', '', NULL, NULL, '\\x', 'infinity', NULL, NULL, NULL, NULL,
               NULL)
            """
        )
        let bulk = try #require(db as? any SQLBulkReading)
        let sql = "SELECT * FROM \(t) WHERE id >= $1 ORDER BY id"
        var viaReader: [[SQLValue]]
        var names: [String]
        (names, viaReader) = try readAll(bulk, sql, [.int(1)])
        let viaConnection = try db.query(sql, [.int(1)])
        #expect(names == viaConnection.first?.columns)
        #expect(viaReader.count == 2)
        let binary = names.indices.filter { !["m", "n", "o"].contains(names[$0]) }
        for (r, c) in zip(viaReader, viaConnection) {
            for i in binary where !(r[i].doubleValue?.isNaN ?? false) {
                #expect(r[i] == c.values[i], "column \(names[i])")
            }
        }
        #expect(viaReader[0][3] == .int(1) && viaReader[0][9] == .blob([0, 255, 16]))
        #expect(viaReader[0][10] == .text("2024-02-29 13:45:01.25") && viaReader[0][11] == .text("2024-02-29 11:45:01"))
        #expect(viaReader[0][12] == .text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))
        #expect(Array(viaReader[0][13...]) == [.text("12.50"), .text("2024-01-02"), .text("{\"a\": 1}")])
        #expect(viaReader[1][4].doubleValue?.isNaN == true && viaReader[1][5] == .double(-.infinity))
        #expect(viaReader[1][10] == .text("infinity") && viaReader[1][9] == .blob([]))
        // Parameters of every kind, sent as text and typed by the statement.
        let got = try readAll(
            bulk,
            "SELECT id FROM \(t) WHERE f = $1 OR i = $2 OR e < $3 OR j = $4 OR $5::int IS NOT NULL ORDER BY id",
            [.text("héllo\ttab"), .blob([0]), .double(-1e300), .text("infinity"), .null]
        ).rows
        #expect(got == [[.int(1)], [.int(2)]])
        // A statement with no rows, and one that changes nothing.
        let (columns, none) = try readAll(bulk, "SELECT 1 AS one WHERE false")
        #expect(none.isEmpty && columns == ["one"])
    }

    /// The reading session after each way a read can fail: the server's error (the session stays), the
    /// caller's own error mid-stream, an error after some rows, and its backend terminated (the session
    /// is closed, and the next read opens a new one).
    @Test(
        .enabled(
            if: runs(needing: "postgresql", unavailable: postgresUnavailable),
            "no PostgreSQL server (see the log)"
        )
    )
    func theReadingSessionRecoversFromEveryFailure() throws {
        let db = try Database.connect(postgresURL!)
        defer { db.close() }
        let bulk = try #require(db as? any SQLBulkReading)
        func count(_ sql: String) throws -> Int {
            let (_, rows) = try readAll(bulk, sql)
            return rows.count
        }
        do {
            _ = try count("SELECT * FROM nowhere_\(getpid())")
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .statement && e.description.contains("nowhere"), "\(e)")
        }
        #expect(try count("SELECT generate_series(1, 1000)") == 1000)
        do {
            _ = try count("SELECT 1 / (i - 700) FROM generate_series(1, 100000) i")
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .conversion && e.description.contains("division by zero"), "\(e)")
        }
        #expect(try count("SELECT generate_series(1, 10)") == 10)
        struct Stop: Error {}
        var seen = 0
        #expect(throws: Stop.self) {
            try bulk.forEachRowOnReadingSession(
                "SELECT generate_series(1, 100000)",
                [],
                columns: { _ in },
                { _ in
                    seen += 1
                    if seen == 500 { throw Stop() }
                }
            )
        }
        #expect(try count("SELECT generate_series(1, 10)") == 10)
        // The table altered between two reads of one statement: a clear error once, then the new columns.
        let t = "mp_altered_\(getpid())"
        defer { _ = try? db.execute("DROP TABLE IF EXISTS \(t)") }
        try db.execute("CREATE TABLE \(t) (a int)")
        try db.execute("INSERT INTO \(t) VALUES (7)")
        #expect(try readAll(bulk, "SELECT * FROM \(t)").rows == [[.int(7)]])
        try db.execute("ALTER TABLE \(t) ALTER COLUMN a TYPE text")
        do {
            _ = try readAll(bulk, "SELECT * FROM \(t)")
            Issue.record("read with the old columns")
        } catch let e as SQLError {
            #expect(e.kind == .statement && e.description.contains("changed"), "\(e)")
        }
        #expect(try readAll(bulk, "SELECT * FROM \(t)").rows == [[.text("7")]])
        // A column more: the columns bound no longer match; an error once (the server's), then the new
        // columns.
        try db.execute("ALTER TABLE \(t) ADD COLUMN b int DEFAULT 1")
        #expect(throws: SQLError.self) { try readAll(bulk, "SELECT * FROM \(t)") }
        #expect(try readAll(bulk, "SELECT * FROM \(t)").rows == [[.text("7"), .int(1)]])
        // Its backend terminated by an administrator: one read fails as a connection error, the next works.
        let pid = try readAll(bulk, "SELECT pg_backend_pid()").rows.first?.first?.intValue ?? 0
        #expect(pid != 0)
        _ = try db.scalar("SELECT pg_terminate_backend($1::int)", [.int(pid)])
        do {
            _ = try count("SELECT 1")
            Issue.record("the terminated session answered")
        } catch let e as SQLError {
            #expect(e.kind == .connection, "\(e)")
        }
        #expect(try count("SELECT generate_series(1, 10)") == 10)
    }

    /// The reading session's own connect: a wrong password and a silent server fail clearly, at once and
    /// at the timeout.
    @Test(
        .enabled(
            if: runs(needing: "postgresql", unavailable: postgresUnavailable),
            "no PostgreSQL server (see the log)"
        )
    )
    func theReadingSessionsConnectFailsClearly() throws {
        var wrong = postgresURL!
        wrong.password = "wrong"
        do {
            _ = try PostgresWireReader(wrong, timeout: .seconds(5))
            Issue.record("a wrong password was taken")
        } catch let e as SQLError {
            #expect(e.kind == .connection && e.description.contains("password authentication failed"), "\(e)")
        }
        try expectASilentServerFailsTheConnect { url, timeout in _ = try PostgresWireReader(url, timeout: timeout) }
    }

    /// TLS as `sslmode` asks, against a server that takes TLS connections only: `disable` is refused,
    /// `require` and `verify-full` (with the server's certificate as `sslrootcert`) are encrypted,
    /// `verify-full` without the certificate is refused, and a copy runs over TLS (its chunks read
    /// through the connection's own TLS session, the reading session being refused without TLS).
    @Test(
        .enabled(
            if: runs(needing: "private-postgres", unavailable: PrivatePostgres.unavailable),
            "needs Debian's PostgreSQL server binaries and root"
        )
    )
    func tlsAsSSLModeAsks() throws {
        let server = try PrivatePostgres()
        defer { server.stop() }
        let cert = try server.requireTLS()
        func url(_ query: String) throws -> DatabaseURL {
            try DatabaseURL("postgres://postgres@127.0.0.1:\(server.port)/postgres?\(query)")
        }
        #expect(throws: SQLError.self) { try Database.connect(try url("sslmode=disable"), timeout: .seconds(10)) }
        for query in ["sslmode=require", "sslmode=verify-full&sslrootcert=\(cert)", "sslmode=prefer"] {
            let db = try Database.connect(try url(query), timeout: .seconds(10))
            #expect(try db.scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == .int(1), "\(query)")
            db.close()
        }
        do {
            _ = try Database.connect(try url("sslmode=verify-full"), timeout: .seconds(10))
            Issue.record("an unknown certificate was taken")
        } catch let e as SQLError {
            #expect(e.kind == .connection, "\(e)")
        }
        #expect(throws: SQLError.self) { try Database.connect(try url("sslmode=sometimes")) }
        let tls = try url("sslmode=require")
        let db = try Database.connect(tls)
        defer { db.close() }
        try makePostgresUsers(db, count: 3_000)
        let pool = try ProcessPool(workers: 2)
        defer { pool.terminate() }
        let report = try TablePipeline(
            from: .table("user", in: tls),
            to: tls,
            table: "user_copy",
            transform: AddXB(),
            chunkSize: 500
        ).run(on: pool)
        #expect(report.rowsWritten == 3_000)
        #expect(try db.scalar("SELECT count(DISTINCT id) FROM user_copy") == .int(3_000))
        // The reading session on a URL that allows plain text, refused by the server: the TLS session reads.
        let prefer = try Database.connect(try url("sslmode=prefer"))
        defer { prefer.close() }
        let bulk = try #require(prefer as? any SQLBulkReading)
        #expect(try readAll(bulk, "SELECT count(*) FROM user_copy").rows == [[.int(3_000)]])
    }

    /// libpq's `sslmode`, with no password in clear: against a server with TLS on and `password`
    /// (clear-text) authentication, reached through a relay that records what clients send, the
    /// connection and its reading session never send the password's bytes under `allow`, `prefer` (also
    /// the default), `require` or `verify-full`: both use TLS. Under `disable` they do (the URL asked for
    /// it: this also shows that the relay sees the password when it is sent). Then, with TLS off at the
    /// server, `prefer` refuses to send it and says why, and `disable` still connects.
    @Test(
        .enabled(
            if: runs(needing: "private-postgres", unavailable: PrivatePostgres.unavailable),
            "needs Debian's PostgreSQL server binaries and root"
        )
    )
    func noPasswordCrossesTheWireInClearUnlessTheURLSaysSo() throws {
        let server = try PrivatePostgres()
        defer { server.stop() }
        let cert = try server.turnOnTLS()
        try server.restart()
        let password = "Pa55-\(UInt32.random(in: 100_000...999_999))-in-clear"
        let admin = try Database.connect(server.url)
        try admin.execute("CREATE ROLE mp_clear LOGIN PASSWORD '\(password)'")
        admin.close()
        try server.authenticate(["host all mp_clear 127.0.0.1/32 password"])
        func run(_ query: String, through relay: RecordingRelay) throws -> Bool {
            let url = try DatabaseURL("postgres://mp_clear:\(password)@127.0.0.1:\(relay.port)/postgres\(query)")
            let db = try Database.connect(url, timeout: .seconds(10))
            defer { db.close() }
            let bulk = try #require(db as? any SQLBulkReading)
            #expect(try readAll(bulk, "SELECT current_user::text").rows == [[.text("mp_clear")]], "\(query)")
            let encrypted = try db.scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return encrypted == .int(1)
        }
        for query in [
            "", "?sslmode=allow", "?sslmode=prefer", "?sslmode=require", "?sslmode=verify-full&sslrootcert=\(cert)",
        ] {
            let relay = RecordingRelay(to: server.port)
            defer { relay.close() }
            #expect(try run(query, through: relay), "\(query): not encrypted")
            #expect(!relay.clientBytes.isEmpty)
            #expect(!relay.clientsSent(password), "\(query): the password crossed the wire in clear")
        }
        let relay = RecordingRelay(to: server.port)
        defer { relay.close() }
        #expect(try run("?sslmode=disable", through: relay) == false)
        #expect(relay.clientsSent(password), "the relay did not see what disable sends")

        // TLS off at the server: no TLS to be had, so `prefer` refuses the clear-text request.
        try server.turnOffTLS()
        let plainRelay = RecordingRelay(to: server.port)
        defer { plainRelay.close() }
        for query in ["", "?sslmode=prefer", "?sslmode=allow"] {
            do {
                _ = try run(query, through: plainRelay)
                Issue.record("\(query): connected by sending the password in clear")
            } catch let e as SQLError {
                #expect(e.kind == .connection && e.description.contains("clear text"), "\(e)")
            }
        }
        // The reading session by itself, too.
        let prefer = try DatabaseURL("postgres://mp_clear:\(password)@127.0.0.1:\(plainRelay.port)/postgres")
        #expect(throws: SQLError.self) { try PostgresWireReader(prefer, timeout: .seconds(10)) }
        #expect(!plainRelay.clientsSent(password), "the password crossed the wire in clear")
        #expect(try run("?sslmode=disable", through: plainRelay) == false)
    }

    /// A read that outlives the connection's timeout fails at it as a connection error (the session is
    /// closed, not left mid-result), and the next read opens a new session.
    @Test(
        .enabled(
            if: runs(needing: "postgresql", unavailable: postgresUnavailable),
            "no PostgreSQL server (see the log)"
        )
    )
    func aReadPastItsTimeoutFailsAndTheNextWorks() throws {
        let db = try Database.connect(postgresURL!, timeout: .seconds(1))
        defer { db.close() }
        let bulk = try #require(db as? any SQLBulkReading)
        let start = ContinuousClock.now
        do {
            _ = try readAll(bulk, "SELECT pg_sleep(30)")
            Issue.record("a 30 s statement ended within a 1 s timeout")
        } catch let e as SQLError {
            #expect(e.kind == .connection && e.description.contains("did not answer"), "\(e)")
        }
        let took = ContinuousClock.now - start
        // At the 1 s timeout; generously: not at the statement's end, 30 s.
        #expect(took >= .milliseconds(900) && took < .seconds(20), "\(took)")
        #expect(try readAll(bulk, "SELECT 1").rows == [[.int(1)]])
    }

    /// A server that answers with malformed messages (a length under 4, an authentication request cut
    /// short, an unknown authentication method): the reading session's connect fails clearly, the process
    /// goes on.
    @Test func aMalformedServerFailsTheReadingSessionsConnect() throws {
        let answers: [[UInt8]] = [
            [UInt8(ascii: "R"), 0, 0, 0, 2],
            [UInt8(ascii: "R"), 0, 0, 0, 4],
            [UInt8(ascii: "R"), 0, 0, 0, 8, 0, 0, 0, 7],
        ]
        for answer in answers {
            let (fd, port) = loopbackSocket(listening: true)
            defer { close(fd) }
            let server = background { () -> Bool in
                let c = accept(fd, nil, nil)
                guard c >= 0 else { return false }
                var startup = [UInt8](repeating: 0, count: 512)
                _ = read(c, &startup, startup.count)
                _ = answer.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
                // Open until the client has read the answer and closed (or sent more); 5 s at most.
                var client = pollfd(fd: c, events: Int16(POLLIN), revents: 0)
                _ = poll(&client, 1, 5_000)
                close(c)
                return true
            }
            let url = try DatabaseURL("postgres://root:x@127.0.0.1:\(port)/db1")
            do {
                _ = try PostgresWireReader(url, timeout: .seconds(5))
                Issue.record("connected to a server that sent \(answer)")
            } catch let e as SQLError {
                #expect(e.kind == .connection, "\(e)")
            } catch let e as PostgresWireReader.Unsupported {
                #expect(answer.count == 9, "only the unknown method is unsupported: \(e.reason)")
            }
            #expect(try server.result(timeout: .seconds(10)))
        }
    }

    /// Every authentication the reading session speaks, against a real server configured for each: trust,
    /// cleartext password (with `sslmode=disable`: see the test above), MD5 and SCRAM-SHA-256 (and a wrong
    /// MD5 password refused).
    @Test(
        .enabled(
            if: runs(needing: "private-postgres", unavailable: PrivatePostgres.unavailable),
            "needs Debian's PostgreSQL server binaries and root"
        )
    )
    func theReadingSessionSpeaksEveryPasswordAuthentication() throws {
        let server = try PrivatePostgres()
        defer { server.stop() }
        let admin = try Database.connect(server.url)
        defer { admin.close() }
        try admin.executeScript(
            """
            SET password_encryption = 'md5'; CREATE ROLE mp_md5 LOGIN PASSWORD 'm d5!';
            CREATE ROLE mp_clear LOGIN PASSWORD 'clear';
            SET password_encryption = 'scram-sha-256'; CREATE ROLE mp_scram LOGIN PASSWORD 'sc"ram'
            """
        )
        try server.authenticate([
            "host all mp_md5 127.0.0.1/32 md5", "host all mp_clear 127.0.0.1/32 password",
            "host all mp_scram 127.0.0.1/32 scram-sha-256",
        ])
        for (user, password) in [("postgres", ""), ("mp_md5", "m d5!"), ("mp_clear", "clear"), ("mp_scram", "sc\"ram")]
        {
            var url = server.url
            url.user = user
            url.password = password
            // A password in clear text over a connection without TLS only where the URL says so.
            if user == "mp_clear" { url.options["sslmode"] = "disable" }
            let reader = try PostgresWireReader(url, timeout: .seconds(10))
            var who: [SQLValue] = []
            _ = try reader.forEachRow("SELECT current_user::text", [], columns: { _ in }, { who = $0 })
            #expect(who == [.text(user)])
            reader.close()
        }
        var wrong = server.url
        wrong.user = "mp_md5"
        wrong.password = "nope"
        #expect(throws: SQLError.self) { try PostgresWireReader(wrong, timeout: .seconds(10)) }
    }
}
#else
@Test(.disabled("built without the PostgreSQL trait (swift test --traits PostgreSQL)"))
func postgresTestsNeedTheTrait() {}
#endif
