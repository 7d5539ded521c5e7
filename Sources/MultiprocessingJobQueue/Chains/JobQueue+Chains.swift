public import Multiprocessing
import MultiprocessingSQL
import Threading

/// The outcomes of the jobs a job waited for, in the order they were named: what a link of a chain gets
/// from the link before it, what a group's callback gets from the group.
///
/// Each outcome was copied out of the finished job when it finished, so the retention cleaner deleting
/// that job later takes nothing from the one that waits for it.
public struct JobOutcomes: Sendable, Hashable, Codable, RandomAccessCollection {
    /// One finished job's end: completed with a result, or discarded or cancelled with its error history.
    public struct Outcome: Sendable, Hashable, Codable {
        /// The finished job's id.
        public let job: Int64
        /// How it ended: ``JobState/completed``, ``JobState/discarded`` or ``JobState/cancelled``.
        public let state: JobState
        /// Its error history, a line per failed attempt (empty for a job that completed at once).
        public let errors: [String]
        /// Its encoded result, when it completed.
        let result: [UInt8]?

        /// An outcome as the worker gives it: for testing a ``DependentJob``'s `run(after:)` without a
        /// queue. `result` is the job's output, given when `state` is ``JobState/completed``.
        public init<Output: Encodable>(job: Int64, state: JobState, errors: [String] = [], result: Output?) throws {
            self.init(job: job, state: state, errors: errors, result: try result.map { try BinaryEncoder().encode($0) })
        }

        init(job: Int64, state: JobState, errors: [String], result: [UInt8]?) {
            self.job = job
            self.state = state
            self.errors = errors
            self.result = result
        }

        /// Whether it completed.
        public var succeeded: Bool { state == .completed }

        /// Its result, decoded as `type` (its job's `Output`).
        /// - Throws: ``JobQueueError`` `.failed` (with the error history) when it was discarded,
        ///   `.cancelled` when it was cancelled; a decoding error when `type` is not its output's type.
        public func value<T: Decodable>(as type: T.Type = T.self) throws -> T {
            switch state {
            case .completed: return try BinaryDecoder().decode(T.self, from: result ?? [])
            case .cancelled:
                throw JobQueueError(.cancelled, "job \(job) was cancelled" + Self.history(errors))
            default:
                throw JobQueueError(.failed, "job \(job) failed" + Self.history(errors))
            }
        }

        private static func history(_ errors: [String]) -> String {
            errors.isEmpty ? "" : ": " + errors.joined(separator: "; ")
        }
    }

    private let outcomes: [Outcome]

    /// The outcomes of the jobs a job waited for, in the order they were named.
    public init(_ outcomes: [Outcome]) { self.outcomes = outcomes }

    /// The first position (0).
    public var startIndex: Int { 0 }
    /// One past the last position (the number of jobs waited for).
    public var endIndex: Int { outcomes.count }
    /// The outcome of the `i`th job waited for.
    public subscript(i: Int) -> Outcome { outcomes[i] }

    /// Every result, decoded as `type`, in order.
    /// - Throws: ``JobQueueError`` `.failed` or `.cancelled` for the first job that did not complete.
    public func values<T: Decodable>(as type: T.Type = T.self) throws -> [T] {
        try outcomes.map { try $0.value(as: T.self) }
    }

    /// The outcomes given to the job running now in this task: set by the queue's worker around a waiting
    /// job's `run()`; empty elsewhere (a job run by a pool, or one that waited for nothing).
    @TaskLocal public static var current = JobOutcomes([])
}

/// A job that runs after others and reads how they ended: a group's callback (``JobQueue/group(_:options:then:callbackOptions:policy:)``),
/// or any job queued with ``JobQueue/enqueue(_:after:policy:options:)``.
///
/// Implement `run(after:)`; the `run()` that the worker calls is given and passes it the outcomes.
public protocol DependentJob: Job {
    /// What ``run(after:)`` returns (restated so that the compiler infers it from `run(after:)`).
    associatedtype Output
    /// The work, given the outcomes of the jobs this one waited for, in the order they were named.
    func run(after outcomes: JobOutcomes) async throws -> Output
}

extension DependentJob {
    /// Runs ``run(after:)`` with the outcomes the worker set (``JobOutcomes/current``).
    public func run() async throws -> Output { try await run(after: JobOutcomes.current) }
}

/// A link of a chain that takes the previous link's output as its input
/// (``JobChain``'s `then`): the compiler checks that the types meet.
///
/// Implement `run(_:)`; the `run()` that the worker calls is given and passes it the previous link's result.
public protocol ChainedJob: Job {
    /// The previous link's `Output`.
    associatedtype Input: Codable & Sendable
    /// What ``run(_:)`` returns (restated so that the compiler infers it from `run(_:)`).
    associatedtype Output
    /// The work, given the previous link's output.
    func run(_ input: Input) async throws -> Output
}

extension ChainedJob {
    /// Runs ``run(_:)`` with the output of the one job this one waited for.
    /// - Throws: ``JobQueueError`` `.failed` when the job was not queued after exactly one other that
    ///   completed (a chain runs a link only after the previous one completed).
    public func run() async throws -> Output {
        let outcomes = JobOutcomes.current
        guard outcomes.count == 1 else {
            throw JobQueueError(
                .failed,
                "\(Self.self) takes the output of the one job it follows, but it waited for \(outcomes.count): "
                    + "queue it with JobQueue.chain(…).then(…)"
            )
        }
        return try await run(outcomes[0].value(as: Input.self))
    }
}

/// When a job that waits for others runs.
public enum WaitPolicy: Sendable, Hashable {
    /// Once every job it waits for has completed; stopped (``JobState/cancelled``, its error history saying
    /// which job failed) as soon as one of them is discarded or cancelled, and so in turn are the jobs that
    /// require it. A chain's links wait this way: a failed link stops the chain.
    case allSucceeded
    /// Once every job it waits for has ended, however each ended; it reads each one's outcome
    /// (``JobOutcomes``). A group's callback waits this way by default (a chord that sees every member).
    case allFinished
}

extension JobQueue {
    /// Queues `job` to run once the jobs `ids` have ended, as `policy` says: a job that waits is in state
    /// ``JobState/waiting`` until then, and gets their outcomes (``JobOutcomes/current``, or
    /// ``DependentJob/run(after:)``). Jobs that have ended already count as they ended; the job is queued
    /// (or stopped) at once when all have.
    /// - Throws: ``JobQueueError`` `.notFound` when a job of `ids` does not exist (or was deleted by the
    ///   retention cleaner), `.invalidDependency` when `ids` is empty or `options` has a unique key (a job
    ///   that waits holds none).
    public func enqueue<J: Job>(
        _ job: J,
        after ids: [Int64],
        policy: WaitPolicy = .allSucceeded,
        options: JobOptions = .default
    ) throws -> JobHandle<J> {
        let payload = try BinaryEncoder().encode(job)
        let kind = try JobIdentity.name(of: J.self)
        let (id, queues) = try inTransaction { c in
            var queues: Set<String> = []
            let id = try Self.insertWaiting(
                kind: kind,
                payload: payload,
                options: options,
                after: ids,
                required: policy == .allSucceeded,
                queues: &queues,
                on: c
            )
            try JobDependencies.notify(queues, on: c)
            return (id, queues)
        }
        Doorbell.ring(doorbells, queues: queues.sorted())
        return JobHandle(queue: self, id: id)
    }

    /// A chain that starts with `first`: add links with `then`, queue them all with
    /// ``JobChain/enqueue()``.
    ///
    /// ```swift
    /// let last = try queue.chain(Fetch(url: u)).then(Parse()).then(Store()).enqueue().last
    /// ```
    /// Each link runs once the one before it has completed, in any worker, and gets its output; a link that
    /// fails (discarded after its attempts, or cancelled) stops the rest (``WaitPolicy/allSucceeded``).
    public func chain<J: Job>(_ first: J, options: JobOptions = .default) -> JobChain<J> {
        var link = ChainLink(first, options)
        if first is any ChainedJob {
            // It would run with no link before it, and fail every time.
            link = ChainLink(
                failure: JobQueueError(
                    .invalidDependency,
                    "\(J.self) takes the output of a link before it: it cannot start a chain"
                ),
                options
            )
        }
        return JobChain(queue: self, links: [link])
    }

    /// Queues `members` to run together and `callback` to run once they have all ended (a chord), in one
    /// transaction. The callback gets each member's outcome, in order (``DependentJob/run(after:)``); with
    /// `.allSucceeded` it is stopped instead when a member fails.
    /// - Throws: ``JobQueueError`` `.invalidDependency` when `members` is empty or `callbackOptions` has
    ///   a unique key.
    public func group<J: Job, C: Job>(
        _ members: [J],
        options: JobOptions = .default,
        then callback: C,
        callbackOptions: JobOptions = .default,
        policy: WaitPolicy = .allFinished
    ) throws -> JobGroup<J, C> {
        guard !members.isEmpty else {
            throw JobQueueError(.invalidDependency, "a group needs at least one member")
        }
        let payload = try BinaryEncoder().encode(callback)
        let kind = try JobIdentity.name(of: C.self)
        let (ids, callbackID, queues) = try inTransaction { c in
            let ids = try Self.enqueue(members, options: options, on: c).map(\.id)
            var queues: Set<String> = []
            let callbackID = try Self.insertWaiting(
                kind: kind,
                payload: payload,
                options: callbackOptions,
                after: ids,
                required: policy == .allSucceeded,
                queues: &queues,
                on: c
            )
            try JobDependencies.notify(queues, on: c)
            return (ids, callbackID, queues)
        }
        var ring = queues
        if options.delay <= .zero { ring.insert(options.queue) }
        Doorbell.ring(doorbells, queues: ring.sorted())
        return JobGroup(
            members: ids.map { JobHandle(queue: self, id: $0) },
            callback: JobHandle(queue: self, id: callbackID)
        )
    }

    /// Runs `body` in a transaction on the queue's connection, again (up to three times) when the database
    /// ended it for a deadlock or a busy lock: PostgreSQL may pick a transaction that locks the jobs a job
    /// waits for, while a worker records them, as a deadlock's victim; nothing of it was committed.
    func inTransaction<R>(_ body: (any SQLConnection) throws -> R) throws -> R {
        var tries = 0
        while true {
            do {
                return try withConnection { c in try c.transaction(immediate: true) { try body(c) } }
            } catch let e as SQLError where e.kind == .busy && tries < 3 {
                tries += 1
            }
        }
    }

    /// Inserts a job in state `waiting` after the jobs `ids`, with its edges (resolved at once for jobs
    /// that have ended), and settles it when every one has ended, in the caller's transaction. The jobs
    /// waited for are locked first (PostgreSQL), so that none ends unseen between the look and the edge.
    static func insertWaiting(
        kind: String,
        payload: [UInt8],
        options: JobOptions,
        after ids: [Int64],
        required: Bool,
        queues: inout Set<String>,
        on c: any SQLConnection
    ) throws -> Int64 {
        guard !ids.isEmpty else {
            throw JobQueueError(.invalidDependency, "a job that waits needs at least one job to wait for")
        }
        guard options.uniqueKey == nil else {
            throw JobQueueError(
                .invalidDependency,
                "a job that waits for others cannot have a unique key (it would hold it while it waits)"
            )
        }
        let d = c.dialect
        let now = QueueSchema.nowMs()
        var states: [Int64: String] = [:]
        for chunk in Set(ids).sorted().chunks(of: 500) {
            let list = chunk.indices.map { d.parameter($0 - chunk.startIndex + 1) }.joined(separator: ", ")
            try c.forEachRow(
                "SELECT id, state FROM mp_jobs WHERE id IN (\(list)) ORDER BY id\(d.skipsLockedRows ? " FOR UPDATE" : "")",
                chunk.map { .int($0) }
            ) { r in states[r[0].intValue ?? 0] = r[1].textValue ?? "" }
        }
        if let missing = ids.first(where: { states[$0] == nil }) {
            throw JobQueueError(
                .notFound,
                "no job \(missing) to wait for (it never existed, or the retention cleaner deleted it)"
            )
        }
        let insert = JobInsert(
            kind: kind,
            options: options,
            now: now,
            state: "waiting",
            runAt: now + options.delay.wholeMilliseconds,
            payload: nil,
            waitsFor: ids.count
        )
        let sql = insert.statement(
            varying: "payload",
            type: "bytea",
            rows: 1,
            skippingTakenKey: false,
            returningIds: true,
            d
        )
        guard let child = try c.scalar(sql, insert.parameters([.blob(payload)]))?.intValue else {
            throw SQLError(.other, "the waiting job's insert returned no id")
        }
        for chunk in ids.enumerated().map({ $0 }).chunks(of: 250) {
            var parameters: [SQLValue] = [.int(child), .int(required ? 1 : 0)]
            let rows = chunk.map { (position, parent) -> String in
                parameters += [.int(Int64(position)), .int(parent)]
                let n = parameters.count
                return "(\(d.parameter(1)), \(d.parameter(n - 1)), \(d.parameter(n)), \(d.parameter(2)))"
            }
            try c.execute(
                "INSERT INTO mp_job_deps (child_id, position, parent_id, required) VALUES \(rows.joined(separator: ", "))",
                parameters
            )
        }
        let open = Set(ids).filter { !JobDependencies.endedStates.contains(states[$0] ?? "") }.sorted()
        for chunk in open.chunks(of: 500) {
            let list = chunk.indices.map { d.parameter($0 - chunk.startIndex + 1) }.joined(separator: ", ")
            try c.execute(
                "UPDATE mp_jobs SET dependents = dependents + 1 WHERE id IN (\(list))",
                chunk.map { .int($0) }
            )
        }
        if open.count < Set(ids).count {
            let edges = try JobDependencies.resolve("child_id = \(d.parameter(1))", [.int(child)], on: c)
            let stopped = try JobDependencies.settle(edges, now: now, queues: &queues, on: c)
            precondition(stopped.isEmpty, "a job just queued has no waiting jobs of its own")
        }
        return child
    }
}

/// Jobs queued to run one after another, each given the previous one's output: built by
/// ``JobQueue/chain(_:options:)`` and `then`, queued by ``enqueue()``.
public struct JobChain<Last: Job>: Sendable {
    let queue: JobQueue
    let links: [ChainLink]

    /// The chain with `next` after its last link, given that link's output (its `Input` is that `Output`).
    public func then<N: ChainedJob>(_ next: N, options: JobOptions = .default) -> JobChain<N>
    where N.Input == Last.Output {
        JobChain<N>(queue: queue, links: links + [ChainLink(next, options)])
    }

    /// The chain with `next` after its last link, reading the last link's outcome itself
    /// (``DependentJob/run(after:)``).
    public func then<N: DependentJob>(_ next: N, options: JobOptions = .default) -> JobChain<N> {
        JobChain<N>(queue: queue, links: links + [ChainLink(next, options)])
    }

    /// The chain with `next` after its last link: it runs once that link has completed, and takes nothing
    /// from it.
    public func then<N: Job>(ignoringOutput next: N, options: JobOptions = .default) -> JobChain<N> {
        JobChain<N>(queue: queue, links: links + [ChainLink(next, options)])
    }

    /// Queues every link in one transaction: the first to run at once (after its delay), each other one
    /// waiting for the one before it.
    /// - Throws: ``JobQueueError`` `.invalidDependency` when a link after the first has a unique key, or a
    ///   link's type cannot travel to a worker.
    public func enqueue() throws -> JobChainHandle<Last> {
        var encoded: [(kind: String, payload: [UInt8], options: JobOptions)] = []
        for l in links {
            switch l.payload {
            case .success(let p): encoded.append((l.kind, p, l.options))
            case .failure(let e): throw e
            }
        }
        let (ids, queues) = try queue.inTransaction { c in
            let first = encoded[0]
            let now = QueueSchema.nowMs()
            let insert = JobInsert(
                kind: first.kind,
                options: first.options,
                now: now,
                runAt: now + first.options.delay.wholeMilliseconds,
                payload: nil
            )
            let sql = insert.statement(
                varying: "payload",
                type: "bytea",
                rows: 1,
                skippingTakenKey: false,
                returningIds: true,
                c.dialect
            )
            guard let head = try c.scalar(sql, insert.parameters([.blob(first.payload)]))?.intValue else {
                throw SQLError(.other, "the chain's first insert returned no id")
            }
            var ids = [head]
            var queues: Set<String> = first.options.delay <= .zero ? [first.options.queue] : []
            for link in encoded.dropFirst() {
                ids.append(
                    try JobQueue.insertWaiting(
                        kind: link.kind,
                        payload: link.payload,
                        options: link.options,
                        after: [ids[ids.count - 1]],
                        required: true,
                        queues: &queues,
                        on: c
                    )
                )
            }
            return (ids, queues)
        }
        Doorbell.ring(queue.doorbells, queues: queues.sorted())
        return JobChainHandle(links: ids, last: JobHandle(queue: queue, id: ids[ids.count - 1]))
    }
}

/// A queued chain: its links' ids, first to last, and a handle on the last, whose result is the chain's.
public struct JobChainHandle<Last: Job>: Sendable {
    /// Every link's id, first to last (``JobQueue/info(_:)`` shows each).
    public let links: [Int64]
    /// The last link: its result is the chain's, and waiting for it (``JobHandle/result(timeout:)``)
    /// throws ``JobQueueError`` `.cancelled` when an earlier link failed and stopped it.
    public let last: JobHandle<Last>
}

/// A queued group: its members and the callback that runs once they have all ended.
public struct JobGroup<Member: Job, Callback: Job>: Sendable {
    /// The members, in the order given.
    public let members: [JobHandle<Member>]
    /// The callback (``JobState/waiting`` until every member has ended).
    public let callback: JobHandle<Callback>
}

/// One link of a chain, encoded when it is added (an error is thrown by `enqueue`).
struct ChainLink: Sendable {
    let kind: String
    let payload: Result<[UInt8], JobQueueError>
    let options: JobOptions
    init(failure: JobQueueError, _ options: JobOptions) {
        (kind, payload, self.options) = ("", .failure(failure), options)
    }

    init<J: Job>(_ job: J, _ options: JobOptions) {
        self.options = options
        do {
            let name = try JobIdentity.name(of: J.self)
            (kind, payload) = (name, .success(try BinaryEncoder().encode(job)))
        } catch {
            (kind, payload) = ("", .failure(JobQueueError(.invalidDependency, "\(J.self) cannot be queued: \(error)")))
        }
    }
}
