// The `Decoder` behind `SQLRowDecoder`: a row's columns as a struct's properties.

/// The `Decoder` ``SQLRowDecoder`` hands a `Decodable` type: one row, read by column name.
struct RowDecoding: Decoder {
    /// The column the next property is expected in (properties usually decode in column order), shared
    /// by the row's containers.
    final class Cursor {
        var next = 0
    }

    let decoder: SQLRowDecoder
    let values: [SQLValue]
    let cursor = Cursor()
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(RowKeyed<Key>(row: self))
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        throw SQLError(.conversion, "a row decodes into a struct with named properties, not an array")
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        throw SQLError(.conversion, "a row decodes into a struct with named properties, not a single value")
    }
}

/// A row's properties by column name, trying the next column's name before hashing.
struct RowKeyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let row: RowDecoding
    var codingPath: [any CodingKey] { [] }
    var allKeys: [Key] { row.decoder.columns.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool {
        let guess = row.cursor.next
        if guess < row.decoder.columns.count, row.decoder.columns[guess] == key.stringValue { return true }
        return row.decoder.index[key.stringValue] != nil
    }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard contains(key) else { return nil }
        let v = try value(key)
        if v == .null { return nil }
        row.cursor.next -= 1  // decode reads the same column again
        return try decode(T.self, forKey: key)
    }
    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? {
        guard contains(key), try value(key) != .null else { return nil }
        row.cursor.next -= 1
        return try decode(String.self, forKey: key)
    }
    func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? {
        guard contains(key), try value(key) != .null else { return nil }
        row.cursor.next -= 1
        return try decode(Int64.self, forKey: key)
    }
    func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? {
        guard contains(key), try value(key) != .null else { return nil }
        row.cursor.next -= 1
        return try decode(Int.self, forKey: key)
    }
    func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? {
        guard contains(key), try value(key) != .null else { return nil }
        row.cursor.next -= 1
        return try decode(Double.self, forKey: key)
    }

    func value(_ key: Key) throws -> SQLValue {
        // Properties usually decode in column order: try the next column's name before hashing.
        let name = key.stringValue
        let guess = row.cursor.next
        if guess < row.decoder.columns.count, row.decoder.columns[guess] == name, guess < row.values.count {
            row.cursor.next = guess + 1
            return row.values[guess]
        }
        guard let i = row.decoder.index[name], i < row.values.count else {
            throw SQLError(.conversion, "the row has no column \(key.stringValue) (it has \(row.decoder.columns))")
        }
        row.cursor.next = i + 1
        return row.values[i]
    }

    func mismatch(_ key: Key, _ type: String, _ v: SQLValue) -> SQLError {
        SQLError(.conversion, "column \(key.stringValue) holds \(v), not a \(type)")
    }

    func decodeNil(forKey key: Key) throws -> Bool { try value(key) == .null }

    func integer<T: FixedWidthInteger>(_ key: Key) throws -> T {
        let v = try value(key)
        guard let i = v.intValue, let r = T(exactly: i) else { throw mismatch(key, "\(T.self)", v) }
        return r
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool {
        let v = try value(key)
        switch v {
        case .int(let i): return i != 0
        case .text(let s) where ["t", "true", "1", "f", "false", "0"].contains(s.lowercased()):
            return ["t", "true", "1"].contains(s.lowercased())
        default: throw mismatch(key, "Bool", v)
        }
    }
    func decode(_ type: String.Type, forKey key: Key) throws -> String {
        let v = try value(key)
        switch v {
        case .text(let s): return s
        case .int(let i): return String(i)
        case .double(let d): return String(d)
        case .blob(let b): return String(decoding: b, as: UTF8.self)
        case .null: throw mismatch(key, "String", v)
        }
    }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double {
        let v = try value(key)
        guard let d = v.doubleValue else { throw mismatch(key, "Double", v) }
        return d
    }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { Float(try decode(Double.self, forKey: key)) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try integer(key) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try integer(key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try integer(key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try integer(key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try integer(key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try integer(key) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try integer(key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try integer(key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try integer(key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try integer(key) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        let v = try value(key)
        if T.self == SQLValue.self { return v as! T }
        if T.self == [UInt8].self {
            switch v {
            case .blob(let b): return b as! T
            case .text(let s): return Array(s.utf8) as! T
            default: throw mismatch(key, "[UInt8]", v)
            }
        }
        // A RawRepresentable enum or a wrapper decodes through a single value.
        return try T(from: ValueDecoding(key: key, value: v))
    }

    func nestedContainer<N: CodingKey>(keyedBy type: N.Type, forKey key: Key) throws -> KeyedDecodingContainer<N> {
        throw SQLError(.conversion, "column \(key.stringValue): nested values are not supported")
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        throw SQLError(.conversion, "column \(key.stringValue): arrays are not supported")
    }
    func superDecoder() throws -> any Decoder { row }
    func superDecoder(forKey key: Key) throws -> any Decoder { row }
}

/// One column's value, for types that decode from a single value (enums with raw values, wrappers).
struct ValueDecoding: Decoder, SingleValueDecodingContainer {
    let key: any CodingKey
    let value: SQLValue
    var codingPath: [any CodingKey] { [key] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    func container<K: CodingKey>(keyedBy type: K.Type) throws -> KeyedDecodingContainer<K> {
        throw SQLError(.conversion, "column \(key.stringValue): nested values are not supported")
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        throw SQLError(.conversion, "column \(key.stringValue): arrays are not supported")
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }
    func decodeNil() -> Bool { value == .null }
    func fail(_ t: String) -> SQLError { SQLError(.conversion, "column \(key.stringValue) holds \(value), not a \(t)") }
    func decode(_ type: Bool.Type) throws -> Bool {
        guard let i = value.intValue else { throw fail("Bool") }
        return i != 0
    }
    func decode(_ type: String.Type) throws -> String {
        guard let s = value.textValue else { throw fail("String") }
        return s
    }
    func decode(_ type: Double.Type) throws -> Double {
        guard let d = value.doubleValue else { throw fail("Double") }
        return d
    }
    func decode(_ type: Float.Type) throws -> Float { Float(try decode(Double.self)) }
    func int<T: FixedWidthInteger>() throws -> T {
        guard let i = value.intValue, let r = T(exactly: i) else { throw fail("\(T.self)") }
        return r
    }
    func decode(_ type: Int.Type) throws -> Int { try int() }
    func decode(_ type: Int8.Type) throws -> Int8 { try int() }
    func decode(_ type: Int16.Type) throws -> Int16 { try int() }
    func decode(_ type: Int32.Type) throws -> Int32 { try int() }
    func decode(_ type: Int64.Type) throws -> Int64 { try int() }
    func decode(_ type: UInt.Type) throws -> UInt { try int() }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try int() }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try int() }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try int() }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try int() }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try T(from: self) }
}
