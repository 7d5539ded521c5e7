import MultiprocessingJobQueue
import MultiprocessingPostgres  // links the driver: Database.connect opens postgres:// URLs
import MultiprocessingSQL

// Built with `swift build --traits PostgreSQL`; without the trait the module is empty and
// postgres:// URLs are refused with a message that says so.
let url = try DatabaseURL("postgres://app:secret@db.internal:5432/jobs?sslmode=verify-full")
let connection = try Database.connect(url, timeout: .seconds(10))
defer { connection.close() }
print(try connection.scalar("SELECT count(*) FROM mp_jobs WHERE state = 'available'") ?? .null)
let queue = try JobQueue(url)   // the same URL serves the durable queue
_ = queue
