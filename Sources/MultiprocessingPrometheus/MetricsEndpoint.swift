internal import CMultiprocessingShims
import CoreMetrics
import Glibc
public import Logging
import Multiprocessing
public import MultiprocessingNetwork
public import Prometheus
import Synchronization
import SystemCalls
import Threading

/// An HTTP endpoint that Prometheus scrapes: `GET /metrics` answers a registry's metrics in Prometheus's
/// text exposition format (version 0.0.4), on a thread of its own.
///
/// The library reports its metrics through swift-metrics (see the article's reference table); with
/// swift-prometheus as the program's metrics backend, this endpoint exposes them:
///
/// ```swift
/// let endpoint = try MetricsEndpoint.bootstrap(address: .tcp(host: "0.0.0.0", port: 9464))
/// ```
///
/// It serves one request per connection (`Connection: close`), up to 64 connections at once, each within
/// ``requestTimeout``: a client that sends nothing, sends too much (over 8 KiB of request head) or stops
/// reading is disconnected, and holds up no other. `HEAD` is answered as `GET` without the body; other
/// methods get 405, other paths 404, a request that is not HTTP 400.
public final class MetricsEndpoint: Sendable {
    /// The address it listens on (with the actual port when 0 was asked for).
    public let address: Address
    /// The registry whose metrics it serves.
    public let registry: PrometheusCollectorRegistry
    /// The longest one request may take, from its connection's accept to the end of the answer.
    public let requestTimeout: Duration

    private let server: MetricsServer

    /// Starts serving `registry` on `address` (default: a free port on 127.0.0.1).
    /// - Parameters:
    ///   - registry: the metrics to serve (the one a `PrometheusMetricsFactory` was bootstrapped with).
    ///   - address: where to listen (TCP port 0: a free port; see ``address``).
    ///   - requestTimeout: the longest a request may take (default 5 s; between 1 ms and an hour).
    ///   - logger: where failures to serve are reported (default: nowhere).
    /// - Throws: when it cannot listen on `address`, or start its thread.
    public init(
        registry: PrometheusCollectorRegistry,
        address: Address = .tcp(host: "127.0.0.1", port: 0),
        requestTimeout: Duration = .seconds(5),
        logger: Logger = Logger(label: "swift-multiprocessing.metrics", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
        self.registry = registry
        self.requestTimeout = min(max(requestTimeout, .milliseconds(1)), .seconds(3600))
        server = try MetricsServer(
            registry: registry,
            address: address,
            requestTimeout: self.requestTimeout,
            logger: logger
        )
        self.address = server.address
        logger.info("metrics endpoint listening", metadata: ["address": "\(self.address)"])
    }

    /// Makes swift-prometheus the program's metrics backend (`MetricsSystem.bootstrap`, which a program
    /// does once) and serves its registry on `address`. The endpoint listens first: a program whose
    /// address is taken gets the error with its metrics backend still free to bootstrap.
    /// - Parameters:
    ///   - address: where to listen (default: a free port on 127.0.0.1).
    ///   - logger: where failures to serve are reported (default: nowhere).
    /// - Returns: the endpoint, serving; its ``registry`` is the backend's.
    public static func bootstrap(
        address: Address = .tcp(host: "127.0.0.1", port: 0),
        logger: Logger = Logger(label: "swift-multiprocessing.metrics", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws -> MetricsEndpoint {
        let registry = PrometheusCollectorRegistry()
        let endpoint = try MetricsEndpoint(registry: registry, address: address, logger: logger)
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return endpoint
    }

    deinit { server.stop() }

    /// Stops serving: the listener closes and the thread ends (requests being answered are cut short).
    public func close() { server.stop() }
}

/// The endpoint's thread and what it owns (the endpoint holds it; the thread holds it, not the endpoint,
/// so an endpoint dropped without ``MetricsEndpoint/close()`` is stopped by its deinit).
final class MetricsServer: Sendable {
    static let maxConnections = 64

    let address: Address
    private let listener: Listener
    private let registry: PrometheusCollectorRegistry
    private let requestTimeout: Duration
    private let logger: Logger
    private let stopFd: Int32
    private let stopped = Threading.Event()
    private let stopping = Atomic<Bool>(false)

    init(registry: PrometheusCollectorRegistry, address: Address, requestTimeout: Duration, logger: Logger) throws {
        self.registry = registry
        self.requestTimeout = requestTimeout
        self.logger = logger
        listener = try Listener(address: address)
        self.address = listener.address
        let fd = mp_eventfd(0)
        guard fd >= 0 else {
            listener.close()
            throw MultiprocessingError.system("eventfd", -fd)
        }
        stopFd = fd
        let t = OSThread(name: "mp-metrics", daemon: true) { [self] in serve() }
        do {
            try t.start()
        } catch {
            stopping.store(true, ordering: .relaxed)
            listener.close()
            SystemCall.close(fd)
            throw error
        }
    }

    /// Asks the thread to end and waits for it; the eventfd is closed only once the thread no longer
    /// polls it.
    func stop() {
        guard stopping.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else {
            _ = stopped.wait(timeout: .seconds(10))
            return
        }
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(stopFd, $0.baseAddress, 8) }
        if stopped.wait(timeout: .seconds(10)) { SystemCall.close(stopFd) }
    }

    /// One client connection: its request head so far, then its answer, then (its answer sent and its
    /// side shut) the rest of its input, read and dropped so that closing does not reset the connection
    /// before the client has read the answer.
    private struct Session {
        let fd: Int32
        let deadline: ContinuousClock.Instant
        var head: [UInt8] = []
        var answer: [UInt8]?
        var sent = 0
        var draining = false
    }

    private func serve() {
        var sessions: [Session] = []
        defer {
            for s in sessions { SystemCall.close(s.fd) }
            listener.close()
            stopped.set()
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            var fds = [
                pollfd(fd: stopFd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: listener.fileDescriptor, events: Int16(POLLIN), revents: 0),
            ]
            for s in sessions {
                let events = s.answer != nil && !s.draining ? POLLOUT : POLLIN
                fds.append(pollfd(fd: s.fd, events: Int16(events), revents: 0))
            }
            let now = ContinuousClock.now
            let next = sessions.map(\.deadline).min()
            let timeout = next.map { Self.milliseconds(until: $0, from: now) } ?? -1
            guard (try? SystemCall.poll(&fds, timeoutMs: timeout)) != nil else { return }
            if fds[0].revents != 0 { return }
            // Sessions first (their indices match `fds` from 2), then new connections.
            var kept: [Session] = []
            let after = ContinuousClock.now
            for (k, var s) in sessions.enumerated() {
                let ready = fds[k + 2].revents != 0
                if ready { step(&s, &buffer) }
                if s.fd < 0 { continue }  // finished
                if after >= s.deadline {
                    SystemCall.close(s.fd)
                    continue
                }
                kept.append(s)
            }
            sessions = kept
            if fds[1].revents != 0 { accept(into: &sessions) }
        }
    }

    private func accept(into sessions: inout [Session]) {
        while true {
            let accepted: Int
            do {
                guard let fd = try SystemCall.accept(listener.fileDescriptor).value else { return }
                accepted = fd
            } catch {
                // Out of descriptors and the like: the client waits in the backlog until a session ends.
                logger.warning("metrics endpoint cannot accept", metadata: ["error": "\(error)"])
                return
            }
            guard sessions.count < Self.maxConnections else {
                SystemCall.close(Int32(accepted))  // too many at once: this one is refused
                continue
            }
            sessions.append(Session(fd: Int32(accepted), deadline: .now + requestTimeout))
        }
    }

    /// Advances `s` as far as its socket allows now; sets its `fd` to -1 when it is finished (closed).
    private func step(_ s: inout Session, _ buffer: inout [UInt8]) {
        if s.answer == nil || s.draining {
            // Read: the request head, or (draining) whatever follows, until the client's end.
            while true {
                let got: Int?
                do {
                    got = try buffer.withUnsafeMutableBytes { try SystemCall.recv(s.fd, $0).value }
                } catch {
                    return finish(&s)
                }
                guard let n = got else { return }  // nothing more now
                if n == 0 { return finish(&s) }
                if s.draining { continue }
                s.head += buffer[0..<n]
                if HTTPRequestHead.end(of: s.head) != nil {
                    s.answer = answer(to: HTTPRequestHead.parse(s.head))
                    break
                }
                if s.head.count > HTTPRequestHead.maxSize {
                    s.answer = Self.response(
                        "431 Request Header Fields Too Large",
                        body: Array("request head too large\n".utf8)
                    )
                    break
                }
            }
        }
        guard let answer = s.answer, !s.draining else { return }
        while s.sent < answer.count {
            do {
                let n = try answer.withUnsafeBytes { p in
                    try SystemCall.send(s.fd, UnsafeRawBufferPointer(rebasing: p[s.sent...])).value
                }
                guard let n else { return }  // the socket is full: wait for room
                s.sent += n
            } catch {
                return finish(&s)  // the client left
            }
        }
        // Answered: no more from this side; read what the client still sends until it closes.
        Glibc.shutdown(s.fd, Int32(SHUT_WR))
        s.draining = true
    }

    private func finish(_ s: inout Session) {
        SystemCall.close(s.fd)
        s = Session(fd: -1, deadline: s.deadline)
    }

    private func answer(to request: HTTPRequestHead.Request) -> [UInt8] {
        switch request {
        case .metrics(let withBody):
            var body: [UInt8] = []
            registry.emit(into: &body)
            return Self.response("200 OK", contentType: HTTPRequestHead.exposition, body: body, includeBody: withBody)
        case .notFound:
            return Self.response("404 Not Found", body: Array("not found: the metrics are at /metrics\n".utf8))
        case .methodNotAllowed:
            return Self.response("405 Method Not Allowed", extra: "Allow: GET, HEAD\r\n", body: Array("use GET\n".utf8))
        case .badRequest:
            return Self.response("400 Bad Request", body: Array("not an HTTP request\n".utf8))
        }
    }

    static func response(
        _ status: String,
        contentType: String = "text/plain; charset=utf-8",
        extra: String = "",
        body: [UInt8],
        includeBody: Bool = true
    ) -> [UInt8] {
        let head =
            "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n\(extra)Connection: close\r\n\r\n"
        return Array(head.utf8) + (includeBody ? body : [])
    }

    /// Milliseconds from `now` to `deadline` for `poll`, rounded up (at least 0, at most an hour).
    static func milliseconds(until deadline: ContinuousClock.Instant, from now: ContinuousClock.Instant) -> Int32 {
        let left = deadline - now
        guard left > .zero else { return 0 }
        let (seconds, attoseconds) = left.components
        return Int32(min(3_600_000, seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1))
    }
}

/// The part of HTTP/1.x the endpoint reads: the request line of a request head.
enum HTTPRequestHead {
    /// The most bytes of request head read (request line and headers).
    static let maxSize = 8192
    /// Prometheus's text exposition format.
    static let exposition = "text/plain; version=0.0.4; charset=utf-8"

    enum Request: Equatable {
        case metrics(withBody: Bool)
        case notFound
        case methodNotAllowed
        case badRequest
    }

    /// Where the head ends (after its blank line), or `nil` while it has not.
    static func end(of bytes: [UInt8]) -> Int? {
        var i = 0
        while i < bytes.count {
            if bytes[i] == 10 {
                // "\n\n" or "\n\r\n": a blank line.
                if i + 1 < bytes.count && bytes[i + 1] == 10 { return i + 2 }
                if i + 2 < bytes.count && bytes[i + 1] == 13 && bytes[i + 2] == 10 { return i + 3 }
            }
            i += 1
        }
        return nil
    }

    /// What a request head asks for.
    static func parse(_ head: [UInt8]) -> Request {
        guard let lineEnd = head.firstIndex(of: 10) else { return .badRequest }
        var line = head[..<lineEnd]
        if line.last == 13 { line = line.dropLast() }
        let parts = line.split(separator: 32, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[2].starts(with: Array("HTTP/1.".utf8)), parts[2].count == 8,
            let method = String(validating: parts[0], as: UTF8.self),
            let target = String(validating: parts[1], as: UTF8.self), target.hasPrefix("/")
        else { return .badRequest }
        guard method == "GET" || method == "HEAD" else { return .methodNotAllowed }
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        return path == "/metrics" ? .metrics(withBody: method == "GET") : .notFound
    }
}
