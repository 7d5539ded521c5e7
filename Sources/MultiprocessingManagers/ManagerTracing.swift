import Multiprocessing
import Tracing

/// Spans of manager calls (swift-distributed-tracing's API; the program chooses the tracer).
///
/// A proxy's method call made inside a span, with a tracer active, is a client span named
/// `<typeid>.<method>` (for example `dict.__setitem__`), with `rpc.system` `python-multiprocessing`,
/// `rpc.service` (the typeid), `rpc.method` and `server.address`, ended with the reply; a failure (the
/// server's exception, a timeout, a lost connection) sets its error status. The wire protocol is CPython's,
/// which has no place for a trace context, so the server's side is not part of the trace.
enum ManagerTracing {
    static func start(typeid: String, method: String, server: @autoclosure () -> String) -> (any Span)? {
        guard let current = InstrumentationContext.current, let tracer = PoolTracing.tracer else { return nil }
        let span = tracer.startSpan("\(typeid).\(method)", context: current, ofKind: .client)
        span.attributes["rpc.system"] = "python-multiprocessing"
        span.attributes["rpc.service"] = typeid
        span.attributes["rpc.method"] = method
        span.attributes["server.address"] = server()
        return span
    }

    static func end(_ span: (any Span)?, failure: (any Error)? = nil) {
        guard let span else { return }
        if let failure {
            span.recordError(failure)
            span.setStatus(SpanStatus(code: .error, message: "\(failure)"))
        }
        span.end()
    }
}
