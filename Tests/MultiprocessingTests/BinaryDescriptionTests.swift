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

    @Test func longTextsAreCut() throws {
        let bytes = try BinaryEncoder().encode([Int](repeating: 123_456, count: 10_000))
        let text = try #require(BinaryFormat.describe(bytes, limit: 100))
        #expect(text.hasSuffix("…") && text.count == 101)
    }

    @Test func malformedOrHostileBytesAreNotDescribed() throws {
        let good = try BinaryEncoder().encode(Inner(flag: false, ratio: 2))
        // Every truncation, and trailing bytes.
        for n in 0..<good.count { #expect(BinaryFormat.describe(Array(good.prefix(n))) == nil) }
        #expect(BinaryFormat.describe(good + [0]) == nil)
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
