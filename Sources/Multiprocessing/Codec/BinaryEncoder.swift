/// A compact, self-describing binary `Codable` format: the wire format of jobs, results and queue items.
///
/// Every value starts with a one-byte tag; integers are zig-zag/LEB128 varints; keyed containers carry
/// their keys (so decoding in another order, or skipping absent keys, works); arrays of fixed-width
/// numbers are one tag, a count and their raw little-endian bytes (a `memcpy` each way). Nested containers
/// must be filled before their parent is written to again (true of synthesised and almost all hand-written
/// `Codable` code).
enum BinaryTag: UInt8 {
    case null = 0
    case `false`, `true`, int, uint, float, double, string, keyedStart, keyedEnd, unkeyedStart, unkeyedEnd,
        trivialArray
}

/// Added to a key's length on the wire: the first byte of a key entry is then at least 16, never a tag.
let keyLengthBias = 16

/// The element kinds of the trivial-array fast path.
enum TrivialKind: UInt8 {
    case int8 = 1
    case uint8, int16, uint16, int32, uint32, int64, uint64, int, uint, float, double, bool
}

/// Fixed-width values whose arrays are copied as raw bytes.
protocol BinaryTrivial {
    static var trivialKind: TrivialKind { get }
}
extension Int8: BinaryTrivial { static var trivialKind: TrivialKind { .int8 } }
extension UInt8: BinaryTrivial { static var trivialKind: TrivialKind { .uint8 } }
extension Int16: BinaryTrivial { static var trivialKind: TrivialKind { .int16 } }
extension UInt16: BinaryTrivial { static var trivialKind: TrivialKind { .uint16 } }
extension Int32: BinaryTrivial { static var trivialKind: TrivialKind { .int32 } }
extension UInt32: BinaryTrivial { static var trivialKind: TrivialKind { .uint32 } }
extension Int64: BinaryTrivial { static var trivialKind: TrivialKind { .int64 } }
extension UInt64: BinaryTrivial { static var trivialKind: TrivialKind { .uint64 } }
extension Int: BinaryTrivial { static var trivialKind: TrivialKind { .int } }
extension UInt: BinaryTrivial { static var trivialKind: TrivialKind { .uint } }
extension Float: BinaryTrivial { static var trivialKind: TrivialKind { .float } }
extension Double: BinaryTrivial { static var trivialKind: TrivialKind { .double } }
extension Bool: BinaryTrivial { static var trivialKind: TrivialKind { .bool } }

/// Arrays that take the fast path.
protocol TrivialArrayCodable {
    func encodeTrivial(into buffer: inout [UInt8])
    static func decodeTrivial(kind: TrivialKind, count: Int, bytes: UnsafeRawBufferPointer) throws -> Self
}

extension Array: TrivialArrayCodable where Element: BinaryTrivial {
    func encodeTrivial(into buffer: inout [UInt8]) {
        buffer.append(BinaryTag.trivialArray.rawValue)
        buffer.append(Element.trivialKind.rawValue)
        writeVarint(UInt64(count), into: &buffer)
        withUnsafeBytes { buffer.append(contentsOf: $0) }
    }

    static func decodeTrivial(kind: TrivialKind, count: Int, bytes: UnsafeRawBufferPointer) throws -> [Element] {
        guard kind == Element.trivialKind, bytes.count == count * MemoryLayout<Element>.stride else {
            throw MultiprocessingError.typeMismatch("array of \(kind) where [\(Element.self)] was expected")
        }
        // A byte other than 0 or 1 is not a `Bool`: copied in, it would be undefined behaviour.
        if kind == .bool, bytes.contains(where: { $0 > 1 }) {
            throw MultiprocessingError(.decodingFailed, "a Bool that is neither 0 nor 1")
        }
        return [Element](unsafeUninitializedCapacity: count) { out, initialized in
            if count > 0 { UnsafeMutableRawBufferPointer(out).copyMemory(from: bytes) }
            initialized = count
        }
    }
}

@inline(__always)
func writeVarint(_ value: UInt64, into buffer: inout [UInt8]) {
    var v = value
    while v >= 0x80 {
        buffer.append(UInt8(truncatingIfNeeded: v) | 0x80)
        v >>= 7
    }
    buffer.append(UInt8(v))
}

/// Encodes `Encodable` values in the binary format.
public struct BinaryEncoder {
    /// Creates an encoder.
    public init() {}

    /// The encoded bytes of `value`.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let storage = EncoderStorage()
        storage.buffer.reserveCapacity(64)
        try storage.encodeValue(value)
        storage.closeDeeper(than: 0)
        return storage.buffer
    }
}

final class EncoderStorage: Encoder {
    var buffer: [UInt8] = []
    var codingPath: [any CodingKey] = []
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    @inline(__always) func tag(_ t: BinaryTag) { buffer.append(t.rawValue) }

    @inline(__always) func writeInt(_ v: Int64) {
        tag(.int)
        writeVarint(UInt64(bitPattern: (v << 1) ^ (v >> 63)), into: &buffer)
    }

    @inline(__always) func writeUInt(_ v: UInt64) {
        tag(.uint)
        writeVarint(v, into: &buffer)
    }

    func writeString(_ s: String) {
        tag(.string)
        writeRawString(s)
    }

    /// A key: its length plus ``keyLengthBias`` (so its first byte never looks like a tag, in particular
    /// never like `keyedEnd`), then its UTF-8 bytes.
    @inline(__always) func writeKey(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            writeVarint(UInt64(utf8.count + keyLengthBias), into: &buffer)
            buffer.append(contentsOf: utf8)
        }
    }

    @inline(__always) func writeRawString(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            writeVarint(UInt64(utf8.count), into: &buffer)
            buffer.append(contentsOf: utf8)
        }
    }

    func writeDouble(_ d: Double) {
        tag(.double)
        withUnsafeBytes(of: d.bitPattern.littleEndian) { buffer.append(contentsOf: $0) }
    }

    func writeFloat(_ f: Float) {
        tag(.float)
        withUnsafeBytes(of: f.bitPattern.littleEndian) { buffer.append(contentsOf: $0) }
    }

    func encodeValue<T: Encodable>(_ value: T) throws {
        if let fast = value as? any TrivialArrayCodable {
            fast.encodeTrivial(into: &buffer)
            return
        }
        try value.encode(to: self)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        tag(.keyedStart)
        return KeyedEncodingContainer(KeyedEncoder<Key>(storage: self))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        tag(.unkeyedStart)
        return UnkeyedEncoder(storage: self)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { SingleEncoder(storage: self) }

    /// Containers are closed lazily: each open container's end marker is written when a shallower
    /// container writes again, or when encoding finishes.
    var openEnds: [BinaryTag] = []
}

// Containers write their start tag when created and their end tag through `close()`; because Codable
// gives no "done" signal, the encoder is finalised by `finish()` below and by each `encode` call of a
// parent, which closes deeper containers first.
struct KeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let storage: EncoderStorage
    let depth: Int
    var codingPath: [any CodingKey] { storage.codingPath }

    init(storage: EncoderStorage) {
        self.storage = storage
        storage.openEnds.append(.keyedEnd)
        depth = storage.openEnds.count
    }

    @inline(__always) private func key(_ k: Key) {
        storage.closeDeeper(than: depth)
        storage.writeKey(k.stringValue)
    }

    mutating func encodeNil(forKey k: Key) throws {
        key(k)
        storage.tag(.null)
    }
    mutating func encode(_ v: Bool, forKey k: Key) throws {
        key(k)
        storage.tag(v ? .true : .false)
    }
    mutating func encode(_ v: String, forKey k: Key) throws {
        key(k)
        storage.writeString(v)
    }
    mutating func encode(_ v: Double, forKey k: Key) throws {
        key(k)
        storage.writeDouble(v)
    }
    mutating func encode(_ v: Float, forKey k: Key) throws {
        key(k)
        storage.writeFloat(v)
    }
    mutating func encode(_ v: Int, forKey k: Key) throws {
        key(k)
        storage.writeInt(Int64(v))
    }
    mutating func encode(_ v: Int8, forKey k: Key) throws {
        key(k)
        storage.writeInt(Int64(v))
    }
    mutating func encode(_ v: Int16, forKey k: Key) throws {
        key(k)
        storage.writeInt(Int64(v))
    }
    mutating func encode(_ v: Int32, forKey k: Key) throws {
        key(k)
        storage.writeInt(Int64(v))
    }
    mutating func encode(_ v: Int64, forKey k: Key) throws {
        key(k)
        storage.writeInt(v)
    }
    mutating func encode(_ v: UInt, forKey k: Key) throws {
        key(k)
        storage.writeUInt(UInt64(v))
    }
    mutating func encode(_ v: UInt8, forKey k: Key) throws {
        key(k)
        storage.writeUInt(UInt64(v))
    }
    mutating func encode(_ v: UInt16, forKey k: Key) throws {
        key(k)
        storage.writeUInt(UInt64(v))
    }
    mutating func encode(_ v: UInt32, forKey k: Key) throws {
        key(k)
        storage.writeUInt(UInt64(v))
    }
    mutating func encode(_ v: UInt64, forKey k: Key) throws {
        key(k)
        storage.writeUInt(v)
    }
    mutating func encode<T: Encodable>(_ v: T, forKey k: Key) throws {
        key(k)
        storage.codingPath.append(k)
        defer { storage.codingPath.removeLast() }
        try storage.encodeValue(v)
        storage.closeDeeper(than: depth)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type,
        forKey k: Key
    )
        -> KeyedEncodingContainer<NestedKey>
    {
        key(k)
        return storage.container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer(forKey k: Key) -> any UnkeyedEncodingContainer {
        key(k)
        return storage.unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        storage.closeDeeper(than: depth)
        storage.writeKey("super")
        return storage
    }

    mutating func superEncoder(forKey k: Key) -> any Encoder {
        key(k)
        return storage
    }
}

struct UnkeyedEncoder: UnkeyedEncodingContainer {
    let storage: EncoderStorage
    let depth: Int
    var count = 0
    var codingPath: [any CodingKey] { storage.codingPath }

    init(storage: EncoderStorage) {
        self.storage = storage
        storage.openEnds.append(.unkeyedEnd)
        depth = storage.openEnds.count
    }

    @inline(__always) private mutating func next() {
        storage.closeDeeper(than: depth)
        count += 1
    }

    mutating func encodeNil() throws {
        next()
        storage.tag(.null)
    }
    mutating func encode(_ v: Bool) throws {
        next()
        storage.tag(v ? .true : .false)
    }
    mutating func encode(_ v: String) throws {
        next()
        storage.writeString(v)
    }
    mutating func encode(_ v: Double) throws {
        next()
        storage.writeDouble(v)
    }
    mutating func encode(_ v: Float) throws {
        next()
        storage.writeFloat(v)
    }
    mutating func encode(_ v: Int) throws {
        next()
        storage.writeInt(Int64(v))
    }
    mutating func encode(_ v: Int8) throws {
        next()
        storage.writeInt(Int64(v))
    }
    mutating func encode(_ v: Int16) throws {
        next()
        storage.writeInt(Int64(v))
    }
    mutating func encode(_ v: Int32) throws {
        next()
        storage.writeInt(Int64(v))
    }
    mutating func encode(_ v: Int64) throws {
        next()
        storage.writeInt(v)
    }
    mutating func encode(_ v: UInt) throws {
        next()
        storage.writeUInt(UInt64(v))
    }
    mutating func encode(_ v: UInt8) throws {
        next()
        storage.writeUInt(UInt64(v))
    }
    mutating func encode(_ v: UInt16) throws {
        next()
        storage.writeUInt(UInt64(v))
    }
    mutating func encode(_ v: UInt32) throws {
        next()
        storage.writeUInt(UInt64(v))
    }
    mutating func encode(_ v: UInt64) throws {
        next()
        storage.writeUInt(v)
    }
    mutating func encode<T: Encodable>(_ v: T) throws {
        next()
        try storage.encodeValue(v)
        storage.closeDeeper(than: depth)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type
    ) -> KeyedEncodingContainer<NestedKey> {
        next()
        return storage.container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        next()
        return storage.unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        next()
        return storage
    }
}

struct SingleEncoder: SingleValueEncodingContainer {
    let storage: EncoderStorage
    var codingPath: [any CodingKey] { storage.codingPath }

    mutating func encodeNil() throws { storage.tag(.null) }
    mutating func encode(_ v: Bool) throws { storage.tag(v ? .true : .false) }
    mutating func encode(_ v: String) throws { storage.writeString(v) }
    mutating func encode(_ v: Double) throws { storage.writeDouble(v) }
    mutating func encode(_ v: Float) throws { storage.writeFloat(v) }
    mutating func encode(_ v: Int) throws { storage.writeInt(Int64(v)) }
    mutating func encode(_ v: Int8) throws { storage.writeInt(Int64(v)) }
    mutating func encode(_ v: Int16) throws { storage.writeInt(Int64(v)) }
    mutating func encode(_ v: Int32) throws { storage.writeInt(Int64(v)) }
    mutating func encode(_ v: Int64) throws { storage.writeInt(v) }
    mutating func encode(_ v: UInt) throws { storage.writeUInt(UInt64(v)) }
    mutating func encode(_ v: UInt8) throws { storage.writeUInt(UInt64(v)) }
    mutating func encode(_ v: UInt16) throws { storage.writeUInt(UInt64(v)) }
    mutating func encode(_ v: UInt32) throws { storage.writeUInt(UInt64(v)) }
    mutating func encode(_ v: UInt64) throws { storage.writeUInt(v) }
    mutating func encode<T: Encodable>(_ v: T) throws { try storage.encodeValue(v) }
}

extension EncoderStorage {
    /// Writes the end markers of every container deeper than `depth`.
    @inline(__always)
    func closeDeeper(than depth: Int) {
        while openEnds.count > depth { tag(openEnds.removeLast()) }
    }
}
