import Multiprocessing
import MultiprocessingSQL

/// Jobs that wait for others, in the database: the edges of `mp_job_deps` and the `waiting` state.
///
/// An edge is resolved, and its job's outcome copied into it, in the transaction that records that job's
/// end (a worker's result, its last failure, a lease that ran out on its last attempt, a cancel), so that
/// no worker killed at any point loses a link: either the end and its releases commit together, or neither
/// does. A waiting job is then stopped (state `cancelled`, with a line saying why) as soon as a job it
/// requires ends other than completed, or made available once every job it waits for has ended. A stopped
/// job's own waiting jobs are resolved in turn, in the same transaction.
///
/// On PostgreSQL, two jobs that end at once in two transactions may both be the last for one waiting job:
/// each locks the waiting jobs' rows (in id order) before resolving its edges, so the second sees the
/// first's edges resolved once it has the lock and releases the job (READ COMMITTED, which each statement
/// of the worker's transactions uses). A sweep (``sweep(now:on:)``, in every worker's rescue) resolves
/// the edges of jobs ended by anything that did not (a worker of the previous version, SQL of the user's).
enum JobDependencies {
    static let ended = "('completed', 'discarded', 'cancelled')"
    static let endedStates: Set<String> = ["completed", "discarded", "cancelled"]

    /// Resolves the edges into `parents` (jobs that have just ended in the caller's transaction), then
    /// stops or releases their waiting jobs, and so on down. Returns the queues of the jobs made available
    /// (to notify: the caller's transaction on PostgreSQL, the doorbell after commit on SQLite).
    @discardableResult
    static func release(_ parents: [Int64], now: Int64, on c: any SQLConnection) throws -> Set<String> {
        let d = c.dialect
        var queues: Set<String> = []
        var next = parents
        while !next.isEmpty {
            var children: Set<Int64> = []
            let chunks = next.chunks(of: 500).map { chunk in
                (
                    list: chunk.indices.map { d.parameter($0 - chunk.startIndex + 1) }.joined(separator: ", "),
                    ids: chunk.map { SQLValue.int($0) }
                )
            }
            for chunk in chunks {
                try c.forEachRow(
                    "SELECT DISTINCT child_id FROM mp_job_deps WHERE parent_id IN (\(chunk.list)) AND parent_state IS NULL",
                    chunk.ids
                ) { children.insert($0[0].intValue ?? 0) }
            }
            guard !children.isEmpty else { break }
            // Every waiting job of this level locked at once, in id order: no two releasing transactions
            // hold locks in crossed orders.
            try lock(children.sorted(), on: c)
            for chunk in chunks { try resolve("parent_id IN (\(chunk.list))", chunk.ids, on: c) }
            next = try settle(children.sorted(), now: now, queues: &queues, on: c)
        }
        try notify(queues, on: c)
        return queues
    }

    /// Locks the rows of waiting jobs, in id order (PostgreSQL; SQLite's write lock is held already).
    static func lock(_ ids: [Int64], on c: any SQLConnection) throws {
        let d = c.dialect
        guard d.skipsLockedRows, !ids.isEmpty else { return }
        for chunk in ids.sorted().chunks(of: 500) {
            let list = chunk.indices.map { d.parameter($0 - chunk.startIndex + 1) }.joined(separator: ", ")
            try c.forEachRow(
                "SELECT id FROM mp_jobs WHERE id IN (\(list)) ORDER BY id FOR UPDATE",
                chunk.map { .int($0) }
            ) { _ in }
        }
    }

    /// Copies the outcome of each ended job into the unresolved edges `condition` selects (a job the
    /// retention cleaner already deleted counts as cancelled, without a result).
    static func resolve(_ condition: String, _ parameters: [SQLValue], on c: any SQLConnection) throws {
        func of(_ column: String) -> String { "(SELECT \(column) FROM mp_jobs p WHERE p.id = mp_job_deps.parent_id)" }
        try c.execute(
            """
            UPDATE mp_job_deps SET parent_state = coalesce(\(of("state")), 'cancelled'), result = \(of("result")),
              errors = \(of("errors"))
            WHERE \(condition) AND parent_state IS NULL AND coalesce(\(of("state")), 'cancelled') IN \(ended)
            """,
            parameters
        )
    }

    /// Of the waiting jobs `ids` (locked), stops those a required job failed, then makes available those
    /// whose every edge is resolved, adding their queues to `queues` (for the caller to notify). Returns the
    /// stopped ones that have waiting jobs of their own.
    static func settle(
        _ ids: [Int64],
        now: Int64,
        queues: inout Set<String>,
        on c: any SQLConnection
    ) throws -> [Int64] {
        let d = c.dialect
        var stoppedWithDependents: [Int64] = []
        for chunk in ids.chunks(of: 500) {
            let list = chunk.indices.map { d.parameter($0 - chunk.startIndex + 1) }.joined(separator: ", ")
            let parameters = chunk.map { SQLValue.int($0) }
            var failed: [Int64: (parent: Int64, state: String)] = [:]
            try c.forEachRow(
                """
                SELECT child_id, parent_id, parent_state FROM mp_job_deps
                WHERE child_id IN (\(list)) AND required = 1 AND parent_state IS NOT NULL AND parent_state <> 'completed'
                ORDER BY child_id, position
                """,
                parameters
            ) { r in
                let child = r[0].intValue ?? 0
                if failed[child] == nil { failed[child] = (r[1].intValue ?? 0, r[2].textValue ?? "cancelled") }
            }
            for (child, why) in failed.sorted(by: { $0.key < $1.key }) {
                let line =
                    "stopped at \(QueueSchema.iso8601(ms: now)): job \(why.parent), which it needs, was \(why.state)\n"
                try c.forEachRow(
                    """
                    UPDATE mp_jobs SET state = 'cancelled', finished_at = \(d.parameter(1)),
                      errors = coalesce(errors, '') || \(d.parameter(2))
                    WHERE id = \(d.parameter(3)) AND state = 'waiting' RETURNING dependents
                    """,
                    [.int(now), .text(line), .int(child)]
                ) { r in if (r[0].intValue ?? 0) > 0 { stoppedWithDependents.append(child) } }
            }
            try c.forEachRow(
                """
                UPDATE mp_jobs SET state = 'available',
                  run_at = CASE WHEN run_at < \(d.parameter(chunk.count + 1)) THEN \(d.parameter(chunk.count + 1)) ELSE run_at END
                WHERE id IN (\(list)) AND state = 'waiting'
                  AND NOT EXISTS (SELECT 1 FROM mp_job_deps e WHERE e.child_id = mp_jobs.id AND e.parent_state IS NULL)
                RETURNING queue
                """,
                parameters + [.int(now)]
            ) { r in if let q = r[0].textValue { queues.insert(q) } }
        }
        return stoppedWithDependents
    }

    /// Resolves the edges of jobs that ended without resolving them (a worker of the previous version, SQL
    /// of the user's, a job deleted by hand) and settles their waiting jobs: a backstop that any worker's
    /// rescue runs. Returns the queues of the jobs made available.
    static func sweep(now: Int64, on c: any SQLConnection) throws -> Set<String> {
        var parents: [Int64] = []
        try c.forEachRow(
            """
            SELECT DISTINCT e.parent_id FROM mp_job_deps e LEFT JOIN mp_jobs p ON p.id = e.parent_id
            WHERE e.parent_state IS NULL AND (p.id IS NULL OR p.state IN \(ended)) ORDER BY e.parent_id LIMIT 1000
            """,
            []
        ) { parents.append($0[0].intValue ?? 0) }
        return parents.isEmpty ? [] : try release(parents, now: now, on: c)
    }

    /// The outcomes each of the claimed jobs `ids` waited for, encoded (``JobOutcomes``) for the pool
    /// worker that runs it: the edges are all resolved (the job left `waiting`) and change no more.
    static func outcomes(of ids: [Int64], on c: any SQLConnection) throws -> [Int64: [UInt8]] {
        let d = c.dialect
        var byJob: [Int64: [JobOutcomes.Outcome]] = [:]
        for chunk in ids.chunks(of: 500) {
            let list = chunk.indices.map { d.parameter($0 - chunk.startIndex + 1) }.joined(separator: ", ")
            try c.forEachRow(
                "SELECT child_id, parent_id, parent_state, result, errors FROM mp_job_deps WHERE child_id IN (\(list)) ORDER BY child_id, position",
                chunk.map { .int($0) }
            ) { r in
                let result: [UInt8]? = if case .blob(let b) = r[3] { b } else { nil }
                byJob[r[0].intValue ?? 0, default: []].append(
                    JobOutcomes.Outcome(
                        job: r[1].intValue ?? 0,
                        state: r[2].textValue.flatMap(JobState.init(rawValue:)) ?? .cancelled,
                        errors: (r[4].textValue ?? "").split(separator: "\n").map(String.init),
                        result: result
                    )
                )
            }
        }
        let encoder = BinaryEncoder()
        return try byJob.mapValues { try encoder.encode(JobOutcomes($0)) }
    }

    /// Wakes the workers listening for `queues`, at commit (PostgreSQL).
    static func notify(_ queues: Set<String>, on c: any SQLConnection) throws {
        guard c.dialect.notifies else { return }
        for q in queues.sorted() {
            try c.execute(
                "SELECT pg_notify(\(c.dialect.parameter(1)), \(c.dialect.parameter(2)))",
                [.text(QueueSchema.channel), .text(q)]
            )
        }
    }
}

extension Array {
    /// Consecutive slices of at most `n` elements.
    func chunks(of n: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: n).map { self[$0..<Swift.min(count, $0 + n)] }
    }
}
