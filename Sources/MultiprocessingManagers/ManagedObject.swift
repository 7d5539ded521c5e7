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
}

extension ManagedObject {
    /// None: every method's result is returned as a value.
    public var methodToTypeid: [String: String] { [:] }
}
