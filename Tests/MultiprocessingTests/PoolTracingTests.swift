import Glibc
import InMemoryTracing
import Testing
import Tracing

@testable import Multiprocessing

/// Random ids: a worker's tracer must not mint the same ids as the parent's by counting from 1.
let randomIDs = InMemoryTracer.IDGenerator(
    nextTraceID: { String(UInt64.random(in: 1...UInt64.max), radix: 16) },
    nextSpanID: { String(UInt64.random(in: 1...UInt64.max), radix: 16) }
)

/// The pool initializer of the tracing tests: a tracer in each worker (as a program's `main.swift` would
/// bootstrap one before `bootstrap()`).
struct BootstrapInMemoryTracer: Job {
    func run() { InstrumentationSystem.bootstrap(InMemoryTracer(idGenerator: randomIDs)) }
}

/// The trace the item runs in, as the worker sees it: `traceID parentSpanID`, or `none`.
struct CurrentTrace: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> String {
        guard let c = InstrumentationContext.current?.inMemorySpanContext else { return "none" }
        return "\(c.traceID) \(c.parentSpanID ?? "-")"
    }
}

/// A pool call made inside a span continues the trace in the worker processes: the call's span is a
/// child of the caller's, and each unit runs in a worker's span whose parent is the call's span, in the
/// same trace. Without a tracer nothing is carried.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct PoolTracingTests {
    @Test func aCallsTraceContinuesInTheWorkers() throws {
        let tracer = InMemoryTracer(idGenerator: randomIDs)
        let pool = try ProcessPool(workers: 2, initializer: BootstrapInMemoryTracer())
        defer {
            pool.close()
            _ = try? pool.join(timeout: .seconds(30))
        }
        try withTracer(tracer) {
            try withSpan("request") { request in
                let request = request.context.inMemorySpanContext!
                let seen = try pool.map(CurrentTrace(), Array(0..<6), chunksize: 2)
                let single = try pool.submit(CurrentTrace(), 0).get(timeout: .seconds(60))
                // The pool's spans, ended when their calls were.
                let finished = tracer.finishedSpans
                let map = try #require(finished.first { $0.operationName == "ProcessPool.map" })
                let submit = try #require(finished.first { $0.operationName == "ProcessPool.submit" })
                #expect(map.spanContext.traceID == request.traceID)
                #expect(map.spanContext.parentSpanID == request.spanID)
                #expect(map.kind == .producer)
                #expect(seen == Array(repeating: "\(request.traceID) \(map.spanContext.spanID)", count: 6))
                #expect(single == "\(request.traceID) \(submit.spanContext.spanID)")
            }
        }
    }

    /// Outside any span a call starts no trace (finding the tracer costs more than a tiny task's round
    /// trip): the worker sees no context even with a tracer active in the parent.
    @Test func aCallOutsideASpanIsNotTraced() throws {
        let tracer = InMemoryTracer(idGenerator: randomIDs)
        let pool = try ProcessPool(workers: 1, initializer: BootstrapInMemoryTracer())
        defer {
            pool.close()
            _ = try? pool.join(timeout: .seconds(30))
        }
        let seen = try withTracer(tracer) { () throws -> [String] in try pool.map(CurrentTrace(), [1]) }
        #expect(seen == ["none"])
        #expect(tracer.finishedSpans.isEmpty)
    }

    @Test func withoutATracerNothingIsCarried() throws {
        let pool = try ProcessPool(workers: 1, initializer: BootstrapInMemoryTracer())
        defer {
            pool.close()
            _ = try? pool.join(timeout: .seconds(30))
        }
        // Inside a span, but the test process has no tracer: the workers (which have one) see no context.
        let seen = try withSpan("request") { _ throws -> [String] in try pool.map(CurrentTrace(), [1, 2]) }
        #expect(seen == ["none", "none"])
    }

    @Test func aFailedItemMarksTheCallsSpan() throws {
        let tracer = InMemoryTracer(idGenerator: randomIDs)
        let pool = try ProcessPool(workers: 1)
        defer {
            pool.close()
            _ = try? pool.join(timeout: .seconds(30))
        }
        try withTracer(tracer) {
            try withSpan("request") { _ in
                let results = try pool.mapResults(FailOnOdd(), [0, 1, 2])
                #expect(results.filter { (try? $0.get()) == nil }.count == 1)
                let map = try #require(tracer.finishedSpans.first { $0.operationName == "ProcessPool.map" })
                #expect(map.status?.code == .error)
            }
        }
    }

    /// A lazy map whose input cannot be encoded: the feeder ends the call at the failing item, and the
    /// call's span ends with it (an error status), not never.
    @Test func aCallWhoseFeederFailsEndsItsSpan() throws {
        let tracer = InMemoryTracer(idGenerator: randomIDs)
        let pool = try ProcessPool(workers: 1)
        defer {
            pool.close()
            _ = try? pool.join(timeout: .seconds(30))
        }
        try withTracer(tracer) {
            try withSpan("request") { _ in
                // More items than may be in flight: a feeder thread cuts them, and reports the failure.
                let inputs = (0..<5).map { FailsToEncodeAt3(n: $0) }
                let results = try pool.imap(UnwrapNumber(), inputs, chunksize: 1, maxInFlight: 2)
                var failed = false
                while true {
                    do {
                        guard try results.next(timeout: .seconds(60)) != nil else { break }
                    } catch {
                        failed = true
                    }
                }
                #expect(failed)
                let map = try #require(tracer.finishedSpans.first { $0.operationName == "ProcessPool.map" })
                #expect(map.status?.code == .error)
            }
        }
    }

    /// The tracer the pool finds (cached by the instrument's type) is always the current scope's: a
    /// different tracer of the same type, one of another type, a multiplexed one, the no-op one, none.
    @Test func theTracerFoundIsTheCurrentScopes() {
        func spanNames(_ tracer: InMemoryTracer) -> [String] { tracer.finishedSpans.map(\.operationName) }
        func startOne(_ name: String) { PoolTracing.tracer?.startAnySpan(name, context: .topLevel).end() }
        #expect(PoolTracing.tracer == nil)
        let a = InMemoryTracer()
        let b = InMemoryTracer()
        withTracer(a) { startOne("a") }
        withTracer(b) { startOne("b") }
        withTracer(NoOpTracer()) { #expect(PoolTracing.tracer == nil) }
        withTracer(b) { startOne("b2") }
        withTracer(a) { startOne("a2") }
        #expect(PoolTracing.tracer == nil)
        #expect(spanNames(a) == ["a", "a2"])
        #expect(spanNames(b) == ["b", "b2"])
    }

    /// A worker reads the tracer's header from the task frame's bytes as they are.
    @Test func encodedHeadersAreReadInPlace() throws {
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        let bytes = PoolTracing.encode(["traceparent": value, "tracestate": "a=b"])
        let headers = try #require(bytes.withUnsafeBytes { EncodedHeaders($0) })
        #expect(EncodedHeadersExtractor().extract(key: "traceparent", from: headers) == value)
        #expect(EncodedHeadersExtractor().extract(key: "tracestate", from: headers) == "a=b")
        #expect(EncodedHeadersExtractor().extract(key: "trace", from: headers) == nil)
        #expect(Array(bytes.dropLast()).withUnsafeBytes { EncodedHeaders($0) } == nil)
        #expect((bytes + [0]).withUnsafeBytes { EncodedHeaders($0) } == nil)
        #expect([UInt8]([1, 0, 9]).withUnsafeBytes { EncodedHeaders($0) } == nil)
        #expect([UInt8]().withUnsafeBytes { EncodedHeaders($0) } == nil)
    }

    @Test func headersSurviveTheirEncodingAndMalformedOnesAreRefused() {
        let headers = ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "a=b"]
        let bytes = PoolTracing.encode(headers)
        #expect(bytes.withUnsafeBytes { PoolTracing.decode($0) } == headers)
        #expect(Array(bytes.dropLast()).withUnsafeBytes { PoolTracing.decode($0) } == nil)
        #expect([UInt8]([1, 0, 9]).withUnsafeBytes { PoolTracing.decode($0) } == nil)
        // Past 255 headers the rest are left out, and a header too long for its length field is left out
        // rather than cut (mid-character): what is kept still decodes.
        var many = Dictionary(uniqueKeysWithValues: (0..<300).map { ("k\($0)", "v") })
        many["long"] = String(repeating: "é", count: 40_000)
        let kept = PoolTracing.encode(many).withUnsafeBytes { PoolTracing.decode($0) }
        #expect(kept?.count == 255)
        #expect(kept?["long"] == nil)
    }
}

/// An input whose encoding fails at 3 (the feeder's error).
struct FailsToEncodeAt3: Codable, Sendable {
    struct Refused: Error {}
    let n: Int
    init(n: Int) { self.n = n }
    init(from decoder: any Decoder) throws { n = try Int(from: decoder) }
    func encode(to encoder: any Encoder) throws {
        if n == 3 { throw Refused() }
        try n.encode(to: encoder)
    }
}

/// Answers the input's number.
struct UnwrapNumber: SyncTaskFunction {
    func callAsFunction(_ x: FailsToEncodeAt3) -> Int { x.n }
}

/// Throws for odd numbers.
struct FailOnOdd: SyncTaskFunction {
    struct Odd: Error {}
    func callAsFunction(_ x: Int) throws -> Int {
        if x % 2 == 1 { throw Odd() }
        return x
    }
}
