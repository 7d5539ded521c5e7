/// Why a pickle could not be read or written.
public struct PickleError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What went wrong, as a value to compare with the static members (`error.code == .forbiddenGlobal`).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        /// The code's name.
        public var description: String { raw }

        /// The pickle ends before its `STOP`, or announces more bytes than it has.
        public static let truncated = Code("truncated")
        /// Bytes that are not a pickle: values or marks out of order on the stack, an empty memo entry,
        /// an opcode applied to a value of the wrong kind, invalid UTF-8, a length out of range, a call of
        /// something that is not a global.
        public static let malformed = Code("malformed")
        /// A global the ``PickleAllowList`` does not admit (`os.system`, `builtins.eval`, …).
        public static let forbiddenGlobal = Code("forbiddenGlobal")
        /// Nested deeper than ``PickleLimits/maxDepth`` (reading), or than ``PickleReader`` reads by
        /// default (writing).
        public static let tooDeep = Code("tooDeep")
        /// Past one of the other ``PickleLimits`` (values, memo entries, stack items), or a `GLOBAL`
        /// name over 256 bytes.
        public static let tooLarge = Code("tooLarge")
        /// A valid pickle this reader does not read: a protocol other than 2 to 5, an opcode outside the
        /// ones it reads, or a container that contains itself (values cannot hold cycles).
        public static let unsupported = Code("unsupported")
        /// A value the writer cannot write: a ``PythonValue/object(_:)`` whose callable is not a
        /// ``PythonValue/global(module:name:)``.
        public static let unpicklable = Code("unpicklable")
    }

    /// What went wrong.
    public let code: Code
    /// What is wrong with the pickle or the value.
    public let message: String
    /// The byte offset in the pickle where reading stopped, if reading.
    public let offset: Int?
    /// `pickle: `, the message, and the byte offset when there is one.
    public var description: String { offset.map { "pickle: \(message) (at byte \($0))" } ?? "pickle: \(message)" }

    /// An error with a code, a message and, when reading, the byte offset where reading stopped.
    public init(_ code: Code, _ message: String, at offset: Int? = nil) {
        self.code = code
        self.message = message
        self.offset = offset
    }
}
