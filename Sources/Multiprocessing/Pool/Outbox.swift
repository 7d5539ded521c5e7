internal import CMultiprocessingShims
import Glibc
import Threading

/// Bytes waiting to be written to one worker. Frames are appended in the order the pool's state numbered
/// them, and written by whichever thread flushes, never blocking it: the reactor thread must never wait on a
/// worker that is itself waiting for the reactor to read its replies. A write that would block is handed
/// to a background thread that waits for the socket to drain.
///
/// The outbox writes through its own duplicate of the channel's descriptor, which it closes itself once
/// it is released and no writer is using it: a writer never sends on a number that the channel's owner
/// has closed and the system has given to something else.
final class Outbox: @unchecked Sendable {  // state behind `lock`
    private let fd: Int32
    private var released = false
    private var fdClosed = false
    private let lock = Lock()
    private var buffer: [UInt8] = []
    private var writing = false
    private var closed = false
    private var nextSeq: UInt64 = 0
    private var early: [UInt64: [UInt8]] = [:]

    private static let background = ThreadPool(maxWorkers: 64, threadNamePrefix: "mp-pool-writer")

    /// Writes to a duplicate of `channel`.
    /// - Throws: when the duplicate cannot be made (out of descriptors): an outbox without one could not
    ///   deliver anything, to a worker that is alive and would wait for work for ever.
    init(channel: Int32) throws { fd = try Syscall.dup(channel) }

    /// The duplicate this outbox writes through (for leak tests).
    var descriptor: Int32 { fd }

    deinit { if fd >= 0 && !fdClosed { Syscall.close(fd) } }

    /// Appends the frames of send number `seq` (numbered from 0 by the pool's state). Sends performed
    /// out of order by different threads are held until those before them arrive.
    func append(_ bytes: [UInt8], seq: UInt64) {
        lock.withLock {
            guard !closed else { return }
            guard seq == nextSeq else {
                early[seq] = bytes
                return
            }
            buffer += bytes
            nextSeq += 1
            while !early.isEmpty, let more = early.removeValue(forKey: nextSeq) {
                buffer += more
                nextSeq += 1
            }
        }
    }

    /// Stops writing (the worker is gone); pending bytes are dropped. A writer in the middle of a send
    /// stops at its next step.
    func close() {
        lock.withLock {
            closed = true
            buffer = []
        }
    }

    /// Closes the descriptor once no writer uses it (now, or when the writer stops). After ``close()``.
    func release() {
        let closeNow = lock.withLock { () -> Bool in
            closed = true
            released = true
            return takeDescriptorIfIdle()
        }
        if closeNow { Syscall.close(fd) }
    }

    /// Whether the descriptor is to be closed now (released, no writer, not closed yet). Lock held.
    private func takeDescriptorIfIdle() -> Bool {
        guard released, !writing, !fdClosed, fd >= 0 else { return false }
        fdClosed = true
        return true
    }

    /// Writes what is pending without blocking the caller.
    func flush() {
        guard var data = take() else { return }
        var sent = 0
        while true {
            while sent < data.count {
                guard let k = sendSome(data, from: sent) else {
                    stopWriting()  // EPIPE and the like: the worker is gone, its death is handled elsewhere
                    return
                }
                if k > 0 {
                    sent += k
                    continue
                }
                // The socket is full: a background writer finishes, so the caller never blocks.
                let rest = Array(data[sent...])
                _ = try? Outbox.background.submit { [self] in self.finishBlocking(rest) }
                return
            }
            guard let more = takeMore() else { return }
            data = more
            sent = 0
        }
    }

    /// Sends what the socket takes of `data[from...]` now: the bytes sent (0 if it would block), or `nil`
    /// if the worker is gone.
    private func sendSome(_ data: [UInt8], from: Int) -> Int? {
        do {
            return try data.withUnsafeBytes { p in try Syscall.sendNow(fd, UnsafeRawBufferPointer(rebasing: p[from...]))
            } ?? 0
        } catch {
            return nil
        }
    }

    private func take() -> [UInt8]? {
        lock.withLock {
            guard !writing, !buffer.isEmpty, !closed else { return nil }
            writing = true
            defer { buffer = [] }
            return buffer
        }
    }

    /// The next bytes for the current writer, or `nil` (and the writer role released) when none.
    private func takeMore() -> [UInt8]? {
        let (more, closeNow) = lock.withLock { () -> ([UInt8]?, Bool) in
            guard !buffer.isEmpty, !closed else {
                writing = false
                return (nil, takeDescriptorIfIdle())
            }
            defer { buffer = [] }
            return (buffer, false)
        }
        if closeNow { Syscall.close(fd) }
        return more
    }

    /// The worker cannot be written to: stop for good.
    private func stopWriting() {
        let closeNow = lock.withLock { () -> Bool in
            closed = true
            buffer = []
            writing = false
            return takeDescriptorIfIdle()
        }
        if closeNow { Syscall.close(fd) }
    }

    /// Finishes a write the socket could not take at once. Waits for room without a time limit: the
    /// outbox is closed only after its worker has exited, and a socket whose peer has exited is always
    /// ready (the send then fails and the writer stops), so no polling for `closed` is needed.
    private func finishBlocking(_ first: [UInt8]) {
        var data = first
        while true {
            var sent = 0
            while sent < data.count {
                if lock.withLock({ closed }) {
                    stopWriting()
                    return
                }
                guard (try? Syscall.poll(fd, events: Int16(POLLOUT), deadline: nil)) == true,
                    let k = sendSome(data, from: sent)
                else {
                    stopWriting()
                    return
                }
                sent += k
            }
            guard let more = takeMore() else { return }
            data = more
        }
    }
}
