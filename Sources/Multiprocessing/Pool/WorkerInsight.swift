/// Where a worker's time went — mpire's "insights".
public struct WorkerInsight: Sendable {
    /// The worker's process id.
    public var pid: Int32
    /// From spawn to ready.
    public var startup: Duration?
    /// Time with no task assigned since it became ready.
    public var waiting: Duration
    /// Time spent running tasks (as the worker measured it).
    public var working: Duration
    /// Tasks (chunks) it has finished.
    public var tasks: Int
}
