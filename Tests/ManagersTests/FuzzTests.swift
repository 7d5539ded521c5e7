import Foundation
import MultiprocessingFuzzTargets
import MultiprocessingTestSupport
import Testing
import Threading

/// Every fuzz target (`FuzzTargets.all`: the pickle reader, manager requests, connection frames, the
/// pool's frames, the message codec and, with the PostgreSQL trait, the reading session's decoders) run on
/// its corpus (`Tests/Fuzz/Corpus/TARGET/`, CPython's captures) and its built-in seeds, then on seeded
/// mutations of them. The same seed gives the same inputs (printed before the run: what fails is a trap):
/// `MP_FUZZ_SEED` chooses another (or `MP_TEST_SEED`, as for the other randomized tests),
/// `MP_FUZZ_ITERATIONS` how many, and `MP_FUZZ_SAVE=DIR` writes each input to DIR/TARGET before running
/// it, so that the one a crash stopped at is there to replay (`scripts/fuzz TARGET` under libFuzzer, or a
/// test). The long runs are libFuzzer's (`scripts/fuzz TARGET SECONDS`; TESTING.md).
/// Serialized, and each run on a thread of its own: a CPU-bound loop on the cooperative pool (two threads
/// here) would starve the async tests running beside it.
@Suite(.serialized) struct FuzzTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/Corpus")

    static func seeds(_ target: String) -> [[UInt8]] {
        let dir = corpus.appendingPathComponent(target)
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        let captured = files.sorted().compactMap {
            FileManager.default.contents(atPath: dir.appendingPathComponent($0).path)
        }
        return captured.map { Array($0) } + FuzzTargets.builtInSeeds(target)
    }

    @Test(arguments: FuzzTargets.all.keys.sorted())
    func decoderSurvivesMutationsOfItsCorpus(target: String) async throws {
        let run = try #require(FuzzTargets.all[target])
        let seeds = Self.seeds(target)
        #expect(!seeds.isEmpty, "no corpus for \(target): run scripts/fuzz seeds")
        try await background { self.fuzz(target, run, seeds) }.value
    }

    /// Runs `run` on `seeds`, then on seeded mutations of them (on a thread of its own: no expectations
    /// here; what fails is a trap, which stops the process).
    func fuzz(_ target: String, _ run: @Sendable ([UInt8]) -> Void, _ seeds: [[UInt8]]) {
        let environment = ProcessInfo.processInfo.environment
        let seed = (environment["MP_FUZZ_SEED"] ?? environment["MP_TEST_SEED"]).flatMap { UInt64($0) } ?? 0x5EED
        let iterations = environment["MP_FUZZ_ITERATIONS"].flatMap { Int($0) } ?? 1_000
        let save = environment["MP_FUZZ_SAVE"].map { "\($0)/\(target)" }
        print("fuzz \(target): seed \(seed), \(iterations) inputs from \(seeds.count) seeds")
        var rng = SplitMix64(state: seed)
        for s in seeds { run(s) }
        for _ in 0..<iterations {
            var input = seeds.isEmpty ? [] : seeds[Int(rng.next() % UInt64(seeds.count))]
            for _ in 0...(rng.next() % 4) { mutate(&input, seeds, &rng) }
            if let save { _ = FileManager.default.createFile(atPath: save, contents: Data(input)) }
            run(input)
        }
    }

    /// One AFL-style mutation: a bit flip, an interesting byte or 32-bit value, bytes inserted, deleted or
    /// cut off, a slice repeated many times (what nests deep), or a splice with another seed.
    func mutate(_ b: inout [UInt8], _ seeds: [[UInt8]], _ rng: inout SplitMix64) {
        func at() -> Int { b.isEmpty ? 0 : Int(rng.next() % UInt64(b.count)) }
        let interesting: [UInt8] = [0, 1, 0x7F, 0x80, 0xFF, 0x28, 0x5D, 0x61, 0x74, 0x2E]
        switch rng.next() % 8 {
        case 0: if !b.isEmpty { b[at()] ^= UInt8(1) << (rng.next() % 8) }
        case 1: if !b.isEmpty { b[at()] = interesting[Int(rng.next() % UInt64(interesting.count))] }
        case 2:
            b.insert(
                contentsOf: (0..<(1 + rng.next() % 8)).map { _ in UInt8(truncatingIfNeeded: rng.next()) },
                at: at()
            )
        case 3:
            if !b.isEmpty {
                let i = at()
                b.removeSubrange(i..<min(b.count, i + 1 + Int(rng.next() % 16)))
            }
        case 4: b = Array(b.prefix(at()))
        case 5:
            if !b.isEmpty, b.count < 1 << 16 {
                let i = at()
                let slice = b[i..<min(b.count, i + 1 + Int(rng.next() % 8))]
                b.insert(contentsOf: Array(repeating: Array(slice), count: 1 + Int(rng.next() % 2_000)).joined(), at: i)
            }
        case 6:
            if b.count >= 4 {
                let values: [UInt32] = [0xFFFF_FFFF, 0x7FFF_FFFF, 0x8000_0000, 0, UInt32(b.count), UInt32(b.count + 1)]
                let v = values[Int(rng.next() % UInt64(values.count))]
                let i = Int(rng.next() % UInt64(b.count - 3))
                withUnsafeBytes(of: rng.next() % 2 == 0 ? v.bigEndian : v.littleEndian) {
                    for k in 0..<4 { b[i + k] = $0[k] }
                }
            }
        default:
            if let other = seeds.randomElement(using: &rng) {
                b = Array(b.prefix(at())) + other.suffix(other.count / 2)
            }
        }
    }
}

/// The seed of a randomized test: `MP_TEST_SEED` when set (to replay a failure), else a random one. The
/// test prints it before it starts (what fails may be a trap) and names it in its failures.
func testSeed() -> UInt64 {
    ProcessInfo.processInfo.environment["MP_TEST_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64.max)
}
