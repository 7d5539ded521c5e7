import CoreMetrics
import Glibc
public import Logging
public import Multiprocessing
import Synchronization
import Threading

/// What a ``TablePipeline`` does to each chunk of rows, in a pool worker: the tutorial's `test2`.
///
/// A `Codable` value, sent to the workers (its stored properties are its settings). `Input` and
/// `Output` are rows: your `Codable` structs (a property per column), or ``SQLRow`` where the columns are
/// known only at run time.
///
/// ```swift
/// struct AddSex: RowTransform {          // the tutorial's xb column
///     func transform(_ rows: [User]) -> [UserCopy] {
///         rows.map { UserCopy(user: $0, xb: $0.pwd.count == 3 ? "M" : "F") }
///     }
/// }
/// ```
public protocol RowTransform: Codable, Sendable {
    /// The type each source row is decoded into, by column name (see ``SQLRowDecoder``); by default
    /// ``SQLRow``.
    associatedtype Input: Decodable = SQLRow
    /// The type each sink row is encoded from, a column per property (see ``SQLRowEncoder``); by default
    /// ``SQLRow``.
    associatedtype Output: Encodable = SQLRow
    /// The chunk's output rows (any number: filter, expand or map).
    func transform(_ rows: [Input]) throws -> [Output]
}

/// Copies rows as they are.
public struct CopyRows: RowTransform {
    /// The transform (it has no settings).
    public init() {}
    /// `rows`, unchanged.
    public func transform(_ rows: [SQLRow]) -> [SQLRow] { rows }
}

/// What a pipeline reads: a table, or a query, walked in order of a unique key.
public struct PipelineSource: Sendable, Codable, Hashable {
    /// The database.
    public var url: DatabaseURL
    /// `FROM` clause: a quoted table name, or a parenthesised query with an alias.
    var from: String
    /// The key column: unique, integer or text, indexed (a primary key).
    public var key: String

    /// Every row of `table`, in order of `key` (by default `id`).
    public static func table(_ table: String, key: String = "id", in url: DatabaseURL) -> PipelineSource {
        PipelineSource(url: url, from: url.dialect.quote(table), key: key)
    }

    /// The rows of a query (which must return the unique column `key`).
    public static func query(_ sql: String, key: String, in url: DatabaseURL) -> PipelineSource {
        PipelineSource(url: url, from: "(\(sql)) AS mp_source", key: key)
    }
}

/// One chunk: the source rows whose key is in `(lower, upper]` (nil: unbounded).
public struct ChunkRange: Sendable, Codable, Hashable {
    /// The key the chunk starts after (exclusive); nil: the source's first row.
    public var lower: SQLValue?
    /// The chunk's last key (inclusive); nil: no upper bound.
    public var upper: SQLValue?
    /// The chunk's identity in the sink's bookkeeping: its lower bound.
    var id: String { lower.map(Self.encode) ?? "" }
    static func encode(_ v: SQLValue) -> String {
        switch v {
        case .int(let i): "i:\(i)"
        case .text(let s): "t:\(s)"
        default: "?:\(v)"
        }
    }
}

/// What one chunk did.
public struct ChunkOutcome: Sendable, Codable, Hashable {
    /// Source rows the chunk read.
    public var rowsRead: Int
    /// Rows it wrote to the sink (0 when ``ChunkOutcome/alreadyDone``).
    public var rowsWritten: Int
    /// The chunk had already been written (by an earlier run): nothing was written again.
    public var alreadyDone: Bool
}

/// What a pipeline run did.
public struct PipelineReport: Sendable, CustomStringConvertible {
    /// Source rows read by the chunks this run wrote.
    public var rowsRead: Int
    /// Rows this run wrote to the sink.
    public var rowsWritten: Int
    /// Chunks this run wrote.
    public var chunksWritten: Int
    /// Chunks found done by an earlier run (skipped when planning or by a worker).
    public var chunksSkipped: Int
    /// How long the run took, from the start of ``TablePipeline/run(on:progress:)`` to its end.
    public var elapsed: Duration
    /// `1,000 rows read, 1,000 written in 10 chunks, 52,310 rows/s in 0.0 s`; a run that found every chunk
    /// done says so: `nothing left to copy: 10 chunks were done by an earlier run`.
    public var description: String {
        let s = elapsed.seconds
        if chunksWritten == 0 && chunksSkipped > 0 {
            return "nothing left to copy: \(ProgressFormat.count(chunksSkipped)) chunks were done by an earlier run"
        }
        return "\(ProgressFormat.count(rowsRead)) rows read, \(ProgressFormat.count(rowsWritten)) written in "
            + "\(ProgressFormat.count(chunksWritten)) chunks"
            + (chunksSkipped > 0 ? " (\(ProgressFormat.count(chunksSkipped)) chunks done before)" : "")
            + ", \(ProgressFormat.rate(Double(rowsRead) / max(s, 1e-9), unit: "rows")) in \(ProgressFormat.duration(elapsed))"
    }
}

/// The tutorial's database job as a library call: read a table in chunks, transform each chunk in a
/// pool worker, append the results to another table — exactly once, resumable.
///
/// **Reading: keyset pagination.** The parent only plans: it walks the key (`WHERE key > ? ORDER BY
/// key LIMIT 1 OFFSET n−1`, an index seek per chunk) and hands out key ranges. Each worker reads its
/// range with its own connection (`WHERE key > lo AND key <= hi`), so rows never pass through the
/// parent, whose memory stays flat whatever the table's size. Why not a server-side cursor: a cursor
/// lives in one connection and one transaction, so it can neither be shared by workers nor resumed after
/// a crash; key ranges are both, on every database.
///
/// **Writing: exactly once.** A worker writes a chunk's rows and the chunk's record in one transaction
/// on the sink (`mp_pipeline_chunks`, created by the library), so a chunk is either wholly written and
/// recorded or not at all. A run that is killed and started again (same ``name``) plans only what no
/// record covers; a chunk whose worker crashed is run again alone (``retry``). Each run takes the
/// pipeline over (`mp_pipeline_runs`): a worker of an older run that is still going cannot write.
///
/// The source must not change under a copy (appends past its end are fine: a later run copies them).
public struct TablePipeline<Transform: RowTransform>: Sendable {
    /// What the pipeline reads.
    public var source: PipelineSource
    /// The database the rows are appended to; it also holds the pipeline's bookkeeping tables.
    public var sink: DatabaseURL
    /// The table the rows are appended to, in the sink.
    public var sinkTable: String
    /// What each chunk's rows go through, in a worker (sent to the workers with its stored properties).
    public var transform: Transform
    /// Identifies this copy in the sink's bookkeeping, for resuming. Default: `source → sink table`.
    public var name: String
    /// Source rows per chunk.
    public var chunkSize: Int
    /// Chunks handed to the pool and not yet finished, at most (back-pressure); default 2 per worker.
    public var maxChunksInFlight: Int?
    /// Create the sink table from the first chunk's columns when it does not exist.
    public var createSinkTable: Bool
    /// How chunks whose worker crashed or timed out are run again (by default 3 attempts).
    public var retry: RetryPolicy
    /// A chunk that runs longer is stopped (its worker killed) and retried.
    public var chunkTimeout: Duration?
    /// How long a statement may wait for a lock or the server.
    public var databaseTimeout: Duration
    /// Where a run says what happens (its start and end, each chunk that failed). Default: nothing is
    /// logged.
    public var logger: Logger

    /// A copy of `source` into `sinkTable` in `sink`, each chunk of rows through `transform`.
    ///
    /// - Parameters:
    ///   - source: what to read (``PipelineSource/table(_:key:in:)`` or ``PipelineSource/query(_:key:in:)``).
    ///   - sink: the database to write to (it may be the source's).
    ///   - sinkTable: the table to append to; created from the first chunk's columns when it does not exist
    ///     (see ``TablePipeline/createSinkTable``).
    ///   - transform: what each chunk's rows go through.
    ///   - name: identifies the copy in the sink's bookkeeping, so that a later run resumes it; by default
    ///     the source's table (or query) and the sink table.
    ///   - chunkSize: source rows per chunk (positive).
    ///   - logger: where a run says what happens; by default nothing is logged.
    ///
    /// The other settings are properties: ``TablePipeline/maxChunksInFlight`` (default 2 per worker),
    /// ``TablePipeline/createSinkTable`` (true), ``TablePipeline/retry`` (3 attempts on a crash or a
    /// timeout), ``TablePipeline/chunkTimeout`` (none) and ``TablePipeline/databaseTimeout`` (60 s).
    public init(
        from source: PipelineSource,
        to sink: DatabaseURL,
        table sinkTable: String,
        transform: Transform,
        name: String? = nil,
        chunkSize: Int = 10_000,
        logger: Logger = Logger(label: "swift-multiprocessing.pipeline", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        precondition(chunkSize > 0, "chunkSize must be positive")
        self.source = source
        self.sink = sink
        self.sinkTable = sinkTable
        self.transform = transform
        self.name = name ?? "\(source.from) -> \(sinkTable)"
        self.chunkSize = chunkSize
        self.createSinkTable = true
        self.retry = RetryPolicy(attempts: 3, on: [.crash, .timeout])
        self.databaseTimeout = .seconds(60)
        self.logger = logger
    }

    /// Runs the copy on `pool` and returns what it did; throws the first chunk failure that retries did
    /// not mend (chunks written before it stay written and recorded: run again to finish).
    /// - Parameter pool: the pool whose workers run the chunks (its size is the copy's parallelism).
    /// - Parameter progress: `.bar` for a terminal bar in rows, or a handler (its `CallProgress` counts
    ///   rows; the total is the source's row count, read at the start).
    ///
    /// A SQLite source that does not exist is an error (``SQLError/Kind-swift.struct/unavailable``) that creates
    /// nothing: not the source, and not the sink.
    public func run(on pool: ProcessPool, progress: ProgressDisplay? = nil) throws -> PipelineReport {
        let started = ContinuousClock.now
        let runID = Self.newRunID()
        if source.url.kind == .sqlite, source.url.database != ":memory:", access(source.url.database, F_OK) != 0 {
            throw SQLError(
                .unavailable,
                "no SQLite database at \(source.url.database): a copy's source is never created"
            )
        }
        let sinkConnection = try Database.connect(sink, timeout: databaseTimeout)
        defer { sinkConnection.close() }
        try PipelineBookkeeping.prepare(sinkConnection)
        let done = try PipelineBookkeeping.takeOver(sinkConnection, pipeline: name, runID: runID)
        // The row count, for progress; the planner reads the source on a connection of its own.
        let total: Int? = try {
            let c = try Database.connect(source.url, timeout: databaseTimeout)
            defer { c.close() }
            return try c.scalar("SELECT count(*) FROM \(source.from)")?.intValue.map(Int.init)
        }()
        let alreadyRows = done.values.reduce(0) { $0 + $1.rows }
        logger.info(
            "pipeline starts",
            metadata: [
                "pipeline": "\(name)", "chunks_done_before": "\(done.count)",
                "rows": "\(total.map(String.init) ?? "?")",
            ]
        )

        let planner = ChunkPlanner(source: source, chunkSize: chunkSize, done: done, timeout: databaseTimeout)
        let function = CopyChunk(
            spec: ChunkSpec(
                source: source,
                sink: sink,
                sinkTable: sinkTable,
                pipeline: name,
                runID: runID,
                createSinkTable: createSinkTable,
                timeout: databaseTimeout,
                chunkSize: chunkSize
            ),
            transform: transform
        )
        var report = PipelineReport(
            rowsRead: 0,
            rowsWritten: 0,
            chunksWritten: 0,
            chunksSkipped: 0,
            elapsed: .zero
        )
        let counter = ProgressCounter(display: progress, total: total, already: alreadyRows, started: started)
        let results = try pool.imapUnordered(
            function,
            planner,
            chunksize: 1,
            maxInFlight: maxChunksInFlight ?? max(2, 2 * pool.workerCount),
            options: TaskOptions(timeout: chunkTimeout, retry: retry)
        )
        let dims = [("pipeline", name)]
        let rowsRead = Counter(label: "mp_pipeline_rows_read_total", dimensions: dims)
        let rowsWritten = Counter(label: "mp_pipeline_rows_written_total", dimensions: dims)
        let chunksWritten = Counter(label: "mp_pipeline_chunks_written_total", dimensions: dims)
        let chunksSkipped = Counter(label: "mp_pipeline_chunks_skipped_total", dimensions: dims)
        let chunkFailures = Counter(label: "mp_pipeline_chunk_failures_total", dimensions: dims)
        defer {
            CoreMetrics.Timer(label: "mp_pipeline_run_duration_seconds", dimensions: dims)
                .recordNanoseconds((ContinuousClock.now - started).wholeNanoseconds)
        }
        var firstError: (any Error)?
        while true {
            let outcome: ChunkOutcome
            do {
                guard let o = try results.next() else { break }
                outcome = o
            } catch {
                if firstError == nil { firstError = error }
                chunkFailures.increment()
                logger.error("a chunk failed", metadata: ["pipeline": "\(name)", "error": "\(error)"])
                continue
            }
            if outcome.alreadyDone {
                report.chunksSkipped += 1
                chunksSkipped.increment()
            } else {
                chunksWritten.increment()
                rowsRead.increment(by: outcome.rowsRead)
                rowsWritten.increment(by: outcome.rowsWritten)
                report.chunksWritten += 1
                report.rowsRead += outcome.rowsRead
                report.rowsWritten += outcome.rowsWritten
            }
            counter.add(outcome.rowsRead, finished: false)
        }
        report.chunksSkipped += planner.skipped
        chunksSkipped.increment(by: planner.skipped)
        report.elapsed = ContinuousClock.now - started
        if let e = planner.error ?? firstError {
            counter.add(0, finished: true)
            throw e
        }
        try PipelineBookkeeping.finish(sinkConnection, pipeline: name, runID: runID)
        counter.add(0, finished: true)
        logger.info("pipeline finished", metadata: ["pipeline": "\(name)", "report": "\(report)"])
        return report
    }

    static func newRunID() -> String {
        "\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    }
}

/// Counts rows for the progress display, drawing at most every 100 ms.
final class ProgressCounter {  // used by the thread that runs the pipeline
    let display: ProgressDisplay?
    let total: Int?
    let started: ContinuousClock.Instant
    var done: Int
    let already: Int
    var last = ContinuousClock.now - .seconds(1)
    let bar: TerminalBar?
    init(display: ProgressDisplay?, total: Int?, already: Int, started: ContinuousClock.Instant) {
        self.display = display
        self.total = total
        self.done = already
        self.already = already
        self.started = started
        if case .bar = display { bar = TerminalBar(unit: "rows") } else { bar = nil }
    }
    func add(_ rows: Int, finished: Bool) {
        done += rows
        guard let display else { return }
        let now = ContinuousClock.now
        let interval: Duration
        let report: (CallProgress) -> Void
        switch display {
        case .bar:
            interval = .milliseconds(100)
            report = { [bar] in bar?.draw($0) }
        case .handler(let every, let handler):
            interval = every
            report = handler
        }
        guard finished || now - last >= interval else { return }
        last = now
        report(
            CallProgress(
                done: done,
                failed: 0,
                total: total,
                elapsed: now - started,
                isFinished: finished,
                doneBefore: already
            )
        )
    }
}
