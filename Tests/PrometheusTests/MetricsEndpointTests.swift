import Foundation
import Glibc
import MultiprocessingJobQueue
import MultiprocessingNetwork
import MultiprocessingPrometheus
import MultiprocessingSQL
import MultiprocessingTestSupport
import Prometheus
import Testing

/// A raw HTTP exchange with 127.0.0.1:`port`: sends `request`, reads until the server closes (30 s at
/// most); the status line, the headers and the body.
func exchange(_ port: UInt16, _ request: String) throws -> (status: String, headers: [String], body: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard rc == 0 else { throw POSIXError(.ECONNREFUSED) }
    var timeout = timeval(tv_sec: 30, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let bytes = Array(request.utf8)
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var got: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        got += buf[0..<n]
    }
    let text = String(decoding: got, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { return (text, [], "") }
    let head = text[..<split.lowerBound].components(separatedBy: "\r\n")
    return (head.first ?? "", Array(head.dropFirst()), String(text[split.upperBound...]))
}

/// One sample of the text exposition format: `name{labels} value`.
struct Sample: Equatable {
    let name: String
    let labels: String
    let value: Double
}

/// Parses Prometheus's text exposition format (0.0.4) strictly: `# TYPE` and `# HELP` comments, samples
/// with a valid metric name, optional labels and a number. Records an issue for any other line.
func parseExposition(_ body: String) -> (types: [String: String], samples: [Sample]) {
    var types: [String: String] = [:]
    var samples: [Sample] = []
    let name = try! Regex(#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$"#)
    for line in body.split(separator: "\n") {
        if line.hasPrefix("# TYPE ") {
            let parts = line.split(separator: " ")
            #expect(parts.count == 4, "\(line)")
            if parts.count == 4 { types[String(parts[2])] = String(parts[3]) }
            continue
        }
        if line.hasPrefix("# HELP ") { continue }
        guard let m = try? name.wholeMatch(in: String(line)), let value = Double(String(m.output[3].substring!))
        else {
            Issue.record("not a sample: \(line)")
            continue
        }
        samples.append(
            Sample(name: String(m.output[1].substring!), labels: String(m.output[2].substring ?? ""), value: value)
        )
    }
    return (types, samples)
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct MetricsEndpointTests {
    @Test func itServesTheRegistryAndRefusesWhatIsNotAScrape() throws {
        let registry = PrometheusCollectorRegistry()
        let counter = registry.makeCounter(
            descriptor: MetricNameDescriptor(metricName: "test_things", unitName: "total", helpText: "Things counted."),
            labels: [("kind", "a")]
        )
        counter.increment(by: Int64(3))
        let endpoint = try MetricsEndpoint(registry: registry)
        defer { endpoint.close() }
        guard case .tcp(_, let port) = endpoint.address else {
            Issue.record("not TCP")
            return
        }

        let ok = try exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(ok.status == "HTTP/1.1 200 OK")
        #expect(ok.headers.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"))
        #expect(ok.headers.contains("Content-Length: \(ok.body.utf8.count)"))
        #expect(
            parseExposition(ok.body).samples.contains(
                Sample(name: "test_things_total", labels: #"{kind="a"}"#, value: 3)
            )
        )
        counter.increment()
        #expect(parseExposition(try exchange(port, "GET /metrics?x=1 HTTP/1.0\n\n").body).samples.first?.value == 4)

        let head = try exchange(port, "HEAD /metrics HTTP/1.1\r\n\r\n")
        #expect(head.status == "HTTP/1.1 200 OK")
        #expect(head.body.isEmpty)
        #expect(
            try exchange(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").status
                == "HTTP/1.1 405 Method Not Allowed"
        )
        #expect(try exchange(port, "GET / HTTP/1.1\r\n\r\n").status == "HTTP/1.1 404 Not Found")
        #expect(try exchange(port, "hello\r\n\r\n").status == "HTTP/1.1 400 Bad Request")
        let huge = "GET /metrics HTTP/1.1\r\n" + String(repeating: "X-Filler: 0123456789\r\n", count: 1000) + "\r\n"
        #expect(try exchange(port, huge).status == "HTTP/1.1 431 Request Header Fields Too Large")
    }

    /// A client that connects and says nothing, and one that sends half a request (each held for the whole
    /// minute of the request timeout), hold up no other: the scrape that follows is answered meanwhile.
    @Test func aSilentClientDoesNotStopTheNextScrape() throws {
        let registry = PrometheusCollectorRegistry()
        registry.makeGauge(
            descriptor: MetricNameDescriptor(metricName: "test", unitName: "level", helpText: "A level.")
        ).set(to: Double(7))
        let endpoint = try MetricsEndpoint(registry: registry, requestTimeout: .seconds(60))
        defer { endpoint.close() }
        guard case .tcp(_, let port) = endpoint.address else {
            Issue.record("not TCP")
            return
        }
        let silent = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(silent) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(silent, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        #expect(connected == 0)
        let slow = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(slow) }
        let slowConnected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(slow, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        #expect(slowConnected == 0)
        _ = "GET /met".withCString { send(slow, $0, 8, Int32(MSG_NOSIGNAL)) }
        let ok = try exchange(port, "GET /metrics HTTP/1.1\r\n\r\n")
        #expect(ok.status == "HTTP/1.1 200 OK")
        #expect(parseExposition(ok.body).samples == [Sample(name: "test_level", labels: "", value: 7)])
    }

    /// An endpoint dropped without `close()` stops too (its thread holds the server, not the endpoint).
    @Test func aDroppedEndpointStopsListening() throws {
        var port: UInt16 = 0
        do {
            let endpoint = try MetricsEndpoint(registry: PrometheusCollectorRegistry())
            guard case .tcp(_, let p) = endpoint.address else { return }
            port = p
            #expect(try exchange(port, "GET /metrics HTTP/1.1\r\n\r\n").status == "HTTP/1.1 200 OK")
        }
        #expect(throws: (any Error).self) { _ = try exchange(port, "GET /metrics HTTP/1.1\r\n\r\n") }
    }

    @Test func closingStopsListening() throws {
        let endpoint = try MetricsEndpoint(registry: PrometheusCollectorRegistry())
        guard case .tcp(_, let port) = endpoint.address else {
            Issue.record("not TCP")
            return
        }
        endpoint.close()
        #expect(throws: (any Error).self) { _ = try exchange(port, "GET /metrics HTTP/1.1\r\n\r\n") }
    }
}

/// `mp queue worker --metrics-port 0`: a worker of the demo's queue serving its metrics while it runs
/// jobs. The scrape parses as Prometheus's format, the library's names follow its conventions, and the
/// counters move with the work.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct QueueWorkerMetricsTests {
    @Test func aWorkersMetricsAreScrapedAndMoveWithItsJobs() throws {
        guard let mp = builtExecutable("mp") else { return }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mp-metrics-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = "sqlite:\(dir.path)/jobs.db"

        let worker = Foundation.Process()
        worker.executableURL = mp
        worker.arguments = ["queue", "worker", "--database", url, "--concurrency", "2", "--metrics-port", "0"]
        let out = Pipe()
        worker.standardOutput = out
        worker.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try worker.run()
        defer {
            worker.terminate()
            worker.waitUntilExit()
        }
        let line = out.fileHandleForReading.availableLine()  // metrics at http://127.0.0.1:P/metrics
        let port = try #require(
            line.split(separator: ":").last.flatMap { UInt16($0.prefix { $0.isNumber }) },
            "the worker said: \(line)"
        )

        func scrape() throws -> (types: [String: String], samples: [Sample]) {
            let r = try exchange(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            #expect(r.status == "HTTP/1.1 200 OK")
            return parseExposition(r.body)
        }
        func value(_ s: [Sample], _ name: String) -> Double { s.filter { $0.name == name }.map(\.value).reduce(0, +) }

        let enqueue = Foundation.Process()
        enqueue.executableURL = mp
        enqueue.arguments = ["queue", "enqueue", "--database", url, "--count", "30"]
        enqueue.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try enqueue.run()
        enqueue.waitUntilExit()
        #expect(enqueue.terminationStatus == 0)

        try eventually("the scrape counts 30 completed jobs") {
            value(try scrape().samples, "mp_queue_jobs_completed_total") == 30
        }
        let (types, samples) = try scrape()
        #expect(value(samples, "mp_queue_jobs_claimed_total") == 30)
        #expect(value(samples, "mp_pool_items_succeeded_total") == 30)
        #expect(value(samples, "mp_pool_worker_starts_total") >= 2)
        #expect(value(samples, "mp_queue_job_duration_seconds_count") == 30)
        // Prometheus's conventions: counters end in _total, durations are histograms in seconds, and every
        // metric is the library's (mp_) with a known type.
        #expect(!types.isEmpty)
        for (name, type) in types {
            #expect(name.hasPrefix("mp_"), "\(name)")
            switch type {
            case "counter": #expect(name.hasSuffix("_total"), "\(name)")
            case "histogram": #expect(name.hasSuffix("_seconds"), "\(name)")
            case "gauge": #expect(!name.hasSuffix("_total"), "\(name)")
            default: Issue.record("\(name): unexpected type \(type)")
            }
        }
    }
}
