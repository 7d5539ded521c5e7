import SystemCalls

/// One worker process of a pool: its process, descriptors and reading state. Its logical state (units in
/// flight, stop reason, counters) is ``PoolState/Worker``, under the same id.
final class WorkerIO: @unchecked Sendable {  // `let`s are immutable; the rest is the reactor thread's
    let id: PoolState.WorkerID
    let handle: ProcessHandle
    let channel: Connection
    let stderrFd: Int32
    let shared: SharedSlot
    /// The wake-up eventfd: user threads write it (cancelling an item) while the reactor thread may be
    /// releasing the slot, so its close waits for a write in progress.
    let wake: DescriptorLifetime
    var wakeFd: Int32 { wake.fd }
    let outbox: Outbox

    /// How old the worker's running item is, as the parent can tell. Under the pool's lock.
    var itemAges = ItemAges()

    /// How long the running item `index` of `unit` has run, at `now` (coarse clock); see ``ItemAges``.
    /// Under the pool's lock.
    func itemAge(unit: UInt64, index: UInt64, stamped: Bool, now: UInt64) -> UInt64 {
        itemAges.age(unit: unit, index: index, stamp: shared.itemStart, stamped: stamped, now: now)
    }

    // Reactor thread only.
    var reader = FrameDecoder.pool()
    var sawReady = false
    /// The worker sent something unacceptable: nothing more it sent is read (it is being killed).
    var brokeProtocol = false
    /// What the worker wrote to standard error: kept for its errors, passed on line by line.
    var stderr = StderrCapture()

    init(
        id: PoolState.WorkerID,
        handle: ProcessHandle,
        channel: Connection,
        stderrFd: Int32,
        shared: SharedSlot,
        wakeFd: Int32,
        outbox: Outbox
    ) {
        self.id = id
        self.handle = handle
        self.channel = channel
        self.stderrFd = stderrFd
        self.shared = shared
        self.wake = DescriptorLifetime(wakeFd)
        self.outbox = outbox
    }

    var pid: Int32 { handle.pid }

    /// Closes what this slot owns — the outbox's descriptor, the channel, the stderr pipe, the wake-up
    /// eventfd — and unmaps the shared page, once the worker has exited and everything it sent was read.
    /// The pidfd is the handle's, closed by it.
    func release() {
        outbox.release()
        Reactor.started?.cancelWaits(on: channel.fileDescriptor)
        channel.close()
        Reactor.started?.cancelWaits(on: stderrFd)
        Syscall.close(stderrFd)
        wake.close()
        shared.unmap()
    }

    /// Wakes the worker's cancellation watcher (an eventfd write; a dead worker's is ignored).
    func wakeWorker() {
        _ = wake.use { fd in withUnsafeBytes(of: UInt64(1)) { try? Syscall.writeAll(fd, $0) } }
    }

}

/// How long a worker's running item has run, as the parent can tell (coarse-clock nanoseconds).
///
/// Exact from the worker's stamp when it stamps each item (`stamped`: a unit with a time limit, which the
/// supervisor measures from it) or for a unit's first item (stamped as the unit starts). Other items
/// publish only their index, and their age runs from when the parent first saw them running: never
/// longer than the truth, so nothing is judged overdue early (only up to one look late).
struct ItemAges: Sendable {
    /// The running item last seen without a stamp of its own, and when it was first seen.
    private var seen: (unit: UInt64, index: UInt64, at: UInt64) = (0, 0, 0)

    mutating func age(unit: UInt64, index: UInt64, stamp: UInt64, stamped: Bool, now: UInt64) -> UInt64 {
        let sinceStamp = now &- min(now, stamp)
        if stamped || index == 0 { return sinceStamp }
        if seen.unit != unit || seen.index != index { seen = (unit, index, now) }
        return min(sinceStamp, now &- min(now, seen.at))
    }
}
