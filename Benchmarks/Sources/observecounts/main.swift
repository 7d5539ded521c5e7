// What metrics and traces cost a pool round trip, in instructions (issue 29; BENCHMARKS.md): the same
// `pool.apply` loop as `counts apply`, run under `valgrind --tool=callgrind` by
// `scripts/instruction-counts --observe`, in four set-ups:
//
//   observecounts apply N            nothing observed (no metrics backend, no span current)
//   observecounts apply-metrics N    swift-prometheus as the metrics backend (MetricsEndpoint.bootstrap)
//   observecounts apply-w3c N        every call inside a span, `W3CTracer` (below) in the parent and the worker
//   observecounts apply-inmemory N   every call inside a span, swift-distributed-tracing's InMemoryTracer
//   observecounts spans N            no pool: the tracing API's least work for one traced round trip with
//                                    `W3CTracer` (two spans started and ended, a context injected and
//                                    extracted), in one process: the floor under `apply-w3c`'s extra
//
// Wall-clock figures on this shared machine spread by ±15 %, more than the 3 % asked of metrics; the
// instructions a round trip executes do not move with the load.
import Glibc
import InMemoryTracing
import Multiprocessing
import MultiprocessingPrometheus
import Synchronization
import Tracing

WorkerStart.entry = .beforeMain

struct SquareJob: Job {
    let x: Int
    func run() -> Int { x &* x }
}

/// Installs `tracer` as the worker's tracer (the pool's initializer: a program does this in its workers).
struct BootstrapTracer: Job {
    let inMemory: Bool
    func run() {
        if inMemory {
            InstrumentationSystem.bootstrap(InMemoryTracer())
        } else {
            InstrumentationSystem.bootstrap(W3CTracer())
        }
    }
}

// MARK: - The least a recording tracer does

/// The least a tracer that records every span and propagates W3C `traceparent` does, as a stand-in for a
/// production tracer at full sampling (swift-otel's is not built here): random ids from a fast generator,
/// attributes kept, the span handed to an export buffer when it ends (a batch processor's queue, emptied
/// when full as an exporter would), the context injected and extracted as a `traceparent` header.
struct W3CTracer: Tracer {
    typealias Span = W3CSpan

    /// Finished spans waiting for an exporter.
    final class Buffer: Sendable {
        let spans = Mutex<[W3CSpan.Record]>([])
    }
    let exported = Buffer()

    func startSpan<Instant: TracerInstant>(
        _ operationName: String,
        context: @autoclosure () -> ServiceContext,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        function: String,
        file fileID: String,
        line: UInt
    ) -> W3CSpan {
        var context = context()
        let parent = context.w3c
        let ids = W3CIDs(
            traceHigh: parent?.traceHigh ?? W3CIDs.random(),
            traceLow: parent?.traceLow ?? W3CIDs.random(),
            span: W3CIDs.random()
        )
        context.w3c = ids
        return W3CSpan(
            operationName: operationName,
            kind: kind,
            context: context,
            ids: ids,
            parent: parent?.span ?? 0,
            start: instant().nanosecondsSinceEpoch,
            tracer: self
        )
    }

    func forceFlush() {}

    func inject<Carrier, Inject: Injector>(
        _ context: ServiceContext,
        into carrier: inout Carrier,
        using injector: Inject
    ) where Inject.Carrier == Carrier {
        guard let ids = context.w3c else { return }
        var bytes = [UInt8](repeating: 0x30, count: 55)
        bytes[2] = 0x2d
        W3CIDs.hex(ids.traceHigh, into: &bytes, at: 3)
        W3CIDs.hex(ids.traceLow, into: &bytes, at: 19)
        bytes[35] = 0x2d
        W3CIDs.hex(ids.span, into: &bytes, at: 36)
        bytes[52] = 0x2d
        bytes[54] = 0x31
        injector.inject(String(decoding: bytes, as: UTF8.self), forKey: "traceparent", into: &carrier)
    }

    func extract<Carrier, Extract: Extractor>(
        _ carrier: Carrier,
        into context: inout ServiceContext,
        using extractor: Extract
    ) where Extract.Carrier == Carrier {
        guard let value = extractor.extract(key: "traceparent", from: carrier) else { return }
        let b = Array(value.utf8)
        guard b.count == 55, let high = W3CIDs.parse(b, 3), let low = W3CIDs.parse(b, 19),
            let span = W3CIDs.parse(b, 36)
        else { return }
        context.w3c = W3CIDs(traceHigh: high, traceLow: low, span: span)
    }

    func export(_ record: W3CSpan.Record) {
        exported.spans.withLock {
            if $0.count == 4096 { $0.removeAll(keepingCapacity: true) }
            $0.append(record)
        }
    }
}

struct W3CIDs: Sendable {
    var traceHigh: UInt64
    var traceLow: UInt64
    var span: UInt64

    private static let state = Atomic<UInt64>(0x9E37_79B9_7F4A_7C15)

    /// splitmix64 over an atomic counter: a fast, thread-safe generator (not a cryptographic one).
    static func random() -> UInt64 {
        var z = state.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    static func hex(_ v: UInt64, into bytes: inout [UInt8], at: Int) {
        let digits: StaticString = "0123456789abcdef"
        for i in 0..<16 {
            bytes[at + i] = digits.utf8Start[Int((v >> (60 - 4 * UInt64(i))) & 0xf)]
        }
    }

    static func parse(_ b: [UInt8], _ at: Int) -> UInt64? {
        var v: UInt64 = 0
        for i in 0..<16 {
            let c = b[at + i]
            let d: UInt8
            switch c {
            case 0x30...0x39: d = c - 0x30
            case 0x61...0x66: d = c - 0x61 + 10
            default: return nil
            }
            v = v << 4 | UInt64(d)
        }
        return v
    }
}

private enum W3CKey: ServiceContextKey {
    typealias Value = W3CIDs
}

extension ServiceContext {
    fileprivate var w3c: W3CIDs? {
        get { self[W3CKey.self] }
        set { self[W3CKey.self] = newValue }
    }
}

final class W3CSpan: Tracing.Span {
    struct Record: Sendable {
        let name: String
        let ids: W3CIDs
        let parent: UInt64
        let kind: SpanKind
        let start: UInt64
        let end: UInt64
        let attributes: SpanAttributes
        let status: SpanStatus?
    }

    struct State {
        var operationName: String
        var attributes = SpanAttributes()
        var status: SpanStatus?
        var ended = false
    }

    let context: ServiceContext
    let ids: W3CIDs
    let parent: UInt64
    let kind: SpanKind
    let start: UInt64
    let tracer: W3CTracer
    private let state: Mutex<State>

    init(
        operationName: String,
        kind: SpanKind,
        context: ServiceContext,
        ids: W3CIDs,
        parent: UInt64,
        start: UInt64,
        tracer: W3CTracer
    ) {
        self.context = context
        self.ids = ids
        self.parent = parent
        self.kind = kind
        self.start = start
        self.tracer = tracer
        state = Mutex(State(operationName: operationName))
    }

    var operationName: String {
        get { state.withLock { $0.operationName } }
        set { state.withLock { $0.operationName = newValue } }
    }

    var attributes: SpanAttributes {
        get { state.withLock { $0.attributes } }
        set { state.withLock { $0.attributes = newValue } }
    }

    var isRecording: Bool { state.withLock { !$0.ended } }

    func setStatus(_ status: SpanStatus) { state.withLock { $0.status = status } }
    func addEvent(_ event: SpanEvent) {}
    func recordError<Instant: TracerInstant>(
        _ error: any Error,
        attributes: SpanAttributes,
        at instant: @autoclosure () -> Instant
    ) {}
    func addLink(_ link: SpanLink) {}

    func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        let end = instant().nanosecondsSinceEpoch
        guard
            let record = state.withLock({ s -> Record? in
                guard !s.ended else { return nil }
                s.ended = true
                return Record(
                    name: s.operationName,
                    ids: ids,
                    parent: parent,
                    kind: kind,
                    start: start,
                    end: end,
                    attributes: s.attributes,
                    status: s.status
                )
            })
        else { return }
        tracer.export(record)
    }
}

struct DictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}

struct DictionaryExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}

// MARK: - The loop

let args = Array(CommandLine.arguments.dropFirst())
guard args.count == 2, let n = Int(args[1]), n >= 0 else {
    print("usage: observecounts apply|apply-metrics|apply-w3c|apply-inmemory|spans N")
    exit(2)
}
let options = ProcessPoolOptions(interrupt: .ignore)

func loop(_ pool: ProcessPool, _ count: Int) throws {
    for i in 0..<count {
        let r = try pool.apply(SquareJob(x: i), timeout: .seconds(60))
        precondition(r == i &* i)
    }
}

do {
    var endpoint: MetricsEndpoint?
    let pool: ProcessPool
    switch args[0] {
    case "apply":
        pool = try ProcessPool(workers: 1, options: options)
        try loop(pool, 100 + n)
    case "apply-metrics":
        endpoint = try MetricsEndpoint.bootstrap()
        pool = try ProcessPool(workers: 1, options: options)
        try loop(pool, 100 + n)
    case "apply-w3c", "apply-inmemory":
        let inMemory = args[0] == "apply-inmemory"
        pool = try ProcessPool(workers: 1, initializer: BootstrapTracer(inMemory: inMemory), options: options)
        // The parent's spans: a tracer that keeps every finished span (InMemoryTracer) is emptied
        // between rounds, as an exporter would; the W3C one empties its own buffer.
        if inMemory {
            let tracer = InMemoryTracer(recordInjections: false, recordExtractions: false)
            try withTracer(tracer) {
                for _ in 0..<((100 + n) / 100) {
                    try withSpan("round") { _ in try loop(pool, 100) }
                    tracer.clearAll()
                }
            }
        } else {
            try withTracer(W3CTracer()) { try withSpan("loop") { _ in try loop(pool, 100 + n) } }
        }
    case "spans":
        let tracer = W3CTracer()
        let root = tracer.startSpan("loop", context: .topLevel, ofKind: .internal)
        for _ in 0..<(100 + n) {
            let call = tracer.startSpan("call", context: root.context, ofKind: .producer)
            var headers: [String: String] = [:]
            tracer.inject(call.context, into: &headers, using: DictionaryInjector())
            var context = ServiceContext.topLevel
            tracer.extract(headers, into: &context, using: DictionaryExtractor())
            let task = tracer.startSpan("task", context: context, ofKind: .consumer)
            task.end()
            call.end()
        }
        root.end()
        exit(0)
    default:
        print("usage: observecounts apply|apply-metrics|apply-w3c|apply-inmemory|spans N")
        exit(2)
    }
    pool.close()
    guard try pool.join(timeout: .seconds(60)) else { fatalError("the pool did not end") }
    endpoint?.close()
} catch {
    print("error: \(error)")
    exit(1)
}
