import CoreMetrics
import Glibc
import Logging
import Multiprocessing
import MultiprocessingSQL
import Threading

/// A call's side of the pool: where the ends of its jobs go (on the pool's collector thread).
protocol QueuePoolSink: AnyObject, Sendable {
    /// Items `base..<base + count` have their outcomes in `result` (an encoded `TaskChunkReply`).
    func deliver(base: Int, count: Int, result: [UInt8])
    /// Items `base..<base + count` failed with `error`.
    func fail(base: Int, count: Int, error: any Error)
    /// The job of items `base..<base + count` failed as a whole: queue them again one by one.
    func split(base: Int, count: Int)
    /// The job of item `base` was lost with its worker (`history` says so): queue it again.
    func requeue(base: Int, history: String)
    /// Every item without an outcome yet fails with `error` (the pool was closed).
    func abandon(_ error: any Error)
}

/// Performs what ``QueuePoolState`` decides: queues a call's jobs with the pool's tag, and on a thread of
/// its own reads the ends of the pool's jobs (deleting the rows it read) and hands them to their calls.
/// PostgreSQL wakes it at each commit of an end (`LISTEN` on the tag); it polls as well (the fallback, and
/// SQLite's way), backing off from a millisecond to ``QueuePoolOptions/pollInterval`` while nothing ends.
final class QueuePoolCore: Sendable {
    let queue: JobQueue
    let options: QueuePoolOptions
    /// The pool's tag: its jobs' `reply_to`, and on PostgreSQL the channel their ends are notified on.
    let tag: String

    private struct Inner {
        var state = QueuePoolState()
        var sinks: [QueuePoolState.Call: any QueuePoolSink] = [:]
        var nextCall = 0
        /// `terminate()`: the calls are cancelled, the collector stops (after ``drainAfterClose`` at most).
        var closed = false
        var closedAt: ContinuousClock.Instant?
        /// `close()`: no new calls; the collector stops once the calls made have ended.
        var refusing = false
        // Progress (``QueuePool/currentProgress``).
        var first: ContinuousClock.Instant?
        var done = 0
        var failed = 0
        var total = 0
        /// Reads of the ends that found none (tests wait for one before an end to see that a notification,
        /// not a poll, brought it).
        var emptyReads = 0
        var listening = false
    }

    private let inner = TrackedMutex(Inner())
    /// Set when something may have ended (a notification) or a job was registered.
    private let kick = Event()
    private let stopped = Event()
    /// Set while no call is open.
    private let idle = Event()
    let callbacks = ThreadPool(maxWorkers: 1, threadNamePrefix: "mp-queuepool-callback")
    private let delivered: Counter
    private let failed: Counter
    private let queued: Counter

    init(queue: JobQueue, options: QueuePoolOptions) throws {
        self.queue = queue
        self.options = options
        var random = SystemRandomNumberGenerator()
        tag = "mp_reply_" + String(random.next() as UInt64, radix: 16) + String(random.next() as UInt32, radix: 16)
        let dims = [("queue", options.queue)]
        delivered = Counter(label: "mp_queuepool_items_completed_total", dimensions: dims)
        failed = Counter(label: "mp_queuepool_items_failed_total", dimensions: dims)
        queued = Counter(label: "mp_queuepool_jobs_queued_total", dimensions: dims)
    }

    func start() throws {
        let thread = OSThread(name: "mp-queuepool", daemon: true) { [self] in collect() }
        try thread.start()
    }

    // MARK: calls

    /// A new call's number, for its sink. Throws `PoolError` `.closed` once the pool is closed.
    func open(_ sink: any QueuePoolSink) throws -> QueuePoolState.Call {
        try inner.withLock { s in
            if s.closed { throw PoolError(.terminated, "the pool was terminated") }
            if s.refusing { throw PoolError(.closed, "the pool is closed: it takes no more work") }
            s.nextCall += 1
            s.sinks[s.nextCall] = sink
            idle.clear()
            return s.nextCall
        }
    }

    /// The call has all its outcomes (or gave up): it is forgotten.
    func finished(_ call: QueuePoolState.Call) {
        // The sink is released outside the lock (its last reference may go with it).
        let sink = inner.withLock { s in
            defer { if s.sinks.isEmpty { idle.set() } }
            return s.sinks.removeValue(forKey: call)
        }
        withExtendedLifetime(sink) { kick.set() }
    }

    /// No new calls; the collector stops once the calls made have ended.
    func refuseCalls() {
        inner.withLock { $0.refusing = true }
        kick.set()
    }

    /// Waits until no call is open, at most `timeout`; whether none was.
    func waitIdle(timeout: Duration?) -> Bool {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while !isIdle {
            guard let deadline else {
                _ = idle.wait()
                continue
            }
            let left = deadline - .now
            if left <= .zero { return false }
            _ = idle.wait(timeout: left)
        }
        return true
    }

    /// Counts items for the pool's progress.
    func count(total: Int = 0, done: Int = 0, failed: Int = 0) {
        inner.withLock { s in
            if s.first == nil { s.first = .now }
            s.total += total
            s.done += done
            s.failed += failed
        }
    }

    /// Items done, failed and submitted, and when the first was.
    var progress: (first: ContinuousClock.Instant?, done: Int, failed: Int, total: Int) {
        inner.withLock { ($0.first, $0.done, $0.failed, $0.total) }
    }

    /// Queues `jobs` for `call`, job `i` carrying items `spans[i]` (its first item's index and its count).
    func submit<J: Job>(
        _ jobs: [J],
        spans: [(base: Int, count: Int)],
        call: QueuePoolState.Call,
        options o: JobOptions
    )
        throws
    {
        let tag = self.tag
        let ids = try queue.withConnection { c in
            if jobs.count <= JobQueue.rowsPerInsert {
                return try JobQueue.enqueue(jobs, options: o, replyTo: tag, on: c)
            }
            return try c.transaction(immediate: true) { try JobQueue.enqueue(jobs, options: o, replyTo: tag, on: c) }
        }
        Doorbell.ring(queue.doorbells, queues: [o.queue])
        queued.increment(by: jobs.count)
        let (actions, cancelledMeanwhile) = inner.withLock { s -> ([QueuePoolState.Action], Bool) in
            guard s.sinks[call] != nil else {
                // Their ends are read (the rows deleted) and dropped.
                s.state.drop(ids.map(\.id), now: QueueSchema.nowMs())
                return ([], true)
            }
            var out: [QueuePoolState.Action] = []
            for (id, span) in zip(ids, spans) {
                out += s.state.registered(id.id, call: call, base: span.base, count: span.count)
            }
            return (out, false)
        }
        if cancelledMeanwhile {
            // The call was cancelled while its jobs were being queued: they go too.
            cancelInDatabase(ids.map(\.id))
            return
        }
        kick.set()
        perform(actions)
    }

    /// Cancels `call`: its jobs not yet ended are cancelled in the database (queued ones at once, running
    /// ones asked to stop), on a thread of the queue's; their ends are dropped.
    func cancel(_ call: QueuePoolState.Call) {
        let (ids, sink) = inner.withLock { s -> ([Int64], (any QueuePoolSink)?) in
            let sink = s.sinks.removeValue(forKey: call)
            if s.sinks.isEmpty { idle.set() }
            return (s.state.cancel(call, now: QueueSchema.nowMs()), sink)
        }
        withExtendedLifetime(sink) { cancelInDatabase(ids) }
    }

    private func cancelInDatabase(_ ids: [Int64]) {
        guard !ids.isEmpty else { return }
        let queue = self.queue
        let log = options.logger
        _ = try? JobQueue.blockingCalls.submit {
            // Tried three times (a database that went away for a moment): jobs left queued would run for
            // nobody.
            for attempt in 1...3 {
                do {
                    try queue.cancel(all: ids)
                    return
                } catch {
                    if attempt == 3 {
                        log.warning(
                            "cannot cancel a pool's jobs",
                            metadata: ["jobs": "\(ids.count)", "error": "\(error)"]
                        )
                    } else {
                        _ = Event().wait(timeout: .milliseconds(200 * attempt))
                    }
                }
            }
        }
    }

    /// No more calls; the outstanding ones are cancelled, and the collector stops.
    func close() {
        let calls = inner.withLock { s -> [QueuePoolState.Call] in
            s.closed = true
            if s.closedAt == nil { s.closedAt = .now }
            return Array(s.sinks.keys)
        }
        for call in calls {
            if let sink = inner.withLock({ $0.sinks[call] }) {
                cancel(call)
                sink.abandon(PoolError(.terminated, "the pool was terminated"))
            }
        }
        kick.set()
    }

    /// Whether ``close()`` or ``refuseCalls()`` was called.
    var isClosing: Bool { inner.withLock { $0.closed || $0.refusing } }

    /// Reads of the ends that found none so far.
    var emptyReads: Int { inner.withLock { $0.emptyReads } }

    /// Whether no call is outstanding.
    var isIdle: Bool { inner.withLock { $0.sinks.isEmpty } }

    // MARK: the collector

    private func perform(_ actions: [QueuePoolState.Action]) {
        for a in actions {
            switch a {
            case .deliver(let call, let base, let count, let result):
                delivered.increment(by: count)
                self.count(done: count)
                sink(call)?.deliver(base: base, count: count, result: result)
            case .split(let call, let base, let count):
                sink(call)?.split(base: base, count: count)
            case .requeue(let call, let base, let history):
                sink(call)?.requeue(base: base, history: history)
            case .fail(let call, let base, let count, let end):
                failed.increment(by: count)
                self.count(done: count, failed: count)
                sink(call)?.fail(base: base, count: count, error: Self.error(end))
            }
        }
    }

    private func sink(_ call: QueuePoolState.Call) -> (any QueuePoolSink)? { inner.withLock { $0.sinks[call] } }

    static func error(_ end: QueuePoolState.End) -> any Error {
        switch end {
        case .completed: JobQueueError(.malformedJob, "a completed job reported as failed")
        case .discarded(let history):
            JobQueueError(.failed, "its job was discarded after its attempts: \(history.trimmingTrailingNewline)")
        case .cancelled(let why):
            JobQueueError(.cancelled, "its job was cancelled" + (why.isEmpty ? "" : ": \(why.trimmingTrailingNewline)"))
        }
    }

    private func collect() {
        var connection: (any SQLConnection)?
        var listener: (any SQLNotificationListening)?
        var nextListen = ContinuousClock.now
        var pause = Duration.milliseconds(1)
        var failures = 0
        defer {
            connection?.close()
            listener?.close()
            stopped.set()
        }
        while true {
            let (closed, waiting) = inner.withLock { s in
                // After `terminate()`, the ends of the cancelled jobs are taken for a while (a running one
                // ends at its worker's next heartbeat), not for ever: an unreachable database, or a job
                // that never ends, does not keep this thread.
                let drained = s.closedAt.map { ContinuousClock.now - $0 > Self.drainAfterClose } ?? false
                return (s.closed || (s.refusing && s.sinks.isEmpty), s.state.isWaiting && !drained)
            }
            if closed && !waiting { return }
            if !waiting {
                // Nothing outstanding: sleep until a call queues jobs.
                _ = kick.wait(timeout: .seconds(1))
                kick.clear()
                pause = .milliseconds(1)
                continue
            }
            do {
                if connection == nil { connection = try Database.connect(queue.url, timeout: .seconds(30)) }
                if let l = listener, !l.isOpen {
                    // Its connection was cut (an idle timeout, the network): listen again.
                    l.close()
                    listener = nil
                    setListening(false)
                }
                if listener == nil, options.notifications, queue.url.kind != .sqlite, ContinuousClock.now >= nextListen
                {
                    do {
                        listener = try listen()
                        setListening(true)
                    } catch {
                        // Polled meanwhile; tried again in a while, not at every read.
                        nextListen = .now + .seconds(10)
                        options.logger.warning(
                            "the pool cannot listen for its jobs' ends; polling",
                            metadata: ["error": "\(error)"]
                        )
                    }
                }
                try settle(on: connection!)
                let n = try readEnds(on: connection!)
                failures = 0
                if n > 0 {
                    pause = .milliseconds(1)
                    if n >= Self.batch { continue }
                } else {
                    inner.withLock { $0.emptyReads += 1 }
                    // With a listener, each end's commit wakes the collector (ends committed before it
                    // listened were read just now): the poll is only its fallback.
                    pause =
                        listener != nil
                        ? max(options.pollInterval, .milliseconds(500)) : min(pause * 2, options.pollInterval)
                }
            } catch {
                failures += 1
                connection?.close()
                connection = nil
                listener?.close()
                listener = nil
                setListening(false)
                if failures == 1 || failures % 100 == 0 {
                    options.logger.warning(
                        "the task pool cannot read its jobs' ends; retrying",
                        metadata: ["error": "\(error)"]
                    )
                }
                pause = min(max(pause * 2, .milliseconds(50)), .seconds(1))
            }
            _ = kick.wait(timeout: pause)
            kick.clear()
        }
    }

    static let batch = 1000
    /// How long after `terminate()` the collector goes on taking the ends of the jobs it cancelled.
    static let drainAfterClose = Duration.seconds(15)

    private func setListening(_ on: Bool) { inner.withLock { $0.listening = on } }

    /// Whether the pool hears of its jobs' ends by notification now (PostgreSQL's `LISTEN`).
    var isListening: Bool { inner.withLock { $0.listening } }

    private func listen() throws -> any SQLNotificationListening {
        guard let l = try Database.connect(queue.url, timeout: .seconds(5)) as? any SQLNotificationListening else {
            throw SQLError(.other, "no notifications")
        }
        let kick = self.kick
        try l.listen(tag) { _ in kick.set() }
        return l
    }

    /// Reads up to ``batch`` ended jobs of the pool, deletes them, and hands their ends on. Returns how many.
    private func readEnds(on c: any SQLConnection) throws -> Int {
        let d = c.dialect
        var rows: [(Int64, QueuePoolState.End)] = []
        try c.forEachRow(
            """
            SELECT id, state, result, errors FROM mp_jobs WHERE reply_to = \(d.parameter(1))
              AND state IN ('completed', 'discarded', 'cancelled') ORDER BY id LIMIT \(Self.batch)
            """,
            [.text(tag)]
        ) { r in
            guard let id = r[0].intValue else { return }
            let errors = r[3].textValue ?? ""
            switch r[1].textValue {
            case "completed":
                let bytes: [UInt8] = if case .blob(let b) = r[2] { b } else { [] }
                rows.append((id, .completed(bytes)))
            case "discarded": rows.append((id, .discarded(errors)))
            default: rows.append((id, .cancelled(errors)))
            }
        }
        guard !rows.isEmpty else {
            inner.withLock { $0.state.expire(now: QueueSchema.nowMs()) }
            return 0
        }
        // Deleted, then handed on: a caller that exits once it has its results leaves no row behind. A
        // delete whose outcome is unknown (the connection failed) is settled by ``settle(on:)`` first thing
        // on the next connection: the ends whose rows are gone are handed on then, the others read again.
        unsettled = rows
        try c.transaction(immediate: true) {
            for chunk in rows.map(\.0).chunks(of: 500) {
                let list = chunk.indices.map { d.parameter($0 - chunk.startIndex + 1) }.joined(separator: ", ")
                try c.execute("DELETE FROM mp_jobs WHERE id IN (\(list))", chunk.map { .int($0) })
            }
        }
        unsettled = []
        handOn(rows)
        return rows.count
    }

    /// Ends read whose delete did not report back (only the collector's thread touches it).
    private nonisolated(unsafe) var unsettled: [(Int64, QueuePoolState.End)] = []

    /// After a delete whose outcome is unknown: hands on the ends whose rows are gone (the delete had
    /// committed); the others are still there, to be read again.
    private func settle(on c: any SQLConnection) throws {
        guard !unsettled.isEmpty else { return }
        let d = c.dialect
        var present: Set<Int64> = []
        for chunk in unsettled.map(\.0).chunks(of: 500) {
            let list = chunk.indices.map { d.parameter($0 - chunk.startIndex + 1) }.joined(separator: ", ")
            try c.forEachRow("SELECT id FROM mp_jobs WHERE id IN (\(list))", chunk.map { .int($0) }) { r in
                if let id = r[0].intValue { present.insert(id) }
            }
        }
        let gone = unsettled.filter { !present.contains($0.0) }
        unsettled = []
        handOn(gone)
    }

    private func handOn(_ rows: [(Int64, QueuePoolState.End)]) {
        let now = QueueSchema.nowMs()
        let actions = inner.withLock { s -> [QueuePoolState.Action] in
            var out: [QueuePoolState.Action] = []
            for (id, end) in rows { out += s.state.ended(id, end, now: now) }
            s.state.expire(now: now)
            return out
        }
        perform(actions)
    }

    /// Waits until the collector has stopped (after ``close()``).
    func waitStopped(timeout: Duration) -> Bool { stopped.wait(timeout: timeout) }

    /// The worker processes that serve queues now, as the workers announced them; nil when none did.
    func liveWorkerProcesses() -> Int? {
        let n = try? queue.withConnection { c in
            try c.scalar(
                "SELECT COALESCE(SUM(concurrency), 0) FROM mp_workers WHERE last_seen > \(c.dialect.parameter(1))",
                [.int(QueueSchema.nowMs() - 60_000)]
            )?.intValue
        }
        guard let n = n ?? nil, n > 0 else { return nil }
        return Int(n)
    }
}
