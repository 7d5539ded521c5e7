import Testing

#if Console
import Foundation
import Glibc
import Multiprocessing
@testable import MultiprocessingConsole
import MultiprocessingJobQueue
import MultiprocessingSQL
import MultiprocessingTestSupport
import Threading

/// A job for the console's pages (the console reads rows; these never run unless a test's worker runs them).
struct Thumbnail: Job {
    var path: String
    var width: Int
    func run() throws -> Int { width }
}

/// Runs until its marker file exists (a test's condition, never a sleep), up to a minute.
struct WaitForMarker: Job {
    var marker: String
    func run() throws -> Bool {
        for _ in 0..<60_000 where access(marker, F_OK) != 0 { usleep(1000) }
        return true
    }
}

/// Runs `body` with a console on a free port of 127.0.0.1; stops it (and waits for it) at the end.
func withConsole<R>(
    _ url: DatabaseURL,
    token: String? = nil,
    tokenToRead: Bool = false,
    _ body: (Int) async throws -> R
) async throws -> R {
    let (ports, found) = AsyncStream<Int>.makeStream()
    let console = try QueueConsole(
        url,
        options: ConsoleOptions(
            port: 0,
            token: token,
            tokenToRead: tokenToRead,
            refreshInterval: .milliseconds(200),
            onListening: { found.yield($0) }
        )
    )
    let serving = Task {
        defer { found.finish() }
        try await console.run()
    }
    var it = ports.makeAsyncIterator()
    guard let port = await it.next() else {
        try await serving.value
        throw HTTP.Failure(description: "the console stopped before it listened")
    }
    do {
        let r = try await body(port)
        serving.cancel()
        _ = await serving.result
        return r
    } catch {
        serving.cancel()
        _ = await serving.result
        throw error
    }
}

/// Rows in every state: `emails` has 2 completed, 1 discarded (with an error history), 1 cancelled, 1
/// running and 3 available; `reports` 2 delayed by an hour.
struct Seeded {
    var completed: [Int64]
    var discarded: Int64
    var available: [Int64]
    var running: Int64
}

func seed(_ queue: JobQueue, _ db: ScratchDatabase) throws -> Seeded {
    let emails = try queue.enqueue(
        (1...8).map { Thumbnail(path: "/img/\($0).png", width: 100 * $0) },
        options: JobOptions(queue: "emails")
    ).map(\.id)
    _ = try queue.enqueue(
        [Thumbnail(path: "/r/1", width: 1), Thumbnail(path: "/r/2", width: 2)],
        options: JobOptions(queue: "reports", delay: .seconds(3600))
    )
    let c = try db.connect()
    defer { c.close() }
    let d = c.dialect
    func set(_ id: Int64, _ state: String, _ extra: String = "") throws {
        try c.execute(
            "UPDATE mp_jobs SET state = \(d.parameter(1)), finished_at = \(d.parameter(2))\(extra) WHERE id = \(d.parameter(3))",
            [.text(state), state == "running" ? .null : .int(QueueTime.now.millisecondsSinceEpoch), .int(id)]
        )
    }
    try set(emails[0], "completed")
    try set(emails[1], "completed")
    try set(
        emails[2],
        "discarded",
        ", attempt = 3, errors = 'attempt 1 at 2026-12-07T10:00:00.000Z on w1: disk full\nattempt 3 at 2026-12-07T10:00:04.000Z on w1: <script>alert(1)</script>\n'"
    )
    try set(emails[3], "cancelled")
    try c.execute(
        "UPDATE mp_jobs SET state = 'running', worker = 'w9', attempt = 1, lease_until = \(d.parameter(1)) WHERE id = \(d.parameter(2))",
        [.int(QueueTime.now.millisecondsSinceEpoch + 3_600_000), .int(emails[4])]
    )
    return Seeded(
        completed: [emails[0], emails[1]],
        discarded: emails[2],
        available: Array(emails[5...]),
        running: emails[4]
    )
}

/// The console in headless Chromium and over raw HTTP, on SQLite and PostgreSQL: the pages show what the
/// database holds, signed-in visitors retry, cancel and discard from the page, and a request without the
/// token or from another site changes nothing.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ConsoleTests {
    static let browserRuns = runs(needing: "chromium", unavailable: Browser.unavailable)
    static let token = "tok-0123456789abcdef"

    @Test(
        .enabled(if: browserRuns, "needs Debian's chromium and chromium-driver"),
        arguments: TestBackend.enabled
    )
    func thePagesShowWhatTheDatabaseHoldsAndFollowIt(_ backend: TestBackend) async throws {
        try await withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let seeded = try seed(queue, db)
            try await withConsole(db.url) { port in
                let browser = try await Browser()
                do {
                    try await browser.open("http://127.0.0.1:\(port)/")
                    // Every count cell against the database's own count.
                    let cells =
                        try await browser.evaluate(
                            "return Array.from(document.querySelectorAll('td[data-state]')).map(td => [td.dataset.queue, td.dataset.state, td.textContent])"
                        ) as? [[String]] ?? []
                    var expected: [String: String] = [:]
                    for q in try queue.queues() {
                        for s in JobState.allCases { expected["\(q.queue)/\(s.rawValue)"] = "\(q.count(s))" }
                        expected["\(q.queue)/scheduled"] = "\(q.scheduled)"
                    }
                    var shown: [String: String] = [:]
                    for c in cells where c.count == 3 { shown["\(c[0])/\(c[1])"] = c[2] }
                    #expect(shown == expected)
                    #expect(shown["emails/completed"] == "2" && shown["emails/available"] == "3")
                    #expect(shown["reports/scheduled"] == "2")
                    #expect(try await browser.text("#completed-total") == "2")
                    #expect(try await browser.text("#failed-total") == "2")
                    // Read-only: no sign-in link, no forms.
                    #expect(try await browser.element("a[href='/login']") == nil)

                    // The page follows the database without a reload: two more jobs complete.
                    let c = try db.connect()
                    try c.execute(
                        "UPDATE mp_jobs SET state = 'completed', finished_at = \(c.dialect.parameter(1)) WHERE id IN (\(seeded.available[0]), \(seeded.available[1]))",
                        [.int(QueueTime.now.millisecondsSinceEpoch)]
                    )
                    c.close()
                    try await eventually("the overview shows 4 completed") {
                        try await browser.text("td[data-queue='emails'][data-state='completed']") == "4"
                    }
                    #expect(try await browser.text("#completed-total") == "4")
                    #expect(try await browser.text("td[data-queue='emails'][data-state='available']") == "1")

                    // The discarded job: listed by the state filter, its history escaped, its arguments read.
                    try await browser.open("http://127.0.0.1:\(port)/jobs?state=discarded")
                    let rows =
                        try await browser.evaluate(
                            "return Array.from(document.querySelectorAll('tr[data-job]')).map(tr => tr.dataset.job)"
                        ) as? [String] ?? []
                    #expect(rows == ["\(seeded.discarded)"])
                    try await browser.click("tr[data-job='\(seeded.discarded)'] a")
                    try await eventually("the job's page has loaded") { try await browser.element("#job-state") != nil }
                    #expect(try await browser.text("#job-state") == "discarded")
                    let history =
                        try await browser.evaluate(
                            "return Array.from(document.querySelectorAll('#errors li')).map(li => li.textContent)"
                        ) as? [String] ?? []
                    #expect(
                        history == [
                            "attempt 1 at 2026-12-07T10:00:00.000Z on w1: disk full",
                            "attempt 3 at 2026-12-07T10:00:04.000Z on w1: <script>alert(1)</script>",
                        ]
                    )
                    #expect(
                        try await browser.evaluate("return document.querySelectorAll('#errors script').length") as? Int
                            == 0
                    )
                    #expect(try await browser.text("#arguments") == #"{"path": "/img/3.png", "width": 300}"#)
                    #expect(try await browser.element("#retry") == nil)
                } catch {
                    await browser.close()
                    throw error
                }
                await browser.close()
                // A read-only console acts on nothing, whatever is sent.
                let post = try await HTTP.request(
                    "POST",
                    port: port,
                    "/jobs/\(seeded.discarded)/retry",
                    headers: [("Authorization", "Bearer anything")]
                )
                #expect(post.status == 403)
                #expect(try queue.info(seeded.discarded)?.state == .discarded)
            }
        }
    }

    @Test(
        .enabled(if: browserRuns, "needs Debian's chromium and chromium-driver"),
        arguments: TestBackend.enabled
    )
    func aSignedInVisitorRetriesCancelsAndDiscardsFromThePage(_ backend: TestBackend) async throws {
        try await withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let seeded = try seed(queue, db)
            try await withConsole(db.url, token: "s3cret token for the tests") { port in
                let base = "http://127.0.0.1:\(port)"
                let browser = try await Browser()
                do {
                    // Not signed in: the job page has no forms, and a link to sign in.
                    try await browser.open("\(base)/jobs/\(seeded.discarded)")
                    #expect(try await browser.element("#retry") == nil)
                    try await browser.open("\(base)/login?next=/jobs/\(seeded.discarded)")
                    try await browser.type("wrong", into: "#token")
                    try await browser.click("#sign-in")
                    // (A click that submits a form returns before the next page has loaded: wait for it.)
                    try await eventually("the sign-in is refused") { try await browser.element("#login-failed") != nil }
                    try await browser.type("s3cret token for the tests", into: "#token")
                    try await browser.click("#sign-in")
                    try await eventually("signed in, back on the job's page") {
                        try await browser.currentURL == "\(base)/jobs/\(seeded.discarded)"
                    }
                    try await eventually("the job's page has loaded") { try await browser.element("#retry") != nil }

                    // Retry the discarded job.
                    try await browser.click("#retry")
                    try await eventually("the retry's page") { try await browser.element("#notice") != nil }
                    #expect(try await browser.text("#notice") == "Job \(seeded.discarded): queued again.")
                    #expect(try queue.info(seeded.discarded)?.state == .available)
                    #expect(try await browser.text("#job-state") == "available")

                    // Cancel a waiting job, discard another.
                    try await browser.open("\(base)/jobs/\(seeded.available[0])")
                    try await browser.click("#cancel")
                    try await eventually("the job is cancelled") {
                        try queue.info(seeded.available[0])?.state == .cancelled
                    }
                    try await browser.open("\(base)/jobs/\(seeded.available[1])")
                    try await browser.click("#discard")
                    try await eventually("the job is discarded") {
                        try queue.info(seeded.available[1])?.state == .discarded
                    }
                    // A running job: cancellation is asked of its worker.
                    try await browser.open("\(base)/jobs/\(seeded.running)")
                    try await browser.click("#cancel")
                    try await eventually("cancellation is asked for") {
                        try queue.details(seeded.running)?.cancelRequested == true
                    }
                    #expect(try queue.info(seeded.running)?.state == .running)

                    // The main page, kept by CI (MP_CONSOLE_SCREENSHOT names the file).
                    try await browser.open("\(base)/")
                    #expect(try await browser.element("td[data-queue='emails']") != nil)
                    let png = try await browser.screenshot()
                    #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]) && png.count > 5000)
                    if let path = ProcessInfo.processInfo.environment["MP_CONSOLE_SCREENSHOT"], backend == .sqlite {
                        try Data(png).write(to: URL(fileURLWithPath: path))
                    }
                } catch {
                    await browser.close()
                    throw error
                }
                await browser.close()
            }
        }
    }

    @Test(arguments: TestBackend.enabled)
    func requestsWithoutTheTokenOrFromAnotherSiteChangeNothing(_ backend: TestBackend) async throws {
        try await withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let seeded = try seed(queue, db)
            let id = seeded.discarded
            try await withConsole(db.url, token: Self.token) { port in
                func post(_ path: String, _ headers: [(String, String)] = [], _ body: String = "") async throws -> Int {
                    let h = [("Content-Type", "application/x-www-form-urlencoded")] + headers
                    return try await HTTP.request("POST", port: port, path, headers: h, body: body).status
                }
                // No credentials, a wrong bearer token.
                #expect(try await post("/jobs/\(id)/retry") == 401)
                #expect(try await post("/jobs/\(id)/retry", [("Authorization", "Bearer \(Self.token)2")]) == 401)
                // Sign in with a wrong token, then the right one (and a `next` that leaves the site: ignored).
                #expect(try await post("/login", [], "token=nope&next=%2F") == 401)
                let signIn = try await HTTP.request(
                    "POST",
                    port: port,
                    "/login",
                    headers: [("Content-Type", "application/x-www-form-urlencoded")],
                    body: "token=\(FormData.percentEncode(Self.token))&next=%2F%2Fevil.example%2F"
                )
                #expect(signIn.status == 303 && signIn.header("Location") == "/")
                let setCookie = try #require(signIn.header("Set-Cookie"))
                #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict"))
                let cookie = String(setCookie.prefix { $0 != ";" })
                // The session's anti-forgery token, from the job page's form.
                let page = try await HTTP.request("GET", port: port, "/jobs/\(id)", headers: [("Cookie", cookie)])
                let csrf = try #require(
                    page.body.firstRange(of: #/name="_csrf" value="([0-9a-f]+)"/#).map {
                        String(page.body[$0].split(separator: "\"")[3])
                    }
                )
                // A session without the form's token, with a wrong one, from another origin, or marked
                // cross-site by the browser: refused.
                #expect(try await post("/jobs/\(id)/retry", [("Cookie", cookie)]) == 403)
                #expect(try await post("/jobs/\(id)/retry", [("Cookie", cookie)], "_csrf=00") == 403)
                #expect(
                    try await post(
                        "/jobs/\(id)/retry",
                        [("Cookie", cookie), ("Origin", "http://evil.example")],
                        "_csrf=\(csrf)"
                    ) == 403
                )
                #expect(
                    try await post(
                        "/jobs/\(id)/retry",
                        [("Cookie", cookie), ("Sec-Fetch-Site", "cross-site")],
                        "_csrf=\(csrf)"
                    ) == 403
                )
                // A forged session cookie (its expiry changed): not signed in.
                let forged = cookie.replacingOccurrences(of: "=", with: "=9").prefix(cookie.count + 1)
                #expect(try await post("/jobs/\(id)/retry", [("Cookie", String(forged))], "_csrf=\(csrf)") == 401)
                #expect(try queue.info(id)?.state == .discarded)
                // The same session, form and origin: done.
                #expect(
                    try await post(
                        "/jobs/\(id)/retry",
                        [("Cookie", cookie), ("Origin", "http://127.0.0.1:\(port)")],
                        "_csrf=\(csrf)"
                    ) == 303
                )
                #expect(try queue.info(id)?.state == .available)
                // A bearer token needs no form token (a browser never sends one by itself).
                #expect(
                    try await post("/jobs/\(seeded.available[0])/discard", [("Authorization", "Bearer \(Self.token)")])
                        == 303
                )
                #expect(try queue.info(seeded.available[0])?.state == .discarded)
                // Every page forbids framing and scripts but its own.
                let overview = try await HTTP.request("GET", port: port, "/")
                #expect(overview.header("Content-Security-Policy")?.contains("frame-ancestors 'none'") == true)
                #expect(overview.header("X-Content-Type-Options") == "nosniff")
            }
            // With the token needed to read, pages send visitors to sign in first.
            try await withConsole(db.url, token: Self.token, tokenToRead: true) { port in
                let r = try await HTTP.request("GET", port: port, "/jobs/\(id)")
                #expect(r.status == 303 && r.header("Location") == "/login?next=%2Fjobs%2F\(id)")
                let signedIn = try await HTTP.request(
                    "GET",
                    port: port,
                    "/jobs/\(id)",
                    headers: [("Authorization", "Bearer \(Self.token)")]
                )
                #expect(signedIn.status == 200 && signedIn.body.contains("id=\"job-state\""))
            }
        }
    }

    /// Guessing is slow, links cannot redirect elsewhere or put words in the page, other host names are not
    /// answered, and options that would leave the console open are refused.
    @Test func guessesRedirectsHostsAndWeakOptionsAreRefused() async throws {
        try await withScratchDatabase(.sqlite) { db in
            let queue = try JobQueue(db.url)
            let seeded = try seed(queue, db)
            #expect(throws: ConsoleOptionsError.self) {
                try QueueConsole(db.url, options: ConsoleOptions(token: "short"))
            }
            #expect(throws: ConsoleOptionsError.self) {
                try QueueConsole(db.url, options: ConsoleOptions(tokenToRead: true))
            }
            try await withConsole(db.url, token: Self.token) { port in
                func signIn(_ token: String, next: String = "%2F") async throws -> HTTPReply {
                    try await HTTP.request(
                        "POST",
                        port: port,
                        "/login",
                        headers: [("Content-Type", "application/x-www-form-urlencoded")],
                        body: "token=\(FormData.percentEncode(token))&next=\(next)"
                    )
                }
                // A tab in `next` (a browser drops it, leaving //evil.example): home instead.
                let tabbed = try await signIn(Self.token, next: "%2F%09%2Fevil.example")
                #expect(tabbed.status == 303 && tabbed.header("Location") == "/")
                let backslash = try await signIn(Self.token, next: "%2F%5Cevil.example")
                #expect(backslash.header("Location") == "/")
                // A link's `done` shows only the console's own words.
                let page = try await HTTP.request("GET", port: port, "/jobs/\(seeded.discarded)?done=session+expired")
                #expect(!page.body.contains("session expired") && !page.body.contains("id=\"notice\""))
                let real = try await HTTP.request("GET", port: port, "/jobs/\(seeded.discarded)?done=retried")
                #expect(real.body.contains("Job \(seeded.discarded): queued again."))
                // Another host name (a DNS name rebound to 127.0.0.1): not answered.
                let rebound = try await HTTP.request(
                    "GET",
                    port: port,
                    "/",
                    headers: [("Host", "evil.example:\(port)")]
                )
                #expect(rebound.status == 421)
                #expect(
                    try await HTTP.request("GET", port: port, "/", headers: [("Host", "localhost:\(port)")]).status
                        == 200
                )
                // Ten wrong tokens a minute from one address, then even the right one waits.
                for _ in 0..<9 { #expect(try await signIn("wrong token, not the console's").status == 401) }
                let bearer = try await HTTP.request(
                    "POST",
                    port: port,
                    "/jobs/\(seeded.discarded)/retry",
                    headers: [("Authorization", "Bearer also wrong")]
                )
                #expect(bearer.status == 429)  // the tenth failure: the address waits from here
                let locked = try await signIn(Self.token)
                #expect(locked.status == 429 && locked.header("Retry-After") == "60")
                #expect(try queue.info(seeded.discarded)?.state == .discarded)
            }
        }
    }

    /// A database that fails the console's queries: a 503 page that says so without the database's own
    /// words (table names, SQL), the details in the log; the console answers again once it is back.
    @Test func aFailingDatabaseGivesA503PageAndTheConsoleRecovers() async throws {
        try await withScratchDatabase(.sqlite) { db in
            let queue = try JobQueue(db.url)
            _ = try seed(queue, db)
            try await withConsole(db.url) { port in
                #expect(try await HTTP.request("GET", port: port, "/").status == 200)
                let c = try db.connect()
                defer { c.close() }
                try c.execute("ALTER TABLE mp_jobs RENAME TO mp_jobs_away")
                let failed = try await HTTP.request("GET", port: port, "/")
                #expect(failed.status == 503)
                #expect(failed.body.contains("did not answer") && !failed.body.contains("mp_jobs"))
                try c.execute("ALTER TABLE mp_jobs_away RENAME TO mp_jobs")
                let back = try await HTTP.request("GET", port: port, "/")
                #expect(back.status == 200 && back.body.contains("data-queue=\"emails\""))
            }
        }
    }

    @Test(arguments: TestBackend.enabled)
    func theWorkersPageShowsWorkersAndTheirBusyProcesses(_ backend: TestBackend) async throws {
        try await withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let marker = db.scratch + ".marker"
            let held = try queue.enqueue(WaitForMarker(marker: marker))
            let pool = try ProcessPool(workers: 2, options: testPoolOptions())
            let worker = try QueueWorker(
                db.url,
                pool: pool,
                options: QueueWorkerOptions(lease: .milliseconds(600), pollInterval: .milliseconds(5))
            )
            let running = background { try worker.run() }
            defer {
                close(open(marker, O_CREAT | O_WRONLY, 0o644))
                worker.stop(.handBack)
                _ = try? running.result(timeout: .seconds(30))
                pool.terminate()
                _ = try? pool.join(timeout: .seconds(30))
            }
            try await withConsole(db.url) { port in
                var page = HTTPReply(status: 0, headers: [], body: "")
                try await eventually("the workers page shows a busy process") {
                    page = try await HTTP.request("GET", port: port, "/workers")
                    return page.body.contains("<td>busy</td>")
                }
                #expect(page.body.contains("data-worker=\"\(worker.name)\""))
                for pid in pool.workerPIDs { #expect(page.body.contains("data-process=\"\(pid)\"")) }
                #expect(page.body.contains("MiB"))
                let overview = try await HTTP.request("GET", port: port, "/")
                #expect(overview.body.contains("<span id=\"workers-live\">1</span>"))
                #expect(overview.body.contains("<span id=\"workers-busy\">1</span>"))
            }
            close(open(marker, O_CREAT | O_WRONLY, 0o644))
            #expect(try held.result(timeout: .seconds(30)) == true)
        }
    }
}
#else
/// The console's tests need it built in.
@Suite struct ConsoleTests {
    @Test(.disabled("the console is built only with the Console trait: swift test --traits Console"))
    func theConsoleIsNotBuilt() {}
}
#endif
