/// The library's binary `Codable` format, read without the types that wrote it.
public enum BinaryFormat {
    /// A JSON-like text of an encoded value (`{"n": 3, "name": "x", "sizes": [1, 2]}`): what a job's
    /// arguments or a result hold, for people (the web console, logs) who lack the Swift types. Nil when
    /// `bytes` is not one well-formed value (nested at most 64 deep); long texts are cut at `limit`
    /// Unicode scalars, with `…`.
    public static func describe(_ bytes: [UInt8], limit: Int = 4096) -> String? {
        var reader = DescriptionReader(bytes: bytes, limit: max(16, limit))
        guard (try? reader.value(depth: 0)) != nil, reader.p == bytes.count else { return nil }
        return reader.out
    }
}

private struct DescriptionReader {
    struct Malformed: Error {}
    let bytes: [UInt8]
    let limit: Int
    var p = 0
    var out = ""
    /// Unicode scalars in `out` (counted as they are added: `out.count` would walk the whole text each time).
    var used = 0
    var cut = false

    init(bytes: [UInt8], limit: Int) {
        self.bytes = bytes
        self.limit = limit
    }

    mutating func emit(_ s: String) throws {
        guard !cut else { return }
        let n = s.unicodeScalars.count
        if used + n <= limit {
            out += s
            used += n
            return
        }
        out.unicodeScalars.append(contentsOf: s.unicodeScalars.prefix(limit - used))
        out += "…"
        used = limit
        cut = true
    }

    mutating func byte() throws -> UInt8 {
        guard p < bytes.count else { throw Malformed() }
        defer { p += 1 }
        return bytes[p]
    }

    mutating func varint() throws -> UInt64 {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try byte()
            guard shift < 64 else { throw Malformed() }
            v |= UInt64(b & 0x7f) << shift
            if b < 0x80 { return v }
            shift += 7
        }
    }

    mutating func raw(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count - p else { throw Malformed() }
        defer { p += n }
        return bytes[p..<p + n]
    }

    mutating func fixed(_ n: Int) throws -> UInt64 {
        var v: UInt64 = 0
        for (i, b) in try raw(n).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }

    static func quoted(_ bytes: ArraySlice<UInt8>) -> String {
        var s = "\""
        for ch in String(decoding: bytes, as: UTF8.self).unicodeScalars {
            switch ch {
            case "\"": s += "\\\""
            case "\\": s += "\\\\"
            case "\n": s += "\\n"
            case "\t": s += "\\t"
            default:
                if ch.value < 32 { s += "\\u{\(String(ch.value, radix: 16))}" } else { s.unicodeScalars.append(ch) }
            }
        }
        return s + "\""
    }

    mutating func value(depth: Int) throws {
        guard depth < 64 else { throw Malformed() }
        guard let tag = BinaryTag(rawValue: try byte()) else { throw Malformed() }
        switch tag {
        case .null: try emit("null")
        case .false: try emit("false")
        case .true: try emit("true")
        case .int:
            let z = try varint()
            try emit(String(Int64(bitPattern: (z >> 1) ^ (0 &- (z & 1)))))
        case .uint: try emit(String(try varint()))
        case .float: try emit("\(Float(bitPattern: UInt32(truncatingIfNeeded: try fixed(4))))")
        case .double: try emit("\(Double(bitPattern: try fixed(8)))")
        case .string:
            let n = try varint()
            guard n <= UInt64(Int.max) else { throw Malformed() }
            try emit(Self.quoted(try raw(Int(n))))
        case .keyedStart:
            try emit("{")
            var first = true
            while true {
                guard p < bytes.count else { throw Malformed() }
                if bytes[p] == BinaryTag.keyedEnd.rawValue {
                    p += 1
                    break
                }
                let n = try varint()
                guard n >= UInt64(keyLengthBias), n - UInt64(keyLengthBias) <= UInt64(bytes.count - p) else {
                    throw Malformed()
                }
                try emit((first ? "" : ", ") + Self.quoted(try raw(Int(n) - keyLengthBias)) + ": ")
                first = false
                try value(depth: depth + 1)
            }
            try emit("}")
        case .unkeyedStart:
            try emit("[")
            var first = true
            while true {
                guard p < bytes.count else { throw Malformed() }
                if bytes[p] == BinaryTag.unkeyedEnd.rawValue {
                    p += 1
                    break
                }
                if !first { try emit(", ") }
                first = false
                try value(depth: depth + 1)
            }
            try emit("]")
        case .trivialArray:
            guard let kind = TrivialKind(rawValue: try byte()) else { throw Malformed() }
            let count = try varint()
            let width: Int
            switch kind {
            case .int8, .uint8, .bool: width = 1
            case .int16, .uint16: width = 2
            case .int32, .uint32, .float: width = 4
            case .int64, .uint64, .int, .uint, .double: width = 8
            }
            guard count <= UInt64((bytes.count - p) / width) else { throw Malformed() }
            try emit("[")
            for i in 0..<Int(count) {
                let v = try fixed(width)
                if cut { continue }
                if i > 0 { try emit(", ") }
                switch kind {
                case .int8: try emit(String(Int8(truncatingIfNeeded: v)))
                case .int16: try emit(String(Int16(truncatingIfNeeded: v)))
                case .int32: try emit(String(Int32(truncatingIfNeeded: v)))
                case .int64, .int: try emit(String(Int64(bitPattern: v)))
                case .uint8, .uint16, .uint32, .uint64, .uint: try emit(String(v))
                case .float: try emit("\(Float(bitPattern: UInt32(truncatingIfNeeded: v)))")
                case .double: try emit("\(Double(bitPattern: v))")
                case .bool: try emit(v == 0 ? "false" : "true")
                }
            }
            try emit("]")
        case .keyedEnd, .unkeyedEnd:
            throw Malformed()
        }
    }
}
