/// How a database spells what differs between them.
public struct SQLDialect: Sendable, Hashable {
    /// `sqlite`, `postgresql` or `mysql`.
    public let name: String
    /// The character that quotes identifiers: a double quote in standard SQL, a backtick in MySQL.
    public let identifierQuote: Character
    /// How the `i`-th parameter is written.
    public enum ParameterStyle: Sendable, Hashable {
        /// `$1, $2, …` (PostgreSQL).
        case dollar
        /// `?1, ?2, …` (SQLite): numbered, so a statement may use a parameter twice or out of order.
        case numberedQuestion
        /// `?` (MySQL): by position only; a parameter used twice must be passed twice, in text order.
        case question
    }
    /// How statements write their parameters (see ``SQLDialect/parameter(_:)``).
    public let parameterStyle: ParameterStyle
    /// The most parameters one statement may have.
    public let maxParameters: Int

    // What the database can do. Code that needs a feature asks for it by these, never by ``name``.

    /// `UPDATE … RETURNING` (PostgreSQL, SQLite 3.35+; not MySQL): the job queue claims with it.
    public let returnsFromUpdates: Bool
    /// `SELECT … FOR UPDATE SKIP LOCKED` (PostgreSQL, MySQL 8): concurrent claimers skip each other's rows.
    /// SQLite needs none: its writers take turns.
    public let skipsLockedRows: Bool
    /// Data-modifying statements inside `WITH` (PostgreSQL): several writes in one statement and one
    /// round trip.
    public let modifiesDataInWith: Bool
    /// `LISTEN`/`NOTIFY` and `pg_notify` (PostgreSQL): sessions wake each other at commit.
    public let notifies: Bool
    /// Transaction-scoped advisory locks, `pg_advisory_xact_lock` (PostgreSQL).
    public let advisoryLocks: Bool
    /// What makes a `SELECT` in a transaction read the latest committed row and hold it against writers
    /// until the end (` FOR SHARE`; SQLite's write transaction needs nothing).
    public let sharedLock: String
    /// The column type for bytes (`BYTEA`, `BLOB`).
    public let binaryType: String
    /// The column type for an 8-byte float (`DOUBLE PRECISION`, `DOUBLE`).
    public let doubleType: String
    /// An integer primary key the database numbers itself.
    public let autoIncrementPrimaryKey: String
    /// Parameters whose type the statement does not fix (a `SELECT` list's) need an explicit cast
    /// (PostgreSQL): see ``SQLDialect/typed(_:_:)``.
    public let castsUntypedParameters: Bool

    init(
        name: String,
        identifierQuote: Character,
        parameterStyle: ParameterStyle,
        maxParameters: Int,
        returnsFromUpdates: Bool = false,
        skipsLockedRows: Bool = false,
        modifiesDataInWith: Bool = false,
        notifies: Bool = false,
        advisoryLocks: Bool = false,
        sharedLock: String = "",
        binaryType: String,
        doubleType: String,
        autoIncrementPrimaryKey: String,
        castsUntypedParameters: Bool = false
    ) {
        self.name = name
        self.identifierQuote = identifierQuote
        self.parameterStyle = parameterStyle
        self.maxParameters = maxParameters
        self.returnsFromUpdates = returnsFromUpdates
        self.skipsLockedRows = skipsLockedRows
        self.modifiesDataInWith = modifiesDataInWith
        self.notifies = notifies
        self.advisoryLocks = advisoryLocks
        self.sharedLock = sharedLock
        self.binaryType = binaryType
        self.doubleType = doubleType
        self.autoIncrementPrimaryKey = autoIncrementPrimaryKey
        self.castsUntypedParameters = castsUntypedParameters
    }

    /// `parameter` cast to `sqlType` where the database needs it (``castsUntypedParameters``), else as is:
    /// `$3::bigint` on PostgreSQL, `?3` on SQLite.
    public func typed(_ parameter: String, _ sqlType: String) -> String {
        castsUntypedParameters ? parameter + "::" + sqlType : parameter
    }

    /// SQLite's: identifiers in double quotes, parameters `?1, ?2, …`, at most 32,766 per statement.
    public static let sqlite = SQLDialect(
        name: "sqlite",
        identifierQuote: "\"",
        parameterStyle: .numberedQuestion,
        maxParameters: 32766,
        returnsFromUpdates: true,
        binaryType: "BLOB",
        doubleType: "DOUBLE",
        autoIncrementPrimaryKey: "INTEGER PRIMARY KEY AUTOINCREMENT"
    )

    /// PostgreSQL's: identifiers in double quotes, parameters `$1, $2, …`, at most 65,535 per statement.
    public static let postgresql = SQLDialect(
        name: "postgresql",
        identifierQuote: "\"",
        parameterStyle: .dollar,
        maxParameters: 65535,
        returnsFromUpdates: true,
        skipsLockedRows: true,
        modifiesDataInWith: true,
        notifies: true,
        advisoryLocks: true,
        sharedLock: " FOR SHARE",
        binaryType: "BYTEA",
        doubleType: "DOUBLE PRECISION",
        autoIncrementPrimaryKey: "BIGSERIAL PRIMARY KEY",
        castsUntypedParameters: true
    )

    /// MySQL's and MariaDB's: identifiers in backticks, parameters `?`, at most 65,535 per statement.
    public static let mysql = SQLDialect(
        name: "mysql",
        identifierQuote: "`",
        parameterStyle: .question,
        maxParameters: 65535,
        skipsLockedRows: true,
        sharedLock: " LOCK IN SHARE MODE",
        binaryType: "BLOB",
        doubleType: "DOUBLE",
        autoIncrementPrimaryKey: "BIGINT AUTO_INCREMENT PRIMARY KEY"
    )

    /// `name`, quoted: `"user"` in PostgreSQL and SQLite, in backticks in MySQL. Dots separate a schema.
    public func quote(_ name: String) -> String {
        let q = String(identifierQuote)
        return name.split(separator: ".").map { q + String($0).replacingAll(q, with: q + q) + q }.joined(separator: ".")
    }

    /// The `i`-th parameter (from 1).
    public func parameter(_ i: Int) -> String {
        switch parameterStyle {
        case .dollar: "$\(i)"
        case .numberedQuestion: "?\(i)"
        case .question: "?"
        }
    }

    /// `(?, ?, ?), (?, ?, ?)`: `rows` tuples of `columns` parameters, numbered from `first`.
    public func valueTuples(rows: Int, columns: Int, first: Int = 1) -> String {
        var s = ""
        s.reserveCapacity(rows * (columns * 3 + 4))
        var n = first
        for r in 0..<rows {
            if r > 0 { s += ", " }
            s += "("
            for c in 0..<columns {
                if c > 0 { s += ", " }
                s += parameter(n)
                n += 1
            }
            s += ")"
        }
        return s
    }
}

/// A connection to a database, used by one thread at a time: what the pipeline and the job queue need of
/// SQLite, PostgreSQL and MySQL alike.
///
/// Calls block the calling thread until the database answers or the connection's timeout passes; call
/// them from a worker process or a thread of your own, not from Swift's cooperative pool.
public protocol SQLConnection: AnyObject {
    /// How this database spells quoting and parameters.
    var dialect: SQLDialect { get }

    /// Runs one statement; returns the number of rows it changed.
    @discardableResult
    func execute(_ sql: String, _ parameters: [SQLValue]) throws -> Int

    /// Runs a query and calls `body` with each row's values, in order, without keeping them: memory
    /// stays bounded whatever the result's size. Returns the column names.
    ///
    /// `columns` is called once with the column names, before the first row.
    @discardableResult
    func forEachRow(
        _ sql: String,
        _ parameters: [SQLValue],
        columns: ([String]) throws -> Void,
        _ body: ([SQLValue]) throws -> Void
    ) throws -> [String]

    /// Runs several statements separated by `;`, without parameters (schema scripts).
    func executeScript(_ sql: String) throws

    /// Starts a transaction. `immediate`: take the write lock now (SQLite's `BEGIN IMMEDIATE`), so that
    /// the transaction cannot fail later for a lock another writer took first.
    func begin(immediate: Bool) throws
    /// Commits the transaction ``SQLConnection/begin(immediate:)`` started, keeping its changes.
    func commit() throws
    /// Rolls back the open transaction, undoing its changes.
    func rollback() throws

    /// Appends the rows of `batch` to `table`; returns the rows inserted. The default uses multi-row
    /// `INSERT`s within the database's parameter limit; a database may do better (SQLite steps one
    /// prepared single-row statement, PostgreSQL can `COPY`).
    @discardableResult
    func insert(into table: String, _ batch: SQLRowBatch) throws -> Int

    /// Closes the connection. Further calls fail.
    func close()
}

/// A connection that can stream a large query's rows faster on a second session of its own (PostgreSQL:
/// the wire protocol read on the calling thread, without postgres-nio's event loop). The table pipeline
/// reads its chunks this way when the source connection offers it.
public protocol SQLBulkReading: SQLConnection {
    /// What ``SQLConnection/forEachRow(_:_:columns:_:)`` does, on the connection's reading session: it
    /// sees committed data only, none of this session's transaction, temporary tables or settings.
    @discardableResult
    func forEachRowOnReadingSession(
        _ sql: String,
        _ parameters: [SQLValue],
        columns: ([String]) throws -> Void,
        _ body: ([SQLValue]) throws -> Void
    ) throws -> [String]
}

/// A connection that receives the database's notifications (PostgreSQL's `LISTEN`/`NOTIFY`). The job
/// queue's workers use one to wake as soon as a job is queued, and poll when the database has none.
public protocol SQLNotificationListening: SQLConnection {
    /// Listens on `channel`: `handler` is called with each notification's payload, on a thread of the
    /// driver's (do not block it), until the connection closes.
    func listen(_ channel: String, _ handler: @escaping @Sendable (_ payload: String) -> Void) throws
    /// Whether the connection is still open (a listener that lost its server stops hearing anything).
    var isOpen: Bool { get }
}

extension SQLConnection {
    /// Runs one statement without parameters; returns the number of rows it changed.
    @discardableResult
    public func execute(_ sql: String) throws -> Int { try execute(sql, []) }

    /// Calls `body` with each row's values (see ``forEachRow(_:_:columns:_:)``); returns the column names.
    @discardableResult
    public func forEachRow(
        _ sql: String,
        _ parameters: [SQLValue],
        _ body: ([SQLValue]) throws -> Void
    ) throws
        -> [String]
    {
        try forEachRow(sql, parameters, columns: { _ in }, body)
    }

    /// Every row of a query, with its column names.
    public func query(_ sql: String, _ parameters: [SQLValue] = []) throws -> [SQLRow] {
        var rows: [[SQLValue]] = []
        let columns = try forEachRow(sql, parameters) { rows.append($0) }
        return rows.map { SQLRow(columns: columns, values: $0) }
    }

    /// The first column of the first row, or nil when there is no row.
    public func scalar(_ sql: String, _ parameters: [SQLValue] = []) throws -> SQLValue? {
        var first: SQLValue?
        try forEachRow(sql, parameters) { row in
            if first == nil { first = row.first ?? .null }
        }
        return first
    }

    /// Runs `body` in a transaction: commits when it returns, rolls back when it throws.
    public func transaction<R>(immediate: Bool = false, _ body: () throws -> R) throws -> R {
        try begin(immediate: immediate)
        let r: R
        do {
            r = try body()
        } catch {
            try? rollback()
            throw error
        }
        try commit()
        return r
    }

    /// Appends `rows` to `table` (see ``insert(into:_:)``).
    @discardableResult
    public func insert(into table: String, columns: [String], rows: [[SQLValue]]) throws -> Int {
        var b = SQLRowBatch(columns: columns)
        b.values.reserveCapacity(rows.count * columns.count)
        for r in rows {
            guard r.count == columns.count else {
                throw SQLError(.conversion, "a row has \(r.count) values for \(columns.count) columns")
            }
            b.append(r)
        }
        return try insert(into: table, b)
    }

    /// Multi-row `INSERT`s, as many rows per statement as the database's parameter limit allows (at most
    /// `batch`).
    @discardableResult
    public func insertWithValueLists(into table: String, _ rows: SQLRowBatch, batch: Int = 1000) throws -> Int {
        guard !rows.isEmpty else { return 0 }
        let columns = rows.columns
        let perStatement = max(1, min(batch, dialect.maxParameters / columns.count))
        let head = "INSERT INTO \(dialect.quote(table)) (\(columns.map(dialect.quote).joined(separator: ", "))) VALUES "
        var fullSQL: String?
        var done = 0
        var start = 0
        while start < rows.count {
            let end = min(rows.count, start + perStatement)
            let parameters = Array(rows.values[(start * columns.count)..<(end * columns.count)])
            let sql: String
            if end - start == perStatement {
                if fullSQL == nil { fullSQL = head + dialect.valueTuples(rows: perStatement, columns: columns.count) }
                sql = fullSQL!
            } else {
                sql = head + dialect.valueTuples(rows: end - start, columns: columns.count)
            }
            done += try execute(sql, parameters)
            start = end
        }
        return done
    }
}

/// SQL scripts, for drivers that run one statement per call.
public enum SQLScript {
    /// The statements of `script`, split at the semicolons outside quotes (single, double and backtick),
    /// dollar quotes (`$$…$$`, `$tag$…$tag$`) and comments; empty statements are dropped.
    public static func statements(_ script: String) -> [String] {
        let s = Array(script.unicodeScalars)
        var out: [String] = []
        var start = 0
        var i = 0
        func flush(_ end: Int) {
            var text = String(String.UnicodeScalarView(s[start..<end]))
            while let f = text.first, f.isWhitespace { text.removeFirst() }
            while let l = text.last, l.isWhitespace { text.removeLast() }
            if !text.isEmpty { out.append(text) }
        }
        while i < s.count {
            let c = s[i]
            if c == "'" || c == "\"" || c == "`" {
                i += 1
                while i < s.count {
                    if s[i] == c {
                        if i + 1 < s.count && s[i + 1] == c {
                            i += 2
                            continue
                        }  // a doubled quote
                        break
                    }
                    if s[i] == "\\" && c == "'" { i += 1 }  // MySQL's backslash escapes
                    i += 1
                }
            } else if c == "-" && i + 1 < s.count && s[i + 1] == "-" {
                while i < s.count && s[i] != "\n" { i += 1 }
            } else if c == "/" && i + 1 < s.count && s[i + 1] == "*" {
                i += 2
                while i + 1 < s.count && !(s[i] == "*" && s[i + 1] == "/") { i += 1 }
                i += 1
            } else if c == "$" {
                // $tag$ … $tag$ (the tag: letters, digits, underscores; not a $1 parameter).
                var j = i + 1
                while j < s.count
                    && (s[j].properties.isAlphabetic || s[j] == "_"
                        || (j > i + 1 && s[j].properties.numericType != nil))
                { j += 1 }
                if j < s.count && s[j] == "$" {
                    let tag = Array(s[i...j])
                    var k = j + 1
                    while k + tag.count <= s.count && Array(s[k..<(k + tag.count)]) != tag { k += 1 }
                    i = min(s.count, k + tag.count) - 1
                }
            } else if c == ";" {
                flush(i)
                start = i + 1
            }
            i += 1
        }
        flush(s.count)
        return out
    }
}
