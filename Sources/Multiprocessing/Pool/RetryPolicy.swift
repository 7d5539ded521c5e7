/// When to run a task again after it failed.
public struct RetryPolicy: Sendable, Hashable {
    /// A reason a task failed.
    public enum Cause: Sendable, Hashable {
        /// The worker running it died (a trap, a signal, `exit`).
        case crash
        /// It ran past its timeout.
        case timeout
        /// It threw an error.
        case error
    }

    /// How many times a task may run in all (1: never retried).
    public var attempts: Int
    /// The wait before the first retry; doubled (by `multiplier`) for each further one.
    public var backoff: Duration
    /// The factor the wait grows by before each further retry.
    public var multiplier: Double
    /// The causes that are retried.
    public var causes: Set<Cause>
    /// A task that has killed this many workers fails, whatever `attempts` says: it is not retried forever.
    public var maxWorkerKills: Int

    /// A policy: up to `attempts` runs in all, waiting `backoff` (times `multiplier` per further retry) for the causes listed; a task that killed `maxWorkerKills` workers is not run again.
    public init(
        attempts: Int = 3,
        backoff: Duration = .milliseconds(50),
        multiplier: Double = 2,
        on causes: Set<Cause> = [.crash, .timeout],
        maxWorkerKills: Int = 2
    ) {
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.multiplier = multiplier
        self.causes = causes
        self.maxWorkerKills = max(1, maxWorkerKills)
    }

    /// No retries (the default).
    public static let none = RetryPolicy(attempts: 1, on: [])

    func delay(beforeAttempt n: Int) -> Duration {
        var d = backoff
        if n > 2 { for _ in 2..<n { d = d * multiplier } }
        return d
    }
}
