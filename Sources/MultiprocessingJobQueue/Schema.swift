import Glibc
import MultiprocessingSQL

/// The queue's tables, created and migrated by the library (`mp_job_schema` holds the version).
enum QueueSchema {
    static let version = 3
    /// The channel PostgreSQL notifies when jobs are queued (the payload is the queue's name).
    static let channel = "mp_jobs"

    /// `2026-12-06T03:33:02.123Z`: a time in milliseconds since the epoch, as error histories show it.
    static func iso8601(ms: Int64) -> String {
        var seconds = time_t(ms / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let millis = Int(ms % 1000)
        let frac = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):"
            + "\(two(parts.tm_min)):\(two(parts.tm_sec)).\(frac)Z"
    }

    /// Milliseconds since the epoch, the queue's clock (stored as BIGINT: comparable on every database,
    /// and the same in every process).
    static func nowMs() -> Int64 {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        return Int64(t.tv_sec) * 1000 + Int64(t.tv_nsec) / 1_000_000
    }

    static func migrate(_ c: any SQLConnection) throws {
        let d = c.dialect
        let id = d.autoIncrementPrimaryKey
        let blob = d.binaryType
        guard d.returnsFromUpdates else {
            throw JobQueueError(
                .schema,
                "the job queue runs on SQLite and PostgreSQL, not \(d.name) (its UPDATE has no RETURNING)"
            )
        }
        try c.transaction(immediate: true) {
            // PostgreSQL: one migrating process at a time (concurrent CREATE … IF NOT EXISTS collide).
            if d.advisoryLocks { try c.execute("SELECT pg_advisory_xact_lock(7230851001)") }
            try c.execute("CREATE TABLE IF NOT EXISTS mp_job_schema (version INTEGER NOT NULL)")
            let current = try c.scalar("SELECT max(version) FROM mp_job_schema")?.intValue ?? 0
            if current > Int64(version) {
                throw JobQueueError(
                    .schema,
                    "the queue's tables are at version \(current), this library knows \(version): upgrade it"
                )
            }
            if current < 1 {
                // One table; the claimable set has its own partial index, so finished rows leave it.
                try c.execute(
                    """
                    CREATE TABLE IF NOT EXISTS mp_jobs (
                      id \(id),
                      queue VARCHAR(128) NOT NULL,
                      kind TEXT NOT NULL,
                      payload \(blob) NOT NULL,
                      state VARCHAR(16) NOT NULL,
                      priority INTEGER NOT NULL,
                      run_at BIGINT NOT NULL,
                      attempt INTEGER NOT NULL,
                      max_attempts INTEGER NOT NULL,
                      backoff_ms BIGINT NOT NULL,
                      timeout_ms BIGINT,
                      unique_key VARCHAR(255),
                      worker VARCHAR(255),
                      lease_until BIGINT,
                      cancel_requested INTEGER NOT NULL DEFAULT 0,
                      created_at BIGINT NOT NULL,
                      finished_at BIGINT,
                      result \(blob),
                      errors TEXT)
                    """
                )
                try c.execute(
                    "CREATE INDEX IF NOT EXISTS mp_jobs_claim ON mp_jobs (queue, priority DESC, run_at, id) WHERE state = 'available'"
                )
                try c.execute(
                    "CREATE INDEX IF NOT EXISTS mp_jobs_lease ON mp_jobs (lease_until) WHERE state = 'running'"
                )
                try c.execute(
                    "CREATE INDEX IF NOT EXISTS mp_jobs_finished ON mp_jobs (finished_at) WHERE finished_at IS NOT NULL"
                )
                try c.execute("CREATE INDEX IF NOT EXISTS mp_jobs_worker ON mp_jobs (worker) WHERE state = 'running'")
                try c.execute(
                    "CREATE UNIQUE INDEX IF NOT EXISTS mp_jobs_unique ON mp_jobs (unique_key) WHERE unique_key IS NOT NULL AND state IN ('available', 'running')"
                )
                try c.execute("INSERT INTO mp_job_schema (version) VALUES (1)")
            }
            if current < 2 {
                // PostgreSQL: every statement that queues jobs notifies the workers once per queue at
                // commit (a rolled-back producer notifies nobody), whoever wrote it: the library, or SQL
                // of the user's own.
                if d.notifies {
                    try c.execute(
                        """
                        CREATE OR REPLACE FUNCTION mp_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN
                          PERFORM pg_notify('\(channel)', q) FROM (SELECT DISTINCT queue AS q FROM mp_new_jobs
                            WHERE state = 'available') s;
                          RETURN NULL;
                        END $$
                        """
                    )
                    try c.execute("DROP TRIGGER IF EXISTS mp_jobs_notify ON mp_jobs")
                    try c.execute(
                        """
                        CREATE TRIGGER mp_jobs_notify AFTER INSERT ON mp_jobs REFERENCING NEW TABLE AS mp_new_jobs
                          FOR EACH STATEMENT EXECUTE FUNCTION mp_jobs_notify()
                        """
                    )
                }
                try c.execute("INSERT INTO mp_job_schema (version) VALUES (2)")
            }
            if current < 3 {
                // The trace context of the span that queued the job (swift-distributed-tracing's injected
                // headers), continued by the worker that runs it; NULL when nothing was traced.
                // PostgreSQL: the ALTER waits for open transactions on the table and blocks the queue
                // while it waits: give up after 10 s (the worker or producer that migrates reports it)
                // rather than stall every producer and worker behind a long transaction.
                if d.advisoryLocks { try c.execute("SET LOCAL lock_timeout = '10s'") }
                try c.execute("ALTER TABLE mp_jobs ADD COLUMN trace_context \(blob)")
                try c.execute("INSERT INTO mp_job_schema (version) VALUES (3)")
            }
            // Tables that only add (no code of an older version reads or needs them) do not raise the
            // version: a binary of the previous version keeps working beside a newer one in a rolling
            // deploy. The workers serving the queue, as each last announced itself (every third of its
            // lease): the console's "workers" and their pools' processes, one line each in `processes`
            // (`QueueWorkerRecord.Process`). A worker deletes its row when it stops; rows of workers unseen
            // for a day (killed) are deleted by any worker's cleaner.
            try c.execute(
                """
                CREATE TABLE IF NOT EXISTS mp_workers (
                  name VARCHAR(255) PRIMARY KEY,
                  host VARCHAR(255) NOT NULL,
                  pid BIGINT NOT NULL,
                  queues TEXT NOT NULL,
                  started_at BIGINT NOT NULL,
                  last_seen BIGINT NOT NULL,
                  heartbeat_ms BIGINT NOT NULL,
                  held INTEGER NOT NULL,
                  concurrency INTEGER NOT NULL,
                  finished BIGINT NOT NULL,
                  stopping INTEGER NOT NULL,
                  processes TEXT NOT NULL)
                """
            )
            // Limits of queues across all workers (`JobQueue.setLimit`): at most `concurrency` jobs of the
            // queue running, and at most `rate` started in any `period_ms`. A claim of a limited queue locks
            // its row, so claims of it are one at a time; `mp_queue_starts` holds the starts of the last
            // period of each rate-limited queue (a sliding window: exact, where a counter per fixed window
            // lets twice the rate through across a boundary). Workers of earlier versions do not know these
            // tables and ignore the limits.
            try c.execute(
                """
                CREATE TABLE IF NOT EXISTS mp_queue_limits (
                  queue VARCHAR(128) PRIMARY KEY,
                  concurrency INTEGER,
                  rate INTEGER,
                  period_ms BIGINT)
                """
            )
            try c.execute(
                "CREATE TABLE IF NOT EXISTS mp_queue_starts (queue VARCHAR(128) NOT NULL, at BIGINT NOT NULL)"
            )
            try c.execute("CREATE INDEX IF NOT EXISTS mp_queue_starts_queue ON mp_queue_starts (queue, at)")
            // Periodic jobs (`JobQueue.schedule`): the job, its options, its timing (`cron:<expression>` read
            // in `zone`, or `every:<ms>`), what happens to missed occurrences, and the next occurrence
            // (NULL: none left). Workers queue an occurrence by moving `next_at` on with a compare-and-set,
            // in the transaction that inserts its job.
            try c.execute(
                """
                CREATE TABLE IF NOT EXISTS mp_schedules (
                  name VARCHAR(255) PRIMARY KEY,
                  queue VARCHAR(128) NOT NULL,
                  kind TEXT NOT NULL,
                  payload \(blob) NOT NULL,
                  spec TEXT NOT NULL,
                  zone TEXT NOT NULL,
                  missed TEXT NOT NULL,
                  priority INTEGER NOT NULL,
                  max_attempts INTEGER NOT NULL,
                  backoff_ms BIGINT NOT NULL,
                  timeout_ms BIGINT,
                  unique_key VARCHAR(255),
                  next_at BIGINT,
                  last_at BIGINT,
                  updated_at BIGINT NOT NULL)
                """
            )
            try c.execute("CREATE INDEX IF NOT EXISTS mp_schedules_due ON mp_schedules (queue, next_at)")
            // Jobs that wait for others (chains, groups' callbacks: `JobDependencies`). A waiting job is in state
            // `waiting` with `waits_for` edges, `waiting_on` of them still open; each edge names the job waited
            // for, whether that job must complete for this one to run (`required`), and, once it has finished, its
            // outcome copied in (`parent_state`, `result`, `errors`: the retention cleaner may delete the job
            // itself before the waiting one runs). `dependents` is set (and never lowered) when a job comes to wait
            // for a job that has not ended: a job at 0 finishes exactly as before (the claim's fast path), one
            // above releases them in the transaction that records its end. Columns with defaults, added when
            // missing, and a table: the version stays, and a worker of the previous version keeps working beside
            // this one (a waiting job whose parent such a worker finishes is released by the next sweep of a newer
            // one; its cleaner, which does not know the edges, may delete such a parent first, which the sweep then
            // counts as cancelled).
            for column in ["waits_for", "waiting_on", "dependents"] where !(try hasColumn(column, on: c)) {
                if d.advisoryLocks { try c.execute("SET LOCAL lock_timeout = '10s'") }
                try c.execute("ALTER TABLE mp_jobs ADD COLUMN \(column) INTEGER NOT NULL DEFAULT 0")
            }
            try c.execute(
                """
                CREATE TABLE IF NOT EXISTS mp_job_deps (
                  child_id BIGINT NOT NULL,
                  position INTEGER NOT NULL,
                  parent_id BIGINT NOT NULL,
                  required INTEGER NOT NULL,
                  parent_state VARCHAR(16),
                  result \(blob),
                  errors TEXT,
                  PRIMARY KEY (child_id, position))
                """
            )
            try c.execute(
                "CREATE INDEX IF NOT EXISTS mp_job_deps_open ON mp_job_deps (parent_id) WHERE parent_state IS NULL"
            )
            // Jobs queued by a `QueuePool` carry its tag (`reply_to`, NULL for every other job): the pool takes
            // their ends (reading and deleting the rows) as they come. PostgreSQL notifies the channel named by
            // the tag at the commit of each end, so results stream back without polling; the trigger's WHEN
            // keeps every other job's end as it was (no function call). Added with the column, once.
            if !(try hasColumn("reply_to", on: c)) {
                if d.advisoryLocks { try c.execute("SET LOCAL lock_timeout = '10s'") }
                try c.execute("ALTER TABLE mp_jobs ADD COLUMN reply_to VARCHAR(64)")
                try c.execute(
                    "CREATE INDEX IF NOT EXISTS mp_jobs_reply ON mp_jobs (reply_to) WHERE reply_to IS NOT NULL"
                )
                if d.notifies {
                    try c.execute(
                        """
                        CREATE OR REPLACE FUNCTION mp_jobs_reply() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN
                          PERFORM pg_notify(NEW.reply_to, '');
                          RETURN NULL;
                        END $$
                        """
                    )
                    try c.execute("DROP TRIGGER IF EXISTS mp_jobs_reply ON mp_jobs")
                    try c.execute(
                        """
                        CREATE TRIGGER mp_jobs_reply AFTER UPDATE OF state ON mp_jobs FOR EACH ROW
                          WHEN (NEW.reply_to IS NOT NULL AND NEW.state IN ('completed', 'discarded', 'cancelled'))
                          EXECUTE FUNCTION mp_jobs_reply()
                        """
                    )
                }
            }

        }
    }

    /// Whether `mp_jobs` has `column` (asked inside a savepoint: on PostgreSQL a failed statement would
    /// otherwise end the migration's transaction).
    private static func hasColumn(_ column: String, on c: any SQLConnection) throws -> Bool {
        try c.execute("SAVEPOINT mp_probe")
        do {
            _ = try c.scalar("SELECT \(column) FROM mp_jobs WHERE 1 = 0")
            try c.execute("RELEASE SAVEPOINT mp_probe")
            return true
        } catch let e as SQLError where e.kind != .connection {
            try c.execute("ROLLBACK TO SAVEPOINT mp_probe")
            try c.execute("RELEASE SAVEPOINT mp_probe")
            return false
        }
    }
}
