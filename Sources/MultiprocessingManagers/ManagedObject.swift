/// An object a manager serves: the methods a proxy may call (Python's `exposed`), and the call itself.
public protocol ManagedObject: AnyObject, Sendable {
    /// Method names a proxy may call.
    var exposed: [String] { get }
    /// Calls `method`; throw a ``PythonException`` to raise one in the caller.
    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue
    /// Methods whose result is served as a new object of a typeid, the caller getting a proxy to it
    /// (Python's `method_to_typeid`; a dict's `__iter__` returns an `Iterator`). The typeid's factory
    /// receives the result as its one argument. Default: none.
    var methodToTypeid: [String: String] { get }
    /// Whether a call of `method` may wait — for another client, a timeout, I/O, a long computation. The
    /// server serves every client from one event-loop thread and runs such calls on a thread of its own
    /// pool, so that a waiting call holds up nobody else; a call that returns at once is cheaper on the
    /// loop. Default: `true` (any method of an object you register may block); return `false` only for
    /// methods that always return promptly.
    func mayBlock(_ method: String) -> Bool
}

extension ManagedObject {
    /// None: every method's result is returned as a value.
    public var methodToTypeid: [String: String] { [:] }

    /// Every method may wait: each call runs on a thread of the server's pool.
    public func mayBlock(_ method: String) -> Bool { true }
}
