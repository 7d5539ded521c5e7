public import Multiprocessing

/// The work of one chunk, in a pool worker: read the range, transform, write rows and record in one
/// transaction.
public struct CopyChunk<Transform: RowTransform>: SyncTaskFunction {
    let spec: ChunkSpec
    let transform: Transform

    init(spec: ChunkSpec, transform: Transform) {
        self.spec = spec
        self.transform = transform
    }

    /// Copies one chunk: reads the source rows whose key is in the range (on this worker process's
    /// connection to the source, kept between chunks), transforms them, and writes them and the chunk's
    /// record in one transaction on the sink. A chunk already recorded is not written again
    /// (``ChunkOutcome/alreadyDone``).
    ///
    /// - Throws: ``SQLError`` from either database (a row that does not decode: `conversion`; a later run
    ///   took the pipeline over, so this one may not write: `other`), or what the transform throws.
    public func callAsFunction(_ chunk: ChunkRange) throws -> ChunkOutcome {
        // Read.
        var inputs: [Transform.Input] = []
        let read = try WorkerConnections.shared.with(spec.source.url, timeout: spec.timeout) { c -> Int in
            inputs.removeAll(keepingCapacity: true)  // a second attempt starts over
            let d = c.dialect
            let k = d.quote(spec.source.key)
            var conditions: [String] = []
            var parameters: [SQLValue] = []
            if let lower = chunk.lower {
                parameters.append(lower)
                conditions.append("\(k) > \(d.parameter(parameters.count))")
            }
            if let upper = chunk.upper {
                parameters.append(upper)
                conditions.append("\(k) <= \(d.parameter(parameters.count))")
            }
            let whereClause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
            let sql = "SELECT * FROM \(spec.source.from) \(whereClause) ORDER BY \(k)"
            // Rows are decoded as they come (the column names are known once the query runs).
            var decoder = SQLRowDecoder(columns: [])
            inputs.reserveCapacity(spec.chunkSize)
            let setColumns: ([String]) -> Void = { decoder = SQLRowDecoder(columns: $0) }
            let add: ([SQLValue]) throws -> Void = { inputs.append(try decoder.decode(Transform.Input.self, from: $0)) }
            if let bulk = c as? any SQLBulkReading {
                try bulk.forEachRowOnReadingSession(sql, parameters, columns: setColumns, add)
            } else {
                try c.forEachRow(sql, parameters, columns: setColumns, add)
            }
            return inputs.count
        }
        // Transform.
        let outputs = try transform.transform(inputs)
        inputs = []
        let rows = try SQLRowEncoder().encodeBatch(outputs)
        // Write, with the chunk's record, in one transaction.
        return try WorkerConnections.shared.with(spec.sink, timeout: spec.timeout) { c -> ChunkOutcome in
            let d = c.dialect
            if spec.createSinkTable && !rows.isEmpty {
                // Outside the transaction: on PostgreSQL two workers creating the same table at once collide
                // (a unique violation in its catalogue) even with IF NOT EXISTS, and an error would abort
                // the chunk's transaction. The loser finds the table there.
                do {
                    try c.execute(SinkTable.createStatement(spec.sinkTable, rows, dialect: d))
                } catch let e as SQLError where e.kind == .constraint {}
            }
            return try c.transaction(immediate: true) {
                let owner = try c.scalar(
                    "SELECT run_id FROM \(d.quote(PipelineBookkeeping.runs)) WHERE pipeline = \(d.parameter(1))\(d.sharedLock)",
                    [.text(spec.pipeline)]
                )
                guard owner == .text(spec.runID) else {
                    throw SQLError(
                        .other,
                        "pipeline \(spec.pipeline) was taken over by another run; this run's chunks are not written"
                    )
                }
                let existing = try c.scalar(
                    "SELECT row_count FROM \(d.quote(PipelineBookkeeping.chunks)) WHERE pipeline = \(d.parameter(1)) AND lo_key = \(d.parameter(2))",
                    [.text(spec.pipeline), .text(chunk.id)]
                )
                if existing != nil {
                    return ChunkOutcome(rowsRead: read, rowsWritten: 0, alreadyDone: true)
                }
                try c.execute(
                    "INSERT INTO \(d.quote(PipelineBookkeeping.chunks)) (pipeline, lo_key, lo_int, lo_text, hi_int, hi_text, row_count) VALUES (\(d.valueTuples(rows: 1, columns: 7).dropFirst().dropLast()))",
                    [
                        .text(spec.pipeline), .text(chunk.id),
                        PipelineBookkeeping.intPart(chunk.lower), PipelineBookkeeping.textPart(chunk.lower),
                        PipelineBookkeeping.intPart(chunk.upper), PipelineBookkeeping.textPart(chunk.upper),
                        .int(Int64(rows.count)),
                    ]
                )
                if !rows.isEmpty { try c.insert(into: spec.sinkTable, rows) }
                return ChunkOutcome(rowsRead: read, rowsWritten: rows.count, alreadyDone: false)
            }
        }
    }
}

/// Settings a worker needs for every chunk.
struct ChunkSpec: Codable, Sendable {
    var source: PipelineSource
    var sink: DatabaseURL
    var sinkTable: String
    var pipeline: String
    var runID: String
    var createSinkTable: Bool
    var timeout: Duration
    var chunkSize: Int
}
