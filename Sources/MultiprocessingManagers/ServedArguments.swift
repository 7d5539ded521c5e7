// Helpers for served objects reading a call's arguments as Python does.

/// Argument `i` given positionally or by `name`, or `default`.
func argument(
    _ args: [PythonValue],
    _ kwargs: [PythonPair],
    _ i: Int,
    _ name: String,
    _ def: PythonValue? = nil
)
    throws -> PythonValue
{
    if i < args.count { return args[i] }
    if let v = kwargs.first(where: { $0.key == .string(name) })?.value { return v }
    if let def { return def }
    throw PythonException("TypeError", [.string("missing argument '\(name)'")])
}

/// A Python timeout (int, float or None) as a Duration.
func timeoutArgument(_ v: PythonValue) throws -> Duration? {
    switch v {
    case .none: return nil
    case .int(let i): return .seconds(max(0, i))
    case .float(let d): return .nanoseconds(Int64(max(0, d) * 1e9))
    default: throw PythonException("TypeError", [.string("a timeout must be a number or None")])
    }
}

/// A value that can be a dict key in Python (no lists, dicts or sets).
func checkHashable(_ k: PythonValue) throws {
    switch k {
    case .list, .dict, .set, .bytearray:
        throw PythonException("TypeError", [.string("unhashable type")])
    case .tuple(let items): for x in items { try checkHashable(x) }
    default: break
    }
}
