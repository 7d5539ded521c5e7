internal import CMultiprocessingShims
import Glibc
import Threading

/// Bytes waiting to be written to one worker. Frames are appended in the order the pool's state numbered
/// them, as byte arrays (a chunk's items go in the unit's own array, not copied), and written by whichever
/// thread flushes, in one `sendmsg` for several arrays, never blocking it: the reactor thread must never wait on a
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
    private var pending: [[UInt8]] = []
    private var writing = false
    private var closed = false
    private var nextSeq: UInt64 = 0
    private var early: [UInt64: [[UInt8]]] = [:]

    private static let background = ThreadPool(maxWorkers: 64, threadNamePrefix: "mp-pool-writer")

    /// Writes to a duplicate of `channel`.
    /// - Throws: when the duplicate cannot be made (out of descriptors): an outbox without one could not
    ///   deliver anything, to a worker that is alive and would wait for work for ever.
    init(channel: Int32) throws { fd = try Syscall.dup(channel) }

    /// The duplicate this outbox writes through (for leak tests).
    var descriptor: Int32 { fd }

    deinit { if fd >= 0 && !fdClosed { Syscall.close(fd) } }

    /// Appends the frames of send number `seq` (numbered from 0 by the pool's state): `bytes`, written in
    /// order. Sends performed out of order by different threads are held until those before them arrive.
    func append(_ bytes: [[UInt8]], seq: UInt64) {
        lock.withLock {
            guard !closed else { return }
            guard seq == nextSeq else {
                early[seq] = bytes
                return
            }
            queue(bytes)
            nextSeq += 1
            while !early.isEmpty, let more = early.removeValue(forKey: nextSeq) {
                queue(more)
                nextSeq += 1
            }
        }
    }

    /// Arrays smaller than this are copied onto the end of a small pending array rather than queued on
    /// their own: a backlog of tiny frames then goes out in one system call, not 16 frames per call.
    private static var small: Int { 16 << 10 }

    /// Adds `bytes` to what is pending. Lock held.
    private func queue(_ bytes: [[UInt8]]) {
        for array in bytes where !array.isEmpty {
            if array.count < Self.small, let last = pending.indices.last, pending[last].count < Self.small {
                pending[last].append(contentsOf: array)
            } else {
                pending.append(array)
            }
        }
    }

    /// Stops writing (the worker is gone); pending bytes are dropped. A writer in the middle of a send
    /// stops at its next step.
    func close() {
        lock.withLock {
            closed = true
            pending = []
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
        guard var out = take() else { return }
        while true {
            while !out.isDone {
                guard let k = sendSome(&out) else {
                    stopWriting()  // EPIPE and the like: the worker is gone, its death is handled elsewhere
                    return
                }
                if k > 0 { continue }
                // The socket is full: a background writer finishes, so the caller never blocks.
                let rest = out
                _ = try? Outbox.background.submit { [self] in self.finishBlocking(rest) }
                return
            }
            guard let more = takeMore() else { return }
            out = more
        }
    }

    /// Sends what the socket takes of `out` now and advances it: the bytes sent (0 if it would block),
    /// or `nil` if the worker is gone.
    private func sendSome(_ out: inout Outgoing) -> Int? {
        var vectors: [iovec] = []
        vectors.reserveCapacity(Outgoing.maxVectors)
        do {
            let k = try out.withVectors(&vectors) { try Syscall.sendNow(fd, vectors: $0) } ?? 0
            out.advance(k)
            return k
        } catch {
            return nil
        }
    }

    private func take() -> Outgoing? {
        lock.withLock {
            guard !writing, !pending.isEmpty, !closed else { return nil }
            writing = true
            defer { pending = [] }
            return Outgoing(pending)
        }
    }

    /// The next bytes for the current writer, or `nil` (and the writer role released) when none.
    private func takeMore() -> Outgoing? {
        let (more, closeNow) = lock.withLock { () -> (Outgoing?, Bool) in
            guard !pending.isEmpty, !closed else {
                writing = false
                return (nil, takeDescriptorIfIdle())
            }
            defer { pending = [] }
            return (Outgoing(pending), false)
        }
        if closeNow { Syscall.close(fd) }
        return more
    }

    /// The worker cannot be written to: stop for good.
    private func stopWriting() {
        let closeNow = lock.withLock { () -> Bool in
            closed = true
            pending = []
            writing = false
            return takeDescriptorIfIdle()
        }
        if closeNow { Syscall.close(fd) }
    }

    /// Finishes a write the socket could not take at once. Waits for room without a time limit: the
    /// outbox is closed only after its worker has exited, and a socket whose peer has exited is always
    /// ready (the send then fails and the writer stops), so no polling for `closed` is needed.
    private func finishBlocking(_ first: Outgoing) {
        var out = first
        while true {
            while !out.isDone {
                if lock.withLock({ closed }) {
                    stopWriting()
                    return
                }
                guard (try? Syscall.poll(fd, events: Int16(POLLOUT), deadline: nil)) == true,
                    sendSome(&out) != nil
                else {
                    stopWriting()
                    return
                }
            }
            guard let more = takeMore() else { return }
            out = more
        }
    }
}

/// Byte arrays to write in order, and how far the writing has got.
struct Outgoing: Sendable {
    /// Arrays passed to one `sendmsg` at most.
    static var maxVectors: Int { 16 }

    private let arrays: [[UInt8]]
    private var index = 0  // the first array not wholly sent
    private var offset = 0  // bytes of it sent

    init(_ arrays: [[UInt8]]) {
        self.arrays = arrays
        skipEmpty()
    }

    var isDone: Bool { index == arrays.count }

    /// Marks `n` more bytes sent.
    mutating func advance(_ n: Int) {
        var n = n
        while n > 0 {
            let left = arrays[index].count - offset
            if n < left {
                offset += n
                return
            }
            n -= left
            index += 1
            offset = 0
        }
        skipEmpty()
    }

    private mutating func skipEmpty() {
        while index < arrays.count && arrays[index].count == offset {
            index += 1
            offset = 0
        }
    }

    /// Calls `body` with vectors over what is left of up to ``maxVectors`` arrays, valid during the call.
    func withVectors<R>(
        _ vectors: inout [iovec],
        _ body: (UnsafeMutableBufferPointer<iovec>) throws -> R
    ) rethrows -> R {
        try Self.withVectors(arrays[index...], from: offset, &vectors, body)
    }

    private static func withVectors<R>(
        _ arrays: ArraySlice<[UInt8]>,
        from offset: Int,
        _ vectors: inout [iovec],
        _ body: (UnsafeMutableBufferPointer<iovec>) throws -> R
    ) rethrows -> R {
        guard let first = arrays.first, vectors.count < maxVectors else {
            return try vectors.withUnsafeMutableBufferPointer { try body($0) }
        }
        // Each array's bytes are pinned by a nested call, so every vector stays valid inside `body`.
        return try first.withUnsafeBytes { p in
            if p.count > offset {
                vectors.append(
                    iovec(
                        iov_base: UnsafeMutableRawPointer(mutating: p.baseAddress! + offset),
                        iov_len: p.count - offset
                    )
                )
            }
            return try withVectors(arrays.dropFirst(), from: 0, &vectors, body)
        }
    }
}
