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
