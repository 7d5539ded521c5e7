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
    /// Mark the session cookie `Secure` (serve the console behind HTTPS, such as a TLS proxy).
    public var secureCookie: Bool
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
        logger: Logger = Logger(label: "mp.console"),
        onListening: (@Sendable (Int) -> Void)? = nil
    ) {
        self.host = host
        self.port = port
        self.token = token
        self.tokenToRead = tokenToRead
        self.refreshInterval = refreshInterval
        self.secureCookie = secureCookie
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
    let signInFailures = Mutex<(windowStart: Int64, count: Int)>((0, 0))
    #endif
    /// The database calls' threads.
    static let blockingCalls = ThreadPool(maxWorkers: 4, threadNamePrefix: "mp-console-db")

    /// Opens the queue at `url` (creating or migrating its tables, as every queue client does).
    /// - Throws: the database's error when it cannot be reached.
    public init(_ url: DatabaseURL, options: ConsoleOptions = ConsoleOptions()) throws {
        self.url = url
        self.options = options
        self.queue = try JobQueue(url)
        #if Console
        self.auth = ConsoleAuth(token: options.token)
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

/// The console's server is not in this build: the library was built without its `Console` trait
/// (`swift build --traits Console`), which brings Hummingbird and SwiftNIO.
public struct ConsoleNotBuilt: Error, CustomStringConvertible {
    /// What to do about it.
    public var description: String {
        "the web console was not built: build with the Console trait (swift build --traits Console)"
    }
}

#if Console
extension QueueConsole {
    func serve() async throws {
        let router = Router()
        routes(router)
        let onListening = options.onListening
        let logger = options.logger
        let app = Application(
            router: router,
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
        // the requests in flight are answered, and Hummingbird logs no error.
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: [.init(service: app)], logger: logger)
        )
        // The group runs in a task of its own, so that a cancellation reaches the server only as a graceful
        // shutdown.
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

    func routes(_ router: Router<BasicRequestContext>) {
        router.get("/") { request, _ in try await self.overview(request) }
        router.get("/jobs") { request, _ in try await self.jobList(request) }
        router.get("/jobs/:id") { request, context in
            try await self.job(request, id: context.parameters.get("id", as: Int64.self))
        }
        router.post("/jobs/:id/:action") { request, context in
            try await self.act(
                request,
                id: context.parameters.get("id", as: Int64.self),
                action: context.parameters.get("action") ?? ""
            )
        }
        router.get("/workers") { request, _ in try await self.workerList(request) }
        router.get("/login") { request, _ in
            let next = FormData.parse(request.uri.query.map { $0[...] } ?? "")["next"] ?? "/"
            return self.page(request, title: "Sign in", section: "", ConsolePages.login(next: next, failed: false))
        }
        router.post("/login") { request, _ in try await self.signIn(request) }
        router.post("/logout") { request, _ in try await self.signOut(request) }
        router.get("/health") { _, _ in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ok\n"))) }
    }

    // MARK: who is asking

    struct Visitor {
        var canRead: Bool
        var canAct: Bool
        /// The session cookie, when signed in with one.
        var session: String?
        /// Signed in with the token as a bearer token (no cookie, so no forgery to fear).
        var bearer: Bool
    }

    func visitor(_ request: Request) -> Visitor {
        guard auth.configured else { return Visitor(canRead: true, canAct: false, session: nil, bearer: false) }
        if let header = request.headers[.authorization], header.hasPrefix("Bearer "),
            auth.isToken(String(header.dropFirst(7)))
        {
            return Visitor(canRead: true, canAct: true, session: nil, bearer: true)
        }
        if let cookie = Self.cookie(ConsoleAuth.cookie, in: request),
            auth.isValidSession(cookie, nowSeconds: nowSeconds)
        {
            return Visitor(canRead: true, canAct: true, session: cookie, bearer: false)
        }
        return Visitor(canRead: !options.tokenToRead, canAct: false, session: nil, bearer: false)
    }

    var nowSeconds: Int64 { QueueTime.now.millisecondsSinceEpoch / 1000 }

    static func cookie(_ name: String, in request: Request) -> String? {
        for header in request.headers[values: .cookie] {
            for part in header.split(separator: ";") {
                let kv = part.split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces) == name {
                    return kv[1].trimmingCharacters(in: .whitespaces)
                }
            }
        }
        return nil
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

    // MARK: pages

    func overview(_ request: Request) async throws -> Response {
        let v = visitor(request)
        guard v.canRead else { return signInFirst(request) }
        let bucket = Duration.seconds(10)
        let data = try await database { q in
            (try q.queues(), try q.throughput(last: .seconds(600), bucket: bucket), try q.workers())
        }
        let html = ConsolePages.overview(
            queues: data.0,
            throughput: data.1,
            bucket: bucket,
            workers: data.2,
            now: .now
        )
        return page(request, title: "Queues", section: "/", html, refresh: true)
    }

    func jobList(_ request: Request) async throws -> Response {
        let v = visitor(request)
        guard v.canRead else { return signInFirst(request) }
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
            title: "Jobs",
            section: "/jobs",
            ConsolePages.jobs(jobs, filter: filter, queues: queues, pageSize: pageSize)
        )
    }

    func job(_ request: Request, id: Int64?) async throws -> Response {
        let v = visitor(request)
        guard v.canRead else { return signInFirst(request) }
        guard let id, let details = try await database({ q in try q.details(id) }) else {
            return page(
                request,
                status: .notFound,
                title: "No such job",
                section: "/jobs",
                ConsolePages.message("No such job", "There is no job \(id.map(String.init) ?? "with that id").")
            )
        }
        let done = FormData.parse(request.uri.query.map { $0[...] } ?? "")["done"]
        var frame = frame(request, title: "Job \(id)", section: "/jobs", visitor: v)
        frame.notice = done.map { "Job \(id): \($0)." }
        return respond(.ok, ConsolePages.page(frame, ConsolePages.job(details, frame: frame)), request: request)
    }

    func workerList(_ request: Request) async throws -> Response {
        let v = visitor(request)
        guard v.canRead else { return signInFirst(request) }
        let list = try await database { q in try q.workers() }
        return page(
            request,
            title: "Workers",
            section: "/workers",
            ConsolePages.workers(list, now: .now),
            refresh: true
        )
    }

    // MARK: actions

    /// Checks a POST: a token configured, the same origin, and the bearer token or a session with the
    /// form's anti-forgery token. Returns the refusal, or nil.
    func refusal(_ request: Request, form: [String: String]) -> Response? {
        guard auth.configured else {
            return page(
                request,
                status: .forbidden,
                title: "Read-only",
                section: "",
                ConsolePages.message(
                    "Read-only",
                    "This console was started without a token: it shows the queue but changes nothing."
                )
            )
        }
        if isCrossSite(request) {
            options.logger.warning("a request from another site was refused", metadata: ["path": "\(request.uri.path)"])
            return page(
                request,
                status: .forbidden,
                title: "Refused",
                section: "",
                ConsolePages.message("Refused", "Requests from another site cannot act on the queue.")
            )
        }
        let v = visitor(request)
        if v.bearer { return nil }
        if let session = v.session, let given = form["_csrf"], auth.isValidCSRF(given, for: session) { return nil }
        return page(
            request,
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

    func act(_ request: Request, id: Int64?, action: String) async throws -> Response {
        var request = request
        let form = FormData.parse(String(buffer: try await request.collectBody(upTo: 16 * 1024))[...])
        if let refused = refusal(request, form: form) { return refused }
        guard let id else { return redirect("/jobs") }
        let outcome: String
        do {
            switch action {
            case "retry":
                outcome = try await database { q in try q.retry(id) } ? "queued again" : "not finished, so not retried"
            case "cancel":
                outcome =
                    try await database { q in try q.cancel(id) }
                    ? "cancellation asked for" : "already finished, so not cancelled"
            case "discard":
                outcome =
                    try await database { q in try q.discard(id) } ? "discarded" : "not waiting to run, so not discarded"
            default:
                return page(
                    request,
                    status: .notFound,
                    title: "No such action",
                    section: "",
                    ConsolePages.message("No such action", "Jobs can be retried, cancelled or discarded.")
                )
            }
        } catch let e as JobQueueError where e.code == .conflict {
            return page(
                request,
                status: .conflict,
                title: "Not retried",
                section: "",
                ConsolePages.message("Not retried", e.message)
            )
        }
        options.logger.info("job \(action)", metadata: ["job": "\(id)", "outcome": "\(outcome)"])
        return redirect("/jobs/\(id)?done=\(FormData.percentEncode(outcome))")
    }

    func signIn(_ request: Request) async throws -> Response {
        var request = request
        let form = FormData.parse(String(buffer: try await request.collectBody(upTo: 16 * 1024))[...])
        guard auth.configured, !isCrossSite(request) else {
            return refusal(request, form: form) ?? redirect("/")
        }
        var next = form["next"] ?? "/"
        // Only a path of this console (no `//host` or scheme): the sign-in page redirects nowhere else.
        if !next.hasPrefix("/") || next.hasPrefix("//") || next.contains("\\") { next = "/" }
        guard allowSignInAttempt(), auth.isToken(form["token"] ?? "") else {
            options.logger.warning("a sign-in with a wrong token was refused")
            return page(
                request,
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
        return response
    }

    /// At most 10 sign-in attempts a minute: a guessed token is slow to find.
    func allowSignInAttempt() -> Bool {
        let now = nowSeconds
        return signInFailures.withLock { w in
            if now - w.windowStart >= 60 { w = (now, 0) }
            w.count += 1
            return w.count <= 10
        }
    }

    func signOut(_ request: Request) async throws -> Response {
        var request = request
        let form = FormData.parse(String(buffer: try await request.collectBody(upTo: 16 * 1024))[...])
        if let refused = refusal(request, form: form) { return refused }
        var response = redirect("/")
        response.headers[values: .setCookie].append(cookieHeader("", maxAge: 0))
        return response
    }

    func cookieHeader(_ value: String, maxAge: Int) -> String {
        "\(ConsoleAuth.cookie)=\(value); Path=/; Max-Age=\(maxAge); HttpOnly; SameSite=Strict\(options.secureCookie ? "; Secure" : "")"
    }

    // MARK: responses

    func frame(_ request: Request, title: String, section: String, visitor v: Visitor) -> ConsolePages.Frame {
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
        status: HTTPResponse.Status = .ok,
        title: String,
        section: String,
        _ content: String,
        refresh: Bool = false
    ) -> Response {
        var f = frame(request, title: title, section: section, visitor: visitor(request))
        if refresh { f.refreshMs = max(100, Int(options.refreshInterval / .milliseconds(1))) }
        // The refresh script asks for the content alone.
        if request.headers[HTTPField.Name("X-Console-Fragment")!] == "1" {
            return respond(status, content, request: request)
        }
        return respond(status, ConsolePages.page(f, content), request: request)
    }

    func signInFirst(_ request: Request) -> Response {
        redirect("/login?next=\(FormData.percentEncode(request.uri.path))")
    }

    /// The script's hash for the Content-Security-Policy: that script, and no other, may run.
    static let scriptHash: String = {
        let digest = SHA256.hash(data: Array(ConsolePages.refreshScript.utf8))
        return "sha256-" + Data(digest).base64EncodedString()
    }()

    func respond(_ status: HTTPResponse.Status, _ html: String, request: Request) -> Response {
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

    /// Runs `body` with the queue on one of the console's threads.
    func database<R: Sendable>(_ body: @escaping @Sendable (JobQueue) throws -> R) async throws -> R {
        let queue = self.queue
        do {
            return try await Self.blockingCalls.submit { try body(queue) }.value
        } catch let e as JobQueueError {
            throw e
        } catch {
            options.logger.error("a database call failed", metadata: ["error": "\(error)"])
            throw HTTPError(.serviceUnavailable, message: "the queue's database did not answer: \(error)")
        }
    }
}
#endif
