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
/// It serves one request per connection (`Connection: close`), each within ``requestTimeout``: a client
/// that sends nothing, sends too much (over 8 KiB of request head) or stops reading is disconnected, and
/// the next one served. `HEAD` is answered as `GET` without the body; other methods get 405, other paths
/// 404, a request that is not HTTP 400.
public final class MetricsEndpoint: Sendable {
    /// The address it listens on (with the actual port when 0 was asked for).
    public let address: Address
    /// The registry whose metrics it serves.
    public let registry: PrometheusCollectorRegistry
    /// The longest one request may take, from its connection's accept to the end of the answer.
    public let requestTimeout: Duration

    private let listener: Listener
    private let stopFd: Int32
    private let thread: TrackedMutex<OSThread?>
    private let stopped = Threading.Event()
    private let closing = Atomic<Bool>(false)
    private let logger: Logger

    /// Starts serving `registry` on `address` (default: a free port on 127.0.0.1).
    /// - Parameters:
    ///   - registry: the metrics to serve (the one a `PrometheusMetricsFactory` was bootstrapped with).
    ///   - address: where to listen (TCP port 0: a free port; see ``address``).
    ///   - requestTimeout: the longest a request may take (default 5 s).
    ///   - logger: where failures to serve are reported (default: nowhere).
    /// - Throws: when it cannot listen on `address`, or start its thread.
    public init(
        registry: PrometheusCollectorRegistry,
        address: Address = .tcp(host: "127.0.0.1", port: 0),
        requestTimeout: Duration = .seconds(5),
        logger: Logger = Logger(label: "swift-multiprocessing.metrics", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
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
        thread = TrackedMutex(nil)
        let t = OSThread(name: "mp-metrics", daemon: true) { [self] in serve() }
        thread.withLock { $0 = t }
        do {
            try t.start()
        } catch {
            listener.close()
            SystemCall.close(fd)
            throw error
        }
        logger.info("metrics endpoint listening", metadata: ["address": "\(self.address)"])
    }

    /// Makes swift-prometheus the program's metrics backend (`MetricsSystem.bootstrap`, which a program
    /// does once) and serves its registry on `address`.
    /// - Parameters:
    ///   - address: where to listen (default: a free port on 127.0.0.1).
    ///   - logger: where failures to serve are reported (default: nowhere).
    /// - Returns: the endpoint, serving; its ``registry`` is the backend's.
    public static func bootstrap(
        address: Address = .tcp(host: "127.0.0.1", port: 0),
        logger: Logger = Logger(label: "swift-multiprocessing.metrics", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws -> MetricsEndpoint {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return try MetricsEndpoint(registry: registry, address: address, logger: logger)
    }

    deinit { close() }

    /// Stops serving: the listener closes and the thread ends (a request being answered is cut short).
    public func close() {
        guard closing.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(stopFd, $0.baseAddress, 8) }
        _ = stopped.wait(timeout: .seconds(10))
        SystemCall.close(stopFd)
    }

    // MARK: - the thread

    private func serve() {
        defer {
            listener.close()
            stopped.set()
        }
        while true {
            var fds = [
                pollfd(fd: listener.fileDescriptor, events: Int16(POLLIN), revents: 0),
                pollfd(fd: stopFd, events: Int16(POLLIN), revents: 0),
            ]
            guard (try? SystemCall.poll(&fds, timeoutMs: -1)) != nil else { return }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            let accepted: Int
            do {
                guard let fd = try SystemCall.accept(listener.fileDescriptor).value else { continue }
                accepted = fd
            } catch {
                // Out of descriptors and the like: the client waits in the backlog; do not spin on it.
                logger.warning("metrics endpoint cannot accept", metadata: ["error": "\(error)"])
                var fds = [pollfd(fd: stopFd, events: Int16(POLLIN), revents: 0)]
                if (try? SystemCall.poll(&fds, timeoutMs: 100)) ?? 0 > 0 { return }
                continue
            }
            let client = Int32(accepted)
            answer(client)
            SystemCall.close(client)
        }
    }

    /// Reads one request from `fd` and answers it, within ``requestTimeout``.
    private func answer(_ fd: Int32) {
        let deadline = ContinuousClock.now + requestTimeout
        var head: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while HTTPRequestHead.end(of: head) == nil {
            guard head.count <= HTTPRequestHead.maxSize else {
                return respond(
                    fd,
                    status: "431 Request Header Fields Too Large",
                    body: "request head too large\n",
                    deadline
                )
            }
            guard wait(fd, for: POLLIN, until: deadline) else { return }
            let n: Int
            do {
                guard let got = try buffer.withUnsafeMutableBytes({ try SystemCall.recv(fd, $0).value }) else {
                    continue
                }
                n = got
            } catch {
                return
            }
            if n == 0 { return }  // the client left before its request ended
            head += buffer[0..<n]
        }
        switch HTTPRequestHead.parse(head) {
        case .metrics(let withBody):
            var body: [UInt8] = []
            registry.emit(into: &body)
            respond(
                fd,
                status: "200 OK",
                contentType: HTTPRequestHead.exposition,
                body: body,
                includeBody: withBody,
                deadline
            )
        case .notFound:
            respond(fd, status: "404 Not Found", body: "not found: the metrics are at /metrics\n", deadline)
        case .methodNotAllowed:
            respond(fd, status: "405 Method Not Allowed", extra: "Allow: GET, HEAD\r\n", body: "use GET\n", deadline)
        case .badRequest:
            respond(fd, status: "400 Bad Request", body: "not an HTTP request\n", deadline)
        }
    }

    private func respond(
        _ fd: Int32,
        status: String,
        contentType: String = "text/plain; charset=utf-8",
        extra: String = "",
        body: String,
        _ deadline: ContinuousClock.Instant
    ) {
        respond(
            fd,
            status: status,
            contentType: contentType,
            extra: extra,
            body: Array(body.utf8),
            includeBody: true,
            deadline
        )
    }

    private func respond(
        _ fd: Int32,
        status: String,
        contentType: String,
        extra: String = "",
        body: [UInt8],
        includeBody: Bool,
        _ deadline: ContinuousClock.Instant
    ) {
        let head =
            "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n\(extra)Connection: close\r\n\r\n"
        var out = Array(head.utf8)
        if includeBody { out += body }
        var sent = 0
        while sent < out.count {
            guard wait(fd, for: POLLOUT, until: deadline) else { return }
            do {
                let n = try out.withUnsafeBytes { p in
                    try SystemCall.send(fd, UnsafeRawBufferPointer(rebasing: p[sent...])).value
                }
                sent += n ?? 0
            } catch {
                return  // the client left
            }
        }
    }

    /// Waits until `fd` is ready for `event`, or `deadline` passes, or the endpoint closes.
    private func wait(_ fd: Int32, for event: Int32, until deadline: ContinuousClock.Instant) -> Bool {
        let left = deadline - ContinuousClock.now
        guard left > .zero else { return false }
        let ms = Int32(
            clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1
        )
        var fds = [
            pollfd(fd: fd, events: Int16(event), revents: 0),
            pollfd(fd: stopFd, events: Int16(POLLIN), revents: 0),
        ]
        guard let ready = try? SystemCall.poll(&fds, timeoutMs: ms), ready > 0, fds[1].revents == 0 else {
            return false
        }
        return fds[0].revents != 0
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
