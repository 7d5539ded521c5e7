import Multiprocessing
import Tracing

/// Traces of queued jobs (swift-distributed-tracing's API; the program chooses the tracer).
///
/// Jobs queued inside a span, with a tracer active, are queued in a span `JobQueue.enqueue` (kind
/// producer, a child of the caller's), whose context each job's row keeps (`trace_context`). The worker
/// that claims such a job, on whatever machine, runs it in a span `JobQueue.job` (kind consumer) that
/// continues that context; its pool task (`ProcessPool.submit`, then `ProcessPool.task` in the pool's
/// worker process) is a child of it. A job queued outside any span carries nothing.
enum JobTracing {
    /// A span around queueing `count` jobs of `kind`, and the context they carry; `nil` outside a span or
    /// without a tracer.
    static func enqueue(kind: String, queue: String, count: Int) -> (span: any Span, carrier: [UInt8])? {
        guard let current = InstrumentationContext.current, let tracer = PoolTracing.tracer else { return nil }
        let span = tracer.startSpan("JobQueue.enqueue", context: current, ofKind: .producer)
        span.attributes["mp.queue.name"] = queue
        span.attributes["mp.job.kind"] = readableTypeName(mangled: kind)
        span.attributes["mp.queue.jobs"] = count
        var headers: [String: String] = [:]
        tracer.inject(span.context, into: &headers, using: HeadersInjector())
        return (span, PoolTracing.encode(headers))
    }

    /// The span of one attempt of `job`, continuing the context it was queued in; `nil` when it carries
    /// none (or no tracer is active here).
    static func run(_ job: QueueWorkerState.Job, worker: String) -> (any Span)? {
        guard let carrier = job.trace, let tracer = PoolTracing.tracer,
            let headers = carrier.withUnsafeBytes({ PoolTracing.decode($0) })
        else { return nil }
        var context = InstrumentationContext.topLevel
        tracer.extract(headers, into: &context, using: HeadersExtractor())
        let span = tracer.startSpan("JobQueue.job", context: context, ofKind: .consumer)
        span.attributes["mp.job.id"] = Int(job.id)
        span.attributes["mp.job.attempt"] = job.attempt
        span.attributes["mp.job.kind"] = readableTypeName(mangled: job.kind)
        span.attributes["mp.queue.worker"] = worker
        return span
    }

    /// Ends a job's span with the attempt's outcome.
    static func end(_ span: (any Span)?, failure: (any Error)? = nil) {
        guard let span else { return }
        if let failure {
            span.recordError(failure)
            span.setStatus(SpanStatus(code: .error, message: "\(failure)"))
        }
        span.end()
    }
}
