import Glibc

/// The errors of the Multiprocessing module.
///
/// Python raises `EOFError`, `OSError`, `AuthenticationError`, `TimeoutError`, `queue.Empty`/`Full`,
/// `ValueError` and others; here they are one type with an extensible ``Code``.
public struct MultiprocessingError: Error, CustomStringConvertible, Sendable, Codable {
    /// What went wrong, as a value to compare with the static members (`error.code == .timedOut`).
    public struct Code: Hashable, Sendable, CustomStringConvertible, Codable {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        /// The code's name.
        public var description: String { raw }

        /// The peer closed the connection (Python's `EOFError`).
        public static let endOfFile = Code("endOfFile")
        /// This end was closed, or is unusable after an earlier framing error.
        public static let closed = Code("closed")
        /// A timed call ran out of time.
        public static let timedOut = Code("timedOut")
        /// A message longer than the receiver's limit (Python: `OSError("bad message length")`).
        public static let messageTooLarge = Code("messageTooLarge")
        /// Bytes that are not a valid frame or message.
        public static let malformedMessage = Code("malformedMessage")
        /// The authkey handshake failed (Python's `AuthenticationError`).
        public static let authenticationFailed = Code("authenticationFailed")
        /// A value could not be encoded.
        public static let encodingFailed = Code("encodingFailed")
        /// A value could not be decoded.
        public static let decodingFailed = Code("decodingFailed")
        /// A job type that cannot be sent to another process (private, fileprivate or local).
        public static let unsupportedJob = Code("unsupportedJob")
        /// The worker could not find the job type by name (a different executable?).
        public static let unknownJob = Code("unknownJob")
        /// The child process could not be started.
        public static let spawnFailed = Code("spawnFailed")
        /// The child process died or exited before answering.
        public static let processDied = Code("processDied")
        /// A queue operation found the queue empty (Python's `queue.Empty`).
        public static let empty = Code("empty")
        /// A queue operation found the queue full (Python's `queue.Full`).
        public static let full = Code("full")
        /// A misuse: start twice, join before start, `taskDone` too often, ...
        public static let invalidState = Code("invalidState")
        /// A system call failed; see ``MultiprocessingError/errno``.
        public static let system = Code("system")
        /// A `main.swift` program started a process before calling `bootstrap()`: its workers would not
        /// have the variables declared in `main.swift`. The message says where the call goes.
        public static let bootstrapRequired = Code("bootstrapRequired")
        /// The system refused a resource it may give later: descriptors (`EMFILE`, `ENFILE`), memory
        /// (`ENOMEM`, `ENOBUFS`) or threads. Nothing is lost; the call can be tried again once some are
        /// freed. ``MultiprocessingError/errno`` says which.
        public static let resourceExhausted = Code("resourceExhausted")
    }

    /// What went wrong.
    public let code: Code
    /// A sentence for people, naming the call and the cause.
    public let message: String
    /// The `errno` value for ``Code/system`` errors.
    public let errno: Int32?

    /// For ``Code/processDied``: the process's crash report, whole, when it wrote one (the message
    /// leads with its cause and the program's frame).
    public let crashReport: String?

    /// Creates an error with a code, a message and, for system errors, the `errno`.
    public init(_ code: Code, _ message: String, errno: Int32? = nil, crashReport: String? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
        self.crashReport = crashReport
    }

    /// The code, the message and the `errno` with its description.
    public var description: String {
        "MultiprocessingError.\(code): \(message)" + (errno.map { " (errno \($0): \(Syscall.describe($0)))" } ?? "")
    }

    package static func system(_ call: String, _ errno: Int32) -> MultiprocessingError {
        switch errno {
        case EMFILE, ENFILE:
            MultiprocessingError(.resourceExhausted, "\(call) failed: out of file descriptors", errno: errno)
        case ENOMEM, ENOBUFS:
            MultiprocessingError(.resourceExhausted, "\(call) failed: out of memory", errno: errno)
        default:
            MultiprocessingError(.system, "\(call) failed", errno: errno)
        }
    }
}
