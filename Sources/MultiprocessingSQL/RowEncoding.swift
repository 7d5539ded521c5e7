// The `Encoder` behind `SQLRowEncoder`: a struct's properties as a row's columns.

/// The batch ``SQLRowEncoder`` builds, and the row being encoded into it.
final class RowStorage {
    /// Every row so far, value after value: the batch being built.
    var out: [SQLValue] = []
    /// Where the row being encoded starts in `out`.
    var rowStart = 0
    /// The columns the first row had, in order; empty for the first row.
    var expected: [String] = []
    /// The keys, when not stored by position.
    var order: [String] = []
    /// Whether every key so far came where `expected` has it (then `order` is unused).
    var inOrder = false
    func startRow(expected: [String]) {
        if self.expected.isEmpty { self.expected = expected }
        rowStart = out.count
        inOrder = !expected.isEmpty
        order.removeAll(keepingCapacity: true)
    }
    func set(_ key: String, _ v: SQLValue) {
        let i = out.count - rowStart
        if inOrder {
            if i < expected.count && expected[i] == key {
                out.append(v)
                return
            }
            // Out of order: switch to names for this row.
            inOrder = false
            order = Array(expected[..<i])
        }
        if let j = order.firstIndex(of: key) {
            out[rowStart + j] = v
        } else {
            order.append(key)
            out.append(v)
        }
    }
}

/// The `Encoder` ``SQLRowEncoder`` hands an `Encodable` value: its properties become one row's columns.
struct RowEncoding: Encoder {
    let storage: RowStorage
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(RowKeyedEncoding<Key>(storage: storage))
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        preconditionFailure("a row encodes from a struct with named properties, not an array")
    }
    func singleValueContainer() -> any SingleValueEncodingContainer {
        preconditionFailure("a row encodes from a struct with named properties, not a single value")
    }
}

/// A value's properties, each stored as its column's value.
struct RowKeyedEncoding<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let storage: RowStorage
    var codingPath: [any CodingKey] { [] }
    func encodeNil(forKey key: Key) throws { storage.set(key.stringValue, .null) }
    func encode(_ value: Bool, forKey key: Key) throws { storage.set(key.stringValue, .int(value ? 1 : 0)) }
    func encode(_ value: String, forKey key: Key) throws { storage.set(key.stringValue, .text(value)) }
    func encode(_ value: Double, forKey key: Key) throws { storage.set(key.stringValue, .double(value)) }
    func encode(_ value: Float, forKey key: Key) throws { storage.set(key.stringValue, .double(Double(value))) }
    func encode(_ value: Int, forKey key: Key) throws { storage.set(key.stringValue, .int(Int64(value))) }
    func encode(_ value: Int8, forKey key: Key) throws { storage.set(key.stringValue, .int(Int64(value))) }
    func encode(_ value: Int16, forKey key: Key) throws { storage.set(key.stringValue, .int(Int64(value))) }
    func encode(_ value: Int32, forKey key: Key) throws { storage.set(key.stringValue, .int(Int64(value))) }
    func encode(_ value: Int64, forKey key: Key) throws { storage.set(key.stringValue, .int(value)) }
    func encode(_ value: UInt, forKey key: Key) throws { storage.set(key.stringValue, try Self.int(value, key)) }
    func encode(_ value: UInt8, forKey key: Key) throws { storage.set(key.stringValue, .int(Int64(value))) }
    func encode(_ value: UInt16, forKey key: Key) throws { storage.set(key.stringValue, .int(Int64(value))) }
    func encode(_ value: UInt32, forKey key: Key) throws { storage.set(key.stringValue, .int(Int64(value))) }
    func encode(_ value: UInt64, forKey key: Key) throws { storage.set(key.stringValue, try Self.int(value, key)) }
    static func int<T: BinaryInteger>(_ v: T, _ key: Key) throws -> SQLValue {
        guard let i = Int64(exactly: v) else {
            throw SQLError(.conversion, "property \(key.stringValue): \(v) does not fit a 64-bit integer column")
        }
        return .int(i)
    }
    func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        if let v = value as? SQLValue {
            storage.set(key.stringValue, v)
        } else if let b = value as? [UInt8] {
            storage.set(key.stringValue, .blob(b))
        } else {
            let single = SingleEncoding(key: key)
            try value.encode(to: single)
            guard let v = single.box.value else {
                throw SQLError(.conversion, "property \(key.stringValue): a \(T.self) is not a column value")
            }
            storage.set(key.stringValue, v)
        }
    }
    func nestedContainer<N: CodingKey>(keyedBy keyType: N.Type, forKey key: Key) -> KeyedEncodingContainer<N> {
        preconditionFailure("property \(key.stringValue): nested values are not supported in rows")
    }
    func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        preconditionFailure("property \(key.stringValue): arrays are not supported in rows")
    }
    func superEncoder() -> any Encoder { RowEncoding(storage: storage) }
    func superEncoder(forKey key: Key) -> any Encoder { RowEncoding(storage: storage) }
}

/// A value that encodes itself as one value (an enum with a raw value, a wrapper).
struct SingleEncoding: Encoder, SingleValueEncodingContainer {
    /// Where the value lands (nil: it was not one value).
    final class Box { var value: SQLValue? }

    let key: any CodingKey
    let box = Box()
    var codingPath: [any CodingKey] { [key] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    func container<K: CodingKey>(keyedBy type: K.Type) -> KeyedEncodingContainer<K> {
        preconditionFailure("property \(key.stringValue): nested values are not supported in rows")
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        preconditionFailure("property \(key.stringValue): arrays are not supported in rows")
    }
    func singleValueContainer() -> any SingleValueEncodingContainer { self }
    func encodeNil() { box.value = .null }
    func encode(_ value: Bool) { box.value = .int(value ? 1 : 0) }
    func encode(_ value: String) { box.value = .text(value) }
    func encode(_ value: Double) { box.value = .double(value) }
    func encode(_ value: Float) { box.value = .double(Double(value)) }
    func encode(_ value: Int) { box.value = .int(Int64(value)) }
    func encode(_ value: Int8) { box.value = .int(Int64(value)) }
    func encode(_ value: Int16) { box.value = .int(Int64(value)) }
    func encode(_ value: Int32) { box.value = .int(Int64(value)) }
    func encode(_ value: Int64) { box.value = .int(value) }
    func encode(_ value: UInt) { box.value = Int64(exactly: value).map { .int($0) } }
    func encode(_ value: UInt8) { box.value = .int(Int64(value)) }
    func encode(_ value: UInt16) { box.value = .int(Int64(value)) }
    func encode(_ value: UInt32) { box.value = .int(Int64(value)) }
    func encode(_ value: UInt64) { box.value = Int64(exactly: value).map { .int($0) } }
    func encode<T: Encodable>(_ value: T) throws { try value.encode(to: self) }
}
