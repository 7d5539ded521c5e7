import Glibc
import MultiprocessingTestSupport
import Testing

@testable import MultiprocessingSQL

struct Person: Codable, Equatable {
    var id: Int64
    var name: String
    var score: Double?
    var photo: [UInt8]?
}

/// A fresh database file in /tmp, removed (with its WAL files) at the end.
func withTemporaryDatabase<R>(_ body: (String) throws -> R) throws -> R {
    let path = "/tmp/mp-sqltest-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).db"
    defer { for suffix in ["", "-wal", "-shm", "-journal"] { unlink(path + suffix) } }
    return try body(path)
}

@Suite struct SQLiteTests {
    @Test func theSystemLibraryLoads() throws {
        let v = try SQLiteConnection.libraryVersion()
        #expect(v.hasPrefix("3."))
    }

    @Test func valuesRoundTripThroughEveryType() throws {
        let db = try SQLiteConnection(path: ":memory:")
        try db.execute("CREATE TABLE t (a, b, c, d, e)")
        let row: [SQLValue] = [.int(-42), .double(2.5), .text("héllo 'quoted'"), .blob([0, 1, 255]), .null]
        #expect(try db.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?)", row) == 1)
        let rows = try db.query("SELECT a, b, c, d, e FROM t")
        #expect(rows.count == 1)
        #expect(rows[0].values == row)
        #expect(rows[0].columns == ["a", "b", "c", "d", "e"])
        #expect(rows[0]["c"] == .text("héllo 'quoted'"))
    }

    /// An empty string stays '' (not NULL) through parameters and batch inserts alike.
    @Test func anEmptyStringIsNotNull() throws {
        let db = try SQLiteConnection(path: ":memory:")
        try db.execute("CREATE TABLE t (k INTEGER, s TEXT)")
        try db.execute("INSERT INTO t VALUES (?1, ?2)", [1, ""])
        try db.insert(into: "t", SQLRowBatch(columns: ["k", "s"], values: [2, ""]))
        #expect(try db.scalar("SELECT count(*) FROM t WHERE s = ''") == .int(2))
        #expect(try db.scalar("SELECT count(*) FROM t WHERE s IS NULL") == .int(0))
        #expect(try db.scalar("SELECT s FROM t WHERE k = ?1", [""]) == nil)
    }

    @Test func structsGoInAndComeOut() throws {
        let db = try SQLiteConnection(path: ":memory:")
        try db.execute("CREATE TABLE person (id INTEGER PRIMARY KEY, name TEXT, score REAL, photo BLOB)")
        let people = (1...2500).map { (i: Int) -> Person in
            let score: Double? = i % 3 == 0 ? nil : Double(i) / 2
            let photo: [UInt8]? = i == 7 ? [7, 7] : nil
            return Person(id: Int64(i), name: "p\(i)", score: score, photo: photo)
        }
        let (columns, rows) = try SQLRowEncoder().encode(people)
        #expect(columns == ["id", "name", "score", "photo"])
        #expect(try db.insert(into: "person", columns: columns, rows: rows) == 2500)
        #expect(
            try db.insertWithValueLists(
                into: "person",
                SQLRowEncoder().encodeBatch(
                    people.map { Person(id: $0.id + 10_000, name: $0.name, score: $0.score, photo: $0.photo) }
                ),
                batch: 333
            ) == 2500
        )
        var back: [Person] = []
        let names = try db.forEachRow("SELECT * FROM person ORDER BY id", []) { _ in }
        let decoder = SQLRowDecoder(columns: names)
        try db.forEachRow("SELECT * FROM person ORDER BY id", []) {
            back.append(try decoder.decode(Person.self, from: $0))
        }
        #expect(Array(back.prefix(2500)) == people)
        #expect(back.dropFirst(2500).map { $0.id - 10_000 } == people.map(\.id))
        #expect(back.dropFirst(2500).map(\.score) == people.map(\.score))
        #expect(back.dropFirst(2500).map(\.photo) == people.map(\.photo))
    }

    @Test func errorsSayWhatWentWrong() throws {
        let db = try SQLiteConnection(path: ":memory:")
        #expect(throws: SQLError.self) { try db.execute("SELEC 1") }
        do {
            try db.execute("SELECT * FROM nowhere")
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .statement)
            #expect(e.message.contains("no such table: nowhere"))
        }
        try db.execute("CREATE TABLE u (k INTEGER PRIMARY KEY)")
        try db.execute("INSERT INTO u VALUES (1)")
        do {
            try db.execute("INSERT INTO u VALUES (1)")
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .constraint)
        }
        do {
            _ = try SQLRowDecoder(columns: ["id"]).decode(Person.self, from: [.text("x")])
            Issue.record("no error")
        } catch let e as SQLError {
            #expect(e.kind == .conversion)
        }
        #expect(throws: SQLError.self) { try db.execute("INSERT INTO u VALUES (?)", [1, 2]) }
    }

    @Test func aTransactionThatThrowsLeavesNothing() throws {
        let db = try SQLiteConnection(path: ":memory:")
        try db.execute("CREATE TABLE t (x)")
        struct Boom: Error {}
        #expect(throws: Boom.self) {
            try db.transaction {
                try db.execute("INSERT INTO t VALUES (1)")
                throw Boom()
            }
        }
        #expect(try db.scalar("SELECT count(*) FROM t") == .int(0))
        #expect(!db.inTransaction)
    }

    /// A writer waiting for another connection's write lock gets it when it is released, and gives up
    /// with `.busy` at its timeout.
    @Test func aLockedDatabaseWaitsThenSaysBusy() throws {
        try withTemporaryDatabase { path in
            let a = try SQLiteConnection(path: path)
            let b = try SQLiteConnection(path: path, busyTimeout: .milliseconds(200))
            try a.execute("CREATE TABLE t (x)")
            try a.begin(immediate: true)
            let start = ContinuousClock.now
            do {
                try b.begin(immediate: true)
                Issue.record("no error")
            } catch let e as SQLError {
                #expect(e.kind == .busy)
            }
            #expect(ContinuousClock.now - start >= .milliseconds(190))
            try a.commit()
            try b.begin(immediate: true)
            try b.execute("INSERT INTO t VALUES (1)")
            try b.commit()
            #expect(try a.scalar("SELECT count(*) FROM t") == .int(1))
        }
    }

    @Test(arguments: [
        ("sqlite:///tmp/x.db", DatabaseURL.Kind.sqlite, "/tmp/x.db", "", 0),
        ("sqlite:rel.db", .sqlite, "rel.db", "", 0),
        ("sqlite::memory:", .sqlite, ":memory:", "", 0),
        ("postgres://root:12%2F3@127.0.0.1:5433/db1", .postgresql, "db1", "127.0.0.1", 5433),
        ("mysql://root@db.example/db1?charset=utf8mb4", .mysql, "db1", "db.example", 3306),
        ("mariadb://u:p@[::1]:3307/x", .mysql, "x", "::1", 3307),
    ])
    func urlsParse(text: String, kind: DatabaseURL.Kind, database: String, host: String, port: Int) throws {
        let u = try DatabaseURL(text)
        #expect(u.kind == kind)
        #expect(u.database == database)
        #expect(u.host == host)
        #expect(u.port == port)
        if kind == .postgresql { #expect(u.password == "12/3") }
        #expect(!u.description.contains("12/3"))
    }

    @Test func badURLsAreRefused() {
        for text in ["nothing", "oracle://x/y", "postgres:db", "mysql://h:99999/d", "sqlite:"] {
            #expect(throws: SQLError.self, "\(text)") { try DatabaseURL(text) }
        }
    }
}

@Suite struct SQLScriptTests {
    /// Scripts split at top-level semicolons only: not inside quotes, dollar-quoted bodies or comments.
    @Test func statementsSplitOutsideQuotesAndBodies() {
        let script = """
            CREATE TABLE "a;b" (x TEXT DEFAULT 'it''s; fine');
            -- a comment; with a semicolon
            CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM 1; RETURN NULL; END $$;
            SELECT $1, $body$ x; y $body$ /* c; d */ ;
              ;
            """
        let parts = SQLScript.statements(script)
        #expect(parts.count == 3, "\(parts)")
        #expect(parts[0] == "CREATE TABLE \"a;b\" (x TEXT DEFAULT 'it''s; fine')")
        #expect(parts[1].hasPrefix("-- a comment; with a semicolon\nCREATE FUNCTION"))
        #expect(parts[1].hasSuffix("END $$"))
        #expect(parts[2] == "SELECT $1, $body$ x; y $body$ /* c; d */")
    }
}
