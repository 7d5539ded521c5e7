/// Turns rows into `Decodable` values by column name, and `Encodable` values into rows.
///
/// A property's name is its column's name; an optional property takes NULL as nil. Supported property
/// types: the integer types, `Double`, `Float`, `String`, `Bool`, `[UInt8]` (a blob), ``SQLValue``, and
/// optionals of these. A `Decodable` type of ``SQLRow`` gets the row itself.
public struct SQLRowDecoder: Sendable {
    /// Column positions by name, for rows of one query.
    let index: [String: Int]
    let columns: [String]

    /// A decoder for rows of a query whose columns are `columns`, in order (of two columns with one name,
    /// the first is read).
    public init(columns: [String]) {
        self.columns = columns
        var index: [String: Int] = [:]
        for (i, c) in columns.enumerated() where index[c] == nil { index[c] = i }
        self.index = index
    }

    /// Decodes a `T` from one row's `values` (in the columns' order), each property from the column of its
    /// name; ``SQLRow`` gets the row itself.
    ///
    /// - Throws: ``SQLError`` (kind `conversion`) when a column is missing or a value does not fit its
    ///   property.
    public func decode<T: Decodable>(_ type: T.Type, from values: [SQLValue]) throws -> T {
        if T.self == SQLRow.self { return SQLRow(columns: columns, values: values) as! T }
        do {
            return try T(from: RowDecoding(decoder: self, values: values))
        } catch let e as SQLError {
            throw e
        } catch {
            throw SQLError(.conversion, "cannot read a \(T.self) from a row of \(columns): \(error)")
        }
    }
}

/// Turns `Encodable` values into rows: the columns are the properties in declaration order (the union
/// over all values, a missing optional being NULL).
public struct SQLRowEncoder: Sendable {
    /// An encoder (it has no settings).
    public init() {}

    /// The columns and one row of values per item.
    public func encode<T: Encodable>(_ items: [T]) throws -> (columns: [String], rows: [[SQLValue]]) {
        let b = try encodeBatch(items)
        return (b.columns, (0..<b.count).map { Array(b.row($0)) })
    }

    /// The items as one batch of rows (values stored flat: what inserts take, one allocation).
    public func encodeBatch<T: Encodable>(_ items: [T]) throws -> SQLRowBatch {
        if let rows = items as? [SQLRow] {
            guard let first = rows.first else { return SQLRowBatch(columns: []) }
            var columns = first.columns
            for r in rows.dropFirst() where r.columns != columns {
                for c in r.columns where !columns.contains(c) { columns.append(c) }
            }
            var b = SQLRowBatch(columns: columns)
            b.values.reserveCapacity(rows.count * columns.count)
            for r in rows { b.append(r.columns == columns ? r.values : columns.map { r[$0] ?? .null }) }
            return b
        }
        // Rows of one type encode their properties in the same order: after the first, a row whose keys
        // come in the expected order is stored by position (no hashing), straight into the batch's values;
        // others fall back to names.
        let storage = RowStorage()
        var columns: [String] = []
        var irregular: [(index: Int, names: [String], values: [SQLValue])] = []
        var count = 0
        for item in items {
            storage.startRow(expected: columns)
            do {
                try item.encode(to: RowEncoding(storage: storage))
            } catch {
                throw SQLError(.conversion, "cannot write a \(T.self) as a row: \(error)")
            }
            let width = storage.out.count - storage.rowStart
            if count == 0 {
                columns = storage.order
                storage.out.reserveCapacity(items.count * columns.count)
            } else if !(storage.inOrder && width == columns.count) {
                let row = Array(storage.out[storage.rowStart...])
                storage.out.removeSubrange(storage.rowStart...)
                let names = storage.inOrder ? Array(columns[..<row.count]) : storage.order
                irregular.append((count, names, row))
                storage.out += [SQLValue](repeating: .null, count: columns.count)
            }
            count += 1
        }
        let values = storage.out
        guard !irregular.isEmpty else { return SQLRowBatch(columns: columns, values: values) }
        // Some rows had other columns (an optional left out): rebuild by name.
        var all = columns
        for r in irregular { for k in r.names where !all.contains(k) { all.append(k) } }
        var b = SQLRowBatch(columns: all)
        var next = irregular.makeIterator()
        var pending = next.next()
        for i in 0..<count {
            if let p = pending, p.index == i {
                b.append(all.map { k in p.names.firstIndex(of: k).map { p.values[$0] } ?? .null })
                pending = next.next()
            } else {
                b.append(
                    Array(values[(i * columns.count)..<((i + 1) * columns.count)])
                        + [SQLValue](repeating: .null, count: all.count - columns.count)
                )
            }
        }
        return b
    }
}

/// Rows of the same columns, their values stored flat (row after row).
public struct SQLRowBatch: Sendable, Hashable {
    /// The column names, in order.
    public var columns: [String]
    /// Every row's values, row after row: value `c` of row `r` is at `r * columns.count + c`.
    public var values: [SQLValue]
    /// The number of rows.
    public var count: Int { columns.isEmpty ? 0 : values.count / columns.count }
    /// Whether the batch has no rows.
    public var isEmpty: Bool { values.isEmpty }

    /// A batch of rows under `columns`, holding `values` (whole rows, row after row: a precondition); by
    /// default empty.
    public init(columns: [String], values: [SQLValue] = []) {
        precondition(columns.isEmpty ? values.isEmpty : values.count % columns.count == 0, "a batch holds whole rows")
        self.columns = columns
        self.values = values
    }

    /// Appends a row (one value per column).
    public mutating func append(_ row: some Collection<SQLValue>) {
        precondition(row.count == columns.count, "a row needs one value per column")
        values.append(contentsOf: row)
    }

    /// Row `i`'s values.
    public func row(_ i: Int) -> ArraySlice<SQLValue> { values[(i * columns.count)..<((i + 1) * columns.count)] }
}

private final class Cursor {
    var next = 0
}

private struct RowDecoding: Decoder {
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

private struct RowKeyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
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
private struct ValueDecoding: Decoder, SingleValueDecodingContainer {
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

private final class RowStorage {
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

private struct RowEncoding: Encoder {
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

private struct RowKeyedEncoding<Key: CodingKey>: KeyedEncodingContainerProtocol {
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

private final class ValueBox { var value: SQLValue? }

/// A value that encodes itself as one value (an enum with a raw value, a wrapper).
private struct SingleEncoding: Encoder, SingleValueEncodingContainer {
    let key: any CodingKey
    let box = ValueBox()
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
