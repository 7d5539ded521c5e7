#if Console
import Foundation
import Glibc
import MultiprocessingTestSupport
import Testing
import Threading

/// One HTTP/1.1 exchange on a new loopback connection (`Connection: close`), on a thread of the tests' own
/// (never Swift's cooperative pool, where the console's handlers run).
struct HTTPReply: Sendable {
    var status: Int
    var headers: [(String, String)]
    var body: String
    func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    func headers(_ name: String) -> [String] { headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1) }
}

enum HTTP {
    static let threads = ThreadPool(maxWorkers: 4, threadNamePrefix: "console-test-http")

    static func request(
        _ method: String,
        port: Int,
        _ path: String,
        headers: [(String, String)] = [],
        body: String = ""
    ) async throws -> HTTPReply {
        try await threads.submit { try exchange(method, port: port, path, headers: headers, body: body) }.value
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    /// Whether `reply` holds a whole response with a Content-Length.
    static func isComplete(_ reply: [UInt8]) -> Bool {
        let text = String(decoding: reply, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { return false }
        for line in text[..<split.lowerBound].components(separatedBy: "\r\n")
        where line.lowercased().hasPrefix("content-length:") {
            let n = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) ?? .max
            return text[split.upperBound...].utf8.count >= n
        }
        return false
    }

    static func exchange(
        _ method: String,
        port: Int,
        _ path: String,
        headers: [(String, String)],
        body: String
    ) throws
        -> HTTPReply
    {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { throw Failure(description: "connect to port \(port): errno \(errno)") }
        var head = "\(method) \(path) HTTP/1.1\r\nConnection: close\r\n"
        if !headers.contains(where: { $0.0.lowercased() == "host" }) { head += "Host: 127.0.0.1:\(port)\r\n" }
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        if method != "GET" || !body.isEmpty { head += "Content-Length: \(body.utf8.count)\r\n" }
        let bytes = Array((head + "\r\n" + body).utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "send: errno \(errno)") }
            sent += n
        }
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        // Until the server closes, or the body its Content-Length announces is in (chromedriver keeps the
        // connection open whatever the request asked).
        while !isComplete(reply) {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw Failure(description: "recv: errno \(errno)") }
            if n == 0 { break }
            reply += buffer[0..<n]
        }
        let text = String(decoding: reply, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw Failure(description: "no HTTP reply: \(text)") }
        let lines = text[..<split.lowerBound].components(separatedBy: "\r\n")
        let status = Int(lines[0].split(separator: " ")[1]) ?? 0
        let fields = lines.dropFirst().compactMap { line -> (String, String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        var body = String(text[split.upperBound...])
        // Chunked replies (chromedriver's): joined.
        if fields.contains(where: { $0.0.lowercased() == "transfer-encoding" && $0.1.contains("chunked") }) {
            var out = ""
            var rest = Substring(body)
            while let end = rest.range(of: "\r\n"), let size = Int(rest[..<end.lowerBound], radix: 16), size > 0 {
                let start = end.upperBound
                let stop = rest.utf8.index(start, offsetBy: size)
                out += rest[start..<stop]
                rest = rest[stop...].dropFirst(2)
            }
            body = out
        }
        return HTTPReply(status: status, headers: fields, body: body)
    }
}

/// Headless Chromium driven through chromedriver (WebDriver, W3C): Debian's `chromium` and
/// `chromium-driver`. One browser per instance; ``close()`` ends the session (Chromium exits) and stops
/// the driver.
final class Browser: @unchecked Sendable {  // used by one test at a time
    static let chromium = "/usr/bin/chromium"
    static let chromedriver = "/usr/bin/chromedriver"
    /// Why the browser tests cannot run here, or nil.
    static let unavailable: String? = {
        if access(chromium, X_OK) != 0 || access(chromedriver, X_OK) != 0 {
            return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        }
        return nil
    }()

    let driver = Foundation.Process()
    let port: Int
    private(set) var session = ""

    struct Failure: Error, CustomStringConvertible { var description: String }

    init() async throws {
        let (probe, free) = loopbackSocket(listening: false)
        Glibc.close(probe)
        port = free
        driver.executableURL = URL(fileURLWithPath: Self.chromedriver)
        driver.arguments = ["--port=\(port)", "--log-level=SEVERE"]
        driver.standardOutput = FileHandle.nullDevice
        driver.standardError = FileHandle.nullDevice
        try driver.run()
        do {
            try await eventually(within: .seconds(60), "chromedriver answers") {
                (try? await HTTP.request("GET", port: self.port, "/status"))?.status == 200
            }
            let reply = try await command(
                "POST",
                "/session",
                [
                    "capabilities": [
                        "alwaysMatch": [
                            "goog:chromeOptions": [
                                "binary": Self.chromium,
                                "args": [
                                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                    "--no-proxy-server", "--window-size=1280,900",
                                ],
                            ]
                        ]
                    ]
                ]
            )
            guard let id = (reply as? [String: Any])?["sessionId"] as? String else {
                throw Failure(description: "no session: \(reply)")
            }
            session = id
        } catch {
            stopDriver()
            throw error
        }
    }

    /// Ends the session (Chromium exits) and stops chromedriver, reaping it.
    func close() async {
        if !session.isEmpty { _ = try? await command("DELETE", "/session/\(session)") }
        session = ""
        stopDriver()
    }

    private func stopDriver() {
        guard driver.isRunning else { return }
        driver.terminate()
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(5)
        while driver.isRunning && clock.now < deadline { usleep(5000) }
        if driver.isRunning { kill(driver.processIdentifier, SIGKILL) }
        driver.waitUntilExit()
    }

    /// A WebDriver command; returns its `value`.
    @discardableResult
    func command(_ method: String, _ path: String, _ body: [String: Any]? = nil) async throws -> Any {
        let text = body.map { String(decoding: try! JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }
        let reply = try await HTTP.request(
            method,
            port: port,
            path,
            headers: text == nil ? [] : [("Content-Type", "application/json")],
            body: text ?? ""
        )
        let json = try JSONSerialization.jsonObject(with: Data(reply.body.utf8), options: [.fragmentsAllowed])
        let value = (json as? [String: Any])?["value"] ?? NSNull()
        guard reply.status == 200 else { throw Failure(description: "\(method) \(path): \(reply.status) \(value)") }
        return value
    }

    func open(_ url: String) async throws { try await command("POST", "/session/\(session)/url", ["url": url]) }

    var currentURL: String {
        get async throws { try await command("GET", "/session/\(session)/url") as? String ?? "" }
    }

    /// The element `selector` finds (CSS), or nil.
    func element(_ selector: String) async throws -> String? {
        do {
            let v = try await command(
                "POST",
                "/session/\(session)/element",
                ["using": "css selector", "value": selector]
            )
            return (v as? [String: Any])?.values.first as? String
        } catch let e as Failure where e.description.contains("no such element") {
            return nil
        }
    }

    /// The text of the element `selector` finds, or nil. The pages refresh their figures in place, so an
    /// element found may be replaced before it is read: it is then looked for again.
    func text(_ selector: String) async throws -> String? {
        var attempts = 0
        while true {
            guard let e = try await element(selector) else { return nil }
            do {
                return try await command("GET", "/session/\(session)/element/\(e)/text") as? String
            } catch let f as Failure where f.description.contains("stale element") && attempts < 20 {
                attempts += 1
            }
        }
    }

    func click(_ selector: String) async throws {
        guard let e = try await element(selector) else { throw Failure(description: "no \(selector) to click") }
        try await command("POST", "/session/\(session)/element/\(e)/click", [:])
    }

    func type(_ text: String, into selector: String) async throws {
        guard let e = try await element(selector) else { throw Failure(description: "no \(selector) to type into") }
        try await command("POST", "/session/\(session)/element/\(e)/value", ["text": text])
    }

    /// Runs `script` in the page (WebDriver's own evaluation, which the page's Content-Security-Policy does
    /// not govern) and returns its result.
    func evaluate(_ script: String) async throws -> Any {
        try await command("POST", "/session/\(session)/execute/sync", ["script": script, "args": [Any]()])
    }

    /// The page as a PNG.
    func screenshot() async throws -> [UInt8] {
        let b64 = try await command("GET", "/session/\(session)/screenshot") as? String ?? ""
        return [UInt8](Data(base64Encoded: b64) ?? Data())
    }
}
#endif
