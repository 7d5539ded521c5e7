/// An exception to raise in a Python client (or to receive from a Python server): its class by module and
/// name, and its arguments — `KeyError('x')` is `PythonException(module: "builtins", name: "KeyError",
/// args: ["x"])`.
public struct PythonException: Error, CustomStringConvertible, Sendable, Equatable {
    /// The exception class's module: `"builtins"` for `KeyError`, `"_queue"` for `queue.Empty`.
    public var module: String
    /// The exception class's name (`"KeyError"`).
    public var name: String
    /// The exception's arguments (Python's `e.args`).
    public var args: [PythonValue]

    /// An exception of class `module.name` with `args`: `PythonException("KeyError", ["x"])` is Python's
    /// `KeyError('x')`.
    public init(module: String = "builtins", _ name: String, _ args: [PythonValue] = []) {
        self.module = module
        self.name = name
        self.args = args
    }

    /// As Python's `repr()` shows it, without the module: `KeyError('x')`.
    public var description: String {
        "\(name)(" + args.map(\.pythonDescription).joined(separator: ", ") + ")"
    }

    /// As pickled: `module.name(*args)`.
    var value: PythonValue { .object(PythonObject(callable: .global(module: module, name: name), args: args)) }

    /// Python's `queue.Empty` (travels as `_queue.Empty`).
    public static let queueEmpty = PythonException(module: "_queue", "Empty")
    /// Python's `queue.Full`.
    public static let queueFull = PythonException(module: "queue", "Full")
}
