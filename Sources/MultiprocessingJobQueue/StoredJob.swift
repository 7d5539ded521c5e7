import Multiprocessing
import Synchronization
import Threading

/// A job as the queue stores it — its type's name and its encoded value — run in a pool worker: the
/// worker finds the type by name (the worker runs the same program), decodes the job, runs it, and
/// returns the encoded output.
struct StoredJob: Job {
    let kind: String
    let payload: [UInt8]
    /// The outcomes of the jobs it waited for (an encoded ``JobOutcomes``), given to it as
    /// ``JobOutcomes/current``; nil for a job that waited for none.
    var inputs: [UInt8]? = nil

    init(kind: String, payload: [UInt8], inputs: [UInt8]? = nil) {
        self.kind = kind
        self.payload = payload
        self.inputs = inputs
    }

    func run() async throws -> [UInt8] {
        guard let type = Self.resolve(kind) else {
            throw JobQueueError(
                .unknownJob,
                "this program has no job type \(readableTypeName(mangled: kind)): run the worker from the "
                    + "program that defines it"
            )
        }
        guard let inputs else { return try await Self.run(type, payload) }
        let outcomes: JobOutcomes
        do {
            outcomes = try BinaryDecoder().decode(JobOutcomes.self, from: inputs)
        } catch {
            throw JobQueueError(.malformedJob, "the outcomes of the jobs it waited for cannot be decoded: \(error)")
        }
        return try await JobOutcomes.$current.withValue(outcomes) { try await Self.run(type, payload) }
    }

    private static func run<J: Job>(_ type: J.Type, _ payload: [UInt8]) async throws -> [UInt8] {
        let job: J
        do {
            job = try BinaryDecoder().decode(J.self, from: payload)
        } catch {
            throw JobQueueError(.malformedJob, "the stored \(J.self) cannot be decoded: \(error)")
        }
        let output: J.Output = try await job.run()
        return try BinaryEncoder().encode(output)
    }

    private static let cache = TrackedMutex<[String: (any Job.Type)?]>([:])

    static func resolve(_ kind: String) -> (any Job.Type)? {
        if let hit = cache.withLock({ $0[kind] }) { return hit }
        let t = _typeByName(kind) as? any Job.Type
        cache.withLock { $0[kind] = t }
        return t
    }
}

/// Short jobs run as one pool task: their outcomes come back together. A job's error is its own outcome;
/// only a crash of the worker process fails the chunk (whose jobs the queue worker then runs one by one).
struct StoredJobChunk: Job {
    let jobs: [StoredJob]

    func run() async throws -> [StoredOutcome] {
        var out: [StoredOutcome] = []
        out.reserveCapacity(jobs.count)
        for job in jobs {
            // A cancelled chunk (one of its jobs was asked to stop) fails as a whole: the queue worker runs
            // the others again alone, so no job is charged for another's cancellation.
            try Task.checkCancellation()
            do {
                out.append(.success(try await job.run()))
            } catch is CancellationError {
                throw CancellationError()
            } catch let e as JobQueueError {
                out.append(.queueError(e))
            } catch {
                out.append(.failure("\(error)"))
            }
        }
        return out
    }
}

/// One job's outcome in a chunk.
enum StoredOutcome: Codable, Sendable {
    case success([UInt8])
    case queueError(JobQueueError)
    case failure(String)

    var result: Result<[UInt8], any Error> {
        switch self {
        case .success(let b): .success(b)
        case .queueError(let e): .failure(e)
        case .failure(let message): .failure(JobFailure(message: message))
        }
    }
}

/// A job's error, as its description, from a chunk.
struct JobFailure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// Why a queue call failed.
///
/// `Codable`, so that an error raised in a pool worker (an unknown or malformed job) reaches the queue
/// worker as itself, and is known there as final: it is not retried.
public struct JobQueueError: Error, CustomStringConvertible, Sendable, Equatable, Codable {
    /// What kind of failure it was: compare with the static members (`.failed`, `.timedOut`, …). A struct,
    /// not an enum, so that codes can be added without breaking a caller's `switch`.
    public struct Code: Hashable, Sendable, CustomStringConvertible, Codable {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        /// The code's name, spelt as its static member (`timedOut`).
        public var description: String { raw }
        /// Whether running the job again cannot help: it fails the same way every time.
        var isFinal: Bool { self == .unknownJob || self == .malformedJob || self == .resultTooLarge }
        /// The job failed on its last attempt; ``JobQueueError/message`` holds its error history.
        public static let failed = Code("failed")
        /// The job was cancelled.
        public static let cancelled = Code("cancelled")
        /// No result within the time asked for.
        public static let timedOut = Code("timedOut")
        /// No job has that id (or it was removed by the retention cleaner).
        public static let notFound = Code("notFound")
        /// The worker's program does not contain the job's type.
        public static let unknownJob = Code("unknownJob")
        /// The stored job cannot be decoded as its type (the type changed since it was queued, or the row
        /// was altered).
        public static let malformedJob = Code("malformedJob")
        /// The job's result is larger than the queue stores.
        public static let resultTooLarge = Code("resultTooLarge")
        /// The database's schema is newer than this library.
        public static let schema = Code("schema")
        /// Another job with the same unique key is queued or running (``JobQueue/retry(_:)``).
        public static let conflict = Code("conflict")
        /// A queue limit no claim could keep (``JobQueue/setLimit(_:for:)``).
        public static let invalidLimit = Code("invalidLimit")
        /// A schedule that cannot be kept: a cron expression or interval that is not valid, a time zone
        /// this machine does not know, a name that is empty or too long
        /// (``JobQueue/schedule(_:_:_:missed:options:)``).
        public static let invalidSchedule = Code("invalidSchedule")
        /// A job that waits for others that cannot be queued: nothing to wait for, a unique key on a job
        /// that waits, a link of a chain whose type cannot travel (``JobQueue/enqueue(_:after:policy:options:)``).
        public static let invalidDependency = Code("invalidDependency")
    }
    /// What kind of failure it was, to match on.
    public let code: Code
    /// What happened, for people; for ``JobQueueError/Code/failed``, the job's error history (a line per
    /// failed attempt).
    public let message: String
    /// An error with `code` and `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    /// `code: message`, as in `timedOut: job 7 did not finish within 30.0 seconds`.
    public var description: String { "\(code): \(message)" }
}
