// The tutorial's database job (进程线程, first listing), ported: read `user` in chunks, add the column
// `xb` in a process pool, append the chunks to `user_copy` — on SQLite, exactly once and resumable.

import Glibc
import Multiprocessing
public import MultiprocessingSQL

/// A row of the tutorial's `user` table.
public struct User: Codable, Sendable {
    /// Column `id`, the primary key.
    public var id: Int64
    /// Column `name`.
    public var name: String
    /// Column `pwd`, the password whose length `test` looks at.
    public var pwd: String
    /// Column `email`.
    public var email: String
    /// Column `created_at`, a timestamp as text (`2026-11-05 12:00:00`); spelt as the column is, so that
    /// the row decodes by column name.
    public var created_at: String
}

/// A row of `user_copy`: the user and `xb`.
public struct UserCopy: Codable, Sendable {
    /// Column `id`, copied from `user`.
    public var id: Int64
    /// Column `name`, copied from `user`.
    public var name: String
    /// Column `pwd`, copied from `user`.
    public var pwd: String
    /// Column `email`, copied from `user`.
    public var email: String
    /// Column `created_at`, copied from `user`.
    public var created_at: String
    /// The column the tutorial adds, `xb` (sex): `M` or `F`, from the length of `pwd`.
    public var xb: String
}

/// The tutorial's `test`: whether a password has 3 characters.
func test(_ arg: String) -> Bool { arg.count == 3 }

/// The tutorial's `test2`, typed:
/// ```python
/// piece['xb'] = list(map(lambda x: '' if test(x) else '', piece['pwd']))
/// ```
/// The notes write `''` in both branches (a transcription loss): here `'M'` when `len(pwd) == 3`, else
/// `'F'`.
public struct AddSex: RowTransform {
    /// The transform (it has no settings).
    public init() {}
    /// One chunk of `user` rows as `user_copy` rows: each row copied, with `xb` added. Runs in a pool
    /// worker, as `test2` runs in the tutorial's `Pool(5)`.
    public func transform(_ rows: [User]) -> [UserCopy] {
        rows.map {
            UserCopy(
                id: $0.id,
                name: $0.name,
                pwd: $0.pwd,
                email: $0.email,
                created_at: $0.created_at,
                xb: test($0.pwd) ? "M" : "F"
            )
        }
    }
}

/// The same transform on rows of any shape (`mp etl --transform xb`): adds `xb` from the column `pwd`.
public struct AddSexColumn: RowTransform {
    /// The transform (it has no settings).
    public init() {}
    /// The rows with a column `xb` added (`M` when `pwd` has 3 characters, else `F`; a `pwd` that is not
    /// text counts as empty).
    /// - Throws: `SQLError` `.conversion` when the rows have no column `pwd`.
    public func transform(_ rows: [SQLRow]) throws -> [SQLRow] {
        try rows.map { row in
            guard let pwd = row["pwd"] else { throw SQLError(.conversion, "the rows have no column pwd") }
            var out = row
            out["xb"] = .text(test(pwd.textValue ?? "") ? "M" : "F")
            return out
        }
    }
}

/// Creates the tutorial's `user` table with `count` sample rows (deterministic: pwd lengths cycle 1...12).
public func makeSampleUsers(_ db: any SQLConnection, count: Int) throws {
    try db.execute(
        "CREATE TABLE user (id INTEGER PRIMARY KEY, name VARCHAR(64), pwd VARCHAR(64), email VARCHAR(128), created_at TIMESTAMP)"
    )
    let letters = Array("abcdefghijklmnopqrstuvwxyz")
    var batch = SQLRowBatch(columns: ["id", "name", "pwd", "email", "created_at"])
    for i in 1...count {
        let name = String((0..<(4 + i % 9)).map { letters[($0 * 7 + i) % 26] })
        let pwd = String((0..<(1 + (i * 5) % 12)).map { letters[($0 + i) % 26] })
        let day = 1 + i % 28
        batch.append([
            .int(Int64(i)), .text(name), .text(pwd), .text("\(name)\(i)@mail.test"),
            .text("2026-11-\(day < 10 ? "0" : "")\(day) 12:00:00"),
        ])
    }
    try db.transaction { _ = try db.insert(into: "user", batch) }
}

/// ```python
/// df = pd.read_sql("select * from user", conn, chunksize=2)
/// p = Pool(5)
/// for piece in df:
///     p.apply_async(func=test2, args=(piece,))
///     p.apply_async(func=test3, args=(piece,))
/// p.close(); p.join()
/// ```
/// On a temporary SQLite file instead of MySQL (the demo needs no server; `mp etl` takes any
/// database), with chunks of 1,000 rows instead of 2. The notes hand every chunk to two functions that
/// each append it, so their `user_copy` gets every row twice; this copies each row once, and a second
/// run finds every chunk done.
public func databaseJob(rows: Int = 20_000) throws {
    let path = "/tmp/mp-demo-\(getpid()).sqlite"
    defer { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
    let url = DatabaseURL(sqlite: path)
    let db = try SQLiteConnection(path: path)
    defer { db.close() }
    try makeSampleUsers(db, count: rows)
    print("user: \(rows) rows in \(url)")
    let p = try ProcessPool(workers: 5)
    defer { p.terminate() }
    let job = TablePipeline(
        from: .table("user", in: url),
        to: url,
        table: "user_copy",
        transform: AddSex(),
        chunkSize: 1000
    )
    let report = try job.run(on: p, progress: .bar)
    print("copied: \(report.rowsWritten) rows in \(report.chunksWritten) chunks")
    for row in try db.query("SELECT xb, count(*) AS n FROM user_copy GROUP BY xb ORDER BY xb") {
        print("user_copy xb=\(row["xb"]?.textValue ?? "?"): \(row["n"]?.intValue ?? 0) rows")
    }
    let again = try job.run(on: p)
    print("run again: \(again.rowsWritten) rows written, \(again.chunksSkipped) chunks already done")
    p.close()
    try p.join()
}
