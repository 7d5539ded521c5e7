import Multiprocessing
import MultiprocessingSQL

/// Jobs that wait for others, in the database: the edges of `mp_job_deps` and the `waiting` state.
///
/// An edge is resolved, and its job's outcome copied into it, in the transaction that records that job's
/// end (a worker's result, its last failure, a lease that ran out on its last attempt, a cancel), so that
/// no worker killed at any point loses a link: either the end and its releases commit together, or neither
/// does. (A worker knows which of its jobs others wait for from the claim and each heartbeat; an end it
/// records one by one is fenced by `dependents = 0` besides, so on SQLite a job that came to wait after the
/// last heartbeat is released with it too. On PostgreSQL such a job, whose end went through the
/// claim-and-complete statement, is released by the next sweep: within a quarter lease.) A waiting job is then stopped (state `cancelled`, with a line saying why) as soon as a job it
/// requires ends other than completed, or made available once every job it waits for has ended. A stopped
/// job's own waiting jobs are resolved in turn, in the same transaction.
///
/// On PostgreSQL, two jobs that end at once in two transactions may both be the last for one waiting job:
/// each locks the waiting jobs' rows (in id order) before resolving its edges, so the second sees the
/// first's edges resolved once it has the lock and releases the job (READ COMMITTED, which each statement
/// of the worker's transactions uses). A sweep (``endedUnseen(on:)``, in every worker's rescue) resolves
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
            let chunks = idLists(next, d)
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
            var edges: [Edge] = []
            for chunk in chunks { edges += try resolve("parent_id IN (\(chunk.list))", chunk.ids, on: c) }
            next = try settle(edges, now: now, queues: &queues, on: c)
        }
        try notify(queues, on: c)
        return queues
    }

    /// `ids` as `IN (…)` lists of at most 500, each padded (its last id repeated) to one of a few lengths,
    /// so that the statements that use them are prepared once each and found in the connection's cache:
    /// a worker recording two jobs at a time must not compile a statement for each list it sends.
    static func idLists(_ ids: [Int64], _ d: SQLDialect) -> [(list: String, ids: [SQLValue])] {
        ids.chunks(of: 500).map { chunk in
            let size = [1, 4, 16, 64, 256, 500].first { $0 >= chunk.count } ?? chunk.count
            var values = chunk.map { SQLValue.int($0) }
            values += [SQLValue](repeating: values[values.count - 1], count: size - values.count)
            return ((1...size).map { d.parameter($0) }.joined(separator: ", "), values)
        }
    }

    /// Locks the rows of waiting jobs, in id order (PostgreSQL; SQLite's write lock is held already).
    static func lock(_ ids: [Int64], on c: any SQLConnection) throws {
        let d = c.dialect
        guard d.skipsLockedRows, !ids.isEmpty else { return }
        for chunk in idLists(ids.sorted(), d) {
            try c.forEachRow("SELECT id FROM mp_jobs WHERE id IN (\(chunk.list)) ORDER BY id FOR UPDATE", chunk.ids) {
                _ in
            }
        }
    }

    /// An edge just resolved: its waiting job, the job it waited for, whether that job was required, and
    /// how it ended.
    struct Edge {
        let child: Int64
        let parent: Int64
        let required: Bool
        let state: String
    }

    /// Copies the outcome of each ended job into the unresolved edges `condition` selects (a job the
    /// retention cleaner already deleted counts as cancelled, without a result). Returns the edges
    /// resolved: each once, whoever else resolves at the same time (`parent_state IS NULL` fences it).
    static func resolve(_ condition: String, _ parameters: [SQLValue], on c: any SQLConnection) throws -> [Edge] {
        func of(_ column: String) -> String { "(SELECT \(column) FROM mp_jobs p WHERE p.id = mp_job_deps.parent_id)" }
        var edges: [Edge] = []
        try c.forEachRow(
            """
            UPDATE mp_job_deps SET parent_state = coalesce(\(of("state")), 'cancelled'), result = \(of("result")),
              errors = \(of("errors"))
            WHERE \(condition) AND parent_state IS NULL AND coalesce(\(of("state")), 'cancelled') IN \(ended)
            RETURNING child_id, parent_id, required, parent_state
            """,
            parameters
        ) { r in
            edges.append(
                Edge(
                    child: r[0].intValue ?? 0,
                    parent: r[1].intValue ?? 0,
                    required: r[2].intValue == 1,
                    state: r[3].textValue ?? "cancelled"
                )
            )
        }
        return edges
    }

    /// Settles the waiting jobs of the edges just resolved (their rows locked): stops those a required job
    /// failed, counts the rest down (`waiting_on`, the edges still open), and makes available those that
    /// reach zero, adding their queues to `queues` (for the caller to notify). Work in proportion to the
    /// edges resolved, never to the edges a job has: a callback after 20,000 members costs the same at
    /// the last as at the first. Returns the stopped jobs that have waiting jobs of their own.
    static func settle(
        _ edges: [Edge],
        now: Int64,
        queues: inout Set<String>,
        on c: any SQLConnection
    ) throws -> [Int64] {
        let d = c.dialect
        var resolved: [Int64: Int] = [:]
        var failed: [Int64: Edge] = [:]
        for e in edges {
            resolved[e.child, default: 0] += 1
            if e.required && e.state != "completed" && failed[e.child] == nil { failed[e.child] = e }
        }
        var stoppedWithDependents: [Int64] = []
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
        for (child, n) in resolved.sorted(by: { $0.key < $1.key }) {
            try c.forEachRow(
                """
                UPDATE mp_jobs SET waiting_on = waiting_on - \(d.parameter(1)),
                  state = CASE WHEN state = 'waiting' AND waiting_on - \(d.parameter(1)) <= 0 THEN 'available' ELSE state END,
                  run_at = CASE WHEN state = 'waiting' AND waiting_on - \(d.parameter(1)) <= 0 AND run_at < \(d.parameter(2))
                    THEN \(d.parameter(2)) ELSE run_at END
                WHERE id = \(d.parameter(3)) RETURNING state, queue
                """,
                [.int(Int64(n)), .int(now), .int(child)]
            ) { r in
                if r[0].textValue == "available", let q = r[1].textValue { queues.insert(q) }
            }
        }
        return stoppedWithDependents
    }

    /// Jobs that ended without resolving the edges into them (a result recorded by PostgreSQL's
    /// claim-and-complete statement for a job that others came to wait for after its worker's last
    /// heartbeat, a worker of the previous version, SQL of the user's, a job deleted by hand): read without
    /// a lock, for ``release(_:now:on:)`` in a transaction, which any worker's rescue does (the sweep).
    static func endedUnseen(on c: any SQLConnection) throws -> [Int64] {
        var parents: [Int64] = []
        try c.forEachRow(
            """
            SELECT DISTINCT e.parent_id FROM mp_job_deps e LEFT JOIN mp_jobs p ON p.id = e.parent_id
            WHERE e.parent_state IS NULL AND (p.id IS NULL OR p.state IN \(ended)) ORDER BY e.parent_id LIMIT 1000
            """,
            []
        ) { parents.append($0[0].intValue ?? 0) }
        return parents
    }

    /// The outcomes each of the claimed jobs `ids` waited for, encoded (``JobOutcomes``) for the pool
    /// worker that runs it: the edges are all resolved (the job left `waiting`) and change no more.
    static func outcomes(of ids: [Int64], on c: any SQLConnection) throws -> [Int64: [UInt8]] {
        let d = c.dialect
        var byJob: [Int64: [JobOutcomes.Outcome]] = [:]
        for chunk in idLists(ids, d) {
            try c.forEachRow(
                "SELECT child_id, parent_id, parent_state, result, errors FROM mp_job_deps WHERE child_id IN (\(chunk.list)) ORDER BY child_id, position",
                chunk.ids
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
