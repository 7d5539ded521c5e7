import Glibc
public import MultiprocessingSQL

/// The PostgreSQL server the tests use: `$MP_POSTGRES_URL`, else the one `scripts/start-postgres` starts.
public let postgresURL: DatabaseURL? = try? DatabaseURL(
    getenv("MP_POSTGRES_URL").map { String(cString: $0) } ?? "postgres://root:123456@127.0.0.1:5433/db1"
)

/// Why the PostgreSQL tests cannot run here, or nil when a server answers (and the tests were built with
/// the PostgreSQL trait, which links the driver).
public let postgresUnavailable: String? = {
    guard let url = postgresURL else { return "MP_POSTGRES_URL is not a database URL" }
    do {
        let c = try Database.connect(url, timeout: .seconds(3))
        c.close()
        return nil
    } catch {
        return "no PostgreSQL at \(url) (\(error)); scripts/start-postgres starts one, .ci/run does"
    }
}()

/// A database the same tests run on.
public enum TestBackend: String, Sendable, CaseIterable, CustomStringConvertible {
    case sqlite
    case postgresql

    public var description: String { rawValue }

    /// SQLite always; PostgreSQL when a server answers (the first use prints why it is skipped when not).
    /// `MP_TEST_BACKENDS` (comma-separated names) narrows the list: `.ci/run`'s PostgreSQL pass runs only
    /// the PostgreSQL variants, which the default pass has already skipped.
    public static let enabled: [TestBackend] = {
        var out = allCases.filter { b in
            if b == .postgresql, let why = postgresUnavailable {
                print("PostgreSQL variants skipped: \(why)")
                return false
            }
            return true
        }
        if let only = getenv("MP_TEST_BACKENDS").map({ String(cString: $0) }) {
            let names = Set(only.split(separator: ",").map(String.init))
            out = out.filter { names.contains($0.rawValue) }
        }
        return out
    }()
}

/// A fresh database for one test, removed at the end.
public struct ScratchDatabase: Sendable {
    public let backend: TestBackend
    public let url: DatabaseURL
    /// A path prefix in /tmp for the test's own files (logs, markers); files named `scratch + suffix` with
    /// the suffixes `.log`, `.marker` are removed at the end.
    public let scratch: String

    public func connect() throws -> any SQLConnection { try Database.connect(url) }
}

/// Runs `body` with a fresh database: an SQLite file in /tmp, or a new database on the PostgreSQL test
/// server (dropped at the end, with any connection still open to it).
public func withScratchDatabase<R>(_ backend: TestBackend, _ body: (ScratchDatabase) throws -> R) throws -> R {
    let tag = "\(getpid())_\(UInt32.random(in: 0...UInt32.max))"
    let scratch = "/tmp/mp-test-\(tag)"
    defer { for suffix in [".db", ".db-wal", ".db-shm", ".log", ".marker"] { unlink(scratch + suffix) } }
    switch backend {
    case .sqlite:
        return try body(ScratchDatabase(backend: backend, url: DatabaseURL(sqlite: scratch + ".db"), scratch: scratch))
    case .postgresql:
        guard let server = postgresURL, postgresUnavailable == nil else {
            throw SQLError(.connection, postgresUnavailable ?? "no PostgreSQL")
        }
        let name = "mp_test_\(tag)"
        let admin = try Database.connect(server)
        defer { admin.close() }
        try admin.execute("CREATE DATABASE \(name)")
        defer { _ = try? admin.execute("DROP DATABASE IF EXISTS \(name) WITH (FORCE)") }
        var url = server
        url.database = name
        return try body(ScratchDatabase(backend: backend, url: url, scratch: scratch))
    }
}
