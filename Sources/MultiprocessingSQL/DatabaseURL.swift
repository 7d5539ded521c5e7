/// Where a database is: `sqlite:PATH` (`sqlite:///abs/path.db`, `sqlite:relative.db`, `sqlite::memory:`),
/// `postgres://user:password@host:port/database`, or `mysql://…` (also `mariadb://…`).
///
/// PostgreSQL reads `sslmode` as libpq does (`disable`, `allow`, `prefer` — the default —, `require`,
/// `verify-ca`, `verify-full`), with `sslrootcert` for the verifying modes:
/// `postgres://app@db.example.com/prod?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem`.
public struct DatabaseURL: Sendable, Hashable, CustomStringConvertible, Codable {
    /// Which database a URL names.
    public enum Kind: String, Sendable, Hashable, Codable {
        /// `sqlite`: a file (`sqlite:` and `sqlite3:` URLs); `postgresql`: a PostgreSQL server (`postgres://`,
        /// `postgresql://`); `mysql`: a MySQL or MariaDB server (`mysql://`, `mariadb://`).
        case sqlite, postgresql, mysql
    }
    /// Which database it is, from the URL's scheme.
    public var kind: Kind
    /// SQLite: the file. Others: the database name.
    public var database: String
    /// The server's host name or address (default `127.0.0.1`; an IPv6 address without its brackets).
    /// Empty for SQLite.
    public var host: String
    /// The server's port (default 5432 for PostgreSQL, 3306 for MySQL). 0 for SQLite.
    public var port: Int
    /// The user name, percent-decoded; empty when the URL has none.
    public var user: String
    /// The password, percent-decoded; empty when the URL has none. ``DatabaseURL/description`` hides it,
    /// ``DatabaseURL/text`` shows it.
    public var password: String
    /// `?key=value&…` options.
    public var options: [String: String]

    /// The SQLite database at `path` (a file, or `:memory:`), taken as it is: nothing is parsed.
    public init(sqlite path: String) {
        kind = .sqlite
        database = path
        host = ""
        port = 0
        user = ""
        password = ""
        options = [:]
    }

    /// Parses a URL: `sqlite:PATH` (or `sqlite3:`), `postgres://…` (or `postgresql://`), `mysql://…` (or
    /// `mariadb://`). User, password and database are percent-decoded, and `?key=value&…` goes to
    /// ``DatabaseURL/options`` (for `sqlite:`, only after `sqlite://`).
    ///
    /// - Throws: ``SQLError`` (kind `statement`) for text that is not such a URL: no scheme or an unknown
    ///   one, a server URL without `//`, an SQLite URL without a path, a port outside 1–65535.
    public init(_ text: String) throws {
        guard let colon = text.firstIndex(of: ":") else {
            throw SQLError(.statement, "not a database URL: \(text) (sqlite:PATH, postgres://…, mysql://…)")
        }
        let scheme = text[..<colon].lowercased()
        var rest = String(text[text.index(after: colon)...])
        var options: [String: String] = [:]
        if let q = rest.lastIndex(of: "?"), scheme != "sqlite" || rest.hasPrefix("//") {
            for pair in rest[rest.index(after: q)...].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                options[Self.unescape(String(kv[0]))] = kv.count > 1 ? Self.unescape(String(kv[1])) : ""
            }
            rest = String(rest[..<q])
        }
        switch scheme {
        case "sqlite", "sqlite3":
            let path = rest.hasPrefix("//") ? String(rest.dropFirst(2)) : rest
            guard !path.isEmpty else { throw SQLError(.statement, "an SQLite URL needs a path: \(text)") }
            (kind, database, host, port, user, password) = (.sqlite, path, "", 0, "", "")
            self.options = options
            return
        case "postgres", "postgresql": kind = .postgresql
        case "mysql", "mariadb": kind = .mysql
        default:
            throw SQLError(.statement, "unknown database \(scheme) in \(text) (sqlite, postgres, mysql or mariadb)")
        }
        guard rest.hasPrefix("//") else { throw SQLError(.statement, "expected \(scheme)://host/database: \(text)") }
        rest.removeFirst(2)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        var authority = String(rest[..<slash])
        let database = slash < rest.endIndex ? Self.unescape(String(rest[rest.index(after: slash)...])) : ""
        var user = ""
        var password = ""
        if let at = authority.lastIndex(of: "@") {
            let credentials = authority[..<at]
            if let c = credentials.firstIndex(of: ":") {
                user = Self.unescape(String(credentials[..<c]))
                password = Self.unescape(String(credentials[credentials.index(after: c)...]))
            } else {
                user = Self.unescape(String(credentials))
            }
            authority = String(authority[authority.index(after: at)...])
        }
        var host: String
        var port: Int
        let defaultPort = kind == .postgresql ? 5432 : 3306
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            port = after.hasPrefix(":") ? Int(after.dropFirst()) ?? -1 : defaultPort
        } else if let c = authority.lastIndex(of: ":") {
            host = String(authority[..<c])
            port = Int(authority[authority.index(after: c)...]) ?? -1
        } else {
            host = authority
            port = defaultPort
        }
        if host.isEmpty { host = "127.0.0.1" }
        guard (1...65535).contains(port) else { throw SQLError(.statement, "bad port in \(text)") }
        self.database = database
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.options = options
    }

    static func unescape(_ s: String) -> String {
        guard s.contains("%") else { return s }
        var bytes: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "%"), it.count >= 2,
                let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16)
            {
                bytes.append(v)
                it = it.dropFirst(2)
            } else {
                bytes.append(b)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// How this database spells quoting and parameters.
    public var dialect: SQLDialect {
        switch kind {
        case .sqlite: .sqlite
        case .postgresql: .postgresql
        case .mysql: .mysql
        }
    }

    /// The whole URL, password included, as ``init(_:)`` reads it: to hand to another program (`mp queue
    /// worker --database …`). Print ``description`` instead.
    public var text: String {
        func escape(_ s: String) -> String {
            var out = ""
            for b in s.utf8 {
                let c = Character(Unicode.Scalar(b))
                if c.isLetter && b < 128 || c.isNumber && b < 128 || "-._~".contains(c) {
                    out.append(c)
                } else {
                    out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2)
                }
            }
            return out
        }
        switch kind {
        case .sqlite: return "sqlite:" + database
        case .postgresql, .mysql:
            let who =
                user.isEmpty ? "" : escape(user) + (password.isEmpty ? "" : ":" + escape(password)) + "@"
            let query =
                options.isEmpty
                ? ""
                : "?"
                    + options.sorted { $0.key < $1.key }.map { escape($0.key) + "=" + escape($0.value) }.joined(
                        separator: "&"
                    )
            return "\(kind == .postgresql ? "postgres" : "mysql")://\(who)\(host):\(port)/\(escape(database))\(query)"
        }
    }

    /// The URL, with the password hidden.
    public var description: String {
        switch kind {
        case .sqlite: return "sqlite:" + database
        case .postgresql, .mysql:
            let who = user.isEmpty ? "" : user + (password.isEmpty ? "" : ":***") + "@"
            return "\(kind == .postgresql ? "postgres" : "mysql")://\(who)\(host):\(port)/\(database)"
        }
    }
}

/// Opens connections from URLs. SQLite and MySQL/MariaDB are built in (their client libraries are loaded
/// when first used); PostgreSQL lives in a module of its own (`MultiprocessingPostgres`, with the
/// `PostgreSQL` trait), found by its type's name when it is linked, so that programs that do not use it
/// do not build SwiftNIO.
public enum Database {
    /// Opens a connection to `url`. `timeout` bounds how long a statement waits for a lock (SQLite's busy
    /// timeout) or for the server (others, connecting included).
    ///
    /// - Throws: ``SQLError``: kind `unavailable` when the database's client library is missing, or the
    ///   PostgreSQL module is not linked into the program; `connection` when it cannot connect.
    public static func connect(_ url: DatabaseURL, timeout: Duration = .seconds(30)) throws -> any SQLConnection {
        switch url.kind {
        case .sqlite:
            return try SQLiteConnection(path: url.database, busyTimeout: timeout)
        case .mysql:
            return try MariaDBConnection(url, timeout: timeout)
        case .postgresql:
            // The PostgreSQL module, when linked into this program (also in its pool workers, which run
            // the same program), is found by its type's name: no registration needed.
            guard
                let linked = _typeByName("23MultiprocessingPostgres21PostgresSQLConnectionC")
                    as? any SQLConnectionOpening.Type
            else {
                throw SQLError(
                    .unavailable,
                    "\(url.kind.rawValue) is not linked into this program: \(url) (build with --traits PostgreSQL and link MultiprocessingPostgres)"
                )
            }
            return try linked.open(url, timeout: timeout)
        }
    }

    /// Parses `url` (see ``DatabaseURL/init(_:)``) and opens a connection to it; throws the parse error too.
    public static func connect(_ url: String, timeout: Duration = .seconds(30)) throws -> any SQLConnection {
        try connect(DatabaseURL(url), timeout: timeout)
    }
}

/// A connection type that opens itself from a URL: how `Database.connect` finds a database module
/// linked into the program.
public protocol SQLConnectionOpening: SQLConnection {
    /// Opens a connection to `url`, a URL of this type's database; `timeout` bounds how long connecting,
    /// and each statement, waits for the server.
    static func open(_ url: DatabaseURL, timeout: Duration) throws -> Self
}
