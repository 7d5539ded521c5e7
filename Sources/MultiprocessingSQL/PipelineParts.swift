import Glibc
public import Multiprocessing
import Synchronization
import Threading

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

struct DoneChunk: Sendable {
    var range: ChunkRange
    var rows: Int
}

/// Plans the chunks of a run, lazily (the pool reads it on a thread of its own as chunks finish): walks
/// the source's key from the start, skipping chunks written before, and cuts a new chunk every
/// `chunkSize` keys — or earlier, at the start of a chunk written before, so that no key is in two
/// chunks.
final class ChunkPlanner: Sequence, @unchecked Sendable {  // iterated once, by one thread
    let source: PipelineSource
    let chunkSize: Int
    let timeout: Duration
    let doneByLower: [String: DoneChunk]
    private let state = TrackedMutex<(error: (any Error)?, skipped: Int)>((nil, 0))

    init(source: PipelineSource, chunkSize: Int, done: [String: DoneChunk], timeout: Duration) {
        self.source = source
        self.chunkSize = chunkSize
        self.doneByLower = done
        self.timeout = timeout
    }

    /// Why planning stopped early, if it did.
    var error: (any Error)? { state.withLock { $0.error } }
    /// Chunks skipped because an earlier run wrote them.
    var skipped: Int { state.withLock { $0.skipped } }

    func makeIterator() -> Iterator { Iterator(planner: self) }

    final class Iterator: IteratorProtocol {
        let planner: ChunkPlanner
        var connection: (any SQLConnection)?
        var cursor: SQLValue?  // the exclusive lower bound of the next chunk; nil: the start
        var finished = false
        /// Lower bounds of chunks written before and not yet passed.
        var pending: Set<String>

        init(planner: ChunkPlanner) {
            self.planner = planner
            pending = Set(planner.doneByLower.keys)
        }

        deinit { connection?.close() }

        func next() -> ChunkRange? {
            guard !finished else { return nil }
            do {
                if let c = try plan() { return c }
            } catch {
                planner.state.withLock { $0.error = $0.error ?? error }
            }
            finished = true
            connection?.close()
            connection = nil
            return nil
        }

        private func plan() throws -> ChunkRange? {
            let s = planner.source
            if connection == nil { connection = try Database.connect(s.url, timeout: planner.timeout) }
            guard let c = connection else { return nil }
            let d = c.dialect
            let k = d.quote(s.key)
            // Chunks written before that start here: skip them.
            while let done = planner.doneByLower[cursor.map(ChunkRange.encode) ?? ""] {
                pending.remove(done.range.id)
                planner.state.withLock { $0.skipped += 1 }
                guard let upper = done.range.upper else { return nil }
                cursor = upper
            }
            var parameters: [SQLValue] = []
            var condition = ""
            if let cursor {
                condition = "WHERE \(k) > \(d.parameter(1))"
                parameters.append(cursor)
            }
            var upper = try c.scalar(
                "SELECT \(k) FROM \(s.from) \(condition) ORDER BY \(k) LIMIT 1 OFFSET \(planner.chunkSize - 1)",
                parameters
            )
            if upper == .null { upper = nil }
            if let u = upper, PipelineBookkeeping.intPart(u) == .null, PipelineBookkeeping.textPart(u) == .null {
                throw SQLError(.conversion, "the key \(s.key) must be an integer or text column, not \(u)")
            }
            if upper == nil {
                // The last chunk ends at the last key now: rows appended later are a later run's.
                upper = try c.scalar("SELECT max(\(k)) FROM \(s.from) \(condition)", parameters)
                guard let u = upper, u != .null else { return nil }
            }
            // A chunk written before that starts inside this one cuts it short.
            if !pending.isEmpty, let inside = try firstPendingLower(c, after: cursor, upTo: upper) {
                upper = inside
            }
            let chunk = ChunkRange(lower: cursor, upper: upper)
            cursor = upper
            return chunk
        }

        /// The smallest lower bound of a chunk written before that lies in `(after, upTo)`, in the source's
        /// own order (asked of the source, which alone knows its collation).
        private func firstPendingLower(_ c: any SQLConnection, after: SQLValue?, upTo: SQLValue?) throws -> SQLValue? {
            let s = planner.source
            let d = c.dialect
            let k = d.quote(s.key)
            let bounds = pending.compactMap { planner.doneByLower[$0]?.range.lower }
            var best: SQLValue?
            for batch in stride(from: 0, to: bounds.count, by: 500).map({
                Array(bounds[$0..<Swift.min(bounds.count, $0 + 500)])
            }) {
                var parameters: [SQLValue] = []
                var conditions: [String] = []
                if let after {
                    parameters.append(after)
                    conditions.append("\(k) > \(d.parameter(parameters.count))")
                }
                if let upTo {
                    parameters.append(upTo)
                    conditions.append("\(k) < \(d.parameter(parameters.count))")
                }
                let list = batch.map { v -> String in
                    parameters.append(v)
                    return d.parameter(parameters.count)
                }
                conditions.append("\(k) IN (\(list.joined(separator: ", ")))")
                let found = try c.scalar(
                    "SELECT min(\(k)) FROM \(s.from) WHERE \(conditions.joined(separator: " AND "))",
                    parameters
                )
                if let found, found != .null {
                    if let b = best {
                        let smaller = try c.scalar(
                            "SELECT CASE WHEN \(d.parameter(1)) < \(d.parameter(2)) THEN 1 ELSE 0 END",
                            [found, b]
                        )
                        if smaller?.intValue == 1 { best = found }
                    } else {
                        best = found
                    }
                }
            }
            return best
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

/// Connections a worker process keeps between chunks (one per database), each used by one chunk at a
/// time.
final class WorkerConnections: Sendable {
    static let shared = WorkerConnections()
    /// A connection, owned by whoever took it out of the cache.
    private final class Box: @unchecked Sendable {
        let connection: any SQLConnection
        init(_ c: any SQLConnection) { connection = c }
    }
    private let cache = TrackedMutex<[DatabaseURL: Box]>([:])

    /// Runs `body` with this process's connection to `url`, opening it if needed. A connection that
    /// failed with a connection error is dropped, so the next chunk (or the retry) opens a new one.
    ///
    /// A cached connection that fails with a connection error may have been dropped by the server while it
    /// sat idle (a restart, a kill, an idle timeout), which is found out only on use: `body` then runs once
    /// more on a new connection. So `body` must be safe to run again: the chunk's read starts over, and
    /// its write finds the chunk's record if the first attempt committed.
    func with<R>(_ url: DatabaseURL, timeout: Duration, _ body: (any SQLConnection) throws -> R) throws -> R {
        if let cached = cache.withLock({ $0.removeValue(forKey: url) }) {
            do {
                return try run(cached, url, body)
            } catch let e as SQLError where e.kind == .connection {
                // Stale: once more, on a new connection.
            }
        }
        return try run(Box(Database.connect(url, timeout: timeout)), url, body)
    }

    private func run<R>(_ box: Box, _ url: DatabaseURL, _ body: (any SQLConnection) throws -> R) throws -> R {
        do {
            let r = try body(box.connection)
            cache.withLock { $0[url] = box }
            return r
        } catch let e as SQLError where e.kind == .connection {
            box.connection.close()
            throw e
        } catch {
            cache.withLock { $0[url] = box }
            throw error
        }
    }
}

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

enum SinkTable {
    /// `CREATE TABLE IF NOT EXISTS` with a type per column: its first non-NULL value's.
    static func createStatement(_ table: String, _ rows: SQLRowBatch, dialect d: SQLDialect) -> String {
        let columns = rows.columns
        let sample = columns.indices.map { i in
            (0..<rows.count).lazy.map { rows.values[$0 * columns.count + i] }.first { $0 != .null } ?? .null
        }
        let types = sample.map { v -> String in
            switch v {
            case .int: "BIGINT"
            case .double: d.doubleType
            case .blob: d.binaryType
            case .text, .null: "TEXT"
            }
        }
        let list = zip(columns, types).map { "\(d.quote($0)) \($1)" }.joined(separator: ", ")
        return "CREATE TABLE IF NOT EXISTS \(d.quote(table)) (\(list))"
    }
}
