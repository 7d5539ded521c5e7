/// A failure of a manager call that is not a Python exception of the call: the server failed
/// (`#TRACEBACK`, `#UNSERIALIZABLE`), answered outside the protocol, or the client refused the call.
///
/// The other failures of a call keep their own types: an exception the served object raised arrives as a
/// ``PythonException`` (`KeyError`, ``PythonException/queueEmpty``, …), a bad pickle as a ``PickleError``,
/// and a connection that fails — the server gone, a time-out, a refused authkey — as the `Multiprocessing`
/// module's `MultiprocessingError` (`.endOfFile`, `.closed`, `.timedOut`, `.authenticationFailed`,
/// `.system`).
public struct ManagerError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, as a value to compare with the static members (`error.code == .notExposed`).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        /// The code's name.
        public var description: String { raw }

        /// The server failed while carrying out the request (`#TRACEBACK`): the message is its traceback.
        /// Our server answers so a request it cannot parse, a `create` without a typeid, or a factory or
        /// method that threw an error other than a ``PythonException``.
        public static let remoteTraceback = Code("remoteTraceback")
        /// The server could not pickle the call's result (`#UNSERIALIZABLE`); the call may have run.
        public static let unserializable = Code("unserializable")
        /// The server raised something that is not an exception object (an `#ERROR` reply whose value
        /// cannot become a ``PythonException``).
        public static let remoteError = Code("remoteError")
        /// An answer outside the managers protocol: a reply that is not `(kind, value)`, a kind no
        /// protocol has, a malformed `#PROXY` token, or a `create`, `accept_connection` or
        /// `number_of_objects` answered with a value of the wrong shape.
        public static let protocolViolation = Code("protocolViolation")
        /// A method the object does not expose; refused before anything is sent.
        public static let notExposed = Code("notExposed")
        /// A ``Proxy``'s `call` of a method whose result the server serves as a new object (Python's
        /// `method_to_typeid`): call it with ``Proxy/callProxy(_:_:_:timeout:)``. The served result's
        /// reference is released.
        public static let proxyReturned = Code("proxyReturned")
        /// ``Proxy/callProxy(_:_:_:timeout:)`` of a method that returned a value, not a new object.
        public static let valueReturned = Code("valueReturned")
        /// A call the client refuses as a misuse: pipelined calls through proxies of different clients.
        public static let misuse = Code("misuse")
    }

    /// What went wrong.
    public let code: Code
    /// What went wrong, for people: the server's traceback text, or what the client found wrong (an
    /// answer outside the protocol, a method the object does not expose).
    public let message: String
    /// The message, after `manager: `.
    public var description: String { "manager: \(message)" }

    /// An error with a code and a message.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}
