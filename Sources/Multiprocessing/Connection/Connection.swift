internal import CMultiprocessingShims
import Glibc
import SystemCalls
package import Threading

/// One end of a message channel — Python's `multiprocessing.connection.Connection`.
///
/// Messages are framed exactly as CPython frames them (a 4-byte big-endian signed length, or `-1` and an
/// 8-byte length past 2 GiB), so raw byte messages interoperate with Python's `send_bytes`/`recv_bytes`.
/// `Codable` values travel in this package's binary format (Python sends pickles; see
/// ``sendBytes(_:timeout:)-([UInt8],_)`` for talking to Python). Sends and receives are each serialised by a lock, so one
/// connection may be shared by threads; receiving has a blocking form with a timeout and an async form
/// that never blocks a thread.
///
/// - Important: After a framing error (an oversized or malformed frame, or a timeout in the middle of a
///   frame) the stream position is lost, so the connection refuses further receives with
///   ``MultiprocessingError/Code/closed``.
public final class Connection: @unchecked Sendable {
    // Send state is behind `sendLock`, receive state behind `recvLock`, received descriptors behind `fdLock`.
    /// The default limit on one received message: 1 GiB (Python has none).
    public static let defaultMaxMessageSize = 1 << 30

    /// The descriptor, closed only once no call uses it (a close never gives back a number that a
    /// receiver or sender is about to use).
    private let descriptor: DescriptorLifetime
    private var fd: Int32 { descriptor.fd }
    /// Whether this end can receive.
    public let isReadable: Bool
    /// Whether this end can send.
    public let isWritable: Bool
    private let isSocket: Bool
    private let sendLock = Lock()
    /// The receive side's lock: a semaphore, so an async receiver can wait for it without a thread.
    private let recvLock = Semaphore(1)

    // Receive state (behind recvLock).
    private var frames: FrameDecoder
    private var broken: String?
    /// The `SO_RCVTIMEO` this object last set on the socket, in milliseconds (a power of two), or -1.
    private var receiveTimeoutMs: Int64 = -1
    /// Descriptors received with messages, oldest first. Its own lock, held only for a moment (never
    /// across a syscall), so decoding never waits for a receiver blocked in `recvmsg`.
    private var receivedFds: [Int32] = []
    private let fdLock = Lock()
    // Send state (behind sendLock).
    private var sendBroken = false

    /// Wraps an open descriptor, taking ownership of it: nothing else may close it from now on (the
    /// connection closes it in ``close()`` or when it is released).
    /// - Precondition: `fileDescriptor` is open (a closed or invalid one stops the program here, with a
    ///   message, rather than at the first send or receive).
    public init(fileDescriptor: Int32, readable: Bool = true, writable: Bool = true) {
        // One fstat answers both: is it open, and is it a socket.
        guard let isSocket = Syscall.isSocket(fileDescriptor) else {
            preconditionFailure("Connection(fileDescriptor: \(fileDescriptor)): not an open descriptor")
        }
        descriptor = DescriptorLifetime(fileDescriptor)
        isReadable = readable
        isWritable = writable
        self.isSocket = isSocket
        frames = FrameDecoder(maxFrame: Connection.defaultMaxMessageSize, capacity: readable ? 64 * 1024 : 16)
    }

    deinit {
        // The descriptor closes itself (DescriptorLifetime's deinit) unless close() did.
        for f in receivedFds { Syscall.close(f) }
    }

    /// The descriptor, for `poll`/`select` — Python's `Connection.fileno()`.
    public var fileDescriptor: Int32 { fd }

    /// Whether ``close()`` was called.
    public var isClosed: Bool { descriptor.isClosed }

    /// Closes this end — Python's `Connection.close()`. Idempotent; wakes async receivers.
    public func close() {
        // Only this descriptor is closed (never `shutdown`, which would cut the socket for every process
        // holding a copy, such as a child given this end). Tasks waiting on it are failed; a thread in a
        // call on it keeps the number until the call returns.
        descriptor.close { fd in Reactor.started?.cancelWaits(on: fd) }  // no reactor: no task can be waiting
    }

    /// Shuts down reading and/or writing on the socket (`shutdown(2)`) without closing the descriptor: a
    /// thread blocked reading it wakes with end of file once buffered bytes are read; one blocked writing
    /// fails. For a server's own connections only: it cuts the socket for every process holding a copy.
    /// Safe against a concurrent ``close()`` (then it does nothing). Does nothing on a pipe.
    package func shutdownSocket(reading: Bool, writing: Bool) {
        guard isSocket, reading || writing else { return }
        let how = reading && writing ? SHUT_RDWR : reading ? SHUT_RD : SHUT_WR
        _ = descriptor.use { fd in SystemCall.shutdown(fd, Int32(how)) }
    }

    private func checkOpen() throws(MultiprocessingError) {
        if isClosed { throw MultiprocessingError(.closed, "the connection is closed") }
    }

    /// `body` with the descriptor, kept open until it returns; ``MultiprocessingError/Code/closed`` after
    /// ``close()``.
    @inline(__always)
    private func withDescriptor<T>(_ body: (Int32) throws -> T) throws -> T {
        guard let fd = descriptor.beginUse() else { throw MultiprocessingError(.closed, "the connection is closed") }
        defer { descriptor.endUse() }
        return try body(fd)
    }

    // MARK: - Sending

    /// Sends one message of raw bytes — Python's `send_bytes(buf)`.
    ///
    /// - Parameters:
    ///   - bytes: the message.
    ///   - timeout: the longest wait for the peer to make room (`nil`: forever). A timeout before any byte
    ///     of the message went out leaves the connection usable; one in the middle of the message makes
    ///     later sends throw ``MultiprocessingError/Code/closed`` (the stream would be corrupt).
    /// - Throws: ``MultiprocessingError/Code/timedOut``, ``MultiprocessingError/Code/endOfFile`` when the
    ///   peer has closed.
    public func sendBytes(_ bytes: [UInt8], timeout: Duration? = nil) throws {
        try bytes.withUnsafeBytes { try sendFrame($0, fds: [], deadline: Deadline.after(timeout)) }
    }

    /// Sends one message of raw bytes.
    public func sendBytes(_ bytes: UnsafeRawBufferPointer, timeout: Duration? = nil) throws {
        try sendFrame(bytes, fds: [], deadline: Deadline.after(timeout))
    }

    /// Sends a `Codable` value as one message (binary format; a Python peer cannot unpickle it).
    ///
    /// - Parameters:
    ///   - value: the value.
    ///   - timeout: as for ``sendBytes(_:timeout:)-([UInt8],_)``.
    public func send<T: Encodable>(_ value: T, timeout: Duration? = nil) throws {
        let (bytes, fds) = try MessageCodec.encode(value)
        try bytes.withUnsafeBytes { try sendFrame($0, fds: fds, deadline: Deadline.after(timeout)) }
    }

    /// Whether a whole message has already arrived and been buffered (a pipelining peer sent several at
    /// once): the next receive returns it without a system call. False while another thread receives.
    package var hasBufferedMessage: Bool {
        guard recvLock.acquire(timeout: .zero) else { return false }
        defer { try? recvLock.release() }
        return frames.hasWholeFrame
    }

    /// Sends several messages in one write (pipelined requests): the peer reads them as separate
    /// messages. A timeout part-way makes later sends throw ``MultiprocessingError/Code/closed``.
    package func sendMessages(_ payloads: [[UInt8]], timeout: Duration?) throws {
        try checkOpen()
        var all: [UInt8] = []
        all.reserveCapacity(payloads.reduce(0) { $0 + $1.count + 4 })
        for p in payloads {
            all.append(contentsOf: FrameDecoder.header(for: p.count))
            all.append(contentsOf: p)
        }
        let deadline = Deadline.after(timeout)
        guard sendLock.acquire(timeout: deadline?.remaining) else {
            throw MultiprocessingError(.timedOut, "timed out waiting for another sender")
        }
        defer { try? sendLock.release() }
        if sendBroken {
            throw MultiprocessingError(.closed, "the connection is unusable after a send timed out mid-message")
        }
        guard let deadline else {
            try withDescriptor { fd in try all.withUnsafeBytes { try Syscall.writeAll(fd, $0) } }
            return
        }
        let sent = try withDescriptor { fd in
            try all.withUnsafeBytes { try Syscall.writeAll(fd, $0, deadline: deadline, isSocket: isSocket) }
        }
        if sent < all.count {
            if sent > 0 { sendBroken = true }
            throw MultiprocessingError(.timedOut, "the peer did not take the messages within the timeout")
        }
    }

    /// Writes one frame; `fds` travel as `SCM_RIGHTS` with its first bytes (sockets only).
    func sendFrame(_ payload: UnsafeRawBufferPointer, fds: [Int32], deadline: Deadline? = nil) throws {
        try checkOpen()
        guard isWritable else { throw MultiprocessingError(.invalidState, "this end of the connection is read-only") }
        let header = FrameDecoder.header(for: payload.count)
        if let deadline {
            guard fds.isEmpty else {
                throw MultiprocessingError(.invalidState, "descriptors cannot be sent with a timeout")
            }
            guard sendLock.acquire(timeout: deadline.remaining) else {
                throw MultiprocessingError(.timedOut, "timed out waiting for another sender")
            }
            defer { try? sendLock.release() }
            if sendBroken {
                throw MultiprocessingError(.closed, "the connection is unusable after a send timed out mid-message")
            }
            var frame = header
            frame.append(contentsOf: payload)  // one copy buys one poll/send loop for the whole frame
            let sent = try withDescriptor { fd in
                try frame.withUnsafeBytes { try Syscall.writeAll(fd, $0, deadline: deadline, isSocket: isSocket) }
            }
            if sent < frame.count {
                if sent > 0 { sendBroken = true }
                throw MultiprocessingError(.timedOut, "the peer did not take the message within the timeout")
            }
            return
        }
        try sendLock.withLock {
            if sendBroken {
                throw MultiprocessingError(.closed, "the connection is unusable after a send timed out mid-message")
            }
            if payload.count <= 16 * 1024 {
                // One syscall: header and payload copied together.
                var frame = header
                frame.append(contentsOf: payload)
                try sendWithFds(frame, fds: fds)
            } else {
                try sendWithFds(header, fds: fds)
                try withDescriptor { fd in try Syscall.writeAll(fd, payload) }
            }
        }
    }

    private func sendWithFds(_ bytes: [UInt8], fds: [Int32]) throws {
        if fds.isEmpty {
            try withDescriptor { fd in try bytes.withUnsafeBytes { try Syscall.writeAll(fd, $0) } }
            return
        }
        guard isSocket else {
            throw MultiprocessingError(.invalidState, "descriptors can only travel over Unix sockets")
        }
        try withDescriptor { fd in
            try bytes.withUnsafeBytes { p in
                // Blocking sendmsg: the descriptors go with the first byte, the rest as plain writes.
                let sent = try Syscall.mapped { () throws(SystemCallError) in
                    while true {
                        if let n = try SystemCall.sendWithDescriptors(fd, p, fds: fds).value { return n }
                        _ = try SystemCall.poll(fd, events: Int16(POLLOUT), timeoutMs: -1)  // made non-blocking
                    }
                }
                if sent < p.count { try Syscall.writeAll(fd, UnsafeRawBufferPointer(rebasing: p[sent...])) }
            }
        }
    }

    // MARK: - Receiving

    /// Receives one message of raw bytes — Python's `recv_bytes(maxlength)`.
    ///
    /// - Parameters:
    ///   - maxLength: the largest message accepted; a longer one throws
    ///     ``MultiprocessingError/Code/messageTooLarge`` and closes the receiving side.
    ///   - timeout: the longest wait for the whole message (`nil`: forever).
    /// - Throws: ``MultiprocessingError/Code/endOfFile`` when the peer has closed and nothing is left;
    ///   ``MultiprocessingError/Code/timedOut``.
    public func recvBytes(maxLength: Int = Connection.defaultMaxMessageSize, timeout: Duration? = nil) throws -> [UInt8]
    {
        try receiveFrame(maxLength: maxLength, deadline: Deadline.after(timeout))
    }

    /// Receives one `Codable` value sent with ``send(_:timeout:)``.
    public func recv<T: Decodable>(_ type: T.Type = T.self, timeout: Duration? = nil) throws -> T {
        let bytes = try receiveFrame(maxLength: Connection.defaultMaxMessageSize, deadline: Deadline.after(timeout))
        return try decodeMessage(type, bytes)
    }

    func decodeMessage<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws -> T {
        try fdLock.withLock { try MessageCodec.decode(type, from: bytes, fds: &receivedFds) }
    }

    /// Receives one message, suspending the task (not a thread) until it arrives.
    public func recvBytes(maxLength: Int = Connection.defaultMaxMessageSize) async throws -> [UInt8] {
        while true {
            // Wait for another receiver as a suspended task (no thread, no polling).
            try await recvLock.acquire()
            let frame: [UInt8]?
            do {
                defer { try? recvLock.release() }
                frame = try tryReceiveFrame(maxLength: maxLength)
            }
            if let frame { return frame }
            try await Reactor.shared.wait(fd, unless: { descriptor.isClosed })
        }
    }

    /// Receives one `Codable` value, suspending the task until it arrives.
    public func recv<T: Decodable>(_ type: T.Type = T.self) async throws -> T {
        let bytes = try await recvBytes()
        return try decodeMessage(type, bytes)
    }

    /// Whether a message can be received without blocking (or the peer hung up) — Python's
    /// `poll(timeout)`; the default is not to wait.
    public func poll(timeout: Duration? = .zero) throws -> Bool {
        try checkOpen()
        if hasBufferedData { return true }
        return try withDescriptor { fd in try Syscall.poll(fd, events: Int16(POLLIN), deadline: Deadline.after(timeout))
        }
    }

    /// A complete message if one can be read without blocking, else `nil` (for reactor callbacks, on
    /// connections nobody else receives from).
    func receiveNow(maxLength: Int = Connection.defaultMaxMessageSize) throws -> [UInt8]? {
        guard recvLock.acquire(blocking: false) else { return nil }
        defer { try? recvLock.release() }
        return try tryReceiveFrame(maxLength: maxLength)
    }

    package func receiveFrame(maxLength: Int, deadline: Deadline?) throws -> [UInt8] {
        try checkOpen()
        guard isReadable else { throw MultiprocessingError(.invalidState, "this end of the connection is write-only") }
        guard recvLock.acquire(timeout: deadline?.remaining) else {
            throw MultiprocessingError(.timedOut, "timed out waiting for another receiver")
        }
        defer { try? recvLock.release() }
        while true {
            // The read itself sleeps: one syscall per message, as CPython and C. With a deadline, a socket
            // sleeps under SO_RCVTIMEO (see `sleepingReadFits`); a pipe polls.
            if let frame = try tryReceiveFrame(maxLength: maxLength, blocking: deadline == nil, deadline: deadline) {
                return frame
            }
            if try !withDescriptor({ fd in try Syscall.poll(fd, events: Int16(POLLIN), deadline: deadline) }) {
                if frames.hasBufferedBytes {
                    broken = "a timeout in the middle of a message"
                }
                throw MultiprocessingError(.timedOut, "no message within the timeout")
            }
        }
    }

    /// With `recvLock` held: returns a complete frame, reading what is available without blocking; `nil`
    /// when more bytes are needed.
    private func tryReceiveFrame(maxLength: Int, blocking: Bool = false, deadline: Deadline? = nil) throws -> [UInt8]? {
        if let broken { throw MultiprocessingError(.closed, "the connection is unusable after \(broken)") }
        try checkOpen()
        frames.maxFrame = maxLength
        while true {
            do {
                if let frame = try frames.nextArray() { return frame }
            } catch let e as MultiprocessingError {
                broken = e.code == .messageTooLarge ? "an oversized message" : "a malformed frame header"
                throw e
            }
            var fds: [Int32] = []
            let sleep = blocking || (deadline.map(sleepingReadFits) ?? false)
            let n = try withDescriptor { fd in
                try frames.read { p in try Syscall.readNow(fd, into: p, fds: &fds, isSocket: isSocket, blocking: sleep)
                }
            }
            if !fds.isEmpty { fdLock.withLock { receivedFds += fds } }
            guard let n else { return nil }  // nothing now
            if n == 0 {
                if frames.hasBufferedBytes {
                    broken = "end of file in the middle of a message"
                    throw MultiprocessingError(
                        .malformedMessage,
                        "the peer closed the connection in the middle of a message"
                    )
                }
                throw MultiprocessingError(.endOfFile, "the peer closed the connection")
            }
        }
    }

    /// With `recvLock` held: whether a sleeping read may be used before `deadline`, after making sure that
    /// the socket's `SO_RCVTIMEO` ends it in time. The timeout is the largest power of two of milliseconds
    /// within the time left, and is set only when that changes: calls with the same timeout (a proxy's
    /// 30 s) then cost one `recvmsg`, instead of `recvmsg` + `poll` + `recvmsg` (measured: the manager
    /// round trip). A read that the timeout ends reports "nothing now"; the caller looks again with
    /// what is left (by `poll`, so that a socket someone made non-blocking costs what it did before). Pipes
    /// (no `SO_RCVTIMEO`) and the last millisecond poll instead. A descriptor handed to another process
    /// keeps the option; our receivers there treat its expiry as "nothing now" and look again.
    private func sleepingReadFits(_ deadline: Deadline) -> Bool {
        guard isSocket else { return false }
        let left = deadline.remaining.components
        let ms = left.seconds * 1000 + left.attoseconds / 1_000_000_000_000_000
        guard ms >= 1 else { return false }
        let bucket = Int64(1) << (63 - UInt64(ms).leadingZeroBitCount)
        if bucket != receiveTimeoutMs {
            let tv = timeval(tv_sec: Int(bucket / 1000), tv_usec: Int(bucket % 1000) * 1000)
            let set = descriptor.use { fd in (try? SystemCall.setOption(fd, SOL_SOCKET, SO_RCVTIMEO, tv)) != nil }
            guard set == true else { return false }
            receiveTimeoutMs = bucket
        }
        return true
    }

    /// Hands over the bytes read past the last message (a channel switching to another protocol).
    func takeBufferedBytes() -> [UInt8] {
        recvLock.withPermit { frames.takeBuffered() }
    }

    /// Whether a received message (or part of one) is buffered. Never waits: while another thread is
    /// receiving, the answer is "no" and callers fall back to polling the descriptor.
    var hasBufferedData: Bool {
        guard recvLock.acquire(blocking: false) else { return false }
        defer { try? recvLock.release() }
        return frames.hasBufferedBytes
    }
}

/// Python's `multiprocessing.Pipe(duplex)`: two connected ends.
///
/// Duplex pipes are a Unix socket pair (either end sends and receives, descriptors can be passed);
/// simplex pipes are an `os.pipe` — the first end receives, the second sends, as in Python.
public func makePipe(duplex: Bool = true) throws -> (Connection, Connection) {
    if duplex {
        let (a, b) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        return (Connection(fileDescriptor: a), Connection(fileDescriptor: b))
    }
    let (r, w) = try Syscall.pipe()
    return (
        Connection(fileDescriptor: r, readable: true, writable: false),
        Connection(fileDescriptor: w, readable: false, writable: true)
    )
}

extension Connection: Codable {
    /// A connection travels to another process inside a ``Job`` (its descriptor goes as `SCM_RIGHTS`;
    /// both processes then hold an end), as Python passes `Pipe()` ends to a `Process`.
    public convenience init(from decoder: any Decoder) throws {
        var c = try decoder.unkeyedContainer()
        _ = try c.decode(Int.self)
        let readable = try c.decode(Bool.self)
        let writable = try c.decode(Bool.self)
        self.init(fileDescriptor: try MessageCodec.takeDescriptor(), readable: readable, writable: writable)
    }

    /// Encodes this end for a job: its descriptor travels with the message (`SCM_RIGHTS`).
    public func encode(to encoder: any Encoder) throws {
        try checkOpen()
        var c = encoder.unkeyedContainer()
        try c.encode(try MessageCodec.attach(fd))
        try c.encode(isReadable)
        try c.encode(isWritable)
    }
}
