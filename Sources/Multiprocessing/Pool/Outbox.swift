internal import CMultiprocessingShims
import Glibc
import Threading

/// Bytes waiting to be written to one worker. Frames are appended in order (under the pool's lock) and
/// written by whichever thread flushes, never blocking it: the reactor thread must never wait on a
/// worker that is itself waiting for the reactor to read its replies. A write that would block is handed
/// to a background thread that waits for the socket to drain.
final class Outbox: @unchecked Sendable {  // state behind `lock`
    private let fd: Int32
    private let lock = Lock()
    private var buffer: [UInt8] = []
    private var writing = false
    private var closed = false

    private static let background = ThreadPool(maxWorkers: 64, threadNamePrefix: "mp-pool-writer")

    init(fd: Int32) { self.fd = fd }

    func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        lock.withLock { if !closed { buffer += bytes } }
    }

    /// Stops writing (the worker is gone); pending bytes are dropped.
    func close() {
        lock.withLock {
            closed = true
            buffer = []
        }
    }

    /// Writes what is pending without blocking the caller.
    func flush() {
        guard var data = take() else { return }
        var sent = 0
        while true {
            while sent < data.count {
                guard let k = sendSome(data, from: sent) else {
                    close()  // EPIPE and the like: the worker is gone, its death is handled elsewhere
                    lock.withLock { writing = false }
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
        lock.withLock {
            guard !buffer.isEmpty, !closed else {
                writing = false
                return nil
            }
            defer { buffer = [] }
            return buffer
        }
    }

    private func finishBlocking(_ first: [UInt8]) {
        var data = first
        while true {
            var sent = 0
            while sent < data.count {
                if lock.withLock({ closed }) { return }
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&pfd, 1, 100) <= 0 { continue }
                guard let k = sendSome(data, from: sent) else {
                    close()
                    lock.withLock { writing = false }
                    return
                }
                sent += k
            }
            guard let more = takeMore() else { return }
            data = more
        }
    }
}
