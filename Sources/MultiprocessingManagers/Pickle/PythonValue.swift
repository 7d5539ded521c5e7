/// A Python value as a pickle carries it: what Python's duck typing allows across the wire (a dict whose
/// keys are an int, a str and a float at once, a tuple that must stay a tuple, an int beyond 64 bits).
///
/// Decoding a pickle never runs code: a reference to a class or function is a ``global(module:name:)``
/// (resolved only if an allow-list admits it), and a call to it (`REDUCE`, `NEWOBJ`, `BUILD`) is an
/// ``object(_:)`` describing the call, which the reader of the value interprets — exceptions and
/// CPython's `Token` among them.
public enum PythonValue: Hashable, Sendable {
    /// Python's `None`.
    case none
    /// A `bool`.
    case bool(Bool)
    /// An int that fits 64 bits.
    case int(Int64)
    /// An int beyond 64 bits: its minimal two's-complement bytes, little-endian (as pickle's `LONG1`).
    case bigInt([UInt8])
    /// A `float` (64-bit).
    case float(Double)
    /// A `str`.
    case string(String)
    /// A `bytes` value.
    case bytes([UInt8])
    /// A `bytearray`.
    case bytearray([UInt8])
    /// A `tuple` (what the managers protocol's requests and replies are).
    case tuple([PythonValue])
    /// A `list`.
    case list([PythonValue])
    /// A dict: its entries in insertion order (keys of any type).
    case dict([PythonPair])
    /// A `set`: its items in the pickle's order (two values are equal only with the same order).
    case set([PythonValue])
    /// A `frozenset`: its items in the pickle's order (two values are equal only with the same order).
    case frozenset([PythonValue])
    /// A class or function named by module and qualified name.
    case global(module: String, name: String)
    /// An object built by calling a global (`REDUCE`, `NEWOBJ`) and optionally setting its state (`BUILD`).
    indirect case object(PythonObject)

    /// Python's `repr()`, for messages and for printing what a Python program would print.
    public var pythonDescription: String {
        switch self {
        case .none: "None"
        case .bool(let b): b ? "True" : "False"
        case .int(let i): "\(i)"
        case .bigInt(let b): BigIntText.decimal(b)
        case .float(let d): PythonValue.floatRepr(d)
        case .string(let s): PythonValue.stringRepr(s)
        case .bytes(let b): "b" + PythonValue.bytesRepr(b)
        case .bytearray(let b): "bytearray(b\(PythonValue.bytesRepr(b)))"
        case .tuple(let t):
            t.count == 1
                ? "(\(t[0].pythonDescription),)" : "(" + t.map(\.pythonDescription).joined(separator: ", ") + ")"
        case .list(let l): "[" + l.map(\.pythonDescription).joined(separator: ", ") + "]"
        case .dict(let d):
            "{" + d.map { "\($0.key.pythonDescription): \($0.value.pythonDescription)" }.joined(separator: ", ") + "}"
        case .set(let s): s.isEmpty ? "set()" : "{" + s.map(\.pythonDescription).joined(separator: ", ") + "}"
        case .frozenset(let s): "frozenset({" + s.map(\.pythonDescription).joined(separator: ", ") + "})"
        case .global(let m, let n): "<class '\(m).\(n)'>"
        case .object(let o): o.pythonDescription
        }
    }

    static func floatRepr(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        return "\(d)"  // Swift's shortest round-trip form is Python's repr: 2.0, 0.1, 1e+16, 1e-05
    }

    static func stringRepr(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(c) == quote {
                    out += "\\" + String(quote)
                } else if c.value < 0x20 || c.value == 0x7f {
                    out += "\\x" + hex2(UInt8(c.value))
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        out.append(quote)
        return out
    }

    static func bytesRepr(_ b: [UInt8]) -> String {
        var out = "'"
        for x in b {
            switch x {
            case UInt8(ascii: "\\"): out += "\\\\"
            case UInt8(ascii: "'"): out += "\\'"
            case UInt8(ascii: "\n"): out += "\\n"
            case UInt8(ascii: "\r"): out += "\\r"
            case UInt8(ascii: "\t"): out += "\\t"
            case 0x20..<0x7f: out.unicodeScalars.append(Unicode.Scalar(x))
            default: out += "\\x" + hex2(x)
            }
        }
        return out + "'"
    }

    private static func hex2(_ x: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(x >> 4)], digits[Int(x & 15)]])
    }
}

/// One entry of a ``PythonValue/dict(_:)``.
public struct PythonPair: Hashable, Sendable {
    /// The entry's key (any hashable Python value: a str, an int, a tuple …).
    public var key: PythonValue
    /// The entry's value.
    public var value: PythonValue
    /// The entry `key: value`.
    public init(_ key: PythonValue, _ value: PythonValue) {
        self.key = key
        self.value = value
    }
}

/// A call recorded by the unpickler instead of being made: `callable(*args)` (`REDUCE`) or
/// `callable.__new__(callable, *args)` (`NEWOBJ`), then `state` applied (`BUILD`).
public struct PythonObject: Hashable, Sendable {
    /// The class or function, a ``PythonValue/global(module:name:)``.
    public var callable: PythonValue
    /// Positional arguments.
    public var args: [PythonValue]
    /// Made with `NEWOBJ` (`cls.__new__`) rather than `REDUCE` (a call).
    public var viaNew: Bool
    /// The state given by `BUILD`, if any (usually a dict of attributes).
    public var state: PythonValue?

    /// A call of `callable` (a ``PythonValue/global(module:name:)``) with `args`, made with `NEWOBJ` when
    /// `viaNew`, then given `state` (`BUILD`) when it is not nil.
    public init(callable: PythonValue, args: [PythonValue], viaNew: Bool = false, state: PythonValue? = nil) {
        self.callable = callable
        self.args = args
        self.viaNew = viaNew
        self.state = state
    }

    /// The global's module and name.
    public var type: (module: String, name: String)? {
        if case .global(let m, let n) = callable { return (m, n) }
        return nil
    }

    var pythonDescription: String {
        let name = type.map { $0.name } ?? "?"
        return "\(name)(" + args.map(\.pythonDescription).joined(separator: ", ") + ")"
    }
}

extension PythonValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral
{
    /// `nil` is Python's `None`.
    public init(nilLiteral: ()) { self = .none }
    /// `true` and `false` are Python's `True` and `False`.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// An integer literal is an `int`.
    public init(integerLiteral value: Int64) { self = .int(value) }
    /// A floating-point literal is a `float`.
    public init(floatLiteral value: Double) { self = .float(value) }
    /// A string literal is a `str`.
    public init(stringLiteral value: String) { self = .string(value) }
    /// An array literal is a Python list.
    public init(arrayLiteral elements: PythonValue...) { self = .list(elements) }
}

extension PythonValue: CustomStringConvertible {
    /// Python's `str()`, what `print(v)` shows in Python: a `str` is its text (no quotes); every other
    /// value is its `repr()` (``pythonDescription``).
    public var description: String {
        if case .string(let s) = self { return s }
        return pythonDescription
    }
}

extension PythonValue {
    /// The value of key `key` in a dict (Python's `d[key]`), or nil.
    public subscript(key: PythonValue) -> PythonValue? {
        guard case .dict(let entries) = self else { return nil }
        return entries.last { $0.key == key }?.value
    }

    /// An `int` as `Int`, if it is one and fits.
    public var intValue: Int? {
        switch self {
        case .int(let i): Int(exactly: i)
        case .bool(let b): b ? 1 : 0
        default: nil
        }
    }

    /// A `float` or `int` as `Double`.
    public var doubleValue: Double? {
        switch self {
        case .float(let d): d
        case .int(let i): Double(i)
        default: nil
        }
    }

    /// A `str`'s text.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The items of a tuple or list.
    public var items: [PythonValue]? {
        switch self {
        case .tuple(let t): t
        case .list(let l): l
        default: nil
        }
    }
}

/// Decimal text of a two's-complement little-endian integer of any size.
enum BigIntText {
    static func decimal(_ bytes: [UInt8]) -> String {
        guard !bytes.isEmpty else { return "0" }
        let negative = bytes.last! & 0x80 != 0
        var mag = bytes
        if negative {
            // Two's complement negation: invert and add one.
            var carry = 1
            for i in mag.indices {
                let v = Int(~mag[i]) + carry
                mag[i] = UInt8(v & 0xff)
                carry = v >> 8
            }
        }
        // Repeated division by 10 over base-256 digits (most significant first).
        var digits = Array(mag.reversed())
        var out: [UInt8] = []
        while digits.contains(where: { $0 != 0 }) {
            var rem = 0
            for i in digits.indices {
                let cur = rem * 256 + Int(digits[i])
                digits[i] = UInt8(cur / 10)
                rem = cur % 10
            }
            out.append(UInt8(ascii: "0") + UInt8(rem))
        }
        if out.isEmpty { out = [UInt8(ascii: "0")] }
        return (negative ? "-" : "") + String(decoding: out.reversed(), as: UTF8.self)
    }
}
