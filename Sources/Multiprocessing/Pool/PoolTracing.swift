import Synchronization
package import Tracing

/// A pool call's span, and its context as the program's tracer injects it (for example W3C
/// `traceparent`), which every unit of the call carries to the worker that runs it.
final class CallTrace: Sendable {
    let span: any Span
    /// The injected headers, encoded for the task frame (``PoolTracing/encode(_:)``).
    let carrier: [UInt8]
    private let ended = Atomic<Bool>(false)

    init(span: any Span, carrier: [UInt8]) {
        self.span = span
        self.carrier = carrier
    }

    /// Ends the span once (later calls do nothing); `failure` sets its status to error.
    func end(failure: String? = nil, error: (any Error)? = nil) {
        guard ended.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        if let error { span.recordError(error) }
        if let failure { span.setStatus(SpanStatus(code: .error, message: failure)) }
        span.end()
    }
}

/// Traces of pool calls, with swift-distributed-tracing: the library uses the tracing API only, and the
/// program chooses the tracer (`InstrumentationSystem.bootstrap`, for example with swift-otel).
///
/// A call (`submit`, `apply`, `map`, `imap`…) made inside a span (the caller's context is current) while a
/// tracer is active gets a span, `ProcessPool.<call>` (kind producer), a child of the caller's span. Its context travels in each of its task frames;
/// the worker that runs a unit continues the trace with a span `ProcessPool.task` (kind consumer) around
/// the unit, and the user's function runs with that span as its current context, so spans it starts are
/// its children. The worker process needs a tracer of its own to export its spans: bootstrap it before
/// `bootstrap()` in `main.swift` (workers run `main.swift` to there), or in the pool's initializer.
/// With no tracer (the default), nothing is recorded and the frames carry nothing.
package enum PoolTracing {
    /// The active tracer, or `nil` when it is the no-op one: swift-distributed-tracing's
    /// `InstrumentationSystem.tracer` (the innermost `withTracer` scope's, else the bootstrapped one), found
    /// without its dynamic casts to protocol types on every call. They cost 3,600 instructions of a traced
    /// `apply`'s parent and as many in the worker (`scripts/instruction-counts --observe`); the instrument's
    /// dynamic type is compared with the one seen last, and the cast is then to that concrete type.
    package static var tracer: (any Tracer)? {
        let instrument = InstrumentationSystem.instrument
        let type = ObjectIdentifier(Swift.type(of: instrument))
        if let seen = lastSeen.withLock({ $0 }), seen.type == type { return seen.tracer(instrument) }
        let opener = TracerOpener(instrument)
        lastSeen.withLock { $0 = opener }
        return opener.tracer(instrument)
    }

    /// The instrument type `tracer` saw last, and how to find the tracer in an instrument of that type.
    private static let lastSeen = Mutex<TracerOpener?>(nil)

    /// How to find the tracer in instruments of one dynamic type.
    private struct TracerOpener: Sendable {
        let type: ObjectIdentifier
        let tracer: @Sendable (any Instrument) -> (any Tracer)?

        init(_ instrument: any Instrument) {
            type = ObjectIdentifier(Swift.type(of: instrument))
            if instrument is MultiplexInstrument {
                // Its members are not in its type: ask each time.
                tracer = { _ in
                    let t = InstrumentationSystem.tracer
                    return t is NoOpTracer ? nil : t
                }
            } else if let t = instrument as? any Tracer, !(t is NoOpTracer) {
                tracer = Self.opener(t)
            } else {
                tracer = { _ in nil }
            }
        }

        private static func opener<T: Tracer>(_: T) -> @Sendable (any Instrument) -> (any Tracer)? {
            { ($0 as? T).map { $0 as any Tracer } }
        }
    }

    /// Starts the span of a call named `operation` on the pool `pool`, when the caller is inside a span
    /// (its context is current) and a tracer is active.
    ///
    /// The current context is read first: it is one task-local read, where finding the tracer costs
    /// dynamic casts — 9 % of an `apply`'s instructions in the parent when nothing is traced.
    static func start(_ operation: String, pool: String, items: Int? = nil) -> CallTrace? {
        guard let current = InstrumentationContext.current, let tracer else { return nil }
        let span = tracer.startSpan(operation, context: current, ofKind: .producer)
        // One update, not one per attribute: each `attributes[...] =` on a span reads, copies and writes
        // back all of them.
        span.updateAttributes {
            $0.reserveCapacity($0.count + 2)
            $0.set("mp.pool.name", value: .string(pool))
            if let items { $0.set("mp.pool.items", value: .int64(Int64(items))) }
        }
        var headers: [String: String] = [:]
        tracer.inject(span.context, into: &headers, using: HeadersInjector())
        return CallTrace(span: span, carrier: encode(headers))
    }

    /// The worker's tracer, once one is found: a worker's tracer is bootstrapped (once, in `main.swift` or
    /// the pool's initializer), and the worker's frame loop runs outside any `withTracer` scope. Read and
    /// written only by that loop's thread.
    nonisolated(unsafe) private static var foundWorkerTracer: (any Tracer)?

    private static var workerTracer: (any Tracer)? {
        if let foundWorkerTracer { return foundWorkerTracer }
        foundWorkerTracer = tracer
        return foundWorkerTracer
    }

    /// In a worker: runs `body` (one unit) inside a span that continues the context in `carrier`.
    static func runUnit(_ carrier: UnsafeRawBufferPointer, unit: UInt64, count: Int, pid: Int32, _ body: () -> Void) {
        guard let tracer = workerTracer, let headers = EncodedHeaders(carrier) else { return body() }
        var context = InstrumentationContext.topLevel
        tracer.extract(headers, into: &context, using: EncodedHeadersExtractor())
        let span = tracer.startSpan("ProcessPool.task", context: context, ofKind: .consumer)
        span.updateAttributes {
            $0.reserveCapacity($0.count + 3)
            $0.set("mp.pool.unit", value: .int64(Int64(truncatingIfNeeded: unit)))
            $0.set("mp.pool.items", value: .int64(Int64(count)))
            $0.set("process.pid", value: .int64(Int64(pid)))
        }
        InstrumentationContext.$current.withValue(span.context) { body() }
        span.end()
    }

    /// `headers` as bytes: a count, then each key and value (a 16-bit length and UTF-8).
    /// A header longer than 65,535 bytes (no tracer's) is left out rather than cut; past 255 headers, the
    /// rest are.
    package static func encode(_ headers: [String: String]) -> [UInt8] {
        var out: [UInt8] = [0]
        out.reserveCapacity(headers.reduce(1) { $0 + 4 + $1.key.utf8.count + $1.value.utf8.count })
        func put(_ key: String, _ value: String) {
            guard out[0] < 255, key.utf8.count <= 0xffff, value.utf8.count <= 0xffff else { return }
            out[0] += 1
            out += [UInt8(truncatingIfNeeded: key.utf8.count >> 8), UInt8(truncatingIfNeeded: key.utf8.count)]
            out.append(contentsOf: key.utf8)
            out += [UInt8(truncatingIfNeeded: value.utf8.count >> 8), UInt8(truncatingIfNeeded: value.utf8.count)]
            out.append(contentsOf: value.utf8)
        }
        // Sorted by key, so that equal headers make equal bytes; a tracer's usual one needs no sort.
        if headers.count == 1, let (key, value) = headers.first {
            put(key, value)
        } else {
            for (key, value) in headers.sorted(by: { $0.key < $1.key }) { put(key, value) }
        }
        return out
    }

    /// The headers in `bytes`; `nil` if they are malformed (a frame the parent never sends) or a key or
    /// value is not UTF-8.
    package static func decode(_ bytes: UnsafeRawBufferPointer) -> [String: String]? {
        var headers: [String: String] = [:]
        let wellFormed = forEachHeader(bytes) { key, value in
            guard let k = String(validating: key, as: UTF8.self), let v = String(validating: value, as: UTF8.self)
            else { return false }
            headers[k] = v
            return true
        }
        return wellFormed ? headers : nil
    }

    /// Calls `visit` with each header's key and value bytes, in order, while it returns `true`. Returns
    /// whether every header was visited and the lengths add up to exactly `bytes` (the one reading of the
    /// format: ``decode(_:)`` and `EncodedHeaders` share it).
    static func forEachHeader(
        _ bytes: UnsafeRawBufferPointer,
        _ visit: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Bool
    ) -> Bool {
        guard let n = bytes.first else { return false }
        var at = 1
        func field() -> UnsafeRawBufferPointer? {
            guard at + 2 <= bytes.count else { return nil }
            let length = Int(bytes[at]) << 8 | Int(bytes[at + 1])
            at += 2
            guard at + length <= bytes.count else { return nil }
            defer { at += length }
            return UnsafeRawBufferPointer(rebasing: bytes[at..<(at + length)])
        }
        for _ in 0..<n {
            guard let key = field(), let value = field(), visit(key, value) else { return false }
        }
        return at == bytes.count
    }
}

package struct HeadersInjector: Injector {
    package init() {}
    package func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}

/// Encoded headers (``PoolTracing/encode(_:)``) read as they are: a worker finds the tracer's header in
/// the task frame's bytes (copied: a carrier is `Sendable`, and a tracer may keep it) without building a
/// dictionary of them.
struct EncodedHeaders: Sendable {
    let bytes: [UInt8]

    /// The headers in `bytes`, or `nil` if their lengths do not add up (a frame the parent never sends).
    /// A value is read as UTF-8 with invalid bytes replaced: the parent sent it from a `String`.
    init?(_ bytes: UnsafeRawBufferPointer) {
        guard PoolTracing.forEachHeader(bytes, { _, _ in true }) else { return nil }
        self.bytes = Array(bytes)
    }

    /// The value of the header `key`, if there is one.
    func value(_ key: String) -> String? {
        var key = key
        return key.withUTF8 { k in
            bytes.withUnsafeBytes { bytes in find(UnsafeRawBufferPointer(k), in: bytes) }
        }
    }

    private func find(_ k: UnsafeRawBufferPointer, in bytes: UnsafeRawBufferPointer) -> String? {
        var found: String?
        _ = PoolTracing.forEachHeader(bytes) { key, value in
            guard key.elementsEqual(k) else { return true }
            found = String(decoding: value, as: UTF8.self)
            return false
        }
        return found
    }
}

struct EncodedHeadersExtractor: Extractor {
    func extract(key: String, from carrier: EncodedHeaders) -> String? { carrier.value(key) }
}

package struct HeadersExtractor: Extractor {
    package init() {}
    package func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}
