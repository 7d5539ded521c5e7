import MultiprocessingTestSupport
import Testing

@testable import Multiprocessing

struct CodecTests {
    struct Inner: Codable, Equatable {
        var a: Int
        var s: String?
    }
    enum Kind: String, Codable, Equatable { case x, y }
    enum Payload: Codable, Equatable {
        case none
        case one(Int)
        case pair(String, Double)
    }
    struct Outer: Codable, Equatable {
        var i: Int = -5
        var u: UInt8 = 250
        var d: Double = 3.25
        var f: Float = -1.5
        var b: Bool = true
        var s: String = "héllo"
        var opt: Int? = nil
        var arr: [Int] = [1, -2, 3]
        var bytes: [UInt8] = [0, 255, 7]
        var doubles: [Double] = [0.5, 1e300]
        var inners: [Inner] = [Inner(a: 1, s: nil), Inner(a: 2, s: "two")]
        var dict: [String: Int] = ["a": 1, "b": 2]
        var intDict: [Int: String] = [3: "c"]
        var nested: [[Int]] = [[1], [], [2, 3]]
        var kind: Kind = .y
        var payloads: [Payload] = [.none, .one(4), .pair("p", 2.5)]
        var optArr: [Int?] = [1, nil, 3]
        var big: Int64 = .min
        var bigU: UInt64 = .max
    }

    func roundTrip<T: Codable & Equatable>(_ v: T) throws -> T {
        let bytes = try BinaryEncoder().encode(v)
        let back = try BinaryDecoder().decode(T.self, from: bytes)
        #expect(back == v)
        return back
    }

    @Test func keysOfEveryLengthSurviveSkippingAndNesting() throws {
        // A key's length byte once doubled as a tag: keys of 9 characters read as `keyedEnd`, and keys
        // longer than 12 characters failed whenever a value had to be skipped (enums, out-of-order keys).
        struct Inner: Codable, Equatable {
            var ninechars: Int  // 9 characters
            var aVeryLongKeyNameIndeed: [UInt8]?
            var k: String
        }
        enum Outer: Codable, Equatable {
            case wrapped(Inner)
            case other
        }
        for inner in [
            Inner(ninechars: 1, aVeryLongKeyNameIndeed: [1, 2, 3], k: "x"),
            Inner(ninechars: -5, aVeryLongKeyNameIndeed: nil, k: ""),
        ] {
            let v = Outer.wrapped(inner)
            #expect(try BinaryDecoder().decode(Outer.self, from: try BinaryEncoder().encode(v)) == v)
            #expect(try BinaryDecoder().decode(Inner.self, from: try BinaryEncoder().encode(inner)) == inner)
        }
    }

    @Test func roundTripsEverything() throws {
        _ = try roundTrip(Outer())
        _ = try roundTrip(42)
        _ = try roundTrip("just a string")
        _ = try roundTrip([1.5, 2.5])
        _ = try roundTrip(Optional<Int>.none)
        _ = try roundTrip([String]())
        _ = try roundTrip(Array(repeating: Outer(), count: 3))
    }

    @Test func trivialArraysAreRawBytes() throws {
        let xs = Array(0..<10_000)
        let bytes = try BinaryEncoder().encode(xs)
        #expect(bytes.count < 10_000 * 8 + 16)
        #expect(try BinaryDecoder().decode([Int].self, from: bytes) == xs)
        // A trivial array decodes as the element type it was written with, or fails clearly.
        #expect {
            try BinaryDecoder().decode([Int32].self, from: bytes)
        } throws: {
            guard let e = $0 as? MultiprocessingError else { return false }
            return e.code == .decodingFailed && e.message.hasPrefix("type mismatch: array of int where [Int32]")
        }
    }

    /// The pool's per-type codec writes exactly what the general encoder writes, reads what it reads, and
    /// refuses what it refuses.
    @Test func itemsCodecMatchesTheGeneralFormat() throws {
        func check<T: Codable & Equatable>(_ xs: [T]) throws {
            let codec = ItemsCodec<T>()
            #expect(try codec.encode(xs) == BinaryEncoder().encode(xs))
            if let x = xs.first { #expect(try codec.encode(one: x) == BinaryEncoder().encode([x])) }
            let bytes = try BinaryEncoder().encode(xs)
            #expect(try bytes.withUnsafeBytes { try codec.decode($0) } == xs)
            // A kind found before, as a worker's chunk context passes it.
            #expect(try ItemsCodec<T>(kind: codec.kind).encode(xs) == bytes)
        }
        try check([Int8.min, 0, Int8.max])
        try check([UInt8.max, 0])
        try check([Int16.min, 7])
        try check([UInt16.max])
        try check([Int32.min, -1])
        try check([UInt32.max])
        try check([Int64.min, Int64.max])
        try check([UInt64.max])
        try check([Int.min, 0, Int.max])
        try check([UInt.max])
        try check([Float(-0.0), .infinity, 1.5])
        try check([-0.0, Double.infinity, .pi])
        try check([true, false])
        try check([Int]())
        try check(["a", "bc"])  // the general path
        try check([Inner(a: 1, s: nil)])
        // Where a raw array's items are, for copying them into place.
        let ints = try BinaryEncoder().encode([7, 8, 9])
        let (n, range) = try ints.withUnsafeBytes { try ItemsCodec<Int>().rawItems($0) }
        #expect(n == 3 && range == (ints.count - 24)..<ints.count)
        #expect(ItemsCodec<Int>().kind == .int)
        #expect(ItemsCodec<String>().kind == nil)
        // A kind that cannot be the type's (another size) takes the general path.
        #expect(ItemsCodec<Int32>(kind: .int64).kind == nil)

        func refused(_ bytes: [UInt8], _ message: String) {
            #expect {
                try bytes.withUnsafeBytes { try ItemsCodec<Bool>().decode($0) }
            } throws: {
                ($0 as? MultiprocessingError)?.code == .decodingFailed
                    && "\(($0 as? MultiprocessingError)?.message ?? "")".contains(message)
            }
        }
        let tag = BinaryTag.trivialArray.rawValue
        let bool = TrivialKind.bool.rawValue
        refused([tag, bool, 2, 1, 2], "neither 0 nor 1")  // a byte that is not a Bool
        refused([tag, bool, 3, 1, 0], "ended in the middle")  // fewer bytes than the count says
        refused([tag, bool, 0x80], "ended in the middle")  // a count cut short
        refused([tag, bool] + [UInt8](repeating: 0xff, count: 10) + [1], "malformed varint")
        refused([tag, TrivialKind.int.rawValue, 1] + [UInt8](repeating: 0, count: 8), "type mismatch: array of int")
        // The general decoder refuses a Bool byte that is not 0 or 1 too.
        #expect(throws: MultiprocessingError.self) {
            try BinaryDecoder().decode([Bool].self, from: [tag, bool, 1, 7])
        }
    }

    /// A type whose decoder reads keys in another order than its encoder wrote them, and skips one.
    struct Reordered: Codable, Equatable {
        var a: Int, b: String, c: [Int]
        enum CodingKeys: String, CodingKey { case a, b, c, extra }
        init(a: Int, b: String, c: [Int]) { (self.a, self.b, self.c) = (a, b, c) }
        init(from decoder: any Decoder) throws {
            let k = try decoder.container(keyedBy: CodingKeys.self)
            c = try k.decode([Int].self, forKey: .c)
            a = try k.decode(Int.self, forKey: .a)
            b = try k.decode(String.self, forKey: .b)
            // The key it never reads is still there, beside the three it read out of order.
            #expect(k.contains(.extra))
            #expect(Set(k.allKeys.map(\.stringValue)) == ["a", "b", "c", "extra"])
        }
        func encode(to encoder: any Encoder) throws {
            var k = encoder.container(keyedBy: CodingKeys.self)
            try k.encode(a, forKey: .a)
            try k.encode(["ignored"], forKey: .extra)
            try k.encode(b, forKey: .b)
            try k.encode(c, forKey: .c)
        }
    }

    @Test func outOfOrderAndUnknownKeys() throws {
        _ = try roundTrip([Reordered(a: 1, b: "x", c: [9, 8]), Reordered(a: 2, b: "y", c: [])])
    }

    @Test func malformedInputIsAnErrorNotACrash() throws {
        let good = try BinaryEncoder().encode(Outer())
        for cut in stride(from: 0, to: good.count, by: 7) {
            #expect(throws: (any Error).self) { try BinaryDecoder().decode(Outer.self, from: Array(good[..<cut])) }
        }
        #expect(throws: (any Error).self) { try BinaryDecoder().decode(Int.self, from: [0xff, 1, 2]) }
        #expect(throws: (any Error).self) {
            try BinaryDecoder().decode(Int8.self, from: try BinaryEncoder().encode(1000))
        }
        #expect(throws: (any Error).self) {
            try BinaryDecoder().decode(Outer.self, from: try BinaryEncoder().encode("no"))
        }
    }

    /// A value nested in itself, as a recursive `Codable` type is (a tree, a JSON-like enum).
    indirect enum Nest: Codable, Equatable {
        case leaf
        case node(Nest)
        static func depth(_ n: Int) -> Nest { (0..<n).reduce(.leaf) { v, _ in .node(v) } }
    }

    /// What the fuzzer found (`scripts/fuzz codec`, `pool-frames`; both inputs are in the corpus, which
    /// FuzzTests replays): a length over `Int.max` trapped converting to `Int`, and lengths near it
    /// overflowed offsets. And what a peer can nest: decoding and skipping recurse, so a value nested a
    /// million deep would overflow the thread's stack; past 512 levels it is an error.
    @Test func hostileLengthsAndDepthsAreErrors() throws {
        let hugeString: [UInt8] = [7] + Array(repeating: 0xFF, count: 9) + [0x01]
        #expect(throws: (any Error).self) { try BinaryDecoder().decode(String.self, from: hugeString) }
        // A key whose length is near 2^64 (the bias then the key, in a keyed container being skipped).
        let hugeKey: [UInt8] = [10, 8] + Array(repeating: 0xFF, count: 9) + [0x01, 11]
        #expect(throws: (any Error).self) { try BinaryDecoder().decode([Int].self, from: hugeKey) }
        let hugeArray: [UInt8] = [12, 7] + Array(repeating: 0xFF, count: 9) + [0x01]
        #expect(throws: (any Error).self) { try BinaryDecoder().decode([Int].self, from: hugeArray) }
        // A million nested arrays, skipped as an unknown field's value, and as a recursive type.
        let deep = [UInt8](repeating: 10, count: 1_000_000) + [UInt8](repeating: 11, count: 1_000_000)
        #expect(throws: (any Error).self) { try BinaryDecoder().decode(Reordered.self, from: [8] + deep + [9]) }
        #expect(throws: (any Error).self) {
            try BinaryDecoder().decode(Nest.self, from: try BinaryEncoder().encode(Nest.depth(600)))
        }
        #expect(try roundTrip(Nest.depth(100)) == Nest.depth(100))
    }
}
