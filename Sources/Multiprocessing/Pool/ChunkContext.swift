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
    private var now: UInt64 = 0

    init<Input, Output>(
        unit: UInt64,
        out: Replies,
        slot: SharedSlot,
        _: Input.Type,
        _: Output.Type,
        inputKind: TrivialKind?,
        outputKind: TrivialKind?
    ) {
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
        let (t, unitCancelled) = slot.itemStarting(unit: unit, index: i)
        now = t
        return !unitCancelled
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
    /// Reports that item `index` threw `error` (library internals).
    public func fail(_ index: Int, _ error: any Error) { out.failure(unit: unit, index: index, error) }
    /// Writes what was sent so far to the parent (library internals).
    public func flush() { out.flush() }
    /// Records that the chunk ended before item `i` (cancelled) or at its end (library internals).
    public func finished(at i: Int) { next = i }
}
