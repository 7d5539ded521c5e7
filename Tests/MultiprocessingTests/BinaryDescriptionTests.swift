import Testing

@testable import Multiprocessing

/// `BinaryFormat.describe`: a job's arguments for people who lack its Swift type (the web console).
@Suite struct BinaryDescriptionTests {
    struct Inner: Codable {
        var flag: Bool
        var ratio: Double
    }

    struct Arguments: Codable {
        var n: Int
        var name: String
        var missing: String?
        var sizes: [Int]
        var tags: [String]
        var inner: Inner
        var offset: Int8
        var big: UInt64
        var level: Float
    }

    @Test func aValueIsDescribedAsJSONLikeText() throws {
        let value = Arguments(
            n: -12,
            name: "say \"hi\"\n",
            missing: nil,
            sizes: [1, 2, 3],
            tags: ["a", "b"],
            inner: Inner(flag: true, ratio: 0.5),
            offset: -3,
            big: .max,
            level: 1.5
        )
        let bytes = try BinaryEncoder().encode(value)
        #expect(
            BinaryFormat.describe(bytes)
                == #"{"n": -12, "name": "say \"hi\"\n", "sizes": [1, 2, 3], "tags": ["a", "b"], "inner": {"flag": true, "ratio": 0.5}, "offset": -3, "big": 18446744073709551615, "level": 1.5}"#
        )
        #expect(BinaryFormat.describe(try BinaryEncoder().encode([UInt8](repeating: 7, count: 3))) == "[7, 7, 7]")
        #expect(BinaryFormat.describe(try BinaryEncoder().encode(Optional<Int>.none)) == "null")
    }

    class Base: Codable {
        var a: Int
        init(a: Int) { self.a = a }
    }

    final class Derived: Base {
        var b: Int
        enum Keys: String, CodingKey { case b }
        init(a: Int, b: Int) {
            self.b = b
            super.init(a: a)
        }
        required init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            b = try c.decode(Int.self, forKey: .b)
            try super.init(from: c.superDecoder())
        }
        override func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(b, forKey: .b)
            try super.encode(to: c.superEncoder())
        }
    }

    /// A subclass that encodes its superclass with `superEncoder()` (its key was once written without the
    /// key bias, so neither the decoder nor this description could read it).
    @Test func aSuperclassEncodedWithSuperEncoderRoundTrips() throws {
        let bytes = try BinaryEncoder().encode(Derived(a: 1, b: 2))
        let back = try BinaryDecoder().decode(Derived.self, from: bytes)
        #expect(back.a == 1 && back.b == 2)
        #expect(BinaryFormat.describe(bytes) == #"{"b": 2, "super": {"a": 1}}"#)
    }

    @Test func longTextsAreCut() throws {
        let bytes = try BinaryEncoder().encode([Int](repeating: 123_456, count: 10_000))
        let text = try #require(BinaryFormat.describe(bytes, limit: 100))
        #expect(text.hasSuffix("…") && text.unicodeScalars.count == 101)
        // Cut by scalars, not characters: a million combining accents on one letter are one character.
        let accents = try BinaryEncoder().encode("a" + String(repeating: "\u{301}", count: 1_000_000))
        #expect(try #require(BinaryFormat.describe(accents, limit: 100)).unicodeScalars.count == 101)
    }

    @Test func malformedOrHostileBytesAreNotDescribed() throws {
        let good = try BinaryEncoder().encode(Inner(flag: false, ratio: 2))
        // Every truncation, and trailing bytes.
        for n in 0..<good.count { #expect(BinaryFormat.describe(Array(good.prefix(n))) == nil) }
        #expect(BinaryFormat.describe(good + [0]) == nil)
        // Trailing bytes after a value long enough to be cut: still not one value.
        let long = try BinaryEncoder().encode([Int](repeating: 1, count: 1000))
        #expect(BinaryFormat.describe(long + [0], limit: 20) == nil)
        // A tag that does not exist, a container's end with no start, a key longer than the bytes.
        #expect(BinaryFormat.describe([200]) == nil)
        #expect(BinaryFormat.describe([BinaryTag.keyedEnd.rawValue]) == nil)
        #expect(BinaryFormat.describe([BinaryTag.keyedStart.rawValue, 0x7f, 0x41]) == nil)
        // A trivial array claiming more elements than there are bytes; a varint that never ends.
        #expect(
            BinaryFormat.describe([BinaryTag.trivialArray.rawValue, TrivialKind.int64.rawValue, 0xff, 0x01]) == nil
        )
        #expect(BinaryFormat.describe([BinaryTag.uint.rawValue] + [UInt8](repeating: 0xff, count: 20)) == nil)
        // Nested 100,000 deep: refused at 64 levels, no stack overflow.
        #expect(BinaryFormat.describe([UInt8](repeating: BinaryTag.unkeyedStart.rawValue, count: 100_000)) == nil)
    }
}
