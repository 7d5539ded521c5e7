import Glibc

/// The pool's compact protocol, spoken on a worker's fd 3 after the `ToWorker.pool` message.
///
/// Frames keep CPython's framing (a 4-byte big-endian length, then the body) so the same reader serves
/// every channel; bodies start with a kind byte and fixed little-endian fields, so a task costs a few
/// stores rather than a keyed encoding. Parent and worker are the same executable on the same machine.
enum PoolWire {
    // parent → worker
    static let define: UInt8 = 0x44  // 'D' fnId u32, kind u8, nameLen u32, name, payload (the encoded function value)
    static let task: UInt8 = 0x54  // 'T' unit u64, fnId u32, count u32, flags u8, payload (encoded [Input] or one Job)
    // 't': a task of a traced call: unit u64, fnId u32, count u32, flags u8, carrierLen u32, carrier (the span
    // context's headers, PoolTracing.encode), payload
    static let tracedTask: UInt8 = 0x74
    /// Task flag: stamp each item's start with the clock (the unit has a time limit the supervisor measures
    /// from it). Without it a worker's items publish their index only.
    static let stampEachItem: UInt8 = 1
    static let shutdown: UInt8 = 0x53  // 'S'
    // worker → parent
    static let output: UInt8 = 0x4F  // 'O' unit u64, start u32, count u32, busyNanos u64, payload (encoded [Output])
    static let failure: UInt8 = 0x58  // 'X' unit u64, index u32, busyNanos u64, payload (encoded WireError)
    static let resend: UInt8 = 0x52  // 'R' unit u64: the chunk could not be decoded as a whole; send its items alone

    /// Largest frame either side accepts; a bigger length is a protocol violation.
    static let maxFrame = 1 << 30
    /// Largest encoded payload (items, a result batch, an error) that fits a frame with its header.
    static let maxBody = maxFrame - 64

    enum FunctionKind: UInt8 {
        case job = 1
        case function = 2
    }

    /// A worker's reply frame, its fixed fields read.
    enum ParsedReply {
        /// `R`: the unit could not be decoded as a whole.
        case resend(unit: UInt64)
        /// `O` or `X`, and the payload after the fixed fields (encoded outputs, or a `WireError`).
        case reply(PoolState.Reply, payload: UnsafeRawBufferPointer)
    }

    /// Reads a worker's reply frame (`body`: never empty, its kind byte first).
    /// - Throws: `malformedMessage` for a truncated frame or an unknown kind.
    static func parseReply(_ body: UnsafeRawBufferPointer) throws -> ParsedReply {
        var c = FrameCursor(body)
        let kind = body[0]
        let unit: UInt64 = try c.get()
        if kind == resend { return .resend(unit: unit) }
        let start = Int(try c.get(UInt32.self))
        switch kind {
        case output:
            let count = Int(try c.get(UInt32.self))
            let busy: UInt64 = try c.get()
            return .reply(.output(unit: unit, start: start, count: count, busyNanos: busy), payload: c.rest)
        case failure:
            let busy: UInt64 = try c.get()
            return .reply(.failure(unit: unit, index: start, busyNanos: busy), payload: c.rest)
        default:
            throw MultiprocessingError(.malformedMessage, "unknown pool reply kind \(kind)")
        }
    }
}

/// Appends frames to a byte buffer.
struct FrameWriter {
    var bytes: [UInt8] = []

    var isEmpty: Bool { bytes.isEmpty }

    /// Starts a frame; returns the position of its length, to be patched by `end`.
    mutating func begin(_ kind: UInt8) -> Int {
        let at = bytes.count
        bytes.append(contentsOf: [0, 0, 0, 0, kind] as [UInt8])
        return at
    }

    /// Ends the frame begun at `at`, whose body goes on with `more` bytes written separately.
    mutating func end(_ at: Int, followedBy more: Int = 0) {
        let n = UInt32(bytes.count - at - 4 + more)
        bytes[at] = UInt8(truncatingIfNeeded: n >> 24)
        bytes[at + 1] = UInt8(truncatingIfNeeded: n >> 16)
        bytes[at + 2] = UInt8(truncatingIfNeeded: n >> 8)
        bytes[at + 3] = UInt8(truncatingIfNeeded: n)
    }

    mutating func put<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func put(_ raw: [UInt8]) { bytes.append(contentsOf: raw) }
    mutating func put(_ raw: UnsafeRawBufferPointer) { bytes.append(contentsOf: raw) }

    /// Empties the buffer, keeping its storage for what comes next unless it grew past 4 MiB.
    mutating func reset() {
        if bytes.capacity > 4 << 20 { bytes = [] } else { bytes.removeAll(keepingCapacity: true) }
    }

    mutating func take() -> [UInt8] {
        defer { bytes = [] }
        return bytes
    }
}

/// Reads fixed fields from a frame body.
struct FrameCursor {
    let body: UnsafeRawBufferPointer
    var at = 1  // after the kind byte

    init(_ body: UnsafeRawBufferPointer) { self.body = body }

    mutating func get<T: FixedWidthInteger>(_: T.Type = T.self) throws -> T {
        let n = MemoryLayout<T>.size
        guard at + n <= body.count else {
            throw MultiprocessingError(.malformedMessage, "truncated pool frame")
        }
        defer { at += n }
        return T(littleEndian: body.loadUnaligned(fromByteOffset: at, as: T.self))
    }

    mutating func bytes(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, at + n <= body.count else {
            throw MultiprocessingError(.malformedMessage, "truncated pool frame")
        }
        defer { at += n }
        return UnsafeRawBufferPointer(rebasing: body[at..<(at + n)])
    }

    var rest: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: body[at...]) }
}

extension FrameDecoder {
    /// A decoder for a pool channel: frames up to ``PoolWire/maxFrame``.
    static func pool(prefill: [UInt8] = []) -> FrameDecoder {
        var decoder = FrameDecoder(maxFrame: PoolWire.maxFrame, prefill: prefill)
        decoder.keepsSpare = true  // one per worker: chunks reuse the last chunk's pages
        return decoder
    }

    /// The body of the next whole pool frame (never empty: every pool frame starts with its kind byte).
    mutating func nextPoolFrame<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        try next { b in
            guard !b.isEmpty else { throw MultiprocessingError(.malformedMessage, "an empty pool frame") }
            return try body(b)
        }
    }

    /// Reads what is available from `fd` (blocking for at least one byte if `blocking`).
    /// - Returns: the number of bytes read; 0 at end of file; -1 if a non-blocking read would block.
    mutating func fill(from fd: Int32, blocking: Bool) throws -> Int {
        let n = try read { p in try Syscall.receive(fd, into: p, blocking: blocking) }
        return n ?? -1
    }
}

/// The clocks of the pool protocol, in nanoseconds.
enum PoolClock {
    /// CLOCK_MONOTONIC_COARSE: a few ns to read, a few ms of resolution — enough for item start times
    /// (timeouts) and flush pacing. Workers stamp with it and the supervisor reads the same clock.
    static func coarse() -> UInt64 { read(CLOCK_MONOTONIC_COARSE) }
    /// CLOCK_MONOTONIC, for measuring work (read once per reply, not per item).
    static func precise() -> UInt64 { read(CLOCK_MONOTONIC) }

    private static func read(_ clock: clockid_t) -> UInt64 {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// A point on `CLOCK_MONOTONIC`, as the pool's state keeps time.
///
/// `ContinuousClock.Instant` is not `@frozen`: every struct holding one has a layout known only at run
/// time and is copied through the runtime's value witnesses. The pool's units and workers are copied
/// on every dispatch and reply, and with `ContinuousClock.Instant` fields that cost 15–25 % of the
/// chunksize-1 throughput (`bench pool`, BENCHMARKS.md). This one is a plain integer.
struct PoolInstant: InstantProtocol, Sendable {
    /// Nanoseconds since the clock's origin (boot).
    var nanoseconds: Int64

    static var now: PoolInstant { PoolInstant(nanoseconds: Int64(PoolClock.precise())) }

    func advanced(by duration: Duration) -> PoolInstant {
        let (s, a) = duration.components
        return PoolInstant(nanoseconds: nanoseconds &+ s &* 1_000_000_000 &+ a / 1_000_000_000)
    }

    func duration(to other: PoolInstant) -> Duration { .nanoseconds(other.nanoseconds &- nanoseconds) }

    static func < (a: PoolInstant, b: PoolInstant) -> Bool { a.nanoseconds < b.nanoseconds }
}
