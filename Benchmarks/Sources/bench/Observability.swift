import Foundation
import InMemoryTracing
import Multiprocessing
import MultiprocessingNetwork
import MultiprocessingPrometheus
import Tracing

/// The pool's workers' tracer for the traced rows (as a program bootstraps one in its workers).
struct InMemoryTracerInWorkers: Job {
    func run() { InstrumentationSystem.bootstrap(InMemoryTracer()) }
}

/// The cost of observability (issue 29): `apply_async` round trips and a map of 200,000 tiny items, plain
/// and traced (every call inside a span, an in-memory tracer in the parent and in the workers: full
/// sampling, the library's own work of making, injecting, carrying and continuing spans), interleaved in
/// one process. With MP_BENCH_METRICS=1 the process first makes swift-prometheus its metrics backend, so
/// every counter and timer the library reports is recorded (compare with a run without it).
func runObservabilitySuite(_ only: Set<String>) throws {
    let metrics = getenv("MP_BENCH_METRICS") != nil
    var endpoint: MetricsEndpoint?
    if metrics { endpoint = try MetricsEndpoint.bootstrap() }
    defer { endpoint?.close() }
    let suffix = metrics ? "_metrics" : ""
    let pool = try ProcessPool(workers: 2, initializer: InMemoryTracerInWorkers())
    defer {
        pool.close()
        _ = try? pool.join(timeout: .seconds(30))
    }
    let tracer = InMemoryTracer()
    let xs = Array(0..<200_000)
    func applyRate() throws -> Double {
        let n = 10_000
        let t0 = Date()
        let tasks = try (0..<n).map { try pool.applyAsync(SquareJob(x: $0)) }
        for t in tasks { _ = try t.get(timeout: .seconds(60)) }
        return Double(n) / Date().timeIntervalSince(t0)
    }
    func mapRate() throws -> Double {
        let t0 = Date()
        let r = try pool.map(SquareTask(), xs)
        precondition(r.count == xs.count)
        return Double(xs.count) / Date().timeIntervalSince(t0)
    }
    func traced(_ body: () throws -> Double) throws -> Double {
        defer { tracer.clearAll() }
        return try withTracer(tracer) { try withSpan("bench") { _ in try body() } }
    }
    _ = try applyRate()
    _ = try traced(mapRate)
    var rows: [String: [Double]] = [:]
    for _ in 0..<7 {
        rows["apply_async_plain", default: []].append(try applyRate())
        rows["apply_async_traced", default: []].append(try traced(applyRate))
        rows["map_tiny_plain", default: []].append(try mapRate())
        rows["map_tiny_traced", default: []].append(try traced(mapRate))
    }
    for name in rows.keys.sorted() {
        report("observe_\(name)\(suffix)_swift", rows[name]!, "tasks/s", digits: 0)
    }
}
