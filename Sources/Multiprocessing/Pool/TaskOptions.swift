/// Per-call options: timeouts, cancellation grace and retries.
public struct TaskOptions: Sendable {
    /// Hard limit on one task's running time: past it the worker is stopped (SIGTERM, then SIGKILL after
    /// `killGrace`), the task fails with ``PoolError/Code/timedOut`` and the worker is replaced.
    public var timeout: Duration?
    /// Soft limit: past it the task's Swift `Task` is cancelled inside the worker (a cooperative job
    /// throws `CancellationError`, reported as ``PoolError/Code/timedOut``).
    public var softTimeout: Duration?
    /// How long a cancelled or soft-timed-out task may keep running before its worker is killed.
    public var cancelGrace: Duration
    /// Time between SIGTERM and SIGKILL when a worker is stopped.
    public var killGrace: Duration
    /// Which failures are run again, how often and after what wait.
    public var retry: RetryPolicy
    /// How a map-like call (`map`, `mapResults`, `imap`, `imapUnordered`, `starmap`) shows its progress:
    /// `.bar` for a terminal bar, `.handler` for your own code. Shown from a thread of its own, so a
    /// caller that blocks its thread (or the main actor) does not freeze it.
    public var progress: ProgressDisplay?

    /// Options for a call; every limit is off by default, as in Python.
    public init(
        timeout: Duration? = nil,
        softTimeout: Duration? = nil,
        cancelGrace: Duration = .seconds(1),
        killGrace: Duration = .milliseconds(500),
        retry: RetryPolicy = .none,
        progress: ProgressDisplay? = nil
    ) {
        self.progress = progress
        self.timeout = timeout
        self.softTimeout = softTimeout
        self.cancelGrace = cancelGrace
        self.killGrace = killGrace
        self.retry = retry
    }

    /// Whether a limit runs from each item's start (`timeout`, `softTimeout`): its workers then stamp
    /// every item's start with the clock, which the supervisor measures the limits from.
    var limitsItemTime: Bool { timeout != nil || softTimeout != nil }

    /// No timeouts, no retries.
    public static let `default` = TaskOptions()

    /// A terminal progress bar and no other option — mpire's `progress_bar=True`:
    /// `try pool.map(f, xs, options: .progressBar)`.
    public static let progressBar = TaskOptions(progress: .bar)
}
