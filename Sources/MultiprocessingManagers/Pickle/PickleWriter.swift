/// Writes ``PythonValue``s as protocol-4 pickles, byte for byte as CPython's `ForkingPickler.dumps`
/// writes the same values (for messages under 64 KiB without shared references), so golden vectors
/// compare exactly. Larger messages are written without frames (valid; CPython reads them).
public struct PickleWriter: Sendable {
    /// A writer (it has no settings).
    public init() {}

    /// `value` as a protocol-4 pickle, as Python's `pickle.dumps(value, protocol=4)` writes it.
    ///
    /// - Throws: ``PickleError`` for a value nested deeper than ``PickleReader`` reads by default (200
    ///   levels), or a ``PythonValue/object(_:)`` whose callable is not a ``PythonValue/global(module:name:)``.
    public func write(_ value: PythonValue) throws(PickleError) -> [UInt8] {
        var body: [UInt8] = []
        body.reserveCapacity(64)
        var memo = 0
        try Self.emit(value, into: &body, memo: &memo, depth: 0)
        body.append(0x2e)
        var out: [UInt8] = [0x80, 4]
        if body.count >= 4 && body.count < 65536 {
            out.reserveCapacity(body.count + 11)
            out.append(0x95)
            withUnsafeBytes(of: UInt64(body.count).littleEndian) { out.append(contentsOf: $0) }
        } else {
            out.reserveCapacity(body.count + 2)
        }
        out.append(contentsOf: body)
        return out
    }

    /// The deepest value written: what ``PickleReader`` accepts by default, so whatever this side writes
    /// it can read back. (It was 1000: AddressSanitizer's larger frames made those 1000 recursive calls
    /// overflow a cooperative-pool thread's stack, `scripts/sanitize address`.)
    static let maxDepth = PickleLimits().maxDepth

    private static func emit(_ v: PythonValue, into b: inout [UInt8], memo: inout Int, depth: Int) throws(PickleError) {
        guard depth < maxDepth else { throw PickleError(.tooDeep, "value nested deeper than \(maxDepth)") }
        func memoize() {
            b.append(0x94)
            memo += 1
        }
        switch v {
        case .none: b.append(0x4e)
        case .bool(let x): b.append(x ? 0x88 : 0x89)
        case .int(let i): int(i, into: &b)
        case .bigInt(let raw):
            switch BigInts.normalized(raw) {
            case .int(let i): int(i, into: &b)
            case .bigInt(let minimal): long(minimal, into: &b)
            default: break
            }
        case .float(let d):
            b.append(0x47)
            withUnsafeBytes(of: d.bitPattern.bigEndian) { b.append(contentsOf: $0) }
        case .string(let s):
            str(s, into: &b)
            memoize()
        case .bytes(let x):
            if x.count < 256 {
                b.append(0x43)
                b.append(UInt8(x.count))
            } else if x.count <= Int(UInt32.max) {
                b.append(0x42)
                withUnsafeBytes(of: UInt32(x.count).littleEndian) { b.append(contentsOf: $0) }
            } else {
                b.append(0x8e)
                withUnsafeBytes(of: UInt64(x.count).littleEndian) { b.append(contentsOf: $0) }
            }
            b.append(contentsOf: x)
            memoize()
        case .bytearray(let x):
            // Protocol 4 has no bytearray opcode: CPython writes builtins.bytearray(bytes).
            try emit(
                .object(PythonObject(callable: .global(module: "builtins", name: "bytearray"), args: [.bytes(x)])),
                into: &b,
                memo: &memo,
                depth: depth
            )
        case .tuple(let t):
            if t.isEmpty {
                b.append(0x29)
                return
            }
            if t.count <= 3 {
                for x in t { try emit(x, into: &b, memo: &memo, depth: depth + 1) }
                b.append(UInt8(0x84 + t.count))
            } else {
                b.append(0x28)
                for x in t { try emit(x, into: &b, memo: &memo, depth: depth + 1) }
                b.append(0x74)
            }
            memoize()
        case .list(let l):
            b.append(0x5d)
            memoize()
            if l.count == 1 {
                try emit(l[0], into: &b, memo: &memo, depth: depth + 1)
                b.append(0x61)
            } else {
                // MARK … APPENDS per batch of 1000, as CPython.
                var i = 0
                while i < l.count {
                    b.append(0x28)
                    for j in i..<min(l.count, i + 1000) { try emit(l[j], into: &b, memo: &memo, depth: depth + 1) }
                    b.append(0x65)
                    i += 1000
                }
            }
        case .dict(let d):
            b.append(0x7d)
            memoize()
            if d.count == 1 {
                try emit(d[0].key, into: &b, memo: &memo, depth: depth + 1)
                try emit(d[0].value, into: &b, memo: &memo, depth: depth + 1)
                b.append(0x73)
            } else {
                var i = 0
                while i < d.count {
                    b.append(0x28)
                    for j in i..<min(d.count, i + 1000) {
                        try emit(d[j].key, into: &b, memo: &memo, depth: depth + 1)
                        try emit(d[j].value, into: &b, memo: &memo, depth: depth + 1)
                    }
                    b.append(0x75)
                    i += 1000
                }
            }
        case .set(let s):
            b.append(0x8f)
            memoize()
            var i = 0
            while i < s.count {
                b.append(0x28)
                for x in s[i..<min(s.count, i + 1000)] { try emit(x, into: &b, memo: &memo, depth: depth + 1) }
                b.append(0x90)
                i += 1000
            }
        case .frozenset(let s):
            b.append(0x28)
            for x in s { try emit(x, into: &b, memo: &memo, depth: depth + 1) }
            b.append(0x91)
            memoize()
        case .global(let module, let name):
            str(module, into: &b)
            memoize()
            str(name, into: &b)
            memoize()
            b.append(0x93)
            memoize()
        case .object(let o):
            guard case .global = o.callable else {
                throw PickleError(.unpicklable, "an object whose callable is not a global")
            }
            try emit(o.callable, into: &b, memo: &memo, depth: depth + 1)
            try emit(.tuple(o.args), into: &b, memo: &memo, depth: depth + 1)
            b.append(o.viaNew ? 0x81 : 0x52)
            memoize()
            if let state = o.state {
                try emit(state, into: &b, memo: &memo, depth: depth + 1)
                b.append(0x62)
            }
        }
    }

    private static func str(_ s: String, into b: inout [UInt8]) {
        var s = s
        s.withUTF8 { u in
            if u.count < 256 {
                b.append(0x8c)
                b.append(UInt8(u.count))
            } else if u.count <= Int(UInt32.max) {
                b.append(0x58)
                withUnsafeBytes(of: UInt32(u.count).littleEndian) { b.append(contentsOf: $0) }
            } else {
                b.append(0x8d)
                withUnsafeBytes(of: UInt64(u.count).littleEndian) { b.append(contentsOf: $0) }
            }
            b.append(contentsOf: u)
        }
    }

    private static func int(_ i: Int64, into b: inout [UInt8]) {
        if i >= 0 && i < 256 {
            b.append(0x4b)
            b.append(UInt8(i))
        } else if i >= 256 && i < 65536 {
            b.append(0x4d)
            withUnsafeBytes(of: UInt16(i).littleEndian) { b.append(contentsOf: $0) }
        } else if i >= Int64(Int32.min) && i <= Int64(Int32.max) {
            b.append(0x4a)
            withUnsafeBytes(of: Int32(i).littleEndian) { b.append(contentsOf: $0) }
        } else {
            // Minimal two's complement, little-endian.
            var bytes: [UInt8] = []
            var v = i
            repeat {
                bytes.append(UInt8(truncatingIfNeeded: v))
                v >>= 8
            } while !(v == 0 && bytes.last! & 0x80 == 0) && !(v == -1 && bytes.last! & 0x80 != 0)
            long(bytes, into: &b)
        }
    }

    private static func long(_ bytes: [UInt8], into b: inout [UInt8]) {
        if bytes.count < 256 {
            b.append(0x8a)
            b.append(UInt8(bytes.count))
        } else {
            b.append(0x8b)
            withUnsafeBytes(of: Int32(bytes.count).littleEndian) { b.append(contentsOf: $0) }
        }
        b.append(contentsOf: bytes)
    }
}
