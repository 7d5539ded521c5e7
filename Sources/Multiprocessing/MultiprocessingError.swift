import Glibc
package import SystemCalls
public import SystemPackage

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
    /// The system's error number for ``Code/system`` and ``Code/resourceExhausted`` errors (and for
    /// ``Code/endOfFile`` when a write found the peer gone: `.brokenPipe`, `.connectionReset`).
    /// `errno?.rawValue` is the C value.
    public let errno: Errno?

    /// ``errno`` as the C value (`EPIPE`, `EMFILE`, ...), for code that compares with Glibc's constants
    /// without importing swift-system's `SystemPackage` (as swift-nio's `IOError.errnoCode`).
    public var errnoCode: Int32? { errno?.rawValue }

    /// For ``Code/processDied``: the process's crash report, whole, when it wrote one (the message
    /// leads with its cause and the program's frame).
    public let crashReport: String?

    /// Creates an error with a code, a message and, for system errors, the `errno`.
    public init(_ code: Code, _ message: String, errno: Errno? = nil, crashReport: String? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
        self.crashReport = crashReport
    }

    /// The code, the message and the `errno` with its description.
    public var description: String {
        "MultiprocessingError.\(code): \(message)" + (errno.map { " (errno \($0.rawValue): \($0))" } ?? "")
    }

    /// The error of a failed system call: ``Code/resourceExhausted`` for descriptors and memory,
    /// ``Code/system`` otherwise.
    package static func system(_ call: String, _ errno: Int32) -> MultiprocessingError {
        let e = Errno(rawValue: errno)
        return switch errno {
        case EMFILE, ENFILE:
            MultiprocessingError(.resourceExhausted, "\(call) failed: out of file descriptors", errno: e)
        case ENOMEM, ENOBUFS:
            MultiprocessingError(.resourceExhausted, "\(call) failed: out of memory", errno: e)
        default:
            MultiprocessingError(.system, "\(call) failed", errno: e)
        }
    }

    /// A failed system call by the package's policy: a peer that is gone (`EPIPE`, `ECONNRESET`) is
    /// ``Code/endOfFile``; the rest as ``system(_:_:)``.
    package init(_ error: SystemCallError) {
        if error.peerClosed {
            self.init(.endOfFile, "the peer closed the connection (\(error.call))", errno: error.errno)
        } else {
            self = .system(error.call, error.errno.rawValue)
        }
    }
}

extension Syscall {
    /// `body`'s result, its `SystemCallError` reported as a ``MultiprocessingError`` (by the policy of
    /// ``MultiprocessingError/init(_:)``).
    @inlinable
    package static func mapped<T>(_ body: () throws(SystemCallError) -> T) throws(MultiprocessingError) -> T {
        do {
            return try body()
        } catch {
            throw MultiprocessingError(error)
        }
    }
}
