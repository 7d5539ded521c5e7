// PostgreSQL for MultiprocessingSQL, through vapor/postgres-nio. Built only with the PostgreSQL trait
// (`swift build --traits PostgreSQL`): SwiftNIO takes minutes to build, and programs that do not use
// PostgreSQL should not pay for it.
#if PostgreSQL
import Foundation
import Logging
public import MultiprocessingSQL
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization
import Threading

/// A blocking `SQLConnection` on a postgres-nio connection: each call waits (on the calling thread, up
/// to the connection's timeout) for postgres-nio's event loop. Call it from a worker process or a thread
/// of your own, never from Swift's cooperative pool. `forEachRow` hands rows over in batches as they
/// arrive; until the caller takes them they wait in memory (read tables in chunks, as the pipeline does).
/// `Database.connect` opens `postgres://` URLs with it whenever this module is linked.
public final class PostgresSQLConnection: SQLConnectionOpening {
    /// Opens a connection to `url`, as `init(_:timeout:)` does: how `Database.connect` opens `postgres://`
    /// and `postgresql://` URLs when this module is linked into the program.
    public static func open(_ url: DatabaseURL, timeout: Duration) throws -> PostgresSQLConnection {
        try PostgresSQLConnection(url, timeout: timeout)
    }

    private var connection: PostgresConnection?
    /// The reading session (``SQLBulkReading``), opened on first use.
    private var reader: PostgresWireReader?
    private var readerUnsupported = false
    /// The URL the connection was opened with.
    public let url: DatabaseURL
    let timeout: Duration
    /// PostgreSQL's dialect: identifiers in double quotes, parameters written `$1`, `$2`, ….
    public var dialect: SQLDialect { .postgresql }
    private static let logger = Logger(
        label: "swift-multiprocessing.postgres",
        factory: { _ in SwiftLogNoOpLogHandler() }
    )
    private static let ids = Atomic<Int>(0)

    /// Connects to `url` (`postgres://user:password@host:port/database?sslmode=…`), waiting at most
    /// `timeout` for the server; every later call on the connection waits at most `timeout` too.
    ///
    /// `sslmode` is read as libpq reads it, `prefer` by default. With `allow` or `prefer` the server is
    /// asked first whether it offers TLS: if it does, TLS is required from then on (its certificate is not
    /// checked); if it does not, a server that asks for the password in clear text is refused (say
    /// `sslmode=disable` to send it anyway). `require` asks for TLS without checking the certificate;
    /// `verify-ca` checks it against `sslrootcert` (a PEM file) or the system's roots; `verify-full` also
    /// checks that it names the host.
    ///
    /// - Throws: `SQLError` of kind `.connection` when the server cannot be reached, does not answer within
    ///   `timeout`, refuses the login or asks for the password in clear text without TLS; of kind
    ///   `.statement` for an unknown `sslmode`.
    public init(_ url: DatabaseURL, timeout: Duration = .seconds(30)) throws {
        self.url = url
        self.timeout = timeout
        var tls = try Self.tls(for: url)
        if ["allow", "prefer"].contains(url.options["sslmode"] ?? "prefer") {
            // `allow`/`prefer`: postgres-nio would fall back to plain text and then answer a request for the
            // password in clear text. Ask the server first: TLS if it offers it (required from then on, so
            // not silently dropped), and plain text only with an authentication that does not send the
            // password as it is.
            switch try Self.probe(url, timeout) {
            case .offersTLS:
                tls = try Self.tls(for: url, mode: "require")
                // Reads go through this TLS session too: the reading session would ask the server again,
                // and an attacker in the path could answer that second question with no.
                readerUnsupported = true
            case .plain(authentication: 3): throw PostgresWireReader.cleartextRefused(url)
            case .plain: tls = .disable
            }
        }
        var configuration = PostgresConnection.Configuration(
            host: url.host,
            port: url.port,
            username: url.user,
            password: url.password.isEmpty ? nil : url.password,
            database: url.database.isEmpty ? nil : url.database,
            tls: tls
        )
        configuration.options.connectTimeout = .milliseconds(timeout.wholeMilliseconds)
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let connecting = PostgresConnection.connect(
            on: loop,
            configuration: configuration,
            id: Self.ids.add(1, ordering: .relaxed).newValue,
            logger: Self.logger
        )
        do {
            connection = try Self.wait(connecting, timeout)
        } catch {
            // A server that answers after the timeout: its connection is closed, not leaked (postgres-nio
            // stops the process when an open connection is released).
            connecting.whenSuccess { late in _ = late.close() as EventLoopFuture<Void> }
            throw Self.translate(error, "cannot connect to \(url)")
        }
    }

    deinit { close() }

    /// The TLS that the URL's `sslmode` asks for, as libpq reads it (and its default, `prefer`):
    /// - `disable`: none;
    /// - `allow`, `prefer`: TLS when the server offers it, its certificate not checked (and, stricter than
    ///   libpq, a server without TLS that asks for the password in clear text is refused);
    /// - `require`: TLS, its certificate not checked;
    /// - `verify-ca`: TLS, the certificate checked against `sslrootcert` (a PEM file), else the system's
    ///   roots;
    /// - `verify-full`: that, and the certificate must name the host.
    static func tls(for url: DatabaseURL, mode asked: String? = nil) throws -> PostgresConnection.Configuration.TLS {
        let mode = asked ?? url.options["sslmode"] ?? "prefer"
        var c = TLSConfiguration.makeClientConfiguration()
        switch mode {
        case "disable":
            return .disable
        case "allow", "prefer", "require":
            c.certificateVerification = .none
        case "verify-ca", "verify-full":
            c.certificateVerification = mode == "verify-ca" ? .noHostnameVerification : .fullVerification
            if let root = url.options["sslrootcert"] { c.trustRoots = .file(root) }
        default:
            throw SQLError(
                .statement,
                "unknown sslmode \(mode): disable, allow, prefer, require, verify-ca or verify-full"
            )
        }
        // One context per setting, for every connection (making one reads the trust roots).
        let key = "\(mode) \(url.options["sslrootcert"] ?? "")"
        let context: NIOSSLContext
        do {
            context = try tlsContexts.withLock { cache in
                if let known = cache[key] { return known }
                let made = try NIOSSLContext(configuration: c)
                cache[key] = made
                return made
            }
        } catch {
            throw SQLError(.connection, "cannot set up TLS for \(url): \(error)")
        }
        return ["allow", "prefer"].contains(mode) ? .prefer(context) : .require(context)
    }

    private static let tlsContexts = TrackedMutex<[String: NIOSSLContext]>([:])

    /// `PostgresWireReader.probe`, its failures as connection errors.
    private static func probe(_ url: DatabaseURL, _ timeout: Duration) throws -> PostgresWireReader.Probe {
        do {
            return try PostgresWireReader.probe(url, timeout: timeout)
        } catch let e as SQLError {
            throw e
        } catch {
            throw SQLError(.connection, "cannot connect to \(url): \(error)")
        }
    }

    /// Closes the reading session and the connection, waiting up to 5 seconds for the connection to close.
    /// Idempotent; also done when the object is released. Further calls throw `SQLError` of kind
    /// `.connection`.
    public func close() {
        reader?.close()
        reader = nil
        // postgres-nio asserts that a connection is closed before it is released: wait for the close.
        if let c = connection, !c.isClosed {
            let closing: EventLoopFuture<Void> = c.close()
            _ = try? Self.wait(closing, .seconds(5))
        }
        connection = nil
    }

    /// Gives the connection up after a failed call: it is closed once `pending` (the call's query) is
    /// over. postgres-nio must not be closed while a query is in flight (it stops the process), which a
    /// query that outlived its timeout is.
    private func abandon<T>(after pending: EventLoopFuture<T>) {
        guard let c = connection else { return }
        connection = nil
        pending.whenComplete { _ in
            if !c.isClosed { _ = c.close() as EventLoopFuture<Void> }
        }
    }

    /// A future that completes when `task` ends.
    static func whenDone(_ task: Task<Void, Never>, on loop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        Task {
            await task.value
            promise.succeed(())
        }
        return promise.futureResult
    }

    /// Waits for `future` up to `timeout` (the caller's thread blocks; the event loop does not).
    static func wait<T: Sendable>(_ future: EventLoopFuture<T>, _ timeout: Duration) throws -> T {
        let done = DispatchSemaphore(value: 0)
        let box = TrackedMutex<Result<T, any Error>?>(nil)
        future.whenComplete { r in
            box.withLock { $0 = r }
            done.signal()
        }
        if done.wait(timeout: .now() + .milliseconds(Int(timeout.wholeMilliseconds))) == .timedOut {
            throw SQLError(.connection, "PostgreSQL did not answer within \(timeout)")
        }
        return try box.withLock { $0! }.get()
    }

    static func translate(_ error: any Error, _ what: String) -> SQLError {
        if let e = error as? SQLError { return e }
        let state: String
        let message: String
        let code: String
        if let p = error as? PSQLError {
            state = p.serverInfo?[.sqlState] ?? ""
            message = p.serverInfo?[.message] ?? "\(p.code)"
            code = "\(p.code)"
        } else if let p = error as? PostgresError, case .server(let e) = p {
            // The EventLoopFuture API reports server errors as the older PostgresError.
            state = e.fields[.sqlState] ?? ""
            message = e.fields[.message] ?? "\(p)"
            code = "server"
        } else {
            return SQLError(.connection, "\(what): \(error)")
        }
        let kind = kind(ofState: state)
        return SQLError(kind, "\(what): \(message)", code: state.isEmpty ? code : "SQLSTATE \(state)")
    }

    /// The kind of error a SQLSTATE names.
    static func kind(ofState state: String) -> SQLError.Kind {
        if state.hasPrefix("23") { return .constraint }
        if state.hasPrefix("42") { return .statement }
        if ["40001", "40P01", "55P03"].contains(state) { return .busy }
        if state.hasPrefix("08") || state.hasPrefix("57P") || state == "28P01" || state == "28000" || state.isEmpty {
            return .connection
        }
        if state.hasPrefix("22") { return .conversion }
        return .other
    }

    private func handle() throws -> PostgresConnection {
        guard let connection, !connection.isClosed else {
            throw SQLError(.connection, "the connection to \(url) is closed")
        }
        return connection
    }

    static func data(_ v: SQLValue) -> PostgresData {
        switch v {
        case .null: .null
        case .int(let i): PostgresData(int64: i)
        case .double(let d): PostgresData(double: d)
        // Typed as text: postgres-nio binds every value in binary format, in which an untyped parameter
        // is read as whatever the statement needs there (a timestamp's binary form, not its text). Text
        // for typed columns goes through COPY (text format), which the pipeline's sink uses.
        case .text(let s): PostgresData(string: s)
        case .blob(let b): PostgresData(bytes: b)
        }
    }

    static func value(_ cell: PostgresCell) -> SQLValue {
        guard let bytes = cell.bytes else { return .null }
        switch cell.dataType {
        case .text, .varchar, .bpchar, .name: return .text(String(buffer: bytes))  // UTF-8 in both formats
        case .int2: return (try? cell.decode(Int16.self)).map { .int(Int64($0)) } ?? .null
        case .int4: return (try? cell.decode(Int32.self)).map { .int(Int64($0)) } ?? .null
        case .int8, .oid: return (try? cell.decode(Int64.self)).map { .int($0) } ?? .null
        case .bool: return (try? cell.decode(Bool.self)).map { .int($0 ? 1 : 0) } ?? .null
        case .float4, .float8: return (try? cell.decode(Double.self)).map { .double($0) } ?? .null
        case .bytea: return .blob(cell.bytes.map { Array($0.readableBytesView) } ?? [])
        case .timestamp, .timestamptz:
            // Binary: microseconds since 2000-01-01 (UTC for timestamptz), read and written as text by hand
            // (a DateFormatter per cell cost more than the rest of the row).
            guard cell.format == .binary, var b = cell.bytes, let micros = b.readInteger(as: Int64.self) else {
                return (try? cell.decode(String.self)).map { .text($0) } ?? .null
            }
            return .text(timestampText(micros))
        case .uuid: return (try? cell.decode(UUID.self)).map { .text($0.uuidString.lowercased()) } ?? .null
        default:
            if let s = try? cell.decode(String.self) { return .text(s) }
            if cell.format == .text, let b = cell.bytes {
                return .text(String(decoding: b.readableBytesView, as: UTF8.self))
            }
            return .text("<\(cell.dataType)>")
        }
    }

    /// `YYYY-MM-DD HH:MM:SS[.ffffff]` for PostgreSQL's binary timestamp (microseconds since 2000-01-01).
    static func timestampText(_ micros: Int64) -> String {
        if micros == .max { return "infinity" }
        if micros == .min { return "-infinity" }
        func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }
        let seconds = floorDiv(micros, 1_000_000)
        let fraction = micros - seconds * 1_000_000
        let days = floorDiv(seconds, 86_400)
        let secondOfDay = seconds - days * 86_400
        // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
        let z = days + 10_957 + 719_468
        let era = floorDiv(z, 146_097)
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        var out = [UInt8]()
        out.reserveCapacity(27)
        func put(_ v: Int64, _ width: Int) {  // zero-padded, in place (an array per field cost a malloc)
            let end = out.count + width
            out.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: width))
            var v = v
            var i = end - 1
            while v > 0 && i >= end - width {
                out[i] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
                i -= 1
            }
        }
        if year < 0 { out.append(UInt8(ascii: "-")) }
        put(abs(year), 4)
        out.append(UInt8(ascii: "-"))
        put(month, 2)
        out.append(UInt8(ascii: "-"))
        put(day, 2)
        out.append(UInt8(ascii: " "))
        put(secondOfDay / 3600, 2)
        out.append(UInt8(ascii: ":"))
        put(secondOfDay / 60 % 60, 2)
        out.append(UInt8(ascii: ":"))
        put(secondOfDay % 60, 2)
        if fraction != 0 {
            out.append(UInt8(ascii: "."))
            put(fraction, 6)
            while out.last == UInt8(ascii: "0") { out.removeLast() }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Runs one statement; returns its rows (and names) and the rows it changed.
    private func run(
        _ sql: String,
        _ parameters: [SQLValue]
    ) throws -> (columns: [String], rows: [[SQLValue]], changed: Int) {
        let c = try handle()
        let gathered = TrackedMutex<(columns: [String], rows: [[SQLValue]], changed: Int)>(([], [], 0))
        let future = c.query(
            sql,
            parameters.map(Self.data),
            onMetadata: { m in gathered.withLock { $0.changed = m.rows ?? 0 } },
            onRow: { row in
                var values: [SQLValue] = []
                values.reserveCapacity(row.count)
                for cell in row { values.append(Self.value(cell)) }
                gathered.withLock {
                    if $0.rows.isEmpty { $0.columns = row.map(\.columnName) }
                    $0.rows.append(values)
                }
            }
        )
        do {
            try Self.wait(future, timeout)
        } catch {
            let e = Self.translate(error, "cannot run \(sql.prefix(200))")
            if e.kind == .connection { abandon(after: future) }
            throw e
        }
        return gathered.withLock { $0 }
    }

    /// Runs one statement, with `parameters` bound to `$1`, `$2`, …, and waits for it on the calling thread
    /// (at most the connection's timeout). Returns the rows it changed (for a `SELECT`, the rows it
    /// returned, which are read and dropped).
    ///
    /// - Throws: `SQLError`, its kind from the server's SQLSTATE (`.constraint`, `.statement`, `.busy`,
    ///   `.conversion`, ...). After an error of kind `.connection` (a timeout included) this object gives
    ///   the connection up: later calls throw.
    @discardableResult
    public func execute(_ sql: String, _ parameters: [SQLValue]) throws -> Int {
        try run(sql, parameters).changed
    }

    /// Runs a query and calls `body` with each row's values, in order, on the calling thread; returns the
    /// column names. `columns` is called once, before the first row, with the column names — with `[]`
    /// for a query that returns no rows (the names come with the rows).
    ///
    /// Rows are handed over in batches of 256 as they arrive; rows not yet taken wait in memory, so read a
    /// large table in chunks. The statement must finish within the connection's timeout, counted from
    /// this call. Throws as ``execute(_:_:)`` does, and whatever `columns` or `body` throws.
    @discardableResult
    public func forEachRow(
        _ sql: String,
        _ parameters: [SQLValue],
        columns: ([String]) throws -> Void,
        _ body: ([SQLValue]) throws -> Void
    ) throws -> [String] {
        // Rows are handed over as they arrive, in batches: the caller decodes the first rows while the
        // event loop still parses the rest (they took turns when a statement's rows were gathered first).
        let c = try handle()
        let stream = RowStream()
        let future = c.query(
            sql,
            parameters.map(Self.data),
            onMetadata: { _ in },
            onRow: { row in
                var values: [SQLValue] = []
                values.reserveCapacity(row.count)
                for cell in row { values.append(Self.value(cell)) }
                stream.add(values) { row.map(\.columnName) }
            }
        )
        future.whenComplete { stream.finish($0.map { _ in () }) }
        let deadline = Date(timeIntervalSinceNow: Double(timeout.wholeMilliseconds) / 1000)
        var names: [String]?
        while true {
            let (columnNames, rows, end) = stream.take(until: deadline)
            if names == nil, let columnNames {
                names = columnNames
                try columns(columnNames)
            }
            for row in rows { try body(row) }
            guard let end else { continue }
            do {
                try end.get()
            } catch {
                let e = Self.translate(error, "cannot run \(sql.prefix(200))")
                if e.kind == .connection { abandon(after: future) }
                throw e
            }
            if names == nil { try columns([]) }
            return names ?? []
        }
    }

    /// Runs the script's statements one by one (postgres-nio speaks only the extended protocol, which takes
    /// one statement at a time).
    public func executeScript(_ sql: String) throws {
        for statement in SQLScript.statements(sql) { _ = try run(statement, []) }
    }

    /// Starts a transaction (`BEGIN`). `immediate` is ignored: PostgreSQL has no counterpart of SQLite's
    /// `BEGIN IMMEDIATE`; a writer that conflicts with another waits for the row's lock instead.
    public func begin(immediate: Bool) throws { _ = try run("BEGIN", []) }
    /// Commits the transaction (`COMMIT`).
    public func commit() throws { _ = try run("COMMIT", []) }
    /// Rolls the transaction back (`ROLLBACK`). Does nothing once the connection was closed or given up
    /// (the server has then rolled the transaction back itself).
    public func rollback() throws {
        guard connection != nil else { return }
        _ = try run("ROLLBACK", [])
    }

    /// Appends rows with `COPY … FROM STDIN` (text format): one statement for the whole batch, the
    /// fastest way into PostgreSQL. A schema-qualified name (`schema.table`) goes through multi-row
    /// `INSERT`s instead (postgres-nio quotes the COPY target as a single name).
    @discardableResult
    public func insert(into table: String, _ batch: SQLRowBatch) throws -> Int {
        guard !batch.isEmpty else { return 0 }
        if table.contains(".") || table.contains("\"") { return try insertWithValueLists(into: table, batch) }
        let c = try handle()
        var buffers: [ByteBuffer] = []
        var b = ByteBuffer()
        b.reserveCapacity(1 << 20)
        let width = batch.columns.count
        for (i, v) in batch.values.enumerated() {
            Self.copyText(v, into: &b)
            b.writeInteger(UInt8(ascii: i % width == width - 1 ? "\n" : "\t"))
            if i % width == width - 1 && b.readableBytes >= 1 << 20 {
                buffers.append(b)
                b = ByteBuffer()
                b.reserveCapacity(1 << 20)
            }
        }
        if b.readableBytes > 0 { buffers.append(b) }
        let data = buffers
        let columns = batch.columns
        let outcome = CopyOutcome()
        let done = DispatchSemaphore(value: 0)
        let task = Self.startCopy(c, table, columns, data, outcome, done)
        // Waited in slices: postgres-nio 1.33's `copyFrom` never returns when the server goes away
        // mid-COPY (seen when a restart lands during one), so a closed connection ends the wait at once.
        let deadline = Deadline.after(timeout)!
        while done.wait(timeout: .now() + .milliseconds(100)) == .timedOut {
            if c.isClosed {
                task.cancel()
                connection = nil
                throw SQLError(.connection, "the server closed the connection during a COPY into \(table)")
            }
            if deadline.hasPassed {
                task.cancel()
                abandon(after: Self.whenDone(task, on: c.eventLoop))
                throw SQLError(.connection, "PostgreSQL did not take a COPY of \(batch.count) rows within \(timeout)")
            }
        }
        do {
            try outcome.value.withLock { $0! }.get()
        } catch {
            let e = Self.translate(error, "cannot COPY into \(table)")
            if e.kind == .connection { close() }  // the COPY is over: nothing is in flight
            throw e
        }
        return batch.count
    }

    private static func startCopy(
        _ c: PostgresConnection,
        _ table: String,
        _ columns: [String],
        _ data: [ByteBuffer],
        _ outcome: CopyOutcome,
        _ done: DispatchSemaphore
    ) -> Task<Void, Never> {
        // On a thread of the library's own, never on Swift's cooperative pool: the caller blocks on
        // `done`, and if every thread of that pool were blocked the same way the COPY could never run.
        guard let executor = copyExecutor else {
            return Task.detached {
                await copy(c, table, columns, data, outcome)
                done.signal()
            }
        }
        return Task(executorPreference: executor) {
            await copy(c, table, columns, data, outcome)
            done.signal()
        }
    }

    /// Runs the async side of COPY (postgres-nio offers it only as async).
    private static let copyExecutor: CooperativeExecutor? = try? CooperativeExecutor(name: "mp-postgres-copy")

    private static func copy(
        _ c: PostgresConnection,
        _ table: String,
        _ columns: [String],
        _ data: [ByteBuffer],
        _ outcome: CopyOutcome
    ) async {
        do {
            try await c.copyFrom(table: table, columns: columns, logger: logger) { writer in
                for buffer in data { try await writer.write(buffer) }
            }
            outcome.value.withLock { $0 = .success(()) }
        } catch {
            outcome.value.withLock { $0 = .failure(error) }
        }
    }

    /// `v` in COPY's text format: `\N` for NULL; backslash, tab, newline and carriage return escaped;
    /// bytes as `\\x…` (bytea's hex form, its backslash doubled).
    static func copyText(_ v: SQLValue, into b: inout ByteBuffer) {
        switch v {
        case .null: b.writeString("\\N")
        case .int, .double: b.writeBytes(PostgresWireReader.text(v)!)
        case .text(let s):
            var s = s
            s.withUTF8 { bytes in
                var start = 0
                for (i, byte) in bytes.enumerated() {
                    let escape: UInt8? =
                        switch byte {
                        case UInt8(ascii: "\\"): UInt8(ascii: "\\")
                        case UInt8(ascii: "\t"): UInt8(ascii: "t")
                        case UInt8(ascii: "\n"): UInt8(ascii: "n")
                        case UInt8(ascii: "\r"): UInt8(ascii: "r")
                        default: nil
                        }
                    if let escape {
                        b.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[start..<i]))
                        b.writeInteger(UInt8(ascii: "\\"))
                        b.writeInteger(escape)
                        start = i + 1
                    }
                }
                b.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[start...]))
            }
        case .blob:
            b.writeInteger(UInt8(ascii: "\\"))  // COPY's escape of the parameter form's backslash
            b.writeBytes(PostgresWireReader.text(v)!)
        }
    }
}

extension PostgresSQLConnection: SQLBulkReading {
    /// What ``forEachRow(_:_:columns:_:)`` does, on a second session of the connection's own that reads
    /// PostgreSQL's wire protocol on the calling thread (faster for large results). Like any other session
    /// it sees committed data only: none of this session's transaction, temporary tables or settings.
    ///
    /// The reading session is opened on first use, and again after it failed. Where it cannot be used —
    /// TLS (required by `sslmode`, or offered by the server), or an authentication it does not speak — the
    /// rows are read on this session with ``forEachRow(_:_:columns:_:)`` instead.
    public func forEachRowOnReadingSession(
        _ sql: String,
        _ parameters: [SQLValue],
        columns: ([String]) throws -> Void,
        _ body: ([SQLValue]) throws -> Void
    ) throws -> [String] {
        if reader == nil || reader?.isOpen == false, !readerUnsupported {
            reader = nil
            do {
                reader = try PostgresWireReader(url, timeout: timeout)
            } catch let e as PostgresWireReader.Unsupported {
                // TLS, or an authentication this reader does not speak: postgres-nio reads instead.
                Self.logger.debug("reading through postgres-nio", metadata: ["reason": "\(e.reason)"])
                readerUnsupported = true
            }
        }
        guard let r = reader else { return try forEachRow(sql, parameters, columns: columns, body) }
        do {
            return try r.forEachRow(sql, parameters, columns: columns, body)
        } catch {
            if !r.isOpen { reader = nil }
            throw error
        }
    }
}

extension PostgresSQLConnection: SQLNotificationListening {
    /// Whether the connection is open: `false` after ``close()``, once the server closed it, or once this
    /// object gave it up after a connection error.
    public var isOpen: Bool { connection.map { !$0.isClosed } ?? false }

    /// Listens on `channel` (PostgreSQL's `LISTEN`): `handler` is called with each notification's payload,
    /// on postgres-nio's event-loop thread (do not block it), for as long as the connection is open.
    /// Returns once the server listens.
    ///
    /// - Throws: `SQLError` if the connection is closed or the `LISTEN` fails.
    public func listen(_ channel: String, _ handler: @escaping @Sendable (String) -> Void) throws {
        let c = try handle()
        c.addListener(channel: channel) { _, notification in handler(notification.payload) }
        // postgres-nio sends LISTEN when its first listener on a channel starts; the statement here makes
        // sure the server listens before this returns (a second LISTEN is a no-op).
        _ = try run("LISTEN \(dialect.quote(channel))", [])
    }
}

/// A statement's rows, from the event loop to the thread that reads them, in batches.
final class RowStream: @unchecked Sendable {  // state under `condition`
    private let condition = NSCondition()
    private var rows: [[SQLValue]] = []
    private var columns: [String]?
    private var end: Result<Void, any Error>?
    private var handedColumns = false
    static let batch = 256

    func add(_ values: [SQLValue], names: () -> [String]) {
        condition.lock()
        if columns == nil { columns = names() }
        rows.append(values)
        if rows.count >= Self.batch { condition.signal() }
        condition.unlock()
    }

    func finish(_ result: Result<Void, any Error>) {
        condition.lock()
        end = result
        condition.broadcast()
        condition.unlock()
    }

    /// Waits for a batch of rows, or the end; at `deadline`, ends with a timeout.
    func take(until deadline: Date) -> (columns: [String]?, rows: [[SQLValue]], end: Result<Void, any Error>?) {
        condition.lock()
        defer { condition.unlock() }
        while rows.count < Self.batch && end == nil {
            if !condition.wait(until: deadline) {
                if rows.isEmpty {
                    end = .failure(SQLError(.connection, "PostgreSQL did not answer in time"))
                }
                break
            }
        }
        let out = rows
        rows = []
        var names: [String]?
        if !handedColumns, let columns {
            names = columns
            handedColumns = true
        }
        return (names, out, rows.isEmpty ? end : nil)
    }
}

/// Where a COPY's task leaves its outcome for the waiting thread.
final class CopyOutcome: Sendable {
    let value = TrackedMutex<Result<Void, any Error>?>(nil)
}

#endif
