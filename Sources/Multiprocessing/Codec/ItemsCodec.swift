/// How the pool encodes and decodes the arrays of one element type that travel with each unit (a chunk's
/// inputs, a batch of results).
///
/// The format is ``BinaryEncoder``'s: for fixed-width numbers and `Bool` an array is one tag, a kind, a
/// count and the raw bytes; anything else goes through the general encoder. What the general path asks
/// the runtime on every message (does `[T]` take the raw path, a cast back to `[T]`, an encoder object) is
/// decided here once, when a call or a worker's function is set up: at chunk size 1 those questions were
/// the largest part of the parent's cost per item.
struct ItemsCodec<T>: Sendable {
    /// The raw-bytes kind of `T`, or `nil` when `T`'s arrays take the general path.
    let kind: TrivialKind?

    init() {
        self.init(kind: (T.self as? any BinaryTrivial.Type)?.trivialKind)
    }

    /// A codec for `T` whose kind was found before (by `ItemsCodec<T>().kind`); a kind that cannot be
    /// `T`'s (another size) takes the general path.
    init(kind: TrivialKind?) {
        self.kind = kind.flatMap { MemoryLayout<T>.size == $0.stride && MemoryLayout<T>.stride == $0.stride ? $0 : nil }
    }
}

extension ItemsCodec where T: Encodable {
    /// `items` encoded as `[T]`.
    func encode(_ items: [T]) throws -> [UInt8] {
        guard let kind else { return try BinaryEncoder().encode(items) }
        return items.withUnsafeBytes { Self.raw(kind, count: items.count, $0) }
    }

    /// `items` encoded as `[T]`.
    func encode(_ items: ArraySlice<T>) throws -> [UInt8] {
        guard let kind else { return try BinaryEncoder().encode(Array(items)) }
        return items.withUnsafeBytes { Self.raw(kind, count: items.count, $0) }
    }

    /// `[item]` encoded as `[T]`, without building the array.
    func encode(one item: T) throws -> [UInt8] {
        guard let kind else { return try BinaryEncoder().encode([item]) }
        return withUnsafeBytes(of: item) {
            Self.raw(kind, count: 1, UnsafeRawBufferPointer(rebasing: $0.prefix(kind.stride)))
        }
    }

    /// A raw array: header, then the items' bytes. (One non-generic body for arrays, slices and single
    /// items: forwarding one to another costs a metadata lookup per call in the unspecialised library.)
    private static func raw(_ kind: TrivialKind, count: Int, _ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(12 + bytes.count)
        out.append(BinaryTag.trivialArray.rawValue)
        out.append(kind.rawValue)
        writeVarint(UInt64(count), into: &out)
        out.append(contentsOf: bytes)
        return out
    }
}

extension ItemsCodec where T: Decodable {
    /// A `[T]` decoded from `bytes` (as ``BinaryDecoder`` would, with the same errors for bad input).
    func decode(_ bytes: UnsafeRawBufferPointer) throws -> [T] {
        guard kind != nil, bytes.count >= 2, bytes[0] == BinaryTag.trivialArray.rawValue else {
            return try BinaryDecoder().decode([T].self, from: bytes)
        }
        let (count, items) = try rawItems(bytes)
        let raw = UnsafeRawBufferPointer(rebasing: bytes[items])
        return [T](unsafeUninitializedCapacity: count) { out, initialized in
            if count > 0 { UnsafeMutableRawBufferPointer(out).copyMemory(from: raw) }
            initialized = count
        }
    }

    /// For a raw-bytes `T`: the number of items in the encoded array `bytes` and where their bytes are,
    /// checked as ``decode(_:)`` checks them (kind, length, `Bool` values), so that they can be copied
    /// into place as `T`s.
    func rawItems(_ bytes: UnsafeRawBufferPointer) throws -> (count: Int, bytes: Range<Int>) {
        guard let kind else { preconditionFailure("rawItems of a type that is not raw bytes") }
        return try rawArrayItems(kind: kind, bytes, expected: "[\(T.self)]")
    }
}

/// The count and item bytes of the raw array of `kind` in `bytes`, checked (tag, kind, length, `Bool`
/// values); `expected` names the type for errors. One non-generic body for every element type.
func rawArrayItems(
    kind: TrivialKind,
    _ bytes: UnsafeRawBufferPointer,
    expected: @autoclosure () -> String
) throws -> (count: Int, bytes: Range<Int>) {
    guard bytes.count >= 2 else { throw MultiprocessingError.truncated }
    guard bytes[0] == BinaryTag.trivialArray.rawValue else {
        let tag = BinaryTag(rawValue: bytes[0]).map { "\($0)" } ?? "tag \(bytes[0])"
        throw MultiprocessingError.typeMismatch("\(tag) where \(expected()) was expected")
    }
    guard bytes[1] == kind.rawValue else {
        let found = TrivialKind(rawValue: bytes[1]).map { "\($0)" } ?? "kind \(bytes[1])"
        throw MultiprocessingError.typeMismatch("array of \(found) where \(expected()) was expected")
    }
    var p = 2
    let n = try readVarint(bytes, at: &p)
    let stride = kind.stride
    guard n <= UInt64(bytes.count - p) / UInt64(stride) else { throw MultiprocessingError.truncated }
    let count = Int(n)
    let items = p..<(p + count * stride)
    if kind == .bool, UnsafeRawBufferPointer(rebasing: bytes[items]).contains(where: { $0 > 1 }) {
        throw MultiprocessingError(.decodingFailed, "a Bool that is neither 0 nor 1")
    }
    return (count, items)
}
