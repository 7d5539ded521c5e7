/// The errors of the Threading module.
///
/// Python raises a different exception class for each case (`queue.Empty`, `queue.Full`,
/// `queue.ShutDown`, `threading.BrokenBarrierError`, `RuntimeError`, `ValueError`); here they are one
/// error type with an extensible ``Code``, so `catch let e as ThreadingError where e.code == .empty`.
public struct ThreadingError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        /// The code's name.
        public var description: String { raw }

        /// A non-blocking or timed `get` found the queue empty (Python's `queue.Empty`).
        public static let empty = Code("empty")
        /// A non-blocking or timed `put` found the queue full (Python's `queue.Full`).
        public static let full = Code("full")
        /// The queue was shut down (Python 3.13's `queue.ShutDown`).
        public static let shutDown = Code("shutDown")
        /// A thread released or waited on a lock it does not own (Python's `RuntimeError`).
        public static let notOwner = Code("notOwner")
        /// `release()` on a lock that is not locked (Python's `RuntimeError`).
        public static let releaseUnlocked = Code("releaseUnlocked")
        /// A bounded semaphore was released more often than acquired (Python's `ValueError`).
        public static let overRelease = Code("overRelease")
        /// The barrier is broken: aborted, reset, timed out, or its action failed (`BrokenBarrierError`).
        public static let brokenBarrier = Code("brokenBarrier")
        /// `start()` called twice on a thread.
        public static let alreadyStarted = Code("alreadyStarted")
        /// `join()` before `start()`, or a thread joining itself.
        public static let cannotJoin = Code("cannotJoin")
        /// The thread could not be created (`pthread_create` failed).
        public static let threadCreation = Code("threadCreation")
        /// `taskDone()` called more times than items were put (Python's `ValueError`).
        public static let tooManyTaskDone = Code("tooManyTaskDone")
        /// A timed wait ran out (Python's `TimeoutError` from `Future.result`).
        public static let timedOut = Code("timedOut")
        /// The future was cancelled (Python's `CancelledError`).
        public static let cancelled = Code("cancelled")
        /// Work submitted to a pool that is shut down, closed or terminated.
        public static let poolShutDown = Code("poolShutDown")
        /// A worker's initializer failed, so the pool cannot run work (Python's `BrokenThreadPool`).
        public static let brokenPool = Code("brokenPool")
        /// An argument out of range (Python's `ValueError`).
        public static let invalidArgument = Code("invalidArgument")
    }

    /// What went wrong.
    public let code: Code
    /// A sentence for people.
    public let message: String

    /// Creates an error with a code and a message.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The code and the message.
    public var description: String { "ThreadingError.\(code): \(message)" }
}

extension ThreadingError {
    @usableFromInline static let empty = ThreadingError(.empty, "the queue is empty")
    @usableFromInline static let full = ThreadingError(.full, "the queue is full")
    @usableFromInline static let shutDown = ThreadingError(.shutDown, "the queue is shut down")
}
