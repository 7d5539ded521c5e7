// `Codable` values to and from `PythonValue` (and so to and from pickle): structs become dicts with str
// keys, arrays lists, `[UInt8]` bytes, integers ints, floating point floats, optionals None; a
// dictionary with `Int` keys becomes a dict with int keys (as Python would write it). A `PythonValue`
// inside a `Codable` value passes through unchanged.

/// Encodes `Encodable` values as ``PythonValue``s.
public struct PythonValueEncoder: Sendable {
    /// An encoder (it has no settings).
    public init() {}

    /// `value` as a Python value: a struct as a dict with str keys, an array as a list, `[UInt8]` as bytes,
    /// an integer as an int (beyond 64 bits, a big int), a floating-point number as a float, nil as None, a
    /// dictionary with `Int` keys as a dict with int keys; a ``PythonValue`` as itself. Throws what
    /// `value`'s `encode(to:)` throws.
    public func encode<T: Encodable>(_ value: T) throws -> PythonValue {
        if let v = value as? PythonValue { return v }
        if let b = value as? [UInt8] { return .bytes(b) }
        let box = PyEncoderBox(path: [])
        try value.encode(to: box)
        return box.result ?? .none
    }
}

/// Decodes `Decodable` values from ``PythonValue``s (an int where a float is expected is accepted, as
/// Python's `float(1)`).
public struct PythonValueDecoder: Sendable {
    /// A decoder (it has no settings).
    public init() {}

    /// Decodes a `T` from `value`, the reverse of ``PythonValueEncoder/encode(_:)``: a struct from a dict,
    /// an array from a list, tuple, set or bytes, a `Double` from a float or an int; a ``PythonValue`` is
    /// `value` itself.
    ///
    /// - Throws: `DecodingError` when `value` does not have `T`'s shape (a missing key, another type, an
    ///   int that does not fit).
    public func decode<T: Decodable>(_ type: T.Type, from value: PythonValue) throws -> T {
        if T.self == PythonValue.self { return value as! T }
        if T.self == [UInt8].self, case .bytes(let b) = value { return b as! T }
        return try T(from: PyDecoder(value: value, codingPath: []))
    }
}

private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init(intValue: Int) {
        self.intValue = intValue
        stringValue = "\(intValue)"
    }
}

private func pyKey(_ key: some CodingKey) -> PythonValue {
    if let i = key.intValue, key.stringValue == "\(i)" { return .int(Int64(i)) }
    return .string(key.stringValue)
}

// MARK: - encoding

/// Collects what one `encode(to:)` writes. Nested containers are boxes of their own, resolved into the
/// value when the whole encoding is done.
private final class PyEncoderBox: Encoder {
    enum Node {
        case value(PythonValue)
        case box(PyEncoderBox)
        var resolved: PythonValue {
            switch self {
            case .value(let v): v
            case .box(let b): b.result ?? .none
            }
        }
    }

    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    var keyed: [(PythonValue, Node)]?
    var unkeyed: [Node]?
    var single: PythonValue?

    init(path: [any CodingKey]) { codingPath = path }

    var result: PythonValue? {
        if let keyed { return .dict(keyed.map { PythonPair($0.0, $0.1.resolved) }) }
        if let unkeyed { return .list(unkeyed.map(\.resolved)) }
        return single
    }

    func put(_ key: PythonValue, _ node: Node) {
        if keyed == nil { keyed = [] }
        if let i = keyed!.firstIndex(where: { $0.0 == key }) { keyed![i].1 = node } else { keyed!.append((key, node)) }
    }

    func append(_ node: Node) {
        if unkeyed == nil { unkeyed = [] }
        unkeyed!.append(node)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if keyed == nil { keyed = [] }
        return KeyedEncodingContainer(PyKeyed<Key>(box: self))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if unkeyed == nil { unkeyed = [] }
        return PyUnkeyed(box: self)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { PySingle(box: self) }

    static func encode<T: Encodable>(_ v: T, path: [any CodingKey]) throws -> PythonValue {
        if let p = v as? PythonValue { return p }
        if let b = v as? [UInt8] { return .bytes(b) }
        let box = PyEncoderBox(path: path)
        try v.encode(to: box)
        return box.result ?? .none
    }
}

private struct PyKeyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let box: PyEncoderBox
    var codingPath: [any CodingKey] { box.codingPath }

    mutating func encodeNil(forKey key: Key) throws { box.put(pyKey(key), .value(.none)) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        box.put(pyKey(key), .value(try PyEncoderBox.encode(value, path: codingPath + [key])))
    }
    mutating func nestedContainer<N: CodingKey>(keyedBy: N.Type, forKey key: Key) -> KeyedEncodingContainer<N> {
        let child = PyEncoderBox(path: codingPath + [key])
        box.put(pyKey(key), .box(child))
        return child.container(keyedBy: N.self)
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let child = PyEncoderBox(path: codingPath + [key])
        box.put(pyKey(key), .box(child))
        return child.unkeyedContainer()
    }
    mutating func superEncoder() -> any Encoder { superEncoder(forKey: Key(stringValue: "super")!) }
    mutating func superEncoder(forKey key: Key) -> any Encoder {
        let child = PyEncoderBox(path: codingPath + [key])
        box.put(pyKey(key), .box(child))
        return child
    }
}

private struct PyUnkeyed: UnkeyedEncodingContainer {
    let box: PyEncoderBox
    var codingPath: [any CodingKey] { box.codingPath }
    var count: Int { box.unkeyed?.count ?? 0 }

    mutating func encodeNil() throws { box.append(.value(.none)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        box.append(.value(try PyEncoderBox.encode(value, path: codingPath + [AnyKey(intValue: count)])))
    }
    mutating func nestedContainer<N: CodingKey>(keyedBy: N.Type) -> KeyedEncodingContainer<N> {
        let child = PyEncoderBox(path: codingPath + [AnyKey(intValue: count)])
        box.append(.box(child))
        return child.container(keyedBy: N.self)
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let child = PyEncoderBox(path: codingPath + [AnyKey(intValue: count)])
        box.append(.box(child))
        return child.unkeyedContainer()
    }
    mutating func superEncoder() -> any Encoder {
        let child = PyEncoderBox(path: codingPath + [AnyKey(intValue: count)])
        box.append(.box(child))
        return child
    }
}

private struct PySingle: SingleValueEncodingContainer {
    let box: PyEncoderBox
    var codingPath: [any CodingKey] { box.codingPath }
    mutating func encodeNil() throws { box.single = PythonValue.none }
    mutating func encode(_ v: Bool) throws { box.single = .bool(v) }
    mutating func encode(_ v: String) throws { box.single = .string(v) }
    mutating func encode(_ v: Double) throws { box.single = .float(v) }
    mutating func encode(_ v: Float) throws { box.single = .float(Double(v)) }
    mutating func encode(_ v: Int) throws { box.single = .int(Int64(v)) }
    mutating func encode(_ v: Int8) throws { box.single = .int(Int64(v)) }
    mutating func encode(_ v: Int16) throws { box.single = .int(Int64(v)) }
    mutating func encode(_ v: Int32) throws { box.single = .int(Int64(v)) }
    mutating func encode(_ v: Int64) throws { box.single = .int(v) }
    mutating func encode(_ v: UInt) throws { box.single = PySingle.unsigned(UInt64(v)) }
    mutating func encode(_ v: UInt8) throws { box.single = .int(Int64(v)) }
    mutating func encode(_ v: UInt16) throws { box.single = .int(Int64(v)) }
    mutating func encode(_ v: UInt32) throws { box.single = .int(Int64(v)) }
    mutating func encode(_ v: UInt64) throws { box.single = PySingle.unsigned(v) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        box.single = try PyEncoderBox.encode(value, path: codingPath)
    }

    static func unsigned(_ v: UInt64) -> PythonValue {
        if let i = Int64(exactly: v) { return .int(i) }
        var bytes: [UInt8] = (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) }
        bytes.append(0)  // positive: a sign byte
        return .bigInt(bytes)
    }
}

// MARK: - decoding

private struct PyDecoder: Decoder {
    let value: PythonValue
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func mismatch(_ expected: String) -> DecodingError {
        .typeMismatch(
            Any.self,
            .init(codingPath: codingPath, debugDescription: "expected \(expected), found \(value.pythonDescription)")
        )
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .dict(let d) = value else { throw mismatch("a dict") }
        return KeyedDecodingContainer(PyKeyedDecoding<Key>(entries: d, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        switch value {
        case .list(let l), .tuple(let l), .set(let l), .frozenset(let l):
            return PyUnkeyedDecoding(items: l, codingPath: codingPath)
        case .bytes(let b), .bytearray(let b):
            return PyUnkeyedDecoding(items: b.map { .int(Int64($0)) }, codingPath: codingPath)
        default: throw mismatch("a list")
        }
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { PySingleDecoding(decoder: self) }
}

private struct PyKeyedDecoding<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let entries: [PythonPair]
    var codingPath: [any CodingKey]

    var allKeys: [Key] {
        entries.compactMap { e in
            switch e.key {
            case .string(let s): Key(stringValue: s)
            case .int(let i): Key(intValue: Int(i)) ?? Key(stringValue: "\(i)")
            default: nil
            }
        }
    }

    func find(_ key: Key) -> PythonValue? {
        let k = pyKey(key)
        return entries.first { $0.key == k }?.value ?? entries.first { $0.key == .string(key.stringValue) }?.value
    }

    func contains(_ key: Key) -> Bool { find(key) != nil }

    func decodeNil(forKey key: Key) throws -> Bool {
        if case .none? = find(key) { return true }
        return find(key) == nil
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        guard let v = find(key) else {
            throw DecodingError.keyNotFound(
                key,
                .init(codingPath: codingPath, debugDescription: "no key \(key.stringValue)")
            )
        }
        if T.self == PythonValue.self { return v as! T }
        if T.self == [UInt8].self, case .bytes(let b) = v { return b as! T }
        return try T(from: PyDecoder(value: v, codingPath: codingPath + [key]))
    }

    func nestedContainer<N: CodingKey>(keyedBy: N.Type, forKey key: Key) throws -> KeyedDecodingContainer<N> {
        try PyDecoder(value: find(key) ?? .none, codingPath: codingPath + [key]).container(keyedBy: N.self)
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try PyDecoder(value: find(key) ?? .none, codingPath: codingPath + [key]).unkeyedContainer()
    }
    func superDecoder() throws -> any Decoder { PyDecoder(value: .dict(entries), codingPath: codingPath) }
    func superDecoder(forKey key: Key) throws -> any Decoder {
        PyDecoder(value: find(key) ?? .none, codingPath: codingPath)
    }
}

private struct PyUnkeyedDecoding: UnkeyedDecodingContainer {
    let items: [PythonValue]
    var codingPath: [any CodingKey]
    var currentIndex = 0
    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    init(items: [PythonValue], codingPath: [any CodingKey]) {
        self.items = items
        self.codingPath = codingPath
    }

    mutating func next() throws -> PythonValue {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath, debugDescription: "list ended"))
        }
        defer { currentIndex += 1 }
        return items[currentIndex]
    }

    mutating func decodeNil() throws -> Bool {
        if !isAtEnd, case .none = items[currentIndex] {
            currentIndex += 1
            return true
        }
        return false
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let v = try next()
        if T.self == PythonValue.self { return v as! T }
        if T.self == [UInt8].self, case .bytes(let b) = v { return b as! T }
        return try T(from: PyDecoder(value: v, codingPath: codingPath + [AnyKey(intValue: currentIndex - 1)]))
    }

    mutating func nestedContainer<N: CodingKey>(keyedBy: N.Type) throws -> KeyedDecodingContainer<N> {
        try PyDecoder(value: try next(), codingPath: codingPath).container(keyedBy: N.self)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try PyDecoder(value: try next(), codingPath: codingPath).unkeyedContainer()
    }
    mutating func superDecoder() throws -> any Decoder { PyDecoder(value: try next(), codingPath: codingPath) }
}

private struct PySingleDecoding: SingleValueDecodingContainer {
    let decoder: PyDecoder
    var codingPath: [any CodingKey] { decoder.codingPath }
    var value: PythonValue { decoder.value }

    func decodeNil() -> Bool { if case .none = value { true } else { false } }
    func decode(_ type: Bool.Type) throws -> Bool {
        guard case .bool(let b) = value else { throw decoder.mismatch("a bool") }
        return b
    }
    func decode(_ type: String.Type) throws -> String {
        guard case .string(let s) = value else { throw decoder.mismatch("a str") }
        return s
    }
    func decode(_ type: Double.Type) throws -> Double {
        guard let d = value.doubleValue else { throw decoder.mismatch("a float") }
        return d
    }
    func decode(_ type: Float.Type) throws -> Float { Float(try decode(Double.self)) }
    func integer<T: FixedWidthInteger>() throws -> T {
        switch value {
        case .int(let i):
            guard let v = T(exactly: i) else { throw decoder.mismatch("an int that fits \(T.self)") }
            return v
        case .bigInt(let b) where !T.isSigned && b.count == 9 && b[8] == 0:
            var v: UInt64 = 0
            for (i, x) in b.prefix(8).enumerated() { v |= UInt64(x) << (8 * UInt64(i)) }
            guard let r = T(exactly: v) else { throw decoder.mismatch("an int that fits \(T.self)") }
            return r
        default: throw decoder.mismatch("an int")
        }
    }
    func decode(_ type: Int.Type) throws -> Int { try integer() }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer() }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer() }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer() }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer() }
    func decode(_ type: UInt.Type) throws -> UInt { try integer() }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer() }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer() }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer() }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer() }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        if T.self == PythonValue.self { return value as! T }
        if T.self == [UInt8].self, case .bytes(let b) = value { return b as! T }
        return try T(from: decoder)
    }
}
