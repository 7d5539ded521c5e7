import InMemoryTracing
import MultiprocessingManagers
import MultiprocessingNetwork
import Testing
import Tracing

/// A proxy's calls made inside a span are client spans `<typeid>.<method>`, children of it; a failed
/// call's span says so; outside a span nothing is recorded.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ManagerTracingTests {
    @Test func aProxysCallsAreClientSpans() async throws {
        let server = try ManagerServer(authkey: Array("abc".utf8))
        try server.start()
        defer { server.shutdown() }
        guard case .tcp(_, let port) = server.address else { throw ManagerError(.misuse, "not TCP") }
        let client = try ManagerClient(address: .tcp(host: "127.0.0.1", port: port), authkey: Array("abc".utf8))
        let dict = try client.dict()
        let tracer = InMemoryTracer()
        try dict.set(PythonValue.string("outside"), PythonValue.int(0))  // no tracer, no span: nothing
        try await withTracer(tracer) {
            try dict.set(PythonValue.string("untraced"), PythonValue.int(0))  // a tracer, but no span
            try await withSpan("request") { request in
                try dict.set(PythonValue.string("k"), PythonValue.int(1))
                #expect(throws: (any Error).self) { try dict.get(PythonValue.string("missing")) }
                // The async call keeps the caller's context across its hop to a thread.
                _ = try await dict.proxy.call("__len__")
                let spans = tracer.finishedSpans
                #expect(spans.map(\.operationName) == ["dict.__setitem__", "dict.__getitem__", "dict.__len__"])
                for s in spans {
                    #expect(s.kind == .client)
                    #expect(s.spanContext.parentSpanID == request.context.inMemorySpanContext?.spanID)
                    #expect(s.attributes["rpc.service"]?.toSpanAttribute() == .string("dict"))
                }
                #expect(spans[0].status == nil)
                #expect(spans[1].status?.code == .error)
            }
        }
    }
}
