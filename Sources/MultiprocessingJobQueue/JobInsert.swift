import MultiprocessingSQL
import Threading

/// The one statement that queues jobs, for every path that does (``JobQueue/enqueue(_:options:on:)``, the
/// scheduler, chains and groups): what the rows share is bound once, and one column varies by row (the
/// payload of each job, or the due time of each occurrence of a schedule), so that a 1,000-row statement
/// binds about a thousand values, not thirteen thousand.
struct JobInsert {
    /// A column every row of the statement shares: its name, its value, and its SQL type (PostgreSQL cannot
    /// infer the types of parameters that only a SELECT list carries).
    struct Column {
        let name: String
        let value: SQLValue
        let type: String
    }

    /// The shared columns.
    var shared: [Column]

    /// The columns of jobs of one `kind` queued with `options` at `now` in `state`; `runAt` and `payload`
    /// are shared unless nil (then they are the varying column).
    init(
        kind: String,
        options: JobOptions,
        now: Int64,
        state: String = "available",
        runAt: Int64?,
        payload: [UInt8]?,
        trace: [UInt8]? = nil,
        waitsFor: Int = 0,
        replyTo: String? = nil
    ) {
        shared = [
            Column(name: "queue", value: .text(options.queue), type: "text"),
            Column(name: "kind", value: .text(kind), type: "text"),
            Column(name: "priority", value: .int(Int64(options.priority)), type: "integer"),
            Column(name: "attempt", value: .int(0), type: "integer"),
            Column(name: "max_attempts", value: .int(Int64(options.maxAttempts)), type: "integer"),
            Column(name: "backoff_ms", value: .int(options.backoff.wholeMilliseconds), type: "bigint"),
            Column(
                name: "timeout_ms",
                value: options.timeout.map { .int($0.wholeMilliseconds) } ?? .null,
                type: "bigint"
            ),
            Column(name: "unique_key", value: options.uniqueKey.map { .text($0) } ?? .null, type: "varchar"),
            Column(name: "created_at", value: .int(now), type: "bigint"),
            Column(name: "state", value: .text(state), type: "varchar"),
        ]
        if let trace { shared.append(Column(name: "trace_context", value: .blob(trace), type: "bytea")) }
        if let runAt { shared.append(Column(name: "run_at", value: .int(runAt), type: "bigint")) }
        if let payload { shared.append(Column(name: "payload", value: .blob(payload), type: "bytea")) }
        // A task pool's job: its end is taken (and deleted) by the pool that queued it.
        if let replyTo { shared.append(Column(name: "reply_to", value: .text(replyTo), type: "varchar")) }
        // Left to its default (0) unless the job waits: a worker of the previous version queues the same way.
        if waitsFor > 0 {
            shared.append(Column(name: "waits_for", value: .int(Int64(waitsFor)), type: "integer"))
            // Every edge open at first; those of jobs that have ended already are counted down at once.
            shared.append(Column(name: "waiting_on", value: .int(Int64(waitsFor)), type: "integer"))
        }
    }

    /// The parameters of a statement whose rows carry `varying`.
    func parameters(_ varying: some Collection<SQLValue>) -> [SQLValue] {
        var out = shared.map(\.value)
        out.reserveCapacity(shared.count + varying.count)
        out.append(contentsOf: varying)
        return out
    }

    /// How many rows one statement may carry on `dialect`.
    func rowsPerStatement(_ d: SQLDialect, at most: Int) -> Int { max(1, min(most, d.maxParameters - shared.count)) }

    /// `INSERT INTO mp_jobs … SELECT <shared>, v.column1 FROM (VALUES …)`, for `rows` rows whose `varying`
    /// column (of SQL type `type`) follows the shared parameters. With `skippingTakenKey`, a row whose unique
    /// key is held by a job queued or running is not inserted; with `returningIds`, the statement returns
    /// the new rows' ids.
    func statement(
        varying: String,
        type: String,
        rows: Int,
        skippingTakenKey: Bool,
        returningIds: Bool,
        _ d: SQLDialect
    ) -> String {
        let first = shared.count + 1
        let list = shared.indices.map { d.typed(d.parameter($0 + 1), shared[$0].type) }.joined(separator: ", ")
        let values = (first..<first + rows).map { i in
            "(" + (i == first ? d.typed(d.parameter(i), type) : d.parameter(i)) + ")"
        }
        // `WHERE true`: SQLite reads `ON CONFLICT` after a bare FROM as a join's ON.
        var sql = """
            INSERT INTO mp_jobs (\(shared.map(\.name).joined(separator: ", ")), \(varying))
            SELECT \(list), v.column1 FROM (VALUES \(values.joined(separator: ", "))) AS v WHERE true
            """
        if skippingTakenKey {
            sql +=
                " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('available', 'running') DO NOTHING"
        }
        if returningIds { sql += " RETURNING id" }
        return sql
    }
}
