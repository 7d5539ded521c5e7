/// Entry points for the fuzz targets (`Tests/Fuzz`, built by `scripts/fuzz`) and for their seeded runs in
/// the test suite: each hands a peer's bytes to one decoder, which must return — never trap, hang or
/// allocate beyond what the bytes justify. Package-internal: not part of the library's API.
package enum DecoderFuzzing {
    /// The largest frame the fuzzed decoders accept (small, so that a length prefix cannot make a run
    /// allocate a gigabyte: what a real limit does is the same at any size).
    static let maxFrame = 1 << 16

    /// The connection framing (CPython's 4-byte length, and the 8-byte form after `0xFFFFFFFF`): `data`
    /// as a byte stream arriving in reads of sizes taken from its own bytes.
    package static func frames(_ data: [UInt8]) {
        var decoder = FrameDecoder(maxFrame: maxFrame, capacity: 64)
        forEachFrame(data, &decoder) { frame in
            precondition(frame.count <= maxFrame, "a frame over the limit was returned")
        }
    }

    /// The pool's reply frames (a worker's `O`, `X`, `R`), then their payloads through the message codec
    /// as the parent decodes them (results, errors).
    package static func poolFrames(_ data: [UInt8]) {
        var decoder = FrameDecoder(maxFrame: maxFrame, capacity: 64)
        forEachFrame(data, &decoder) { frame in
            guard !frame.isEmpty else { return }
            frame.withUnsafeBytes { body in
                guard let parsed = try? PoolWire.parseReply(body) else { return }
                if case .reply(_, let payload) = parsed {
                    _ = try? BinaryDecoder().decode(WireError.self, from: payload)
                    _ = try? BinaryDecoder().decode([String].self, from: payload)
                }
            }
        }
    }

    /// The message codec every channel's bodies use: the worker protocol's messages and a few common
    /// shapes decoded from `data`.
    package static func codec(_ data: [UInt8]) {
        let d = BinaryDecoder()
        _ = try? d.decode(FromWorker.self, from: data)
        _ = try? d.decode(ToWorker.self, from: data)
        _ = try? d.decode(WireError.self, from: data)
        _ = try? d.decode([String: [Double]].self, from: data)
        _ = try? d.decode([Int?].self, from: data)
    }

    /// Real pool frames, as a worker sends them: results, a failure, a resend, in one stream.
    package static func poolFrameSeeds() -> [[UInt8]] {
        var w = FrameWriter()
        let results = (try? BinaryEncoder().encode(["4", "9", "16"])) ?? []
        var at = w.begin(PoolWire.output)
        w.put(UInt64(7))
        w.put(UInt32(0))
        w.put(UInt32(3))
        w.put(UInt64(1_234))
        w.put(results)
        w.end(at)
        let error = (try? BinaryEncoder().encode(WireError(MultiprocessingError(.processDied, "boom"), pid: 42))) ?? []
        at = w.begin(PoolWire.failure)
        w.put(UInt64(8))
        w.put(UInt32(2))
        w.put(UInt64(99))
        w.put(error)
        w.end(at)
        at = w.begin(PoolWire.resend)
        w.put(UInt64(9))
        w.end(at)
        let stream = w.take()
        return [stream, Array(stream.prefix(40))]
    }

    /// Real messages of the general codec: the worker protocol's, and common shapes.
    package static func codecSeeds() -> [[UInt8]] {
        let e = BinaryEncoder()
        return [
            try? e.encode(FromWorker.ready(pid: 42)),
            try? e.encode(FromWorker.result(id: 3, payload: [1, 2, 3])),
            try? e.encode(WireError(MultiprocessingError(.timedOut, "late"), pid: 7)),
            try? e.encode(["a": [1.5, -2.0], "b": []]),
            try? e.encode([1, nil, 3] as [Int?]),
        ].compactMap { $0 }
    }

    /// Feeds `data` to `decoder` in reads whose sizes come from `data` itself, calling `body` with each
    /// whole frame; stops at the first framing error (the connection would be closed).
    static func forEachFrame(_ data: [UInt8], _ decoder: inout FrameDecoder, _ body: ([UInt8]) -> Void) {
        var offset = 0
        var step = 0
        while offset < data.count {
            let want = 1 + Int(data[step % data.count]) % 61
            step += 1
            let got = decoder.read { p -> Int? in
                let n = min(p.count, want, data.count - offset)
                data.withUnsafeBytes { src in
                    p.baseAddress!.copyMemory(from: src.baseAddress! + offset, byteCount: n)
                }
                return n
            }
            offset += got ?? 0
            var frames = 0
            do {
                while let frame = try decoder.nextArray() {
                    frames += 1
                    body(frame)
                }
            } catch {
                return
            }
            // Neither bytes taken nor a frame given: the decoder would never progress (a bug to report).
            precondition((got ?? 0) > 0 || frames > 0, "the frame decoder stopped taking bytes")
        }
    }
}
