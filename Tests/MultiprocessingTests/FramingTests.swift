import MultiprocessingTestSupport
import Testing

@testable import Multiprocessing

/// The one frame decoder (connections and pool channels), fed random, split and truncated input.
@Suite struct FramingTests {
    static func frame(_ payload: [UInt8], long: Bool) -> [UInt8] {
        if long {
            let n = UInt64(payload.count)
            return [0xFF, 0xFF, 0xFF, 0xFF] + (0..<8).map { UInt8(truncatingIfNeeded: n >> (56 - 8 * $0)) } + payload
        }
        let n = UInt32(payload.count)
        return (0..<4).map { UInt8(truncatingIfNeeded: n >> (24 - 8 * $0)) } + payload
    }

    /// Feeds `stream` to a decoder in random pieces, taking frames out as they complete.
    static func decode(
        _ stream: [UInt8],
        maxFrame: Int,
        capacity: Int,
        arrays: Bool?,
        keepsSpare: Bool = false,
        rng: inout SplitMix64
    )
        -> (frames: [[UInt8]], error: MultiprocessingError?, leftover: Bool, peakCapacity: Int)
    {
        var d = FrameDecoder(maxFrame: maxFrame, capacity: capacity)
        d.keepsSpare = keepsSpare
        var frames: [[UInt8]] = []
        var at = 0
        var peak = d.capacity
        while true {
            do {
                while true {
                    // Both ways on one decoder when asked (`arrays` nil): a frame read into a spare longer
                    // than itself, then handed over as an array, must be trimmed to its size.
                    let asArray = arrays ?? Bool.random(using: &rng)
                    let f = asArray ? try d.nextArray() : try d.next { Array($0) }
                    guard let f else { break }
                    frames.append(f)
                }
            } catch {
                return (frames, error as? MultiprocessingError, true, peak)
            }
            if at == stream.count { return (frames, nil, d.hasBufferedBytes, peak) }
            let piece = Int.random(in: 1...max(1, min(stream.count - at, 70_000)), using: &rng)
            _ = d.read { p in
                let n = min(p.count, piece)
                stream.withUnsafeBytes { s in p.baseAddress!.copyMemory(from: s.baseAddress! + at, byteCount: n) }
                at += n
                return n
            }
            peak = max(peak, d.capacity)
        }
    }

    /// With and without the spare array kept for the next large frame (the pool's decoders keep one: a
    /// frame then lands in a longer array than itself, or a shorter one that grows).
    @Test func randomFramesSplitAnywhereComeOutWhole() {
        var rng = SplitMix64(state: 42)
        for round in 0..<48 {
            let payloads: [[UInt8]] = (0..<Int.random(in: 1...8, using: &rng)).map { _ in
                let size =
                    [0, 1, 3, 100, 4_000, 65_540, 150_000].randomElement(using: &rng)!
                    + Int.random(in: 0...5, using: &rng)
                let seed = UInt8.random(in: 1...255, using: &rng)
                return (0..<size).map { UInt8(truncatingIfNeeded: $0) &* seed }
            }
            let stream = payloads.flatMap { Self.frame($0, long: Bool.random(using: &rng)) }
            let r = Self.decode(
                stream,
                maxFrame: 1 << 20,
                capacity: 64,
                arrays: round % 3 == 2 ? nil : round % 3 == 0,
                keepsSpare: round % 2 == 1,
                rng: &rng
            )
            #expect(r.error == nil)
            #expect(r.frames == payloads, "round \(round)")
            #expect(!r.leftover)
        }
    }

    @Test func truncatedInputYieldsTheWholeFramesAndSaysThereIsMore() {
        var rng = SplitMix64(state: 7)
        for _ in 0..<40 {
            let payloads: [[UInt8]] = (0..<5).map { i in
                [UInt8](repeating: UInt8(i), count: Int.random(in: 0...3_000, using: &rng))
            }
            let framed = payloads.map { Self.frame($0, long: false) }
            let stream = framed.flatMap { $0 }
            let cut = Int.random(in: 0...stream.count, using: &rng)
            let r = Self.decode(Array(stream[0..<cut]), maxFrame: 1 << 20, capacity: 128, arrays: true, rng: &rng)
            var ends: [Int] = []
            var total = 0
            for f in framed {
                total += f.count
                ends.append(total)
            }
            let whole = ends.filter { $0 <= cut }.count
            #expect(r.error == nil)
            #expect(r.frames == Array(payloads.prefix(whole)))
            #expect(r.leftover == (cut != (whole == 0 ? 0 : ends[whole - 1])))
        }
    }

    @Test func randomBytesNeverCrashHangOrAllocateWhatTheyAnnounce() {
        var rng = SplitMix64(state: 2026)
        for _ in 0..<150 {
            let count = Int.random(in: 0...2_000, using: &rng)
            let garbage = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let r = Self.decode(garbage, maxFrame: 1 << 30, capacity: 256, arrays: Bool.random(using: &rng), rng: &rng)
            if let e = r.error { #expect(e.code == .malformedMessage || e.code == .messageTooLarge) }
            // Announced lengths up to 1 GiB: memory follows what arrived, not what was announced.
            #expect(r.peakCapacity <= max(256, 2 * count) + (1 << 20))
        }
    }

    @Test func headersAreCheckedAsCPythonWritesThem() {
        var rng = SplitMix64(state: 1)
        // A negative length other than -1.
        var r = Self.decode([0xFF, 0xFF, 0xFF, 0xFE, 1], maxFrame: 100, capacity: 16, arrays: true, rng: &rng)
        #expect(r.error?.code == .malformedMessage)
        // Over the limit, in both forms.
        r = Self.decode(
            Self.frame([UInt8](repeating: 1, count: 101), long: false),
            maxFrame: 100,
            capacity: 16,
            arrays: true,
            rng: &rng
        )
        #expect(r.error?.code == .messageTooLarge)
        r = Self.decode(
            [0xFF, 0xFF, 0xFF, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
            maxFrame: 100,
            capacity: 16,
            arrays: true,
            rng: &rng
        )
        #expect(r.error?.code == .malformedMessage)
        r = Self.decode(
            Self.frame([], long: true) + Self.frame([9], long: false),
            maxFrame: 100,
            capacity: 16,
            arrays: false,
            rng: &rng
        )
        #expect(r.frames == [[], [9]])
        // A pool channel refuses an empty frame (every pool frame has a kind byte).
        var d = FrameDecoder.pool(prefill: [0, 0, 0, 0])
        #expect(throws: MultiprocessingError.self) { try d.nextPoolFrame { _ in 0 } }
    }
}
