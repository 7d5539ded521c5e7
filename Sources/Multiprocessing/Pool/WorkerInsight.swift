internal import CMultiprocessingShims

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
    /// How long the item it runs now has run (nil while it runs none): a long one is a hang, or a big item.
    /// Exact for a unit's first item and for calls with a `timeout` or `softTimeout`; for later items of
    /// other calls, the time since the pool first saw the item running (their workers stamp no clock per
    /// item), so it may read short, never long.
    public var currentItemAge: Duration? = nil
    /// Its peak resident memory in bytes (the kernel's high-water mark, `VmHWM`), read when the snapshot
    /// was taken (``ProcessPool/currentProgress``; not in ``ProcessPool/progress(every:)``'s periodic
    /// snapshots); nil when it could not be read or was not asked for.
    public var peakMemory: Int? = nil
    /// Whether it runs an item now.
    public var busy: Bool { currentItemAge != nil }
}

/// Memory figures of a process, from `/proc`.
enum ProcessMemory {
    /// `pid`'s peak resident memory in bytes (`VmHWM`), or nil when it cannot be read (it exited).
    static func peakResident(pid: Int32) -> Int? {
        let n = mp_peak_resident_bytes(pid)
        return n >= 0 ? n : nil
    }
}
