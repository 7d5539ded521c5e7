import InMemoryTracing
import Multiprocessing
import MultiprocessingSQL
import MultiprocessingTestSupport
import Testing
import Threading
import Tracing

@testable import MultiprocessingJobQueue

/// Random ids: a pool worker's tracer must not mint the parent's ids by counting from 1 as it does.
let randomTraceIDs = InMemoryTracer.IDGenerator(
    nextTraceID: { String(UInt64.random(in: 1...UInt64.max), radix: 16) },
    nextSpanID: { String(UInt64.random(in: 1...UInt64.max), radix: 16) }
)

/// A tracer in each pool worker (the pool's initializer).
struct InMemoryTracerInWorkers: Job {
    func run() { InstrumentationSystem.bootstrap(InMemoryTracer(idGenerator: randomTraceIDs)) }
}

/// Answers the trace it runs in, as its pool worker sees it: `traceID parentSpanID`, or `none`.
struct TraceSeen: Job {
    func run() -> String {
        guard let c = InstrumentationContext.current?.inMemorySpanContext else { return "none" }
        return "\(c.traceID) \(c.parentSpanID ?? "-")"
    }
}

/// A job queued inside a span continues that trace where it runs: queued in `JobQueue.enqueue`, run by
/// the queue worker in `JobQueue.job`, whose pool task (`ProcessPool.submit`) runs in the pool's worker
/// process as its child — one trace id from the request to the job's code.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct JobTracingTests {
    @Test(arguments: TestBackend.enabled) func aJobContinuesTheTraceItWasQueuedIn(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let tracer = InMemoryTracer(idGenerator: randomTraceIDs)
            let queue = try JobQueue(db.url)
            let (request, handle, untraced) = try withTracer(tracer) {
                let untraced = try queue.enqueue(TraceSeen())  // outside any span: nothing carried
                return try withSpan("request") { span in
                    (span.context.inMemorySpanContext!, try queue.enqueue(TraceSeen()), untraced)
                }
            }
            let pool = try ProcessPool(workers: 1, initializer: InMemoryTracerInWorkers())
            defer { pool.terminate() }
            let worker = try QueueWorker(
                db.url,
                pool: pool,
                options: QueueWorkerOptions(pollInterval: .milliseconds(5))
            )
            let running = background { try withTracer(tracer) { try worker.run() } }
            let seen = try handle.result(timeout: .seconds(30))
            #expect(try untraced.result(timeout: .seconds(30)) == "none")
            worker.stop()
            _ = try running.result(timeout: .seconds(30))

            let spans = tracer.finishedSpans
            let enqueue = try #require(spans.first { $0.operationName == "JobQueue.enqueue" })
            let job = try #require(spans.first { $0.operationName == "JobQueue.job" })
            let submit = try #require(spans.first { $0.operationName == "ProcessPool.submit" })
            #expect(enqueue.spanContext.traceID == request.traceID)
            #expect(enqueue.spanContext.parentSpanID == request.spanID)
            #expect(enqueue.kind == .producer)
            #expect(job.spanContext.traceID == request.traceID)
            #expect(job.spanContext.parentSpanID == enqueue.spanContext.spanID)
            #expect(job.kind == .consumer)
            #expect(submit.spanContext.parentSpanID == job.spanContext.spanID)
            #expect(seen == "\(request.traceID) \(submit.spanContext.spanID)")
            // One job span: the untraced job had none.
            #expect(spans.filter { $0.operationName == "JobQueue.job" }.count == 1)
        }
    }
}
