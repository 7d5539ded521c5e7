/// The worker's side of a chunk, for `SyncTaskFunction._runChunk(_:from:_:)`. Library internals: public
/// only because that loop must be inlinable into each conforming type (an SPI would hide the default
/// implementation from the conformances that need it); do not use it.
public final class ChunkContext: @unchecked Sendable {  // used by the worker's main thread only
    let unit: UInt64
    let out: Replies
    let slot: SharedSlot
    /// The raw-bytes kind of the function's `Output` (found once per function, not per chunk).
    let outputKind: TrivialKind?
    /// The function's `Output` type when its arrays are raw bytes (library internals).
    @usableFromInline let rawOutput: ObjectIdentifier?
    /// The raw-bytes kind of the function's `Input`.
    let inputKind: TrivialKind?
    /// The function's `Input` type when its arrays are raw bytes (library internals).
    @usableFromInline let rawInput: ObjectIdentifier?
    var next = 0
    /// Whether each item's start is stamped with the clock (the unit has a time limit the supervisor
    /// measures from it); otherwise items publish their index only and the clock is read every
    /// `clockStride` items, for flush pacing.
    private let stampEachItem: Bool
    /// The coarse clock at the last reading (flush pacing).
    private var now: UInt64
    /// The precise clock at the last reading (how often to read it).
    private var lastTick: UInt64
    private var clockStride = 1
    private var untilClock = 1

    init<Input, Output>(
        unit: UInt64,
        out: Replies,
        slot: SharedSlot,
        _: Input.Type,
        _: Output.Type,
        inputKind: TrivialKind?,
        outputKind: TrivialKind?,
        stampEachItem: Bool = true
    ) {
        self.stampEachItem = stampEachItem
        now = PoolClock.coarse()
        lastTick = PoolClock.precise()
        self.unit = unit
        self.out = out
        self.slot = slot
        self.outputKind = outputKind
        rawOutput = outputKind == nil ? nil : ObjectIdentifier(Output.self)
        self.inputKind = inputKind
        rawInput = inputKind == nil ? nil : ObjectIdentifier(Input.self)
    }

    /// The bytes of a chunk's `count` raw-bytes inputs in `payload`, checked; `nil` after reporting
    /// inputs that cannot be decoded (library internals).
    @usableFromInline
    func rawInputs(_ payload: UnsafeRawBufferPointer, count: Int) -> UnsafeRawBufferPointer? {
        do {
            guard let kind = inputKind else { throw MultiprocessingError(.decodingFailed, "inputs are not raw bytes") }
            let (n, range) = try rawArrayItems(kind: kind, payload, expected: "an array of \(kind)")
            guard n == count else {
                throw MultiprocessingError(.malformedMessage, "chunk of \(n) items announced as \(count)")
            }
            return UnsafeRawBufferPointer(rebasing: payload[range])
        } catch {
            out.undecodableInputs(unit: unit, count: count, error)
            return nil
        }
    }

    /// A chunk's inputs through the general decoder; `nil` after reporting inputs that cannot be decoded
    /// (library internals).
    @usableFromInline
    func decodeInputs<T: Decodable>(_: T.Type, _ payload: UnsafeRawBufferPointer, count: Int) -> [T]? {
        PoolWorker.decodeChunk(ItemsCodec<T>(kind: inputKind), unit: unit, count: count, payload, out)
    }

    /// Records that item `i` starts (for crash attribution and timeouts); `false` if the unit was cancelled.
    public func itemStarting(_ i: Int) -> Bool {
        if stampEachItem {
            let (t, unitCancelled) = slot.itemStarting(unit: unit, index: i)
            now = t
            return !unitCancelled
        }
        untilClock -= 1
        if untilClock == 0 { readClock() }
        return !slot.itemIndexed(unit: unit, index: i)
    }

    /// Reads the clock for flush pacing, and decides how many items to run before reading it again:
    /// twice as many (at most 16) while that many items take under 10 µs, every item otherwise. Items of
    /// 10 µs or more pay a clock read each (a fraction of a percent); tiny ones one per 16. Slow items
    /// after a run of tiny ones delay a partial flush by at most 15 items.
    private func readClock() {
        let t = PoolClock.precise()
        clockStride = t &- lastTick < 10_000 ? min(clockStride * 2, 16) : 1
        untilClock = clockStride
        lastTick = t
        now = PoolClock.coarse()
    }

    /// Whether finished results should be sent now (2 ms since the last write).
    public var flushDue: Bool { out.dueForPartialFlush(now: now) }

    /// Sends finished results `values`, the first being item `start` (library internals).
    ///
    /// Inlined into each function's specialised loop, so that results of fixed-width types reach the
    /// reply as bytes without the library's unspecialised code asking the runtime about `[T]`.
    @inlinable
    public func send<T: Encodable>(_ values: [T], start: Int) {
        if let rawOutput, rawOutput == ObjectIdentifier(T.self) {
            values.withUnsafeBytes { sendRaw($0, count: values.count, start: start) }
        } else {
            sendEncoding(values, start: start)
        }
    }

    /// Sends `count` results whose bytes are `bytes` (raw-bytes outputs; library internals).
    @usableFromInline
    func sendRaw(_ bytes: UnsafeRawBufferPointer, count: Int, start: Int) {
        guard count > 0, let kind = outputKind else { return }
        out.outputs(unit: unit, start: start, count: count, kind: kind, raw: bytes)
    }

    /// Sends results through the general encoder (library internals).
    @usableFromInline
    func sendEncoding<T: Encodable>(_ values: [T], start: Int) {
        out.outputs(unit: unit, start: start, values, ItemsCodec<T>(kind: outputKind))
    }
    /// Memory for `bytes` bytes of raw-bytes results, 16-byte aligned, valid until the chunk ends: the
    /// worker keeps it between chunks (up to 4 MiB), so a chunk touches no fresh pages (library internals).
    @usableFromInline
    func resultBuffer(bytes: Int) -> UnsafeMutableRawPointer { ResultScratch.buffer(bytes: bytes) }

    /// Reports that item `index` threw `error` (library internals).
    public func fail(_ index: Int, _ error: any Error) { out.failure(unit: unit, index: index, error) }
    /// Writes what was sent so far to the parent (library internals).
    public func flush() { out.flush() }
    /// Records that the chunk ended before item `i` (cancelled) or at its end (library internals).
    public func finished(at i: Int) { next = i }
}

/// The worker's buffer for a chunk's raw-bytes results (one chunk runs at a time, on the worker's main
/// thread), kept between chunks up to `kept` bytes.
enum ResultScratch {
    static let kept = 4 << 20
    nonisolated(unsafe) private static var memory: UnsafeMutableRawPointer?
    nonisolated(unsafe) private static var capacity = 0

    static func buffer(bytes: Int) -> UnsafeMutableRawPointer {
        if let memory, capacity >= bytes { return memory }
        memory?.deallocate()
        capacity = max(bytes, 64, min(kept, capacity * 2))
        let m = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        memory = m
        return m
    }

    /// Frees a buffer grown past `kept` (a worker does not hold a huge chunk's results after it).
    static func trim() {
        guard capacity > kept, let memory else { return }
        memory.deallocate()
        self.memory = nil
        capacity = 0
    }
}
