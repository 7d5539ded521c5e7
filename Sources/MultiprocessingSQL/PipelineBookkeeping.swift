import Glibc

/// The sink's record of a pipeline: which run owns it, and which chunks are written.
enum PipelineBookkeeping {
    static let runs = "mp_pipeline_runs"
    static let chunks = "mp_pipeline_chunks"

    static func prepare(_ c: any SQLConnection) throws {
        let d = c.dialect
        try c.execute(
            """
            CREATE TABLE IF NOT EXISTS \(d.quote(runs)) (
              pipeline VARCHAR(255) NOT NULL PRIMARY KEY, run_id VARCHAR(64) NOT NULL,
              started_at BIGINT NOT NULL, finished_at BIGINT)
            """
        )
        try c.execute(
            """
            CREATE TABLE IF NOT EXISTS \(d.quote(chunks)) (
              pipeline VARCHAR(255) NOT NULL, lo_key VARCHAR(512) NOT NULL,
              lo_int BIGINT, lo_text TEXT, hi_int BIGINT, hi_text TEXT, row_count BIGINT NOT NULL,
              PRIMARY KEY (pipeline, lo_key))
            """
        )
    }

    /// Makes `runID` the pipeline's owner (workers of an older run can no longer write) and returns the
    /// chunks already written, by their lower bound's identity.
    static func takeOver(_ c: any SQLConnection, pipeline: String, runID: String) throws -> [String: DoneChunk] {
        let d = c.dialect
        return try c.transaction(immediate: true) {
            let now = SQLValue.int(Int64(time(nil)))
            let changed = try c.execute(
                "UPDATE \(d.quote(runs)) SET run_id = \(d.parameter(1)), started_at = \(d.parameter(2)), finished_at = NULL WHERE pipeline = \(d.parameter(3))",
                [.text(runID), now, .text(pipeline)]
            )
            if changed == 0 {
                try c.execute(
                    "INSERT INTO \(d.quote(runs)) (pipeline, run_id, started_at) VALUES (\(d.parameter(1)), \(d.parameter(2)), \(d.parameter(3)))",
                    [.text(pipeline), .text(runID), now]
                )
            }
            var done: [String: DoneChunk] = [:]
            try c.forEachRow(
                "SELECT lo_key, lo_int, lo_text, hi_int, hi_text, row_count FROM \(d.quote(chunks)) WHERE pipeline = \(d.parameter(1))",
                [.text(pipeline)]
            ) { r in
                let lower = bound(r[1], r[2])
                let upper = bound(r[3], r[4])
                done[r[0].textValue ?? ""] = DoneChunk(
                    range: ChunkRange(lower: lower, upper: upper),
                    rows: Int(r[5].intValue ?? 0)
                )
            }
            return done
        }
    }

    /// A bound's column values: an integer key in `*_int`, a text key in `*_text`.
    static func intPart(_ v: SQLValue?) -> SQLValue {
        if case .int = v { return v! }
        return .null
    }
    static func textPart(_ v: SQLValue?) -> SQLValue {
        if case .text = v { return v! }
        return .null
    }

    static func bound(_ i: SQLValue, _ t: SQLValue) -> SQLValue? {
        if case .int = i { return i }
        if case .text = t { return t }
        return nil
    }

    static func finish(_ c: any SQLConnection, pipeline: String, runID: String) throws {
        let d = c.dialect
        try c.execute(
            "UPDATE \(d.quote(runs)) SET finished_at = \(d.parameter(1)) WHERE pipeline = \(d.parameter(2)) AND run_id = \(d.parameter(3))",
            [.int(Int64(time(nil))), .text(pipeline), .text(runID)]
        )
    }
}

/// A chunk an earlier run wrote, as the sink's bookkeeping records it.
struct DoneChunk: Sendable {
    var range: ChunkRange
    var rows: Int
}
