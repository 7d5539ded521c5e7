import Glibc

/// Decodes values written by ``BinaryEncoder``.
public struct BinaryDecoder {
    /// Creates a decoder.
    public init() {}

    /// Decodes a `T` from `bytes`.
    ///
    /// - Throws: ``MultiprocessingError/Code/decodingFailed`` when `bytes` are not a `T` as
    ///   ``BinaryEncoder`` writes it (truncated, another type, malformed); `DecodingError.keyNotFound`
    ///   when a key `T` asks for is absent; whatever `T`'s own `init(from:)` throws.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try bytes.withUnsafeBytes { try decode(type, from: $0) }
    }

    /// Decodes a `T` from raw bytes (which must stay valid for the call).
    public func decode<T: Decodable>(_ type: T.Type, from bytes: UnsafeRawBufferPointer) throws -> T {
        let reader = DecoderStorage(bytes)
        let value = try reader.decodeValue(type, at: 0)
        return value.0
    }
}

/// The LEB128 varint at `p` in `bytes` (`p` moves past it).
@inline(__always)
func readVarint(_ bytes: UnsafeRawBufferPointer, at p: inout Int) throws -> UInt64 {
    var result: UInt64 = 0
    var shift: UInt64 = 0
    while true {
        guard p < bytes.count else { throw MultiprocessingError.truncated }
        let b = bytes[p]
        p += 1
        result |= UInt64(b & 0x7f) << shift
        if b < 0x80 { return result }
        shift += 7
        if shift > 63 { throw MultiprocessingError(.decodingFailed, "malformed varint") }
    }
}

final class DecoderStorage: Decoder {
    let bytes: UnsafeRawBufferPointer
    /// Where the value being decoded by `init(from:)` starts.
    var position = 0
    /// Set by the container the current `init(from:)` asked for: how to find the value's end.
    var endFinder: (() throws -> Int)?
    /// Containers being decoded now, one inside the other: a peer's bytes may nest values only
    /// ``maxDepth`` deep (decoding and skipping recurse; deeper would overflow a thread's stack).
    var depth = 0
    static let maxDepth = 512
    var codingPath: [any CodingKey] = []
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    // MARK: primitives

    @inline(__always) func byte(at p: Int) throws -> UInt8 {
        guard p < bytes.count else { throw MultiprocessingError.truncated }
        return bytes[p]
    }

    @inline(__always) func varint(at p: inout Int) throws -> UInt64 { try readVarint(bytes, at: &p) }

    /// A varint that counts what follows at `p` (bytes, or items of `stride` bytes): never more than is
    /// left, so that a peer's length can neither overflow an offset nor trap a conversion.
    @inline(__always) func count(at p: inout Int, stride: Int = 1) throws -> Int {
        let n = try varint(at: &p)
        guard n <= UInt64(bytes.count - p) / UInt64(stride) else { throw MultiprocessingError.truncated }
        return Int(n)
    }

    func rawString(at p: inout Int) throws -> String {
        let n = try count(at: &p)
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[p..<(p + n)]), as: UTF8.self)
        p += n
        return s
    }

    /// A key entry's length (see ``keyLengthBias``).
    func keyLength(at p: inout Int) throws -> Int {
        let v = try varint(at: &p)
        guard v >= UInt64(keyLengthBias) else {
            throw MultiprocessingError(.decodingFailed, "malformed key at offset \(p)")
        }
        guard v - UInt64(keyLengthBias) <= UInt64(bytes.count - p) else { throw MultiprocessingError.truncated }
        return Int(v) - keyLengthBias
    }

    func rawKey(at p: inout Int) throws -> String {
        let n = try keyLength(at: &p)
        guard p + n <= bytes.count else { throw MultiprocessingError.truncated }
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[p..<(p + n)]), as: UTF8.self)
        p += n
        return s
    }

    /// Compares the key at `p` with `key` without allocating; on a match moves `p` past it.
    func matchKey(_ key: String, at p: inout Int) throws -> Bool {
        var q = p
        let n = try keyLength(at: &q)
        guard q + n <= bytes.count else { throw MultiprocessingError.truncated }
        var key = key
        let equal = key.withUTF8 { k in
            k.count == n && (n == 0 || memcmp(k.baseAddress!, bytes.baseAddress! + q, n) == 0)
        }
        if equal { p = q + n }
        return equal
    }

    func tag(at p: Int) throws -> BinaryTag {
        guard let t = BinaryTag(rawValue: try byte(at: p)) else {
            throw MultiprocessingError(.decodingFailed, "unknown tag \(bytes[p]) at offset \(p)")
        }
        return t
    }

    /// The offset just past the value at `p` (`nesting`: containers already entered on the way).
    func skip(at p: Int, nesting: Int = 0) throws -> Int {
        guard depth + nesting < Self.maxDepth else {
            throw MultiprocessingError(.decodingFailed, "values nested deeper than \(Self.maxDepth) at offset \(p)")
        }
        var q = p + 1
        switch try tag(at: p) {
        case .null, .false, .true: return q
        case .int, .uint:
            _ = try varint(at: &q)
            return q
        case .float: return q + 4
        case .double: return q + 8
        case .string:
            let n = try count(at: &q)
            return q + n
        case .trivialArray:
            guard let kind = TrivialKind(rawValue: try byte(at: q)) else {
                throw MultiprocessingError(.decodingFailed, "bad array kind")
            }
            q += 1
            let n = try count(at: &q, stride: kind.stride)
            return q + n * kind.stride
        case .keyedStart:
            while try byte(at: q) != BinaryTag.keyedEnd.rawValue {
                let n = try keyLength(at: &q)
                q = try skip(at: q + n, nesting: nesting + 1)
            }
            return q + 1
        case .unkeyedStart:
            while try tag(at: q) != .unkeyedEnd { q = try skip(at: q, nesting: nesting + 1) }
            return q + 1
        case .keyedEnd, .unkeyedEnd:
            throw MultiprocessingError(.decodingFailed, "unexpected container end at offset \(p)")
        }
    }

    func int(at p: inout Int) throws -> Int64 {
        switch try tag(at: p) {
        case .int:
            p += 1
            let z = try varint(at: &p)
            return Int64(bitPattern: (z >> 1) ^ (0 &- (z & 1)))
        case .uint:
            p += 1
            let u = try varint(at: &p)
            guard u <= UInt64(Int64.max) else {
                throw MultiprocessingError.typeMismatch("\(u) does not fit a signed integer")
            }
            return Int64(u)
        case let t: throw MultiprocessingError.typeMismatch("\(t) where an integer was expected at offset \(p)")
        }
    }

    func uint(at p: inout Int) throws -> UInt64 {
        switch try tag(at: p) {
        case .uint:
            p += 1
            return try varint(at: &p)
        case .int:
            let v = try int(at: &p)
            guard v >= 0 else { throw MultiprocessingError.typeMismatch("\(v) does not fit an unsigned integer") }
            return UInt64(v)
        case let t:
            throw MultiprocessingError.typeMismatch("\(t) where an unsigned integer was expected at offset \(p)")
        }
    }

    func narrow<I: FixedWidthInteger>(_ v: Int64, _: I.Type) throws -> I {
        guard let r = I(exactly: v) else { throw MultiprocessingError.typeMismatch("\(v) does not fit \(I.self)") }
        return r
    }

    func narrowU<I: FixedWidthInteger>(_ v: UInt64, _: I.Type) throws -> I {
        guard let r = I(exactly: v) else { throw MultiprocessingError.typeMismatch("\(v) does not fit \(I.self)") }
        return r
    }

    func bool(at p: inout Int) throws -> Bool {
        switch try tag(at: p) {
        case .true:
            p += 1
            return true
        case .false:
            p += 1
            return false
        case let t: throw MultiprocessingError.typeMismatch("\(t) where a Bool was expected")
        }
    }

    func double(at p: inout Int) throws -> Double {
        switch try tag(at: p) {
        case .double:
            guard p + 9 <= bytes.count else { throw MultiprocessingError.truncated }
            let bits = bytes.loadUnaligned(fromByteOffset: p + 1, as: UInt64.self)
            p += 9
            return Double(bitPattern: UInt64(littleEndian: bits))
        case .float: return Double(try float(at: &p))
        case .int: return Double(try int(at: &p))
        case .uint: return Double(try uint(at: &p))
        case let t: throw MultiprocessingError.typeMismatch("\(t) where a Double was expected")
        }
    }

    func float(at p: inout Int) throws -> Float {
        switch try tag(at: p) {
        case .float:
            guard p + 5 <= bytes.count else { throw MultiprocessingError.truncated }
            let bits = bytes.loadUnaligned(fromByteOffset: p + 1, as: UInt32.self)
            p += 5
            return Float(bitPattern: UInt32(littleEndian: bits))
        case .double: return Float(try double(at: &p))
        case let t: throw MultiprocessingError.typeMismatch("\(t) where a Float was expected")
        }
    }

    func string(at p: inout Int) throws -> String {
        guard try tag(at: p) == .string else {
            throw MultiprocessingError.typeMismatch("\(try tag(at: p)) where a String was expected")
        }
        p += 1
        return try rawString(at: &p)
    }

    /// Decodes a `T` at `p`; returns it and the offset just past it.
    func decodeValue<T: Decodable>(_ type: T.Type, at p: Int) throws -> (T, Int) {
        if let fast = T.self as? any TrivialArrayCodable.Type, try tag(at: p) == .trivialArray {
            var q = p + 1
            guard let kind = TrivialKind(rawValue: try byte(at: q)) else {
                throw MultiprocessingError(.decodingFailed, "bad array kind")
            }
            q += 1
            let n = try count(at: &q, stride: kind.stride)
            let len = n * kind.stride
            let v = try fast.decodeTrivial(
                kind: kind,
                count: n,
                bytes: UnsafeRawBufferPointer(rebasing: bytes[q..<(q + len)])
            )
            return (v as! T, q + len)
        }
        guard depth < Self.maxDepth else {
            throw MultiprocessingError(.decodingFailed, "values nested deeper than \(Self.maxDepth) at offset \(p)")
        }
        let savedPosition = position
        let savedFinder = endFinder
        position = p
        endFinder = nil
        depth += 1
        defer {
            position = savedPosition
            endFinder = savedFinder
            depth -= 1
        }
        let value = try T(from: self)
        let end = try endFinder?() ?? skip(at: p)
        return (value, end)
    }

    // MARK: Decoder

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard try tag(at: position) == .keyedStart else {
            throw MultiprocessingError.typeMismatch("\(try tag(at: position)) where a keyed container was expected")
        }
        let c = KeyedDecoder<Key>(storage: self, start: position + 1)
        endFinder = { try c.state.end() }
        return KeyedDecodingContainer(c)
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let c = try UnkeyedDecoder(storage: self, at: position)
        endFinder = { [state = c.state] in try state.end() }
        return c
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleDecoder(storage: self, position: position)
    }
}

extension TrivialKind {
    var stride: Int {
        switch self {
        case .int8, .uint8, .bool: 1
        case .int16, .uint16: 2
        case .int32, .uint32, .float: 4
        case .int64, .uint64, .int, .uint, .double: 8
        }
    }
}

final class KeyedState {
    let storage: DecoderStorage
    let start: Int
    var cursor: Int  // the next entry in encoding order
    var index: [String: Int]?  // key -> value offset, built on the first out-of-order access
    var endOffset: Int?

    init(storage: DecoderStorage, start: Int) {
        self.storage = storage
        self.start = start
        cursor = start
    }

    func buildIndex() throws -> [String: Int] {
        if let index { return index }
        var map: [String: Int] = [:]
        var q = start
        while try storage.byte(at: q) != BinaryTag.keyedEnd.rawValue {
            let k = try storage.rawKey(at: &q)
            map[k] = q
            q = try storage.skip(at: q)
        }
        endOffset = q + 1
        index = map
        return map
    }

    /// The offset of `key`'s value, or nil if absent. Sequential access is O(1).
    func find(_ key: String) throws -> Int? {
        if try storage.byte(at: cursor) != BinaryTag.keyedEnd.rawValue {
            var q = cursor
            if try storage.matchKey(key, at: &q) { return q }
        }
        return try buildIndex()[key]
    }

    func end() throws -> Int {
        if let endOffset { return endOffset }
        var q = cursor
        while try storage.byte(at: q) != BinaryTag.keyedEnd.rawValue {
            let n = try storage.keyLength(at: &q)
            q = try storage.skip(at: q + n)
        }
        endOffset = q + 1
        return q + 1
    }
}

struct KeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let state: KeyedState
    var codingPath: [any CodingKey] { state.storage.codingPath }

    init(storage: DecoderStorage, start: Int) { state = KeyedState(storage: storage, start: start) }

    var allKeys: [Key] { ((try? state.buildIndex()) ?? [:]).keys.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool { (try? state.find(key.stringValue)) != nil }

    @inline(__always) private func at(_ key: Key) throws -> Int {
        guard let p = try state.find(key.stringValue) else {
            throw DecodingError.keyNotFound(
                key,
                .init(codingPath: codingPath, debugDescription: "no value for key \(key.stringValue)")
            )
        }
        return p
    }

    /// Decodes a primitive at the key's offset and moves the sequential cursor past it.
    @inline(__always) private func primitive<T>(_ key: Key, _ read: (inout Int) throws -> T) throws -> T {
        var p = try at(key)
        let v = try read(&p)
        state.cursor = p
        return v
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        let p = try at(key)
        if try state.storage.tag(at: p) == .null {
            state.cursor = p + 1
            return true
        }
        return false
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool {
        try primitive(key) { try state.storage.bool(at: &$0) }
    }
    func decode(_ type: String.Type, forKey key: Key) throws -> String {
        try primitive(key) { try state.storage.string(at: &$0) }
    }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double {
        try primitive(key) { try state.storage.double(at: &$0) }
    }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float {
        try primitive(key) { try state.storage.float(at: &$0) }
    }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int {
        try primitive(key) { try state.storage.narrow(state.storage.int(at: &$0), Int.self) }
    }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 {
        try primitive(key) { try state.storage.narrow(state.storage.int(at: &$0), Int8.self) }
    }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 {
        try primitive(key) { try state.storage.narrow(state.storage.int(at: &$0), Int16.self) }
    }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 {
        try primitive(key) { try state.storage.narrow(state.storage.int(at: &$0), Int32.self) }
    }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 {
        try primitive(key) { try state.storage.int(at: &$0) }
    }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt {
        try primitive(key) { try state.storage.narrowU(state.storage.uint(at: &$0), UInt.self) }
    }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 {
        try primitive(key) { try state.storage.narrowU(state.storage.uint(at: &$0), UInt8.self) }
    }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 {
        try primitive(key) { try state.storage.narrowU(state.storage.uint(at: &$0), UInt16.self) }
    }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 {
        try primitive(key) { try state.storage.narrowU(state.storage.uint(at: &$0), UInt32.self) }
    }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 {
        try primitive(key) { try state.storage.uint(at: &$0) }
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        let p = try at(key)
        state.storage.codingPath.append(key)
        defer { state.storage.codingPath.removeLast() }
        let (v, end) = try state.storage.decodeValue(type, at: p)
        state.cursor = end
        return v
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type,
        forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        let p = try at(key)
        guard try state.storage.tag(at: p) == .keyedStart else {
            throw MultiprocessingError.typeMismatch("expected a keyed container")
        }
        state.cursor = try state.storage.skip(at: p)
        return KeyedDecodingContainer(KeyedDecoder<NestedKey>(storage: state.storage, start: p + 1))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let p = try at(key)
        state.cursor = try state.storage.skip(at: p)
        return try UnkeyedDecoder(storage: state.storage, at: p)
    }

    func superDecoder() throws -> any Decoder { try subDecoder(at: state.find("super")) }
    func superDecoder(forKey key: Key) throws -> any Decoder { try subDecoder(at: at(key)) }

    private func subDecoder(at p: Int?) throws -> any Decoder {
        guard let p else { throw MultiprocessingError(.decodingFailed, "no super value") }
        let d = DecoderStorage(state.storage.bytes)
        d.position = p
        return d
    }
}

final class UnkeyedState {
    let storage: DecoderStorage
    var cursor: Int
    var index = 0
    var endOffset: Int?
    init(storage: DecoderStorage, cursor: Int) {
        self.storage = storage
        self.cursor = cursor
    }

    func end() throws -> Int {
        if let endOffset { return endOffset }
        var q = cursor
        while try storage.tag(at: q) != .unkeyedEnd { q = try storage.skip(at: q) }
        endOffset = q + 1
        return q + 1
    }
}

struct UnkeyedDecoder: UnkeyedDecodingContainer {
    let state: UnkeyedState
    let total: Int?
    var codingPath: [any CodingKey] { state.storage.codingPath }
    var count: Int? { total }
    var currentIndex: Int { state.index }
    var isAtEnd: Bool { (try? state.storage.tag(at: state.cursor)) == .unkeyedEnd }

    init(storage: DecoderStorage, at p: Int) throws {
        switch try storage.tag(at: p) {
        case .unkeyedStart:
            state = UnkeyedState(storage: storage, cursor: p + 1)
            var n = 0
            var q = p + 1
            // Counting costs a scan; Codable's Array decoding only needs isAtEnd, so count lazily? No:
            // many decoders call `count` to reserve capacity, and a scan of skips is cheap.
            while try storage.tag(at: q) != .unkeyedEnd {
                q = try storage.skip(at: q)
                n += 1
            }
            state.endOffset = q + 1
            total = n
        case let t:
            throw MultiprocessingError.typeMismatch("\(t) where an unkeyed container was expected")
        }
    }

    @inline(__always) private func primitive<T>(_ read: (inout Int) throws -> T) throws -> T {
        guard !isAtEnd else { throw MultiprocessingError(.decodingFailed, "unkeyed container is at its end") }
        var p = state.cursor
        let v = try read(&p)
        state.cursor = p
        state.index += 1
        return v
    }

    mutating func decodeNil() throws -> Bool {
        if try state.storage.tag(at: state.cursor) == .null {
            state.cursor += 1
            state.index += 1
            return true
        }
        return false
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try primitive { try state.storage.bool(at: &$0) } }
    mutating func decode(_ type: String.Type) throws -> String { try primitive { try state.storage.string(at: &$0) } }
    mutating func decode(_ type: Double.Type) throws -> Double { try primitive { try state.storage.double(at: &$0) } }
    mutating func decode(_ type: Float.Type) throws -> Float { try primitive { try state.storage.float(at: &$0) } }
    mutating func decode(_ type: Int.Type) throws -> Int {
        try primitive { try state.storage.narrow(state.storage.int(at: &$0), Int.self) }
    }
    mutating func decode(_ type: Int8.Type) throws -> Int8 {
        try primitive { try state.storage.narrow(state.storage.int(at: &$0), Int8.self) }
    }
    mutating func decode(_ type: Int16.Type) throws -> Int16 {
        try primitive { try state.storage.narrow(state.storage.int(at: &$0), Int16.self) }
    }
    mutating func decode(_ type: Int32.Type) throws -> Int32 {
        try primitive { try state.storage.narrow(state.storage.int(at: &$0), Int32.self) }
    }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try primitive { try state.storage.int(at: &$0) } }
    mutating func decode(_ type: UInt.Type) throws -> UInt {
        try primitive { try state.storage.narrowU(state.storage.uint(at: &$0), UInt.self) }
    }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 {
        try primitive { try state.storage.narrowU(state.storage.uint(at: &$0), UInt8.self) }
    }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 {
        try primitive { try state.storage.narrowU(state.storage.uint(at: &$0), UInt16.self) }
    }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 {
        try primitive { try state.storage.narrowU(state.storage.uint(at: &$0), UInt32.self) }
    }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try primitive { try state.storage.uint(at: &$0) } }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        guard !isAtEnd else { throw MultiprocessingError(.decodingFailed, "unkeyed container is at its end") }
        let (v, end) = try state.storage.decodeValue(type, at: state.cursor)
        state.cursor = end
        state.index += 1
        return v
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type
    ) throws -> KeyedDecodingContainer<NestedKey> {
        let p = state.cursor
        guard try state.storage.tag(at: p) == .keyedStart else {
            throw MultiprocessingError.typeMismatch("expected a keyed container")
        }
        state.cursor = try state.storage.skip(at: p)
        state.index += 1
        return KeyedDecodingContainer(KeyedDecoder<NestedKey>(storage: state.storage, start: p + 1))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let p = state.cursor
        state.cursor = try state.storage.skip(at: p)
        state.index += 1
        return try UnkeyedDecoder(storage: state.storage, at: p)
    }

    mutating func superDecoder() throws -> any Decoder {
        let d = DecoderStorage(state.storage.bytes)
        d.position = state.cursor
        state.cursor = try state.storage.skip(at: state.cursor)
        state.index += 1
        return d
    }
}

struct SingleDecoder: SingleValueDecodingContainer {
    let storage: DecoderStorage
    let position: Int
    var codingPath: [any CodingKey] { storage.codingPath }

    private func read<T>(_ f: (inout Int) throws -> T) throws -> T {
        var p = position
        let v = try f(&p)
        storage.endFinder = { [p] in p }
        return v
    }

    func decodeNil() -> Bool { (try? storage.tag(at: position)) == .null }
    func decode(_ type: Bool.Type) throws -> Bool { try read { try storage.bool(at: &$0) } }
    func decode(_ type: String.Type) throws -> String { try read { try storage.string(at: &$0) } }
    func decode(_ type: Double.Type) throws -> Double { try read { try storage.double(at: &$0) } }
    func decode(_ type: Float.Type) throws -> Float { try read { try storage.float(at: &$0) } }
    func decode(_ type: Int.Type) throws -> Int { try read { try storage.narrow(storage.int(at: &$0), Int.self) } }
    func decode(_ type: Int8.Type) throws -> Int8 { try read { try storage.narrow(storage.int(at: &$0), Int8.self) } }
    func decode(_ type: Int16.Type) throws -> Int16 {
        try read { try storage.narrow(storage.int(at: &$0), Int16.self) }
    }
    func decode(_ type: Int32.Type) throws -> Int32 {
        try read { try storage.narrow(storage.int(at: &$0), Int32.self) }
    }
    func decode(_ type: Int64.Type) throws -> Int64 { try read { try storage.int(at: &$0) } }
    func decode(_ type: UInt.Type) throws -> UInt { try read { try storage.narrowU(storage.uint(at: &$0), UInt.self) } }
    func decode(_ type: UInt8.Type) throws -> UInt8 {
        try read { try storage.narrowU(storage.uint(at: &$0), UInt8.self) }
    }
    func decode(_ type: UInt16.Type) throws -> UInt16 {
        try read { try storage.narrowU(storage.uint(at: &$0), UInt16.self) }
    }
    func decode(_ type: UInt32.Type) throws -> UInt32 {
        try read { try storage.narrowU(storage.uint(at: &$0), UInt32.self) }
    }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try read { try storage.uint(at: &$0) } }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (v, end) = try storage.decodeValue(type, at: position)
        storage.endFinder = { end }
        return v
    }
}
