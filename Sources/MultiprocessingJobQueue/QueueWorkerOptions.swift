public import Logging

/// How a ``QueueWorker`` claims, runs and looks after jobs.
public struct QueueWorkerOptions: Sendable {
    /// The queues served.
    public var queues: [String]
    /// Jobs run at once (default: the pool's workers).
    public var concurrency: Int?
    /// A claimed job's lease: renewed every third of it while the job runs; a job whose lease ran out
    /// (its worker died, hung or lost the database) is run again (or discarded after its last attempt)
    /// by whichever worker sees it first.
    public var lease: Duration
    /// How often an idle worker looks for jobs.
    public var pollInterval: Duration
    /// The most jobs claimed in one statement.
    public var claimBatch: Int
    /// The most jobs claimed beyond ``concurrency`` and queued in the pool, so that its workers never wait
    /// for a claim (graphile-worker's local queue, but sized to the work). The worker keeps about
    /// ``bufferedWork`` of work there, from the rate at which its jobs finish: short jobs get a deep
    /// buffer (one claim per hundred jobs or more), long ones almost none, so a worker never hoards slow
    /// jobs that idle workers could run. Buffered jobs hold leases like running ones: if this worker dies
    /// they run elsewhere after their lease; on a graceful stop they are handed back. 0 claims only as
    /// many jobs as run at once.
    public var localBuffer: Int
    /// How much work, in time, the local buffer holds (see ``localBuffer``).
    public var bufferedWork: Duration
    /// Results larger than this are not stored: the attempt fails with `.resultTooLarge`.
    public var maxResultBytes: Int
    /// How long completed jobs are kept before the cleaner deletes them.
    public var keepCompleted: Duration
    /// How long discarded and cancelled jobs are kept (with their error history).
    public var keepFailed: Duration
    /// On ``QueueWorker/stop(_:)`` with `.finish`, how long running jobs may take before they are handed
    /// back.
    public var shutdownGrace: Duration
    /// This worker's name in the jobs it holds (default `host:pid:n`, `n` a random number).
    public var name: String?
    /// Wake as soon as jobs are queued, where the database can say so (PostgreSQL's `LISTEN`/`NOTIFY`, on
    /// a second connection), polling every ``pollInterval`` as well for delayed jobs, retries and lost
    /// notifications. Set it to false behind a connection pooler in transaction mode (PgBouncer), where
    /// `LISTEN` does not work: the worker then only polls.
    public var notifications: Bool
    /// Return from ``QueueWorker/run()`` once the queues are drained: no job in them is waiting, due later
    /// (a delayed job, a retry) or running anywhere — except jobs of types this program does not define,
    /// which are left to workers that do. A batch program's worker: queue the work, drain it, exit.
    public var exitWhenDrained: Bool
    /// Queue the jobs of the periodic schedules (``JobQueue/schedule(_:_:_:missed:options:)``) of the
    /// worker's queues as they fall due. Every worker may: each occurrence is queued once however many
    /// do. Turn it off for workers that should only run jobs.
    public var schedules: Bool
    /// Where the worker logs (start, stop, failures, rescues).
    public var logger: Logger

    /// Settings for a ``QueueWorker``; each parameter sets the property of the same name. The defaults:
    /// the `default` queue; as many jobs at once as the pool has workers; a 30-second lease; a poll every
    /// 50 ms; claims of up to 128 jobs; a local buffer of up to 256 jobs holding about 50 ms of work;
    /// results up to 1 MiB; completed jobs kept a day and failed ones a week; 30 seconds' grace on a
    /// stop; notifications where the database has them; no exit when drained; periodic schedules run; a
    /// logger that discards everything. A `claimBatch` below 1 counts as 1, a negative `localBuffer` as 0.
    public init(
        queues: [String] = ["default"],
        concurrency: Int? = nil,
        lease: Duration = .seconds(30),
        pollInterval: Duration = .milliseconds(50),
        claimBatch: Int = 128,
        localBuffer: Int = 256,
        bufferedWork: Duration = .milliseconds(50),
        maxResultBytes: Int = 1 << 20,
        keepCompleted: Duration = .seconds(24 * 3600),
        keepFailed: Duration = .seconds(7 * 24 * 3600),
        shutdownGrace: Duration = .seconds(30),
        name: String? = nil,
        notifications: Bool = true,
        exitWhenDrained: Bool = false,
        schedules: Bool = true,
        logger: Logger = Logger(label: "swift-multiprocessing.queue", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.queues = queues
        self.concurrency = concurrency
        self.lease = lease
        self.pollInterval = pollInterval
        self.claimBatch = max(1, claimBatch)
        self.localBuffer = localBuffer
        self.bufferedWork = bufferedWork
        self.maxResultBytes = maxResultBytes
        self.keepCompleted = keepCompleted
        self.keepFailed = keepFailed
        self.shutdownGrace = shutdownGrace
        self.name = name
        self.notifications = notifications
        self.exitWhenDrained = exitWhenDrained
        self.schedules = schedules
        self.logger = logger
    }
}
