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
    /// The active tracer, or `nil` when it is the no-op one.
    package static var tracer: (any Tracer)? {
        let t = InstrumentationSystem.tracer
        return t is NoOpTracer ? nil : t
    }

    /// Starts the span of a call named `operation` on the pool `pool`, when the caller is inside a span
    /// (its context is current) and a tracer is active.
    ///
    /// The current context is read first: it is one task-local read, where finding the tracer costs
    /// dynamic casts — 9 % of an `apply`'s instructions in the parent when nothing is traced.
    static func start(_ operation: String, pool: String, items: Int? = nil) -> CallTrace? {
        guard let current = InstrumentationContext.current, let tracer else { return nil }
        let span = tracer.startSpan(operation, context: current, ofKind: .producer)
        span.attributes["mp.pool.name"] = pool
        if let items { span.attributes["mp.pool.items"] = items }
        var headers: [String: String] = [:]
        tracer.inject(span.context, into: &headers, using: HeadersInjector())
        return CallTrace(span: span, carrier: encode(headers))
    }

    /// In a worker: runs `body` (one unit) inside a span that continues the context in `carrier`.
    static func runUnit(_ carrier: UnsafeRawBufferPointer, unit: UInt64, count: Int, pid: Int32, _ body: () -> Void) {
        guard let tracer, let headers = decode(carrier) else { return body() }
        var context = InstrumentationContext.topLevel
        tracer.extract(headers, into: &context, using: HeadersExtractor())
        let span = tracer.startSpan("ProcessPool.task", context: context, ofKind: .consumer)
        span.attributes["mp.pool.unit"] = Int(truncatingIfNeeded: unit)
        span.attributes["mp.pool.items"] = count
        span.attributes["process.pid"] = Int(pid)
        InstrumentationContext.$current.withValue(span.context) { body() }
        span.end()
    }

    /// `headers` as bytes: a count, then each key and value (a 16-bit length and UTF-8).
    /// A header longer than 65,535 bytes (no tracer's) is left out rather than cut; past 255 headers, the
    /// rest are.
    package static func encode(_ headers: [String: String]) -> [UInt8] {
        let kept = headers.sorted(by: { $0.key < $1.key })
            .filter { $0.key.utf8.count <= 0xffff && $0.value.utf8.count <= 0xffff }
            .prefix(255)
        var out: [UInt8] = [UInt8(kept.count)]
        for (key, value) in kept {
            for s in [key, value] {
                let b = Array(s.utf8)
                out += [UInt8(truncatingIfNeeded: b.count >> 8), UInt8(truncatingIfNeeded: b.count)]
                out += b
            }
        }
        return out
    }

    /// The headers in `bytes`; `nil` if they are malformed (a frame the parent never sends).
    package static func decode(_ bytes: UnsafeRawBufferPointer) -> [String: String]? {
        guard let n = bytes.first else { return nil }
        var headers: [String: String] = [:]
        var at = 1
        func string() -> String? {
            guard at + 2 <= bytes.count else { return nil }
            let length = Int(bytes[at]) << 8 | Int(bytes[at + 1])
            at += 2
            guard at + length <= bytes.count else { return nil }
            defer { at += length }
            return String(validating: UnsafeRawBufferPointer(rebasing: bytes[at..<(at + length)]), as: UTF8.self)
        }
        for _ in 0..<n {
            guard let key = string(), let value = string() else { return nil }
            headers[key] = value
        }
        return at == bytes.count ? headers : nil
    }
}

package struct HeadersInjector: Injector {
    package init() {}
    package func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}

package struct HeadersExtractor: Extractor {
    package init() {}
    package func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}
