import Glibc
import MultiprocessingSQL

/// The queue's tables, created and migrated by the library (`mp_job_schema` holds the version).
enum QueueSchema {
    static let version = 1

    /// Milliseconds since the epoch, the queue's clock (stored as BIGINT: comparable on every database,
    /// and the same in every process).
    static func nowMs() -> Int64 {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        return Int64(t.tv_sec) * 1000 + Int64(t.tv_nsec) / 1_000_000
    }

    static func migrate(_ c: any SQLConnection) throws {
        let d = c.dialect
        let id = d.name == "postgresql" ? "BIGSERIAL PRIMARY KEY" : "INTEGER PRIMARY KEY AUTOINCREMENT"
        let blob = d.name == "postgresql" ? "BYTEA" : "BLOB"
        try c.transaction(immediate: true) {
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
        }
    }
}
