import Threading

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
