/// One value in a row or a statement's parameter: SQL's types as every database client sees them.
public enum SQLValue: Sendable, Hashable, Codable, CustomStringConvertible {
    /// SQL's `NULL`.
    case null
    /// An integer (64 bits).
    case int(Int64)
    /// A floating-point number (64 bits).
    case double(Double)
    /// Text.
    case text(String)
    /// Bytes (a `BLOB`; PostgreSQL's `bytea`).
    case blob([UInt8])

    /// The value as an SQL literal, for messages: `NULL`, `42`, `'it''s'`, `x'00ff'` (pass values as
    /// parameters, not spliced into statements).
    public var description: String {
        switch self {
        case .null: "NULL"
        case .int(let v): String(v)
        case .double(let v): String(v)
        case .text(let v): "'" + v.replacingAll("'", with: "''") + "'"
        case .blob(let v): "x'" + v.map { byte in String(byte, radix: 16).leftPadded(to: 2) }.joined() + "'"
        }
    }

    /// The integer, if this is one, a double with an integral value, or text that reads as one (`"42"`).
    public var intValue: Int64? {
        switch self {
        case .int(let v): v
        case .double(let v) where v.rounded() == v && abs(v) < 9.2e18: Int64(v)
        case .text(let s): Int64(s)
        default: nil
        }
    }

    /// The number, if this is one, or text that reads as one (`"1.5"`).
    public var doubleValue: Double? {
        switch self {
        case .int(let v): Double(v)
        case .double(let v): v
        case .text(let s): Double(s)
        default: nil
        }
    }

    /// The text, if this is text.
    public var textValue: String? {
        if case .text(let s) = self { return s }
        return nil
    }

    /// Whether this is `NULL`.
    public var isNull: Bool { self == .null }
}

extension SQLValue: ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, ExpressibleByStringLiteral,
    ExpressibleByNilLiteral
{
    /// An integer literal is an `int`.
    public init(integerLiteral value: Int64) { self = .int(value) }
    /// A floating-point literal is a `double`.
    public init(floatLiteral value: Double) { self = .double(value) }
    /// A string literal is `text`.
    public init(stringLiteral value: String) { self = .text(value) }
    /// `nil` is `NULL`.
    public init(nilLiteral: ()) { self = .null }
}

/// A row whose columns are known only at run time: names and values in the query's order.
///
/// It is `Codable`, so a pipeline transform can take and return rows without a struct for them.
public struct SQLRow: Sendable, Hashable, Codable {
    /// The column names, in order.
    public var columns: [String]
    /// The values, one per column.
    public var values: [SQLValue]

    /// A row of `values` under `columns`, in the same order; the two must have the same count (a
    /// precondition).
    public init(columns: [String], values: [SQLValue]) {
        precondition(columns.count == values.count, "a row needs one value per column")
        self.columns = columns
        self.values = values
    }

    /// The value of the named column (nil if there is no such column).
    public subscript(_ column: String) -> SQLValue? {
        get { columns.firstIndex(of: column).map { values[$0] } }
        set {
            if let i = columns.firstIndex(of: column) {
                values[i] = newValue ?? .null
            } else {
                columns.append(column)
                values.append(newValue ?? .null)
            }
        }
    }
}

/// An error from a database: what failed, and the database's own code and message.
public struct SQLError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The kind of failure, named alike for every database (the database's own number is in ``SQLError/code``).
    public enum Kind: Sendable, Equatable {
        /// The database is unreachable, or the connection broke: the statement may be retried on a new
        /// connection.
        case connection
        /// Another connection holds a lock (SQLite's SQLITE_BUSY past its timeout, a lock wait time-out).
        case busy
        /// A constraint failed (unique key, not null, foreign key).
        case constraint
        /// The statement is wrong (syntax, unknown table or column).
        case statement
        /// The database library is missing or unusable.
        case unavailable
        /// A value could not be converted (a row into a struct, a struct into values).
        case conversion
        /// Anything else.
        case other
    }
    /// What kind of failure it is: what a caller can act on.
    public let kind: Kind
    /// What failed, with the database's own message.
    public let message: String
    /// The database's own code (SQLite's extended result code, PostgreSQL's SQLSTATE, MySQL's errno).
    public let code: String

    /// An error of `kind` with `message`, and the database's own `code` (empty when there is none).
    public init(_ kind: Kind, _ message: String, code: String = "") {
        self.kind = kind
        self.message = message
        self.code = code
    }

    /// The message, then the database's code in parentheses when there is one.
    public var description: String { code.isEmpty ? message : "\(message) (\(code))" }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard contains(target) else { return self }
        return split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }

    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
