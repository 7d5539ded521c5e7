/// The globals a pickle may name: decoding refuses any other (`os.system`, `builtins.eval`, …) with a
/// clear error, so reading a pickle never gives a peer a way to run code.
public struct PickleAllowList: Sendable {
    /// The allowed globals, each written `module.name` (`"builtins.KeyError"`).
    public var globals: Set<String>

    /// An allow-list of `globals`, each written `module.name`. To admit classes of your own as well:
    /// `PickleAllowList(PickleAllowList.managers.globals.union(["mymodule.Point"]))`.
    public init(_ globals: Set<String>) { self.globals = globals }

    /// Whether a pickle may name `module.name`.
    public func allows(_ module: String, _ name: String) -> Bool { globals.contains(module + "." + name) }

    /// What CPython's managers protocol needs: `Token`, `RemoteError`, the queue exceptions, `bytearray`,
    /// `set`/`frozenset` (older protocols build them with REDUCE), `list` (dict views, which CPython's
    /// managers pickle as `list(items)`), `collections.OrderedDict`, and the built-in exceptions.
    public static let managers = PickleAllowList(
        Set(
            [
                "multiprocessing.managers.Token", "multiprocessing.managers.RemoteError",
                "_queue.Empty", "queue.Empty", "queue.Full", "builtins.bytearray", "builtins.set",
                "builtins.frozenset", "collections.OrderedDict", "copyreg._reconstructor", "builtins.object",
                "builtins.complex", "builtins.range", "builtins.slice", "builtins.list",
            ] + builtinExceptions.map { "builtins." + $0 }
        )
    )

    static let builtinExceptions = [
        "BaseException", "Exception", "ArithmeticError", "AssertionError", "AttributeError", "BrokenPipeError",
        "BufferError", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "EOFError",
        "FileExistsError", "FileNotFoundError", "FloatingPointError", "IndexError", "InterruptedError",
        "KeyError", "LookupError", "MemoryError", "NameError", "NotImplementedError", "OSError",
        "OverflowError", "PermissionError", "ProcessLookupError", "RecursionError", "ReferenceError",
        "RuntimeError", "StopIteration", "SystemError", "TimeoutError", "TypeError", "UnicodeDecodeError",
        "UnicodeEncodeError", "UnicodeError", "ValueError", "ZeroDivisionError", "KeyboardInterrupt",
    ]
}
