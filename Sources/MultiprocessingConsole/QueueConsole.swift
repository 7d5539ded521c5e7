public import Logging
import MultiprocessingJobQueue
public import MultiprocessingSQL
public import ServiceLifecycle
import Synchronization
import Threading

#if Console
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
#endif

/// How ``QueueConsole`` listens and who may act.
public struct ConsoleOptions: Sendable {
    /// The address to listen on: `127.0.0.1` (the default) keeps the console on this machine.
    public var host: String
    /// The port to listen on; 0 picks a free one (``onListening`` tells which).
    public var port: Int
    /// The secret that lets a visitor act on jobs (retry, cancel, discard): given as a bearer token
    /// (`Authorization: Bearer …`) or once on the sign-in page, which sets a session cookie. Nil: the
    /// console is read-only for everyone.
    public var token: String?
    /// The token is needed to read the pages too (job arguments may be private); without it (the default)
    /// anyone who reaches the port reads, and only token holders act.
    public var tokenToRead: Bool
    /// How often the overview and workers pages refresh their figures in the browser.
    public var refreshInterval: Duration
    /// Mark the session cookie `Secure` and name it `__Host-mp_console` (serve the console behind HTTPS,
    /// such as a TLS proxy).
    public var secureCookie: Bool
    /// The names a request's `Host` header may carry (without the port). Empty (the default): any name
    /// when the console listens on a public address, and only loopback names (`127.0.0.1`, `localhost`,
    /// `[::1]`) when it listens on a loopback one, so that a web page the operator visits cannot read the
    /// console through a DNS name rebound to 127.0.0.1. Behind a proxy, name the console's public host here
    /// (the proxy must pass the `Host` header on, as the `Origin` check compares them).
    public var allowedHosts: [String]
    /// The console's log (requests that fail, sign-ins refused).
    public var logger: Logger
    /// Called with the port once the console listens (the one picked when ``port`` is 0).
    public var onListening: (@Sendable (Int) -> Void)?

    /// Options; each parameter sets the property of the same name.
    public init(
        host: String = "127.0.0.1",
        port: Int = 8470,
        token: String? = nil,
        tokenToRead: Bool = false,
        refreshInterval: Duration = .seconds(2),
        secureCookie: Bool = false,
        allowedHosts: [String] = [],
        logger: Logger = Logger(label: "mp.console"),
        onListening: (@Sendable (Int) -> Void)? = nil
    ) {
        self.host = host
        self.port = port
        self.token = token
        self.tokenToRead = tokenToRead
        self.refreshInterval = refreshInterval
        self.secureCookie = secureCookie
        self.allowedHosts = allowedHosts
        self.logger = logger
        self.onListening = onListening
    }
}

/// The job queue's web console (`mp console`): queues with their jobs counted by state and a live
/// throughput chart, job lists by state, queue and type, a job's arguments, attempts and error history,
/// retry / cancel / discard, and the workers serving the queue with their pools' processes (busy or idle,
/// the current item's age, peak memory). Server-rendered pages on Hummingbird; a few lines of inline
/// script refresh the figures, and every page works without it.
///
/// ```swift
/// let console = try QueueConsole(DatabaseURL("sqlite:jobs.db"), options: ConsoleOptions(token: secret))
/// try await console.run()    // or in a ServiceGroup: it is a Service
/// ```
///
/// Read-only unless ``ConsoleOptions/token`` is set; actions are POST forms that carry an anti-forgery
/// token bound to the session cookie (`SameSite=Strict`, `HttpOnly`), and requests from another origin are
/// refused. The database is read on threads of the console's own, never on Swift's cooperative pool.
public final class QueueConsole: Service, Sendable {
    /// The queue's database.
    public let url: DatabaseURL
    /// How it listens and who may act.
    public let options: ConsoleOptions
    let queue: JobQueue
    #if Console
    let auth: ConsoleAuth
    /// Failed token attempts per peer address in the current minute.
    let failures = Mutex<[String: (windowStart: Int64, count: Int)]>([:])
    /// Database calls queued or running (bounded: a flood of page views gets 503s, not a queue).
    let inFlight = Mutex<Int>(0)
    #endif
    /// The database calls' threads.
    static let blockingCalls = ThreadPool(maxWorkers: 4, threadNamePrefix: "mp-console-db")

    /// Opens the queue at `url` (creating or migrating its tables, as every queue client does).
    /// - Throws: the database's error when it cannot be reached; ``ConsoleOptionsError`` for a token shorter than 16 characters, or
    ///   ``ConsoleOptions/tokenToRead`` without a token.
    public init(_ url: DatabaseURL, options: ConsoleOptions = ConsoleOptions()) throws {
        if let token = options.token, token.count < 16 {
            throw ConsoleOptionsError(
                description: "the console's token has \(token.count) characters: give it at least 16 (random ones)"
            )
        }
        if options.tokenToRead && options.token == nil {
            throw ConsoleOptionsError(description: "tokenToRead needs a token: without one nobody could read")
        }
        self.url = url
        self.options = options
        self.queue = try JobQueue(url)
        #if Console
        self.auth = ConsoleAuth(token: options.token, secureCookie: options.secureCookie)
        #endif
    }

    /// Serves the console until the task is cancelled or its service group shuts down gracefully.
    /// - Throws: ``ConsoleNotBuilt`` when the library was built without the `Console` trait.
    public func run() async throws {
        #if Console
        try await serve()
        #else
        throw ConsoleNotBuilt()
        #endif
    }
}

/// Options ``QueueConsole`` refuses (a token too short to resist guessing, a token needed to read with
/// no token given).
public struct ConsoleOptionsError: Error, CustomStringConvertible {
    /// What is wrong.
    public let description: String
}

/// The console's server is not in this build: the library was built without its `Console` trait
/// (`swift build --traits Console`), which brings Hummingbird and SwiftNIO.
public struct ConsoleNotBuilt: Error, CustomStringConvertible {
    /// What to do about it.
    public var description: String {
        "the web console was not built: build with the Console trait (swift build --traits Console)"
    }
}

#if Console
/// A request's context: Hummingbird's, and the peer's address (sign-in failures are counted per peer).
struct ConsoleContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    /// The peer's IP address.
    let peer: String

    init(source: ApplicationRequestContextSource) {
        coreContext = CoreRequestContextStorage(source: source)
        peer = source.channel.remoteAddress?.ipAddress ?? "?"
    }
}

extension QueueConsole {
    func serve() async throws {
        let router = Router(context: ConsoleContext.self)
        routes(router)
        let onListening = options.onListening
        let logger = options.logger
        let app = Application(
            router: router,
            // A connection idle for 30 s is closed (a client that stalls mid-request holds up no shutdown).
            server: .http1(configuration: .init(idleTimeout: .seconds(30))),
            configuration: ApplicationConfiguration(
                address: .hostname(options.host, port: options.port),
                serverName: "mp-console"
            ),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                logger.info("console listening", metadata: ["port": "\(port)"])
                onListening?(port)
            },
            logger: logger
        )
        // Cancelling the task, or the service group's graceful shutdown, shuts the server down gracefully:
        // the requests in flight are answered (for 10 s at most), and Hummingbird logs no error. The group
        // runs in a task of its own, so that a cancellation reaches the server only as that shutdown.
        var configuration = ServiceGroupConfiguration(services: [.init(service: app)], logger: logger)
        configuration.maximumGracefulShutdownDuration = .seconds(10)
        let group = ServiceGroup(configuration: configuration)
        let serving = Task { try await group.run() }
        try await withGracefulShutdownHandler {
            try await withTaskCancellationHandler {
                try await serving.value
            } onCancel: {
                Task { await group.triggerGracefulShutdown() }
            }
        } onGracefulShutdown: {
            Task { await group.triggerGracefulShutdown() }
        }
    }

    // MARK: routes

    func routes(_ router: Router<ConsoleContext>) {
        router.get("/") { request, context in
            await self.answer(request, context) { v in try await self.overview(request, v) }
        }
        router.get("/jobs") { request, context in
            await self.answer(request, context) { v in try await self.jobList(request, v) }
        }
        router.get("/jobs/:id") { request, context in
            await self.answer(request, context) { v in
                try await self.job(request, v, id: context.parameters.get("id", as: Int64.self))
            }
        }
        router.post("/jobs/:id/:action") { request, context in
            await self.answer(request, context, reading: false) { v in
                try await self.act(
                    request,
                    v,
                    context,
                    id: context.parameters.get("id", as: Int64.self),
                    action: context.parameters.get("action") ?? ""
                )
            }
        }
        router.get("/workers") { request, context in
            await self.answer(request, context) { v in try await self.workerList(request, v) }
        }
        router.get("/login") { request, context in
            await self.answer(request, context, reading: false) { v in
                let next = Self.safePath(FormData.parse(request.uri.query.map { $0[...] } ?? "")["next"])
                return self.page(
                    request,
                    v,
                    title: "Sign in",
                    section: "",
                    ConsolePages.login(next: next, failed: false)
                )
            }
        }
        router.post("/login") { request, context in
            await self.answer(request, context, reading: false) { v in try await self.signIn(request, v, context) }
        }
        router.post("/logout") { request, context in
            await self.answer(request, context, reading: false) { v in try await self.signOut(request, v, context) }
        }
        router.get("/health") { _, _ in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ok\n"))) }
    }

    /// Answers a request: checks its Host, finds who asks (sends readers who need the token to sign in
    /// first when `reading`), and turns failures into pages (a database that does not answer is a 503 whose
    /// details go to the log, not to the visitor).
    func answer(
        _ request: Request,
        _ context: ConsoleContext,
        reading: Bool = true,
        _ body: (Visitor) async throws -> Response
    ) async -> Response {
        guard isAllowedHost(request) else {
            return respond(
                .misdirectedRequest,
                ConsolePages.message("Wrong host", "This console does not answer for that host name.")
            )
        }
        let v = visitor(request, context)
        if reading && !v.canRead { return signInFirst(request) }
        do {
            return try await body(v)
        } catch let e as JobQueueError where e.code == .conflict {
            return page(
                request,
                v,
                status: .conflict,
                title: "Not done",
                section: "",
                ConsolePages.message("Not done", e.message)
            )
        } catch is Busy {
            return message(
                request,
                v,
                .serviceUnavailable,
                "Busy",
                "The console has too many database calls under way: try again in a moment."
            )
        } catch is CancellationError {
            return Response(status: .serviceUnavailable)
        } catch {
            options.logger.error(
                "a request failed",
                metadata: ["path": "\(request.uri.path)", "error": "\(error)"]
            )
            return message(
                request,
                v,
                .serviceUnavailable,
                "Unavailable",
                "The queue's database did not answer; the console's log says why."
            )
        }
    }

    // MARK: who is asking

    struct Visitor {
        var canRead: Bool
        var canAct: Bool
        /// The session cookie, when signed in with one.
        var session: String?
        /// Signed in with the token as a bearer token (no cookie, so no forgery to fear).
        var bearer: Bool
        /// A bearer token was sent, and it is not the console's.
        var wrongBearer = false
    }

    func visitor(_ request: Request, _ context: ConsoleContext) -> Visitor {
        guard auth.configured else { return Visitor(canRead: true, canAct: false, session: nil, bearer: false) }
        if let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer ") {
            let given = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
            if !isLockedOut(context.peer) && auth.isToken(given) {
                return Visitor(canRead: true, canAct: true, session: nil, bearer: true)
            }
            noteFailure(context.peer)
            return Visitor(canRead: !options.tokenToRead, canAct: false, session: nil, bearer: false, wrongBearer: true)
        }
        for cookie in Self.cookies(auth.cookieName, in: request)
        where auth.isValidSession(cookie, nowSeconds: nowSeconds) {
            return Visitor(canRead: true, canAct: true, session: cookie, bearer: false)
        }
        return Visitor(canRead: !options.tokenToRead, canAct: false, session: nil, bearer: false)
    }

    var nowSeconds: Int64 { QueueTime.now.millisecondsSinceEpoch / 1000 }

    /// Every value of cookie `name` (another service on the same host may set one with a longer path,
    /// sent first).
    static func cookies(_ name: String, in request: Request) -> [String] {
        var out: [String] = []
        for header in request.headers[values: .cookie] {
            for part in header.split(separator: ";") {
                let kv = part.split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces) == name {
                    out.append(kv[1].trimmingCharacters(in: .whitespaces))
                }
            }
        }
        return out
    }

    /// At most 10 failed token attempts (sign-in or bearer) per peer address a minute: a token is slow to
    /// guess, and a stranger's failures do not lock out the operator's address.
    func isLockedOut(_ peer: String) -> Bool {
        let now = nowSeconds
        return failures.withLock { f in
            guard let w = f[peer], now - w.windowStart < 60 else { return false }
            return w.count >= 10
        }
    }

    func noteFailure(_ peer: String) {
        let now = nowSeconds
        let count = failures.withLock { f -> Int in
            if f.count > 10_000 { f = f.filter { now - $0.value.windowStart < 60 } }
            var w = f[peer] ?? (now, 0)
            if now - w.windowStart >= 60 { w = (now, 0) }
            w.count += 1
            f[peer] = w
            return w.count
        }
        options.logger.warning("a wrong token was refused", metadata: ["peer": "\(peer)", "failures": "\(count)"])
    }

    /// The request's `Host` is one this console answers for (``ConsoleOptions/allowedHosts``).
    func isAllowedHost(_ request: Request) -> Bool {
        guard let authority = request.head.authority else { return false }
        // `name:port`, `[v6]:port`, or a bare name.
        var name = Substring(authority)
        if name.hasPrefix("[") {
            name = name.prefix { $0 != "]" } + "]"
        } else if let colon = name.lastIndex(of: ":") {
            name = name[..<colon]
        }
        let host = name.lowercased()
        if !options.allowedHosts.isEmpty { return options.allowedHosts.contains { $0.lowercased() == host } }
        let loopback = ["127.0.0.1", "localhost", "[::1]", "::1"]
        return loopback.contains(options.host.lowercased()) ? loopback.contains(host) : true
    }

    /// A browser's request from another site (the Origin header names another host, or Fetch Metadata says
    /// so): refused for every POST, sign-in included.
    func isCrossSite(_ request: Request) -> Bool {
        if let site = request.headers[HTTPField.Name("Sec-Fetch-Site")!], site == "cross-site" || site == "same-site" {
            return true
        }
        guard let origin = request.headers[.origin] else { return false }
        guard let host = request.head.authority else { return true }
        return origin != "http://\(host)" && origin != "https://\(host)"
    }

    /// `next` when it is a path of this console (letters, digits and `/?=&%._-` only, starting with one
    /// `/`), else `/`: the sign-in page redirects nowhere else.
    static func safePath(_ next: String?) -> String {
        guard let next, next.hasPrefix("/"), !next.hasPrefix("//"), next.count <= 2048,
            next.utf8.allSatisfy({ b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                    || "/?=&%._-".utf8.contains(b)
            })
        else { return "/" }
        return next
    }

    // MARK: pages

    func overview(_ request: Request, _ v: Visitor) async throws -> Response {
        let bucket = Duration.seconds(10)
        let data = try await database { q in
            (try q.queues(), try q.throughput(last: .seconds(600), bucket: bucket), try q.workers())
        }
        let html = ConsolePages.overview(queues: data.0, throughput: data.1, bucket: bucket, workers: data.2, now: .now)
        return page(request, v, title: "Queues", section: "/", html, refresh: true)
    }

    func jobList(_ request: Request, _ v: Visitor) async throws -> Response {
        let q = FormData.parse(request.uri.query.map { $0[...] } ?? "")
        let filter = JobFilter(
            state: q["state"].flatMap(JobState.init(rawValue:)),
            queue: q["queue"].flatMap { $0.isEmpty ? nil : $0 },
            kind: q["kind"].flatMap { $0.isEmpty ? nil : $0 },
            before: q["before"].flatMap { Int64($0) }
        )
        let pageSize = 50
        let (jobs, queues) = try await database { q in
            (try q.jobs(matching: filter, limit: pageSize), try q.queues().map(\.queue))
        }
        return page(
            request,
            v,
            title: "Jobs",
            section: "/jobs",
            ConsolePages.jobs(jobs, filter: filter, queues: queues, pageSize: pageSize)
        )
    }

    /// What an action did, by the code its redirect carries (a link cannot make the page say anything else).
    static let outcomes: [String: String] = [
        "retried": "queued again",
        "not-retried": "not finished, so not retried",
        "cancelled": "cancellation asked for",
        "not-cancelled": "already finished, so not cancelled",
        "discarded": "discarded",
        "not-discarded": "not waiting to run, so not discarded",
    ]

    func job(_ request: Request, _ v: Visitor, id: Int64?) async throws -> Response {
        guard let id, let details = try await database({ q in try q.details(id) }) else {
            return page(
                request,
                v,
                status: .notFound,
                title: "No such job",
                section: "/jobs",
                ConsolePages.message("No such job", "There is no job \(id.map(String.init) ?? "with that id").")
            )
        }
        let done = FormData.parse(request.uri.query.map { $0[...] } ?? "")["done"].flatMap { Self.outcomes[$0] }
        var frame = frame(title: "Job \(id)", section: "/jobs", visitor: v)
        frame.notice = done.map { "Job \(id): \($0)." }
        return respond(.ok, ConsolePages.page(frame, ConsolePages.job(details, frame: frame)))
    }

    func workerList(_ request: Request, _ v: Visitor) async throws -> Response {
        let list = try await database { q in try q.workers() }
        return page(
            request,
            v,
            title: "Workers",
            section: "/workers",
            ConsolePages.workers(list, now: .now),
            refresh: true
        )
    }

    // MARK: actions

    /// Checks a POST: a token configured, the same origin, and the bearer token or a session with the
    /// form's anti-forgery token. Returns the refusal, or nil.
    func refusal(_ request: Request, _ v: Visitor, _ context: ConsoleContext, form: [String: String]) -> Response? {
        guard auth.configured else {
            return message(
                request,
                v,
                .forbidden,
                "Read-only",
                "This console was started without a token: it shows the queue but changes nothing."
            )
        }
        if isCrossSite(request) {
            options.logger.warning("a request from another site was refused", metadata: ["path": "\(request.uri.path)"])
            return message(request, v, .forbidden, "Refused", "Requests from another site cannot act on the queue.")
        }
        if isLockedOut(context.peer) { return tooManyFailures(request, v) }
        if v.bearer { return nil }
        if let session = v.session, let given = form["_csrf"], auth.isValidCSRF(given, for: session) { return nil }
        return page(
            request,
            v,
            status: v.session == nil ? .unauthorized : .forbidden,
            title: "Sign in first",
            section: "",
            ConsolePages.message(
                "Sign in first",
                v.session == nil
                    ? "Acting on jobs needs the console's token: sign in, or send it as a bearer token."
                    : "The form's anti-forgery token is missing or wrong: reload the page and try again."
            )
        )
    }

    func tooManyFailures(_ request: Request, _ v: Visitor) -> Response {
        var r = message(
            request,
            v,
            .tooManyRequests,
            "Too many attempts",
            "Too many wrong tokens from this address: wait a minute."
        )
        r.headers[.retryAfter] = "60"
        return r
    }

    func form(_ request: Request) async throws -> [String: String] {
        var request = request
        return FormData.parse(String(buffer: try await request.collectBody(upTo: 16 * 1024))[...])
    }

    func act(
        _ request: Request,
        _ v: Visitor,
        _ context: ConsoleContext,
        id: Int64?,
        action: String
    ) async throws -> Response {
        let form = try await form(request)
        if let refused = refusal(request, v, context, form: form) { return refused }
        guard let id else { return redirect("/jobs") }
        let code: String
        switch action {
        case "retry": code = try await database { q in try q.retry(id) } ? "retried" : "not-retried"
        case "cancel": code = try await database { q in try q.cancel(id) } ? "cancelled" : "not-cancelled"
        case "discard": code = try await database { q in try q.discard(id) } ? "discarded" : "not-discarded"
        default:
            return message(request, v, .notFound, "No such action", "Jobs can be retried, cancelled or discarded.")
        }
        options.logger.info(
            "job \(action)",
            metadata: ["job": "\(id)", "outcome": "\(code)", "peer": "\(context.peer)"]
        )
        return redirect("/jobs/\(id)?done=\(code)")
    }

    func signIn(_ request: Request, _ v: Visitor, _ context: ConsoleContext) async throws -> Response {
        let form = try await form(request)
        guard auth.configured, !isCrossSite(request) else {
            return refusal(request, v, context, form: form) ?? redirect("/")
        }
        let next = Self.safePath(form["next"])
        if isLockedOut(context.peer) { return tooManyFailures(request, v) }
        guard auth.isToken(form["token"] ?? "") else {
            noteFailure(context.peer)
            return page(
                request,
                v,
                status: .unauthorized,
                title: "Sign in",
                section: "",
                ConsolePages.login(next: next, failed: true)
            )
        }
        var response = redirect(next)
        if let session = auth.newSession(nowSeconds: nowSeconds) {
            response.headers[values: .setCookie].append(
                cookieHeader(session, maxAge: Int(auth.sessionLifetime.components.seconds))
            )
        }
        options.logger.info("signed in", metadata: ["peer": "\(context.peer)"])
        return response
    }

    func signOut(_ request: Request, _ v: Visitor, _ context: ConsoleContext) async throws -> Response {
        let form = try await form(request)
        if let refused = refusal(request, v, context, form: form) { return refused }
        var response = redirect("/")
        response.headers[values: .setCookie].append(cookieHeader("", maxAge: 0))
        return response
    }

    func cookieHeader(_ value: String, maxAge: Int) -> String {
        "\(auth.cookieName)=\(value); Path=/; Max-Age=\(maxAge); HttpOnly; SameSite=Strict\(options.secureCookie ? "; Secure" : "")"
    }

    // MARK: responses

    func frame(title: String, section: String, visitor v: Visitor) -> ConsolePages.Frame {
        ConsolePages.Frame(
            title: title,
            section: section,
            canAct: v.canAct,
            tokenConfigured: auth.configured,
            csrf: v.session.map { auth.csrf(for: $0) },
            refreshMs: nil,
            database: url.description,
            notice: nil
        )
    }

    func page(
        _ request: Request,
        _ v: Visitor,
        status: HTTPResponse.Status = .ok,
        title: String,
        section: String,
        _ content: String,
        refresh: Bool = false
    ) -> Response {
        var f = frame(title: title, section: section, visitor: v)
        if refresh {
            let seconds = min(3600, max(0, options.refreshInterval.components.seconds))
            let ms = seconds * 1000 + options.refreshInterval.components.attoseconds / 1_000_000_000_000_000
            f.refreshMs = Int(max(100, min(3_600_000, ms)))
        }
        // The refresh script asks for the content alone.
        if request.headers[HTTPField.Name("X-Console-Fragment")!] == "1" { return respond(status, content) }
        return respond(status, ConsolePages.page(f, content))
    }

    /// A page that says one thing: `title`, then `text`.
    func message(
        _ request: Request,
        _ v: Visitor,
        _ status: HTTPResponse.Status,
        _ title: String,
        _ text: String
    ) -> Response {
        page(request, v, status: status, title: title, section: "", ConsolePages.message(title, text))
    }

    func signInFirst(_ request: Request) -> Response {
        let path = request.uri.path + (request.uri.query.map { "?" + $0 } ?? "")
        return redirect("/login?next=\(FormData.percentEncode(path))")
    }

    /// The script's hash for the Content-Security-Policy: that script, and no other, may run.
    static let scriptHash: String = {
        let digest = SHA256.hash(data: Array(ConsolePages.refreshScript.utf8))
        return "sha256-" + Data(digest).base64EncodedString()
    }()

    func respond(_ status: HTTPResponse.Status, _ html: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        headers[.cacheControl] = "no-store"
        headers[HTTPField.Name("Content-Security-Policy")!] =
            "default-src 'none'; style-src 'unsafe-inline'; script-src '\(Self.scriptHash)'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        headers[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    func redirect(_ location: String) -> Response {
        var headers = HTTPFields()
        headers[.location] = location
        headers[.cacheControl] = "no-store"
        return Response(status: .seeOther, headers: headers)
    }

    /// Too many database calls under way.
    struct Busy: Error {}

    /// Runs `body` with the queue on one of the console's threads; at most 32 calls queued or running.
    func database<R: Sendable>(_ body: @escaping @Sendable (JobQueue) throws -> R) async throws -> R {
        let admitted = inFlight.withLock { n -> Bool in
            guard n < 32 else { return false }
            n += 1
            return true
        }
        guard admitted else { throw Busy() }
        defer { inFlight.withLock { $0 -= 1 } }
        let queue = self.queue
        return try await Self.blockingCalls.submit { try body(queue) }.value
    }
}
#endif
