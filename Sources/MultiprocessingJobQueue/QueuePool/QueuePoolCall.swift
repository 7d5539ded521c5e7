import Multiprocessing
import Threading

/// Where a call's outcomes go: the pools' own `PoolResults` (a map) or `PoolTask` (one job).
enum QueuePoolReceiver<Output: Codable & Sendable>: Sendable {
    case stream(ExternalStream<Output>)
    case single(ExternalTask<Output>)
}

/// One call of a ``QueuePool`` (a map, or one submitted job): it queues its items as chunk jobs, keeps each
/// chunk's inputs until its end is read (to queue them again one by one when the chunk failed as a whole),
/// and passes each item's outcome to its ``receiver``.
final class QueuePoolCall<F: TaskFunction>: QueuePoolSink, @unchecked Sendable {  // mutable state under `book`
    let core: QueuePoolCore
    let f: F
    let options: TaskOptions
    /// Set once, right after the call is opened.
    private(set) var receiver: QueuePoolReceiver<F.Output>!

    private struct Book {
        var call: QueuePoolState.Call = 0
        var inputs: [Int: [F.Input]] = [:]
        var received = 0
        var total: Int?
        var done = false
        /// Items queued again after their worker was lost (by index).
        var requeues: [Int: Int] = [:]
    }

    private let book = TrackedMutex(Book())

    /// A call; `receiver` makes where its outcomes go, given how to cancel the call.
    init(
        core: QueuePoolCore,
        f: F,
        options: TaskOptions,
        receiver: (_ cancel: @escaping @Sendable () -> Void) throws -> QueuePoolReceiver<F.Output>
    ) throws {
        self.core = core
        self.f = f
        self.options = options
        let n = try core.open(self)
        book.withLock { $0.call = n }
        do {
            self.receiver = try receiver { [weak self] in self?.cancel() }
        } catch {
            core.finished(n)
            throw error
        }
    }

    var isDone: Bool { book.withLock { $0.done } }

    /// The queue options of a job of `count` items. A chunk runs once (when it fails as a whole its items
    /// are queued one by one: those retry), within the item's timeout for each run of each item; a job of
    /// one item runs as often as the retry policy says for crashes and timeouts, within the item's timeout.
    private func jobOptions(count: Int) -> JobOptions {
        let retry = options.retry
        let retriesWhole = count == 1 && !retry.causes.isDisjoint(with: [.crash, .timeout])
        let runs = retry.causes.contains(.error) ? retry.attempts : 1
        // The pauses between an item's runs are not its running time: added to the job's limit.
        var pauses = Duration.zero
        var pause = retry.backoff
        for _ in 1..<runs {
            pauses += pause
            pause = pause * retry.multiplier
        }
        return JobOptions(
            queue: core.options.queue,
            priority: core.options.priority,
            timeout: options.timeout.map { $0 * (count * runs) + pauses * count },
            maxAttempts: retriesWhole ? retry.attempts : 1,
            backoff: retry.backoff
        )
    }

    private func chunk(_ inputs: [F.Input]) -> TaskChunk<F> {
        let retry = options.retry
        return TaskChunk(
            f: f,
            inputs: inputs,
            attempts: retry.causes.contains(.error) ? retry.attempts : 1,
            backoffMs: retry.backoff.wholeMilliseconds,
            multiplier: retry.multiplier
        )
    }

    /// Queues `chunks` (each its first item's index and its inputs), keeping their inputs until their ends.
    func send(_ chunks: [(base: Int, inputs: [F.Input])]) throws {
        guard !chunks.isEmpty else { return }
        let call = try book.withLock { b in
            // A cancelled call queues nothing more (its consumer counts only what was queued before).
            guard !b.done else { throw CancellationError() }
            for c in chunks { b.inputs[c.base] = c.inputs }
            return b.call
        }
        do {
            try submit(chunks, call: call)
        } catch {
            let cancelled = book.withLock { b in
                for c in chunks { b.inputs[c.base] = nil }
                return b.done
            }
            // Cancelled meanwhile: the cancel has given these items their outcomes; they count as queued.
            if cancelled { return }
            throw error
        }
    }

    /// Queues `chunks` whose inputs are kept already.
    private func submit(_ chunks: [(base: Int, inputs: [F.Input])], call: QueuePoolState.Call) throws {
        // Jobs of one size share their options (the last chunk of a map may be shorter).
        var start = 0
        while start < chunks.count {
            let count = chunks[start].inputs.count
            var end = start + 1
            while end < chunks.count && chunks[end].inputs.count == count { end += 1 }
            let part = chunks[start..<end]
            try core.submit(
                part.map { chunk($0.inputs) },
                spans: part.map { ($0.base, $0.inputs.count) },
                call: call,
                options: jobOptions(count: count)
            )
            start = end
        }
    }

    /// All `total` items are queued: the call ends when each has its outcome.
    /// With `announcing`, the consumer is told of that many items (one more than were queued, when the item
    /// after the last could not be queued and has failed).
    func seal(total: Int, announcing: Int? = nil) {
        book.withLock { $0.total = total }
        if case .stream(let s) = receiver { s.end(total: announcing ?? total) }
        endIfComplete()
    }

    /// Cancels the call (its caller did): its jobs are cancelled in the database, its items without an
    /// outcome fail with `error`.
    func cancel(_ error: any Error = CancellationError()) {
        let (call, open) = book.withLock { b -> (QueuePoolState.Call?, [Int: [F.Input]]) in
            guard !b.done else { return (nil, [:]) }
            b.done = true
            defer { b.inputs = [:] }
            return (b.call, b.inputs)
        }
        guard let call else { return }
        core.cancel(call)
        core.finished(call)
        for (base, inputs) in open { failItems(base: base, count: inputs.count, error) }
    }

    // MARK: QueuePoolSink

    func deliver(base: Int, count: Int, result: [UInt8]) {
        let outcomes: [Result<F.Output, any Error>]
        do {
            let reply = try BinaryDecoder().decode(TaskChunkReply<F.Output>.self, from: result)
            guard let all = reply.outcomes(count: count) else {
                let e = JobQueueError(.malformedJob, "a job of \(count) items returned outcomes that do not add up")
                fail(base: base, count: count, error: e)
                return
            }
            outcomes = all
        } catch {
            fail(base: base, count: count, error: JobQueueError(.malformedJob, "a result cannot be decoded: \(error)"))
            return
        }
        guard take(base) else { return }
        switch receiver! {
        case .single(let t):
            if case .failure = outcomes[0] { core.count(failed: 1) }
            t.complete(outcomes[0])
        case .stream(let s):
            var run: [F.Output] = []
            run.reserveCapacity(count)
            var first = base
            for (i, o) in outcomes.enumerated() {
                switch o {
                case .success(let v): run.append(v)
                case .failure(let e):
                    core.count(failed: 1)
                    s.deliver(start: first, run)
                    run = []
                    first = base + i + 1
                    s.fail(index: base + i, e)
                }
            }
            s.deliver(start: first, run)
        }
        received(count)
    }

    func fail(base: Int, count: Int, error: any Error) {
        guard take(base) else { return }
        failItems(base: base, count: count, error)
        received(count)
    }

    private func failItems(base: Int, count: Int, _ error: any Error) {
        switch receiver! {
        case .single(let t): t.complete(.failure(error))
        case .stream(let s): for i in base..<(base + count) { s.fail(index: i, error) }
        }
    }

    func split(base: Int, count: Int) { resend(base) }

    func requeue(base: Int, history: String) {
        let lostTooOften = book.withLock { b in
            b.requeues[base, default: 0] += 1
            return b.requeues[base]! > Self.maxRequeues
        }
        guard !lostTooOften else {
            let e = JobQueueError(
                .failed,
                "its job was lost with its worker \(Self.maxRequeues + 1) times: \(history.trimmingTrailingNewline)"
            )
            fail(base: base, count: 1, error: e)
            return
        }
        resend(base)
    }

    /// How many times an item lost with its worker is queued again.
    static var maxRequeues: Int { 3 }

    /// Queues the items of the chunk at `base` again, one job each. The chunk's entry becomes theirs in one
    /// step, so that a cancel at any moment finds every item (and fails it) exactly once.
    private func resend(_ base: Int) {
        let (call, singles) = book.withLock { b -> (QueuePoolState.Call?, [(base: Int, inputs: [F.Input])]) in
            guard !b.done, let inputs = b.inputs.removeValue(forKey: base) else { return (nil, []) }
            let singles = inputs.enumerated().map { (base: base + $0.offset, inputs: [$0.element]) }
            for s in singles { b.inputs[s.base] = s.inputs }
            return (b.call, singles)
        }
        guard let call else { return }
        do {
            try submit(singles, call: call)
        } catch {
            // Those not failed by a cancel meanwhile fail with the error.
            for s in singles { fail(base: s.base, count: 1, error: error) }
        }
    }

    func abandon(_ error: any Error) { cancel(error) }

    /// Forgets the inputs of the chunk at `base`; false when the call has ended or the chunk already has
    /// its outcome (the outcome is dropped).
    private func take(_ base: Int) -> Bool {
        book.withLock { b in
            guard !b.done else { return false }
            return b.inputs.removeValue(forKey: base) != nil
        }
    }

    private func received(_ count: Int) {
        book.withLock { $0.received += count }
        endIfComplete()
    }

    private func endIfComplete() {
        let call = book.withLock { b -> QueuePoolState.Call? in
            guard !b.done, let total = b.total, b.received >= total else { return nil }
            b.done = true
            return b.call
        }
        guard let call else { return }
        core.finished(call)
    }
}

/// A `Job` as a function of one input (itself), so that submitted jobs travel as chunks of one item.
struct RunJob<J: Job>: TaskFunction {
    func callAsFunction(_ job: J) async throws -> J.Output { try await job.run() }
}
