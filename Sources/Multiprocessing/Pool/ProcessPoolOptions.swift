public import Logging

/// Pool-wide settings.
public struct ProcessPoolOptions: Sendable {
    /// Python's `maxtasksperchild`: a worker is replaced after this many tasks (a chunk counts as one).
    public var maxTasksPerChild: Int?
    /// A worker whose resident memory exceeds this many bytes (checked between tasks) is replaced.
    public var memoryLimit: Int?
    /// More than `count` unexpected worker deaths within `window` fail the pool with
    /// ``PoolError/Code/broken`` instead of spawning workers forever.
    public var deathLimit: (count: Int, window: Duration)
    /// How many of the last lines of a dead worker's standard error its error carries.
    public var stderrLines: Int
    /// Forward workers' standard error to this process's (they are also kept for error reports).
    public var forwardStderr: Bool
    /// Where forwarded standard error goes (tests capture it; default: this process's fd 2).
    var stderrSink: (@Sendable ([UInt8]) -> Void)? = nil
    /// What Ctrl-C does to the pool and the program.
    public var interrupt: InterruptBehavior
    /// What a crashing worker reports (and how long its crash takes to reach the caller).
    public var crashReport: CrashReport
    /// The pool's name in logs and in its metrics' `pool` dimension.
    public var name: String
    /// Where the pool says what happens: workers started (debug), workers that died (warning, with the
    /// cause), the pool breaking (error). Default: nothing is logged. Metrics go to the program's
    /// swift-metrics backend, if it bootstrapped one (see the ``ProcessPool`` documentation).
    public var logger: Logger

    /// Pool-wide settings; the defaults suit most programs (see each property).
    public init(
        maxTasksPerChild: Int? = nil,
        memoryLimit: Int? = nil,
        deathLimit: (count: Int, window: Duration) = (20, .seconds(10)),
        stderrLines: Int = 20,
        forwardStderr: Bool = true,
        interrupt: InterruptBehavior = .tearDownAndExit,
        crashReport: CrashReport = .message,
        name: String = "pool",
        logger: Logger = Logger(label: "swift-multiprocessing.pool", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.crashReport = crashReport
        self.name = name
        self.logger = logger
        self.maxTasksPerChild = maxTasksPerChild
        self.memoryLimit = memoryLimit
        self.deathLimit = deathLimit
        self.stderrLines = stderrLines
        self.forwardStderr = forwardStderr
        self.interrupt = interrupt
    }
}
