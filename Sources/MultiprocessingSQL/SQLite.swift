import CMultiprocessingSQLite
import Threading

/// A connection to an SQLite database file, through the system's `libsqlite3.so.0`, loaded when the first
/// connection opens (no build-time package: the library is there wherever Swift or CPython is).
///
/// Why not a Swift package: GRDB needs the `libsqlite3-dev` headers at build time, which a fresh machine
/// lacks; sqlite-nio compiles its own SQLite but brings SwiftNIO, minutes of build for a blocking API
/// this library does not need. Both are fine choices in an app; a library's embedded default should cost
/// nothing.
///
/// Files open in WAL mode (readers never block the writer), with a short-sleep busy handler: a writer
/// that finds the database locked retries every 50 µs–2 ms for up to `busyTimeout`, then fails with
/// ``SQLError/Kind-swift.struct/busy``. Prepared statements are cached per connection.
public final class SQLiteConnection: SQLConnection {
    private var db: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]
    /// The file, or `:memory:`.
    public let path: String
    /// SQLite's (``SQLDialect/sqlite``).
    public var dialect: SQLDialect { .sqlite }

    /// The SQLite library's version (`3.40.1`).
    public static func libraryVersion() throws -> String {
        try load()
        return String(cString: mp_sqlite3_libversion())
    }

    private static func load() throws {
        var message = [CChar](repeating: 0, count: 512)
        if mp_sqlite3_load(&message, message.count) != 0 {
            throw SQLError(
                .unavailable,
                String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            )
        }
    }

    /// Opens (and by default creates) the database at `path`.
    /// - Parameter path: the file, or `:memory:` for a private in-memory database.
    /// - Parameter busyTimeout: how long a statement waits for another connection's lock.
    /// - Parameter readOnly: open without write access.
    /// - Parameter wal: switch a file database to WAL journaling (persistent, once per file).
    public init(path: String, busyTimeout: Duration = .seconds(30), readOnly: Bool = false, wal: Bool = true) throws {
        try Self.load()
        self.path = path
        var handle: OpaquePointer?
        let flags =
            (readOnly ? MP_SQLITE_OPEN_READONLY : MP_SQLITE_OPEN_READWRITE | MP_SQLITE_OPEN_CREATE)
            | MP_SQLITE_OPEN_NOMUTEX | MP_SQLITE_OPEN_URI
        let rc = mp_sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == MP_SQLITE_OK, let handle else {
            let message = handle.map { String(cString: mp_sqlite3_errmsg($0)) } ?? "out of memory"
            if let handle { mp_sqlite3_close_v2(handle) }
            throw SQLError(.connection, "cannot open SQLite database \(path): \(message)", code: String(rc))
        }
        db = handle
        mp_sqlite3_short_busy_timeout(handle, Int32(clamping: busyTimeout.wholeMilliseconds))
        if wal && !readOnly && path != ":memory:" && !path.isEmpty {
            try executeScript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")
        }
    }

    deinit { close() }

    /// Finalises the cached statements and closes the database; later calls throw ``SQLError`` (kind
    /// `connection`). Closing twice does nothing; the connection also closes when it is released.
    public func close() {
        for s in statements.values { mp_sqlite3_finalize(s) }
        statements = [:]
        if let db { mp_sqlite3_close_v2(db) }
        db = nil
    }

    private func handle() throws -> OpaquePointer {
        guard let db else { throw SQLError(.connection, "the SQLite connection to \(path) is closed") }
        return db
    }

    private func error(_ rc: Int32, _ what: String) -> SQLError {
        let message = db.map { String(cString: mp_sqlite3_errmsg($0)) } ?? "closed"
        let primary = rc & 0xff
        let kind: SQLError.Kind =
            switch primary {
            case 5, 6: .busy  // SQLITE_BUSY, SQLITE_LOCKED
            case 19: .constraint
            case 1: .statement  // SQLITE_ERROR: syntax, missing table
            case 10, 11, 13, 14, 26: .connection  // I/O error, corrupt, full, can't open, not a database
            case 20, 25: .conversion  // mismatch, range
            default: .other
            }
        return SQLError(kind, "\(what): \(message)", code: "SQLITE \(rc)")
    }

    /// A prepared statement for `sql`, cached.
    private func prepare(_ sql: String) throws -> OpaquePointer {
        if let s = statements[sql] { return s }
        let db = try handle()
        var stmt: OpaquePointer?
        let rc = mp_sqlite3_prepare_v2(db, sql, -1, &stmt, nil)
        guard rc == MP_SQLITE_OK, let stmt else { throw error(rc, "cannot prepare \(sql.prefix(200))") }
        if statements.count >= 64 {
            for s in statements.values { mp_sqlite3_finalize(s) }
            statements = [:]
        }
        statements[sql] = stmt
        return stmt
    }

    private func bind(_ stmt: OpaquePointer, _ parameters: [SQLValue]) throws {
        try parameters.withUnsafeBufferPointer { try bind(stmt, $0) }
    }

    private func bind(_ stmt: OpaquePointer, _ parameters: UnsafeBufferPointer<SQLValue>) throws {
        let expected = Int(mp_sqlite3_bind_parameter_count(stmt))
        guard expected == parameters.count else {
            throw SQLError(.statement, "the statement takes \(expected) parameters, \(parameters.count) given")
        }
        for (i, v) in parameters.enumerated() {
            let n = Int32(i + 1)
            let rc: Int32
            if case .text(var s) = v {
                rc = s.withUTF8 { p in
                    p.withMemoryRebound(to: CChar.self) { c in
                        // An empty string has no address; a NULL pointer would bind NULL, not ''.
                        guard let base = c.baseAddress else { return mp_sqlite3_bind_text(stmt, n, "", 0) }
                        return mp_sqlite3_bind_text(stmt, n, base, Int32(p.count))
                    }
                }
            } else {
                rc = bindNonText(stmt, n, v)
            }
            guard rc == MP_SQLITE_OK else { throw error(rc, "cannot bind parameter \(i + 1)") }
        }
    }

    /// Binds a value that is not text (text is bound by copy or in place, by the callers).
    private func bindNonText(_ stmt: OpaquePointer, _ n: Int32, _ v: SQLValue) -> Int32 {
        switch v {
        case .null, .text: mp_sqlite3_bind_null(stmt, n)
        case .int(let x): mp_sqlite3_bind_int64(stmt, n, x)
        case .double(let x): mp_sqlite3_bind_double(stmt, n, x)
        case .blob(let b):
            b.withUnsafeBytes {
                mp_sqlite3_bind_blob(stmt, n, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32($0.count))
            }
        }
    }

    private func column(_ stmt: OpaquePointer, _ i: Int32) -> SQLValue {
        switch mp_sqlite3_column_type(stmt, i) {
        case MP_SQLITE_INTEGER: return .int(mp_sqlite3_column_int64(stmt, i))
        case MP_SQLITE_FLOAT: return .double(mp_sqlite3_column_double(stmt, i))
        case MP_SQLITE_TEXT:
            guard let p = mp_sqlite3_column_text(stmt, i) else { return .text("") }
            let n = Int(mp_sqlite3_column_bytes(stmt, i))
            return .text(String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self))
        case MP_SQLITE_BLOB:
            let n = Int(mp_sqlite3_column_bytes(stmt, i))
            guard n > 0, let p = mp_sqlite3_column_blob(stmt, i) else { return .blob([]) }
            return .blob(Array(UnsafeRawBufferPointer(start: p, count: n)))
        default: return .null
        }
    }

    /// Runs one statement (the first, if `sql` holds several) with `parameters` bound to `?1, ?2, …` (or
    /// `?`), and returns SQLite's `sqlite3_changes()`: the rows an `INSERT`, `UPDATE` or `DELETE` changed
    /// (another statement leaves the last such count unchanged). Rows a query returns are stepped past. The
    /// prepared statement is cached (up to 64 per connection).
    ///
    /// - Throws: ``SQLError``: `statement` for a syntax error, an unknown table or a wrong number of
    ///   parameters; `busy` when another connection held the lock past the busy timeout; `constraint` when a
    ///   constraint failed; `connection` when the connection is closed or the file is unusable.
    @discardableResult
    public func execute(_ sql: String, _ parameters: [SQLValue]) throws -> Int {
        let stmt = try prepare(sql)
        defer {
            mp_sqlite3_reset(stmt)
            mp_sqlite3_clear_bindings(stmt)
        }
        try bind(stmt, parameters)
        var rc = mp_sqlite3_step(stmt)
        while rc == MP_SQLITE_ROW { rc = mp_sqlite3_step(stmt) }
        guard rc == MP_SQLITE_DONE else { throw error(rc, "cannot run \(sql.prefix(200))") }
        return Int(mp_sqlite3_changes(try handle()))
    }

    /// Runs a query and streams its rows: `columns` gets the column names, then `body` each row, as SQLite
    /// steps it; returns the names. Each value comes as SQLite stored it: an integer as `int`, a real as
    /// `double`, text as `text`, a blob as `blob`, NULL as `null`. Errors as in ``SQLiteConnection/execute(_:_:)``;
    /// what `columns` or `body` throws ends the query and is rethrown.
    @discardableResult
    public func forEachRow(
        _ sql: String,
        _ parameters: [SQLValue],
        columns: ([String]) throws -> Void,
        _ body: ([SQLValue]) throws -> Void
    ) throws -> [String] {
        let stmt = try prepare(sql)
        defer {
            mp_sqlite3_reset(stmt)
            mp_sqlite3_clear_bindings(stmt)
        }
        try bind(stmt, parameters)
        let n = mp_sqlite3_column_count(stmt)
        let names = (0..<n).map { String(cString: mp_sqlite3_column_name(stmt, $0)) }
        try columns(names)
        var row: [SQLValue] = []
        row.reserveCapacity(Int(n))
        while true {
            let rc = mp_sqlite3_step(stmt)
            if rc == MP_SQLITE_DONE { break }
            guard rc == MP_SQLITE_ROW else { throw error(rc, "cannot run \(sql.prefix(200))") }
            row.removeAll(keepingCapacity: true)
            for i in 0..<n { row.append(column(stmt, i)) }
            try body(row)
        }
        return names
    }

    /// Steps one prepared single-row `INSERT` per row: in SQLite that beats multi-row `VALUES` lists,
    /// which are compiled into a co-routine per statement.
    @discardableResult
    public func insert(into table: String, _ batch: SQLRowBatch) throws -> Int {
        guard !batch.isEmpty else { return 0 }
        let d = dialect
        let n = batch.columns.count
        let sql =
            "INSERT INTO \(d.quote(table)) (\(batch.columns.map(d.quote).joined(separator: ", "))) VALUES \(d.valueTuples(rows: 1, columns: n))"
        let stmt = try prepare(sql)
        defer {
            mp_sqlite3_reset(stmt)
            mp_sqlite3_clear_bindings(stmt)
        }
        guard Int(mp_sqlite3_bind_parameter_count(stmt)) == n else {
            throw SQLError(.statement, "cannot insert into \(table): the statement does not take \(n) values")
        }
        try batch.values.withUnsafeBufferPointer { all in
            var i = 0
            while i < all.count {
                let rc = try bindAndStep(stmt, UnsafeBufferPointer(rebasing: all[i..<(i + n)]), 0)
                guard rc == MP_SQLITE_DONE else { throw error(rc, "cannot insert into \(table)") }
                mp_sqlite3_reset(stmt)
                i += n
            }
        }
        return batch.count
    }

    /// Binds `row[i...]` and steps, text bound in place (no copy): each string's bytes stay valid inside
    /// its `withUTF8`, which encloses the rest of the row and the step.
    private func bindAndStep(_ stmt: OpaquePointer, _ row: UnsafeBufferPointer<SQLValue>, _ i: Int) throws -> Int32 {
        if i == row.count { return mp_sqlite3_step(stmt) }
        let n = Int32(i + 1)
        let rc: Int32
        switch row[i] {
        case .text(var s):
            return try s.withUTF8 { p in
                let rc = p.withMemoryRebound(to: CChar.self) { c in
                    // An empty string has no address; a NULL pointer would bind NULL, not ''.
                    guard let base = c.baseAddress else { return mp_sqlite3_bind_text(stmt, n, "", 0) }
                    return mp_sqlite3_bind_text_static(stmt, n, base, Int32(p.count))
                }
                guard rc == MP_SQLITE_OK else { throw error(rc, "cannot bind parameter \(i + 1)") }
                return try bindAndStep(stmt, row, i + 1)
            }
        default: rc = bindNonText(stmt, n, row[i])
        }
        guard rc == MP_SQLITE_OK else { throw error(rc, "cannot bind parameter \(i + 1)") }
        return try bindAndStep(stmt, row, i + 1)
    }

    /// Runs the statements of `sql` one after another (`sqlite3_exec`), without parameters; rows they return
    /// are dropped. Stops at the first that fails and throws its error.
    public func executeScript(_ sql: String) throws {
        let rc = mp_sqlite3_exec(try handle(), sql)
        guard rc == MP_SQLITE_OK else { throw error(rc, "cannot run \(sql.prefix(200))") }
    }

    /// `BEGIN`, or `BEGIN IMMEDIATE` when `immediate`: the write lock is taken now (waiting up to the busy
    /// timeout), so the transaction cannot fail later for a lock another writer took first.
    public func begin(immediate: Bool) throws { try executeScript(immediate ? "BEGIN IMMEDIATE" : "BEGIN") }
    /// `COMMIT`.
    public func commit() throws { try executeScript("COMMIT") }
    /// `ROLLBACK`, when a transaction is open (SQLite ends one itself after some errors); otherwise, or on a
    /// closed connection, nothing.
    public func rollback() throws {
        guard let db, mp_sqlite3_get_autocommit(db) == 0 else { return }
        try executeScript("ROLLBACK")
    }

    /// Whether a transaction is open.
    public var inTransaction: Bool { db.map { mp_sqlite3_get_autocommit($0) == 0 } ?? false }
}
