import Multiprocessing
import MultiprocessingManagers
import MultiprocessingPostgres

/// The decoders of a peer's bytes, as fuzz targets: `scripts/fuzz TARGET SECONDS` runs one under libFuzzer
/// (`Tests/Fuzz`), and `FuzzTests` runs each on its corpus with seeded mutations in every `swift test`.
/// Each target must return for any input: never trap, hang or allocate without bound.
package enum FuzzTargets {
    /// The targets by name.
    package static let all: [String: @Sendable ([UInt8]) -> Void] = {
        var targets: [String: @Sendable ([UInt8]) -> Void] = [
            "pickle": pickle,
            "manager-request": managerRequest,
            "frames": DecoderFuzzing.frames,
            "pool-frames": DecoderFuzzing.poolFrames,
            "codec": DecoderFuzzing.codec,
        ]
        #if PostgreSQL
        targets["postgres"] = PostgresDecoderFuzzing.messages
        #endif
        return targets
    }()

    /// The pickle reader (limits and allow-list as a manager server uses them). What it reads must write
    /// back and read again, and from then on stay the same value (the first write may normalize: a set's
    /// duplicates go).
    static func pickle(_ data: [UInt8]) {
        guard let v = try? PickleReader().read(data) else { return }
        guard let once = try? PickleWriter().write(v) else { return }  // e.g. deeper than the writer goes
        do {
            let v1 = try PickleReader().read(once)
            let v2 = try PickleReader().read(try PickleWriter().write(v1))
            precondition(v1 == v2 || v1.containsNaN, "a value changed through write and read: \(v1) -> \(v2)")
        } catch {
            preconditionFailure("the writer's own pickle did not read back: \(error)")
        }
    }

    /// Seeds made by the library's own encoders (the pool's frames, the codec's messages, a PostgreSQL
    /// server's messages as the reading session receives them); CPython's captures are files in
    /// `Tests/Fuzz/Corpus/TARGET/` (`scripts/fuzz seeds` makes them).
    package static func builtInSeeds(_ target: String) -> [[UInt8]] {
        switch target {
        case "pool-frames": return DecoderFuzzing.poolFrameSeeds()
        case "codec": return DecoderFuzzing.codecSeeds()
        case "frames": return DecoderFuzzing.poolFrameSeeds()
        #if PostgreSQL
        case "postgres": return PostgresDecoderFuzzing.seeds()
        #endif
        default: return []
        }
    }

    /// A manager request as a server parses it: `(ident, method, args, kwds)`.
    static func managerRequest(_ data: [UInt8]) {
        _ = try? ManagerServer.parseRequest(data)
    }
}

extension PythonValue {
    /// Whether a float NaN is inside (NaN != NaN, so such values never compare equal to themselves).
    var containsNaN: Bool {
        switch self {
        case .float(let d): d.isNaN
        case .tuple(let xs), .list(let xs), .set(let xs), .frozenset(let xs): xs.contains { $0.containsNaN }
        case .dict(let pairs): pairs.contains { $0.key.containsNaN || $0.value.containsNaN }
        case .object(let o): o.args.contains { $0.containsNaN } || (o.state?.containsNaN ?? false)
        default: false
        }
    }
}
