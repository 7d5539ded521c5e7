import CMultiprocessingMariaDB

/// A connection to MariaDB or MySQL through the MariaDB client library (Connector/C 3, `libmariadb.so.3`;
/// `MP_MARIADB_LIBRARY` names another copy), loaded with dlopen when the first connection opens: building
/// needs no `-dev` package, and a program that never opens a `mysql://` URL never loads it. The library's
/// version is checked at load (3.x: the option numbers and column layout used are its own), every option
/// set is checked (a TLS requirement the library refuses fails the connect), and MySQL's
/// `libmysqlclient` is refused with a clear error. (No Swift MySQL package is available here; the C client is the
/// servers' own, and its text protocol is what pymysql and mysqlclient speak too.)
///
/// Parameters (`?`) are sent as escaped literals (`mysql_real_escape_string`, the connection's
/// `utf8mb4`), as pymysql does; results stream row by row (`mysql_use_result`). Every call is bounded
/// by the connection's timeout (connect, read and write): a server that goes away gives
/// ``SQLError/Kind-swift.struct/connection``, not a hang.
public final class MariaDBConnection: SQLConnection {
    private var m: OpaquePointer?
    /// The server's URL, password included: print it (its ``DatabaseURL/description`` hides the password),
    /// do not log its ``DatabaseURL/text``.
    public let url: DatabaseURL
    /// The server refuses `LOAD DATA LOCAL`: batches go through `INSERT`.
    private var loadDataRefused = false
    /// MySQL's (``SQLDialect/mysql``).
    public var dialect: SQLDialect { .mysql }

    private static func load() throws {
        var message = [CChar](repeating: 0, count: 512)
        if mp_mysql_load(&message, message.count) != 0 {
            throw SQLError(.unavailable, Self.text(message))
        }
    }

    static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Connects to `url` (`mysql://user:password@host:port/database`).
    ///
    /// - Parameter url: the server; its `ssl-mode` option (MySQL's names, or `sslmode` with libpq's)
    ///   chooses TLS: `DISABLED` (the default), `PREFERRED` (TLS, or plain text when the server has none),
    ///   `REQUIRED`, `VERIFY_CA` or `VERIFY_IDENTITY` (both verify the server's certificate, against
    ///   `ssl-ca` or `sslrootcert` when given).
    /// - Parameter timeout: bounds connecting, and each read and write of a statement (in whole seconds,
    ///   rounded up; at least 1).
    /// - Throws: ``SQLError``: `unavailable` when the client library is missing or not Connector/C 3;
    ///   `statement` for an unknown `ssl-mode`; `connection` when it cannot connect.
    public init(_ url: DatabaseURL, timeout: Duration = .seconds(30)) throws {
        try Self.load()
        self.url = url
        var message = [CChar](repeating: 0, count: 512)
        var number: UInt32 = 0
        let seconds = UInt32(
            clamping: max(1, timeout.components.seconds + (timeout.components.attoseconds > 0 ? 1 : 0))
        )
        // TLS as the URL's `ssl-mode` (MySQL's names) or `sslmode` (libpq's) asks; `preferred` tries TLS and
        // falls back to plain text only when the server has none.
        let mode = String(
            (url.options["ssl-mode"] ?? url.options["sslmode"] ?? "disabled").lowercased().map { $0 == "-" ? "_" : $0 }
        )
        let ca = url.options["ssl-ca"] ?? url.options["sslrootcert"]
        let tls: [Int32]
        switch mode {
        case "disabled", "disable": tls = [0]
        case "preferred", "prefer", "allow": tls = [1, 0]
        case "required", "require": tls = [1]
        case "verify_ca", "verify_identity", "verify_full": tls = [2]
        default:
            throw SQLError(
                .statement,
                "unknown ssl-mode \(mode): DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"
            )
        }
        var connected: OpaquePointer?
        for (i, t) in tls.enumerated() {
            message = [CChar](repeating: 0, count: 512)
            connected = mp_mysql_connect(
                url.host,
                url.user,
                url.password,
                url.database.isEmpty ? nil : url.database,
                UInt32(url.port),
                seconds,
                t,
                ca,
                &message,
                message.count,
                &number
            )
            // Only a server without TLS (2026: the TLS handshake failed) gets the plain-text attempt.
            if connected != nil || number != 2026 || i == tls.count - 1 { break }
        }
        guard let m = connected else {
            throw SQLError(.connection, "cannot connect to \(url): \(Self.text(message))", code: "MySQL \(number)")
        }
        self.m = m
    }

    deinit { close() }

    /// Closes the connection (`mysql_close`); later calls throw ``SQLError`` (kind `connection`). Closing
    /// twice does nothing; the connection also closes when it is released, and after a connection error.
    public func close() {
        if let m { mp_mysql_close(m) }
        m = nil
    }

    private func handle() throws -> OpaquePointer {
        guard let m else { throw SQLError(.connection, "the connection to \(url) is closed") }
        return m
    }

    private func error(_ what: String) -> SQLError {
        guard let m else { return SQLError(.connection, "\(what): the connection is closed") }
        let n = mp_mysql_errno(m)
        let kind: SQLError.Kind =
            switch n {
            case 2002, 2003, 2005, 2006, 2013, 2055, 1045, 1927, 4031: .connection
            case 1205, 1213: .busy
            case 1022, 1048, 1062, 1216, 1217, 1451, 1452, 4025: .constraint
            case 1054, 1064, 1146, 1149, 1060, 1061, 1091: .statement
            case 1264, 1292, 1366, 1406: .conversion
            default: .other
            }
        return SQLError(kind, "\(what): \(String(cString: mp_mysql_error(m)))", code: "MySQL \(n)")
    }

    /// `value` as a MySQL literal.
    func literal(_ value: SQLValue, _ m: OpaquePointer) -> String {
        switch value {
        case .null: return "NULL"
        case .int(let i): return String(i)
        case .double(let d): return d.isFinite ? "\(d)" : "NULL"
        case .text(let s):
            let source = Array(s.utf8)
            var out = [CChar](repeating: 0, count: source.count * 2 + 1)
            let n = source.withUnsafeBufferPointer { b in
                b.withMemoryRebound(to: CChar.self) { c in
                    mp_mysql_real_escape_string(m, &out, c.baseAddress, UInt(c.count))
                }
            }
            let bytes = out.prefix(Int(n)).map { UInt8(bitPattern: $0) }
            return "'" + String(decoding: bytes, as: UTF8.self) + "'"
        case .blob(let b):
            return b.isEmpty ? "''" : "X'" + b.map { String($0, radix: 16).leftPadded(to: 2) }.joined() + "'"
        }
    }

    /// `sql` with each `?` outside quotes replaced by the next parameter's literal.
    func interpolate(_ sql: String, _ parameters: [SQLValue], _ m: OpaquePointer) throws -> String {
        guard !parameters.isEmpty else { return sql }
        var out = ""
        out.reserveCapacity(sql.utf8.count + parameters.count * 8)
        var next = 0
        var quote: Character?
        for ch in sql {
            if let q = quote {
                if ch == q { quote = nil }
                out.append(ch)
            } else if ch == "'" || ch == "\"" || ch == "`" {
                quote = ch
                out.append(ch)
            } else if ch == "?" {
                guard next < parameters.count else {
                    throw SQLError(.statement, "the statement takes more than the \(parameters.count) parameters given")
                }
                out += literal(parameters[next], m)
                next += 1
            } else {
                out.append(ch)
            }
        }
        guard next == parameters.count else {
            throw SQLError(.statement, "the statement takes \(next) parameters, \(parameters.count) given")
        }
        return out
    }

    @discardableResult
    private func run(_ sql: String) throws -> OpaquePointer {
        let m = try handle()
        var sql = sql
        let rc = sql.withUTF8 { p in
            p.withMemoryRebound(to: CChar.self) { mp_mysql_real_query(m, $0.baseAddress, UInt($0.count)) }
        }
        if rc != 0 {
            let e = error("cannot run \(sql.prefix(200))")
            if e.kind == .connection { close() }
            throw e
        }
        return m
    }

    /// Runs one statement, each `?` outside quotes replaced by its parameter as an escaped literal, and
    /// returns `mysql_affected_rows()`: the rows an `INSERT`, `UPDATE` or `DELETE` changed (an `UPDATE`
    /// counts the rows whose values changed, not those it matched). Rows a query returns are read to the end
    /// and dropped, and it returns 0.
    ///
    /// - Throws: ``SQLError``: `statement` when the `?`s and the parameters differ in number, or the server
    ///   refuses the statement; `connection` when the server is gone or does not answer within the
    ///   connection's timeout (the connection is then closed); `busy`, `constraint` or `conversion` as the
    ///   server's error number says.
    @discardableResult
    public func execute(_ sql: String, _ parameters: [SQLValue]) throws -> Int {
        let m = try handle()
        try run(try interpolate(sql, parameters, m))
        if mp_mysql_field_count(m) > 0, let r = mp_mysql_use_result(m) {
            while mp_mysql_fetch_row(r) != nil {}
            mp_mysql_free_result(r)
            return 0
        }
        return Int(mp_mysql_affected_rows(m))
    }

    /// Runs a query and streams its rows from the server (`mysql_use_result`): `columns` gets the column
    /// names, then `body` each row; returns the names (none for a statement that is not a query). Integer
    /// columns come as `int`, `FLOAT` and `DOUBLE` as `double`, binary strings and blobs as `blob`, and
    /// every other type (`DECIMAL`, dates, text) as `text`; NULL as `null`. Errors as in
    /// ``MariaDBConnection/execute(_:_:)``.
    @discardableResult
    public func forEachRow(
        _ sql: String,
        _ parameters: [SQLValue],
        columns: ([String]) throws -> Void,
        _ body: ([SQLValue]) throws -> Void
    ) throws -> [String] {
        let m = try handle()
        try run(try interpolate(sql, parameters, m))
        guard mp_mysql_field_count(m) > 0 else {
            try columns([])
            return []
        }
        guard let r = mp_mysql_use_result(m) else { throw error("cannot read the result of \(sql.prefix(200))") }
        var layout = [CChar](repeating: 0, count: 512)
        guard mp_mysql_check_fields(r, &layout, layout.count) == 0 else {
            mp_mysql_free_result(r)
            close()  // the result is not read to its end: the connection cannot serve another statement
            throw SQLError(.unavailable, Self.text(layout))
        }
        defer { mp_mysql_free_result(r) }
        let n = mp_mysql_num_fields(r)
        let names = (0..<n).map { String(cString: mp_mysql_field_name(r, $0)) }
        // enum_field_types: integers, floating point, blobs (binary when the character set is 63).
        let kinds = (0..<n).map { i -> UInt8 in
            switch mp_mysql_field_type(r, i) {
            case 1, 2, 3, 8, 9, 13, 16: 1  // tiny, short, long, longlong, int24, year, bit
            case 4, 5: 2  // float, double
            case 249, 250, 251, 252, 253, 254: mp_mysql_field_charset(r, i) == 63 ? 3 : 0
            default: 0
            }
        }
        try columns(names)
        var row: [SQLValue] = []
        row.reserveCapacity(Int(n))
        while let values = mp_mysql_fetch_row(r) {
            guard let lengths = mp_mysql_fetch_lengths(r) else { break }
            row.removeAll(keepingCapacity: true)
            for i in 0..<Int(n) {
                guard let p = values[i] else {
                    row.append(.null)
                    continue
                }
                let bytes = UnsafeRawBufferPointer(start: p, count: Int(lengths[i]))
                switch kinds[i] {
                case 1:
                    let s = String(decoding: bytes, as: UTF8.self)
                    row.append(Int64(s).map { .int($0) } ?? .text(s))
                case 2:
                    let s = String(decoding: bytes, as: UTF8.self)
                    row.append(Double(s).map { .double($0) } ?? .text(s))
                case 3: row.append(.blob(Array(bytes)))
                default: row.append(.text(String(decoding: bytes, as: UTF8.self)))
                }
            }
            try body(row)
        }
        if mp_mysql_errno(m) != 0 {
            let e = error("reading the result of \(sql.prefix(200)) failed")
            if e.kind == .connection { close() }
            throw e
        }
        return names
    }

    /// Runs the statements of `sql` in one request (the connection allows several), without parameters;
    /// rows they return are dropped. The server stops at the first that fails, whose error is thrown.
    public func executeScript(_ sql: String) throws {
        let m = try run(sql)
        while true {
            if mp_mysql_field_count(m) > 0, let r = mp_mysql_use_result(m) {
                while mp_mysql_fetch_row(r) != nil {}
                mp_mysql_free_result(r)
            }
            let next = mp_mysql_next_result(m)
            if next < 0 { break }
            if next > 0 { throw error("a statement of the script failed") }
        }
    }

    /// `START TRANSACTION`. `immediate` changes nothing: InnoDB locks rows as each statement reaches them.
    public func begin(immediate: Bool) throws { try execute("START TRANSACTION", []) }
    /// `COMMIT`.
    public func commit() throws { try execute("COMMIT", []) }
    /// `ROLLBACK`; on a closed connection, nothing.
    public func rollback() throws {
        guard m != nil else { return }
        try execute("ROLLBACK", [])
    }

    /// Appends the batch with `LOAD DATA LOCAL INFILE`, served from memory (no file is written or read;
    /// the server's other file requests are refused): half the server's work of multi-row `INSERT`s.
    ///
    /// `LOCAL` turns what `INSERT` reports as errors (a duplicate key, a value that does not fit) into
    /// warnings, so a load with warnings, or fewer rows than the batch, is rolled back (to a savepoint
    /// inside a transaction) and the batch goes through `INSERT`, which fails as it should or takes the
    /// rows as it would have. Multi-row `INSERT`s also serve batches with bytes, and servers that refuse
    /// `LOCAL` (`local_infile=OFF`).
    @discardableResult
    public func insert(into table: String, _ batch: SQLRowBatch) throws -> Int {
        guard !batch.isEmpty else { return 0 }
        if !loadDataRefused, let data = Self.loadDataText(batch), let n = try loadData(into: table, batch, data) {
            return n
        }
        return try insertWithLiterals(into: table, batch)
    }

    /// The rows in LOAD DATA's default text format (tab, newline, `\N` for NULL, backslash escapes);
    /// nil when a value has no such form here (bytes).
    static func loadDataText(_ batch: SQLRowBatch) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(batch.values.count * 16)
        let width = batch.columns.count
        for (i, v) in batch.values.enumerated() {
            switch v {
            case .null: out += [UInt8(ascii: "\\"), UInt8(ascii: "N")]
            case .int(let n): out += String(n).utf8
            case .double(let d):
                if d.isFinite { out += "\(d)".utf8 } else { out += [UInt8(ascii: "\\"), UInt8(ascii: "N")] }
            case .text(let s):
                var s = s
                s.withUTF8 { bytes in
                    for b in bytes {
                        switch b {
                        case UInt8(ascii: "\\"): out += [b, b]
                        case UInt8(ascii: "\t"): out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
                        case UInt8(ascii: "\n"): out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
                        case UInt8(ascii: "\r"): out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
                        case 0: out += [UInt8(ascii: "\\"), UInt8(ascii: "0")]
                        default: out.append(b)
                        }
                    }
                }
            case .blob: return nil
            }
            out.append(i % width == width - 1 ? UInt8(ascii: "\n") : UInt8(ascii: "\t"))
        }
        return out
    }

    /// The rows loaded, or nil when the batch must go through `INSERT` instead (nothing of it stays).
    private func loadData(into table: String, _ batch: SQLRowBatch, _ data: [UInt8]) throws -> Int? {
        let m = try handle()
        let d = dialect
        // Asked of the server, so a transaction begun with a plain `BEGIN` counts too (a START TRANSACTION
        // inside it would commit it). MySQL has no such variable: it gets INSERTs.
        let inTransaction: Bool
        do {
            inTransaction = try scalar("SELECT @@in_transaction")?.intValue == 1
        } catch let e as SQLError where e.kind != .connection {
            loadDataRefused = true
            return nil
        }
        let own = !inTransaction
        try run(own ? "START TRANSACTION" : "SAVEPOINT mp_load")
        let undo = own ? "ROLLBACK" : "ROLLBACK TO SAVEPOINT mp_load"
        var sql =
            "LOAD DATA LOCAL INFILE 'swift-multiprocessing-batch' INTO TABLE \(d.quote(table)) CHARACTER SET utf8mb4 (\(batch.columns.map(d.quote).joined(separator: ", ")))"
        let rc = sql.withUTF8 { q in
            data.withUnsafeBytes { bytes in
                q.withMemoryRebound(to: CChar.self) { q in
                    mp_mysql_load_data(
                        m,
                        q.baseAddress,
                        UInt(q.count),
                        bytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                        bytes.count
                    )
                }
            }
        }
        if rc != 0 {
            let number = mp_mysql_errno(m)
            let e = error("cannot LOAD DATA into \(table)")
            if e.kind == .connection {
                close()
                throw e
            }
            try run(undo)
            // Refused by the server's settings (local_infile off: 1148, 4166; MySQL: 3948): INSERT from now on.
            if [1148, 4166, 3948].contains(number) {
                loadDataRefused = true
                return nil
            }
            throw e
        }
        let rows = Int(mp_mysql_affected_rows(m))
        if mp_mysql_warning_count(m) > 0 || rows != batch.count {
            try run(undo)
            return nil
        }
        try run(own ? "COMMIT" : "RELEASE SAVEPOINT mp_load")
        return rows
    }

    /// Multi-row `INSERT`s of literals, up to about 4 MB per statement (under the server's
    /// `max_allowed_packet`, 16 MB by default).
    func insertWithLiterals(into table: String, _ batch: SQLRowBatch) throws -> Int {
        let m = try handle()
        let d = dialect
        let head = "INSERT INTO \(d.quote(table)) (\(batch.columns.map(d.quote).joined(separator: ", "))) VALUES "
        var sql = head
        var rows = 0
        var done = 0
        for i in 0..<batch.count {
            sql += rows == 0 ? "(" : ", ("
            let row = batch.row(i)
            for (j, v) in row.enumerated() {
                if j > 0 { sql += ", " }
                sql += literal(v, m)
            }
            sql += ")"
            rows += 1
            if sql.utf8.count > 4 << 20 || i == batch.count - 1 {
                try run(sql)
                done += Int(mp_mysql_affected_rows(m))
                sql = head
                rows = 0
            }
        }
        return done
    }
}
