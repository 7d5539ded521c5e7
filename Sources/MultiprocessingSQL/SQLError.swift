/// An error from a database: what failed, and the database's own code and message.
public struct SQLError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The kind of failure, named alike for every database (the database's own number is in ``SQLError/code``):
    /// a value to compare with the static members (`error.kind == .connection`).
    ///
    /// A struct with static members, not an enum, as `MultiprocessingError.Code` is: a kind added
    /// later (a new database's failure that fits none of these) is then not a breaking change, where a new
    /// case of a public enum would stop every exhaustive `switch` over it from compiling. Compare with
    /// `==`, or `switch` with a `default` (`case .connection:` matches as before).
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        /// The kind's name (`connection`, `busy`, ...).
        public var description: String { raw }

        /// The database is unreachable, or the connection broke: the statement may be retried on a new
        /// connection.
        public static let connection = Kind("connection")
        /// Another connection holds a lock (SQLite's SQLITE_BUSY past its timeout, a lock wait time-out).
        public static let busy = Kind("busy")
        /// A constraint failed (unique key, not null, foreign key).
        public static let constraint = Kind("constraint")
        /// The statement is wrong (syntax, unknown table or column).
        public static let statement = Kind("statement")
        /// The database library is missing or unusable.
        public static let unavailable = Kind("unavailable")
        /// A value could not be converted (a row into a struct, a struct into values).
        public static let conversion = Kind("conversion")
        /// Anything else.
        public static let other = Kind("other")
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
