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

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard contains(target) else { return self }
        return split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }

    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
