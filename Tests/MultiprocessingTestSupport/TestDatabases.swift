import Foundation
import Glibc
public import MultiprocessingSQL
import Synchronization
import Threading

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
    /// An SQLite file in /tmp (always available).
    case sqlite
    /// A database on the PostgreSQL test server (``postgresURL``).
    case postgresql

    /// The raw value (`sqlite`, `postgresql`): the names `MP_TEST_BACKENDS` takes.
    public var description: String { rawValue }

    /// SQLite always; PostgreSQL when a server answers (the first use prints why it is skipped when not),
    /// or when the run requires it (`MP_TEST_REQUIRE=postgresql`: its variants then fail without one).
    /// `MP_TEST_BACKENDS` (comma-separated names) narrows the list: `.ci/run`'s PostgreSQL pass runs only
    /// the PostgreSQL variants, which the default pass has already skipped.
    public static let enabled: [TestBackend] = {
        var out = allCases.filter { b in
            if b == .postgresql, let why = postgresUnavailable, !requiredCapabilities.contains("postgresql") {
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
    /// The kind of database it is.
    public let backend: TestBackend
    /// Where it is: an SQLite file's URL, or the test server's URL naming the new database.
    public let url: DatabaseURL
    /// A path prefix in /tmp for the test's own files (logs, markers); files named `scratch + suffix` with
    /// the suffixes `.log`, `.marker` are removed at the end.
    public let scratch: String

    /// A new connection to it (the caller closes it; one still open at the end is cut when a PostgreSQL
    /// database is dropped).
    public func connect() throws -> any SQLConnection { try Database.connect(url) }
}

/// Runs `body` with a fresh database: an SQLite file in /tmp, or a new database on the PostgreSQL test
/// server (dropped at the end, with any connection still open to it).
public func withScratchDatabase<R>(_ backend: TestBackend, _ body: (ScratchDatabase) throws -> R) throws -> R {
    let (db, remove) = try makeScratchDatabase(backend)
    defer { remove() }
    return try body(db)
}

/// ``withScratchDatabase(_:_:)`` for async tests.
public func withScratchDatabase<R>(
    _ backend: TestBackend,
    _ body: (ScratchDatabase) async throws -> R
) async throws -> R {
    let (db, remove) = try makeScratchDatabase(backend)
    defer { remove() }
    return try await body(db)
}

/// A fresh database and what removes it.
private func makeScratchDatabase(_ backend: TestBackend) throws -> (ScratchDatabase, @Sendable () -> Void) {
    let tag = "\(getpid())_\(UInt32.random(in: 0...UInt32.max))"
    let scratch = "/tmp/mp-test-\(tag)"
    let removeFiles: @Sendable () -> Void = {
        for suffix in [".db", ".db-wal", ".db-shm", ".log", ".marker"] { unlink(scratch + suffix) }
    }
    switch backend {
    case .sqlite:
        return (
            ScratchDatabase(backend: backend, url: DatabaseURL(sqlite: scratch + ".db"), scratch: scratch), removeFiles
        )
    case .postgresql:
        guard let server = postgresURL, postgresUnavailable == nil else {
            removeFiles()
            throw SQLError(.connection, postgresUnavailable ?? "no PostgreSQL")
        }
        let name = "mp_test_\(tag)"
        let admin = try Database.connect(server)
        defer { admin.close() }
        try admin.execute("CREATE DATABASE \(name)")
        var url = server
        url.database = name
        let remove: @Sendable () -> Void = {
            if let admin = try? Database.connect(server) {
                _ = try? admin.execute("DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
                admin.close()
            }
            removeFiles()
        }
        return (ScratchDatabase(backend: backend, url: url, scratch: scratch), remove)
    }
}

/// A PostgreSQL server of the test's own (initdb in /tmp, a free port on 127.0.0.1, trust
/// authentication), for tests that stop or restart it, which the shared server must not suffer. Needs
/// Debian's server binaries (`/usr/lib/postgresql/*/bin`) and root (the server runs as `postgres`).
public final class PrivatePostgres: @unchecked Sendable {
    /// The server's directory in /tmp: its data directory (`data`), log (`server.log`), Unix socket and
    /// TLS certificate; removed by ``stop(removing:)`` and on deinit.
    public let directory: String
    /// The TCP port it listens on, on 127.0.0.1.
    public let port: Int
    let bin: String

    /// Why no private server can start here, or nil.
    public static let unavailable: String? = {
        if let why = postgresUnavailable { return why }
        if getuid() != 0 { return "a private PostgreSQL server needs root (it runs as the postgres user)" }
        if binDirectory() == nil { return "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin" }
        return nil
    }()

    static func binDirectory() -> String? {
        guard let d = opendir("/usr/lib/postgresql") else { return nil }
        defer { closedir(d) }
        var versions: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if !name.hasPrefix("."), access("/usr/lib/postgresql/\(name)/bin/initdb", X_OK) == 0 {
                versions.append(name)
            }
        }
        return versions.max { (Int($0) ?? 0) < (Int($1) ?? 0) }.map { "/usr/lib/postgresql/\($0)/bin" }
    }

    /// Creates and starts the server (a few seconds).
    public init() throws {
        guard Self.unavailable == nil, let bin = Self.binDirectory() else {
            throw SQLError(.connection, Self.unavailable ?? "no PostgreSQL binaries")
        }
        self.bin = bin
        directory = "/tmp/mp-pg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        port = Self.freePort()
        try Self.shell("mkdir -p \(directory) && chown postgres \(directory)")
        try asPostgres(
            "\(bin)/initdb -D \(directory)/data -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null"
        )
        try asPostgres(
            "printf \"listen_addresses = '127.0.0.1'\\nport = \(port)\\nunix_socket_directories = '\(directory)'\\nfsync = off\\n\" >> \(directory)/data/postgresql.conf"
        )
        try start()
    }

    deinit { stop() }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    public var url: DatabaseURL { try! DatabaseURL("postgres://postgres@127.0.0.1:\(port)/postgres") }

    /// Starts the server (`pg_ctl start`, waiting until it accepts connections), after ``stop(removing:)``
    /// with `removing: false`; ``init()`` starts it the first time.
    public func start() throws {
        try asPostgres("\(bin)/pg_ctl -D \(directory)/data -l \(directory)/server.log -w start >/dev/null")
    }

    /// Stops it at once (`-m fast`: open connections are cut), as a crash or a restart would.
    public func stop(removing: Bool = true) {
        _ = try? asPostgres("\(bin)/pg_ctl -D \(directory)/data -m fast -w stop >/dev/null 2>&1")
        if removing { _ = try? Self.shell("rm -rf \(directory)") }
    }

    /// Restarts the server at once (`-m fast`: open connections are cut) and waits until it accepts
    /// connections again; the configuration files are read anew.
    public func restart() throws {
        try asPostgres("\(bin)/pg_ctl -D \(directory)/data -m fast -w restart -l \(directory)/server.log >/dev/null")
    }

    /// Turns TLS on with a new self-signed certificate for 127.0.0.1, and takes TLS connections only
    /// (`hostssl` trust, anything else rejected). Returns the certificate's path (a PEM file anyone may
    /// read: the `sslrootcert` that verifies the server).
    public func requireTLS() throws -> String {
        let cert = try turnOnTLS()
        try asPostgres(
            "printf 'hostssl all all 127.0.0.1/32 trust\\nhost all all 127.0.0.1/32 reject\\nlocal all all trust\\n' > \(directory)/data/pg_hba.conf"
        )
        try restart()
        return cert
    }

    /// Turns TLS on (a new self-signed certificate for 127.0.0.1) without changing who may connect how:
    /// clients choose. Restart (or call ``requireTLS()``) for it to take effect. Returns the certificate's
    /// path.
    public func turnOnTLS() throws -> String {
        let cert = "\(directory)/server.crt"
        let key = "\(directory)/data/server.key"
        try asPostgres(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout \(key) -out \(cert) 2>/dev/null && chmod 600 \(key) && chmod 644 \(cert)"
        )
        try asPostgres(
            "printf \"ssl = on\\nssl_cert_file = '\(cert)'\\nssl_key_file = '\(key)'\\n\" >> \(directory)/data/postgresql.conf"
        )
        return cert
    }

    /// Turns TLS off (`ssl = off`) and restarts the server.
    public func turnOffTLS() throws {
        try asPostgres("printf \"ssl = off\\n\" >> \(directory)/data/postgresql.conf")
        try restart()
    }

    /// Puts `lines` (pg_hba.conf rules, e.g. `host all alice 127.0.0.1/32 md5`) before the trust rules
    /// and reloads the server's configuration.
    public func authenticate(_ lines: [String]) throws {
        let hba = "\(directory)/data/pg_hba.conf"
        try asPostgres(
            "{ printf '%s\\n' \(lines.map { "\"\($0)\"" }.joined(separator: " ")); cat \(hba); } > \(hba).new && mv \(hba).new \(hba)"
        )
        try asPostgres("\(bin)/pg_ctl -D \(directory)/data reload >/dev/null")
    }

    func asPostgres(_ command: String) throws {
        let quoted = command.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''")
        try Self.shell("su postgres -s /bin/sh -c '\(quoted)'")
    }

    static func shell(_ command: String) throws {
        let status = system(command)
        guard status == 0 else { throw SQLError(.other, "`\(command)` failed (status \(status))") }
    }

    static func freePort() -> Int {
        let (fd, port) = loopbackSocket(listening: false)
        close(fd)
        return port
    }
}

/// A TCP socket bound to a free port on 127.0.0.1, listening if asked (a server that takes connections and
/// never answers): its descriptor (the caller closes it) and port.
public func loopbackSocket(listening: Bool) -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, 16) } }
    if listening { _ = listen(fd, 4) }
    var len = socklen_t(16)
    _ = withUnsafeMutablePointer(to: &a) {
        getsockname(fd, UnsafeMutableRawPointer($0).assumingMemoryBound(to: sockaddr.self), &len)
    }
    return (fd, Int(UInt16(bigEndian: a.sin_port)))
}

/// A TCP relay on 127.0.0.1 to `port`: what a capture on the wire would see. Every byte a client sends
/// through it is kept (``clientBytes``); a thread per direction per connection copies until either side
/// closes.
public final class RecordingRelay: @unchecked Sendable {  // state behind `sent`; the socket is set once
    /// The relay's own port on 127.0.0.1: connect here instead of to the target.
    public let port: Int
    private let listening: Int32
    private let sent = TrackedMutex<[UInt8]>([])

    /// Starts relaying: listens on a free port (``port``) and forwards each connection to `target` on
    /// 127.0.0.1, on threads of its own. A connection the target refuses is closed.
    public init(to target: Int) {
        (listening, port) = loopbackSocket(listening: true)
        let fd = listening
        Thread.detachNewThread { [self] in
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 {
                    if errno == EINTR { continue }
                    Glibc.close(fd)  // closed by close()'s shutdown: the descriptor is this thread's to free
                    return
                }
                let (s, _) = loopbackSocket(listening: false)
                var a = sockaddr_in()
                a.sin_family = sa_family_t(AF_INET)
                a.sin_addr.s_addr = inet_addr("127.0.0.1")
                a.sin_port = UInt16(target).bigEndian
                let ok = withUnsafePointer(to: &a) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, 16) }
                }
                guard ok == 0 else {
                    Glibc.close(c)
                    Glibc.close(s)
                    continue
                }
                let ends = EndCount()
                let finished: @Sendable () -> Void = {
                    // The second direction to end closes both descriptors.
                    if ends.count.add(1, ordering: .acquiringAndReleasing).newValue == 2 {
                        Glibc.close(c)
                        Glibc.close(s)
                    }
                }
                Thread.detachNewThread { [self] in
                    pump(from: c, to: s, recording: true)
                    finished()
                }
                Thread.detachNewThread { [self] in
                    pump(from: s, to: c, recording: false)
                    finished()
                }
            }
        }
    }

    private func pump(from a: Int32, to b: Int32, recording: Bool) {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(a, &buf, buf.count)
            if n <= 0 { break }
            if recording { sent.withLock { $0 += buf[0..<n] } }
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { write(b, $0.baseAddress! + off, n - off) }
                if w <= 0 { break }
                off += w
            }
        }
        // One side ended: end the other's direction too (both threads then end).
        shutdown(b, Int32(SHUT_WR))
        shutdown(a, Int32(SHUT_RD))
    }

    /// Everything clients have sent so far.
    public var clientBytes: [UInt8] { sent.withLock { $0 } }

    /// Whether `needle` appears in what clients sent.
    public func clientsSent(_ needle: String) -> Bool {
        let n = Array(needle.utf8)
        let hay = clientBytes
        guard n.count <= hay.count else { return false }
        return (0...(hay.count - n.count)).contains { i in hay[i..<(i + n.count)].elementsEqual(n) }
    }

    /// Stops accepting (relayed connections end with their peers).
    public func close() { shutdown(listening, Int32(SHUT_RDWR)) }
}

/// How many directions of a relayed connection have ended.
private final class EndCount: Sendable {
    let count = Atomic<Int>(0)
}
