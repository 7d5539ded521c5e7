import Synchronization
import Threading

/// One call into a pool (a `submit`, a `map`, an `imap`...), seen untyped by the pool's core: it
/// receives each item's outcome by index.
class CallCore: @unchecked Sendable {  // subclasses keep their own state thread-safe
    let options: TaskOptions
    private let cancelledFlag = Atomic<Bool>(false)

    /// The call's span, when a tracer is active (``PoolTracing``).
    let trace: CallTrace?

    init(options: TaskOptions, trace: CallTrace? = nil) {
        self.options = options
        self.trace = trace
    }

    // Progress of the call's own items (for `TaskOptions.progress`).
    let finishedItems = Atomic<Int>(0)
    let failedItems = Atomic<Int>(0)
    /// Items in the call; -1 while a lazy input is still being read.
    let totalItems = Atomic<Int>(-1)

    /// The call's progress display, if it has one (set once, before the call's first item is sent).
    /// Lock-free and stored inline: every `apply` makes a call, and a mutex object per call cost a round
    /// trip ~1,500 instructions (allocating, locking and freeing a generic class).
    private let reporter = AtomicLazyReference<ProgressReporter>()
    var progress: ProgressReporter? {
        get { reporter.load() }
        set {
            guard let newValue else { return }
            _ = reporter.storeIfNil(newValue)
        }
    }

    var isCancelled: Bool { cancelledFlag.load(ordering: .relaxed) }
    /// Marks the call cancelled; returns `false` if it already was.
    func markCancelled() -> Bool {
        let first = cancelledFlag.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
        if first { trace?.end(failure: "cancelled") }
        return first
    }

    /// Items `start..<start+n` finished; `payload` is their encoded `[Output]`.
    /// - Returns: the error if the payload cannot be decoded (the items then failed).
    func deliver(start: Int, count: Int, payload: UnsafeRawBufferPointer) {}
    func fail(index: Int, _ error: any Error) {}
    /// Hands buffered deliveries to the consumer (once per batch of replies read).
    func flushDeliveries() {}
}

/// What a multi-item call's consumer receives, in arrival order.
enum Delivery<Output: Sendable>: Sendable {
    case items(start: Int, [Output])
    case failed(index: Int, any Error)
    /// The input is exhausted: `total` items in all.
    case end(total: Int)
    /// Several of the above, in order (one wake-up of the consumer for a batch of replies).
    case batch([Delivery<Output>])
    /// Results as the workers encoded them, decoded by the consumer (one wake-up for a batch of replies).
    case encoded(EncodedResults)
}

/// Results still in their wire form: runs of items, each an encoded `[Output]`, in one buffer.
///
/// The reactor copies a reply's bytes here and goes on; the consumer decodes them, where `collect` can put
/// raw-bytes results straight into its output array. At chunk size 1 this is one allocation per batch of
/// replies instead of an array, a `Delivery` and a lock round per item on the reactor's thread.
struct EncodedResults: Sendable {
    struct Run: Sendable {
        let start: Int
        let count: Int
        let bytes: Range<Int>
    }
    var bytes: [UInt8] = []
    var runs: [Run] = []
    /// Items that went straight to their place in the call's result (``StreamCall/placeResults()``):
    /// counted here, their bytes are already in the result.
    var placed = 0

    var isEmpty: Bool { runs.isEmpty && placed == 0 }

    mutating func append(start: Int, count: Int, _ payload: UnsafeRawBufferPointer) {
        runs.append(Run(start: start, count: count, bytes: bytes.count..<(bytes.count + payload.count)))
        bytes.append(contentsOf: payload)
    }

    /// Run `k`'s values, or the error that fails its items.
    func values<Output: Decodable>(_ k: Int, _ codec: ItemsCodec<Output>) -> Result<[Output], any Error> {
        let run = runs[k]
        do {
            let values = try bytes.withUnsafeBytes { try codec.decode(UnsafeRawBufferPointer(rebasing: $0[run.bytes])) }
            guard values.count == run.count else {
                throw MultiprocessingError(.malformedMessage, "\(values.count) results announced as \(run.count)")
            }
            return .success(values)
        } catch {
            return .failure(MultiprocessingError.cannotDecode("the results", error))
        }
    }
}

/// A call whose results stream to a consumer (map, imap, imapUnordered).
final class StreamCall<Output: Codable & Sendable>: CallCore, @unchecked Sendable {
    let deliveries = BlockingQueue<Delivery<Output>>()
    let codec = ItemsCodec<Output>()
    private let bufferLock = Lock()
    private var buffer = EncodedResults()
    private var bufferedItems = 0  // in `buffer`
    /// Set by `collect` without credit: only the whole result is wanted, so the reactor wakes the
    /// consumer when every item is in, or every ``wakeBatch`` items, rather than after each read (a
    /// wake-up per read was a sixth of the reactor's time at chunk size 1). The consumer takes what is
    /// held back itself whenever it wakes for another reason (the input's end, a failure, a timeout).
    private let wholeResultWanted = Atomic<Bool>(false)
    static var wakeBatch: Int { 4096 }

    func wantWholeResult() { wholeResultWanted.store(true, ordering: .sequentiallyConsistent) }

    /// Set when the whole result is wanted, raw bytes, and the input's length is final: the result array,
    /// filled in place as replies arrive (see ``placeResults()``).
    private var placing: (total: Int, result: [Output])?
    /// The number of items, once the feeder has cut all of the input.
    private var inputTotal: Int?

    /// The feeder has cut all of the input: `total` items.
    func inputEnded(total: Int) {
        bufferLock.withLock { inputTotal = total }
        endTraceIfDone()
    }

    /// Ends the call's span once every item has an outcome (with a tracer active).
    private func endTraceIfDone() {
        guard let trace, let total = bufferLock.withLock({ inputTotal }),
            finishedItems.load(ordering: .sequentiallyConsistent) >= total
        else { return }
        let failed = failedItems.load(ordering: .sequentiallyConsistent)
        trace.end(failure: failed > 0 ? "\(failed) of \(total) items failed" : nil)
    }

    /// From now on, results of a raw-bytes type are copied from each reply straight to their place in the
    /// call's result (results already held are placed now), rather than buffered, gathered and copied
    /// again at the end: a map of 200,000 tiny items allocated and touched about 10 MB of fresh pages
    /// for a 1.6 MB result, and page faults were its largest cost. Replies that cannot be placed (a
    /// malformed peer's) stay buffered, for the consumer to report.
    /// - Returns: whether results are placed (only for raw-bytes results once the input's length is final).
    func placeResults() -> Bool {
        guard codec.kind != nil, let total = bufferLock.withLock({ placing == nil ? inputTotal : nil }) else {
            return false
        }
        // Allocated here, outside the lock (the reactor places replies under it): for a long map this is
        // the whole result's pages.
        let result: [Output] =
            total == 0
            ? []
            : [Output](unsafeUninitializedCapacity: total) { out, n in
                // Zero bytes are a valid value of every raw-bytes type (fixed-width numbers and `Bool`).
                UnsafeMutableRawBufferPointer(out).initializeMemory(as: UInt8.self, repeating: 0)
                n = total
            }
        return bufferLock.withLock {
            guard placing == nil else { return false }
            placing = (total, result)
            let held = buffer
            buffer = EncodedResults()
            buffer.placed = held.placed
            held.bytes.withUnsafeBytes { all in
                for run in held.runs {
                    let payload = UnsafeRawBufferPointer(rebasing: all[run.bytes])
                    if !placeLocked(start: run.start, count: run.count, payload) {
                        buffer.append(start: run.start, count: run.count, payload)
                    }
                }
            }
            return true
        }
    }

    /// Whether replies are being placed (for tests).
    var isPlacingForTesting: Bool { bufferLock.withLock { placing != nil } }

    /// Items placed so far (for tests).
    private(set) var placedForTesting = 0

    /// The result the replies were placed in (`nil` unless ``placeResults()`` was called); after this,
    /// replies are buffered again.
    func takePlaced() -> [Output]? {
        bufferLock.withLock {
            defer { placing = nil }
            guard let placing else { return nil }
            return placing.result
        }
    }

    /// Copies the items of `payload` (an encoded raw array) to `start...` of the result; `false` if it
    /// is not placing, or the payload is not `count` items of `Output`'s kind. Lock held.
    private func placeLocked(start: Int, count: Int, _ payload: UnsafeRawBufferPointer) -> Bool {
        guard var p = placing, let kind = codec.kind, start >= 0, count <= p.total - start,
            let found = try? rawArrayItems(kind: kind, payload, expected: ""), found.count == count
        else { return false }
        placing = nil  // `p` holds the only reference: writing copies nothing
        defer { placing = p }
        if count > 0 {
            p.result.withUnsafeMutableBytes { out in
                let items = UnsafeRawBufferPointer(rebasing: payload[found.bytes])
                UnsafeMutableRawBufferPointer(rebasing: out[(start * kind.stride)...]).copyMemory(from: items)
            }
        }
        buffer.placed += count
        placedForTesting += count
        return true
    }

    override func flushDeliveries() {
        let batch = bufferLock.withLock { () -> EncodedResults? in
            if buffer.isEmpty { return nil }
            if wholeResultWanted.load(ordering: .sequentiallyConsistent) && bufferedItems < Self.wakeBatch {
                let total = totalItems.load(ordering: .sequentiallyConsistent)
                let done = total >= 0 && finishedItems.load(ordering: .sequentiallyConsistent) >= total
                if !done { return nil }
            }
            return takeLocked()
        }
        if let batch { try? deliveries.put(.encoded(batch)) }
    }

    /// Results the reactor holds back (see ``wantWholeResult()``), taken by the consumer.
    func takeHeldBack() -> EncodedResults? {
        bufferLock.withLock { buffer.isEmpty ? nil : takeLocked() }
    }

    private func takeLocked() -> EncodedResults {
        defer {
            buffer = EncodedResults()
            bufferedItems = 0
        }
        return buffer
    }

    override func deliver(start: Int, count: Int, payload: UnsafeRawBufferPointer) {
        finishedItems.add(count, ordering: .sequentiallyConsistent)
        // Ended before the results are where the consumer takes them (it may take them itself).
        if trace != nil { endTraceIfDone() }
        bufferLock.withLock {
            if !placeLocked(start: start, count: count, payload) { buffer.append(start: start, count: count, payload) }
            bufferedItems += count
        }
    }

    /// Run `k` of `results` as deliveries, handed to `body`: its items, or (undecodable) a failure for
    /// each of them.
    func unpack<E: Error>(
        _ results: EncodedResults,
        _ k: Int,
        _ body: (Delivery<Output>) throws(E) -> Void
    ) throws(E) {
        switch results.values(k, codec) {
        case .success(let values):
            try body(.items(start: results.runs[k].start, values))
        case .failure(let error):
            let run = results.runs[k]
            failedItems.add(run.count, ordering: .relaxed)
            for i in run.start..<(run.start + run.count) { try body(.failed(index: i, error)) }
        }
    }

    /// Items computed in this process (the in-process pool), counted for progress.
    func deliverItems(start: Int, _ values: [Output]) {
        finishedItems.add(values.count, ordering: .relaxed)
        try? deliveries.put(.items(start: start, values))
    }

    override func fail(index: Int, _ error: any Error) {
        failedItems.add(1, ordering: .sequentiallyConsistent)
        finishedItems.add(1, ordering: .sequentiallyConsistent)
        if trace != nil { endTraceIfDone() }  // ended before the consumer can see the call's end
        try? deliveries.put(.failed(index: index, error))
    }
}

/// A call with one result (submit, apply, applyAsync).
final class SingleCall<Output: Codable & Sendable>: CallCore, @unchecked Sendable {
    let future = Future<Output>()
    private let codec = ItemsCodec<Output>()

    override func deliver(start: Int, count: Int, payload: UnsafeRawBufferPointer) {
        do {
            let values = try codec.decode(payload)
            guard let v = values.first, values.count == 1 else {
                throw MultiprocessingError(.malformedMessage, "\(values.count) results for one task")
            }
            trace?.end()  // before the result: whoever waits for it finds the span ended
            future.complete(.success(v))
        } catch {
            let failure = MultiprocessingError.cannotDecode("the result", error)
            trace?.end(failure: "\(failure)", error: failure)
            future.complete(.failure(failure))
        }
    }

    override func fail(index: Int, _ error: any Error) {
        trace?.end(failure: "\(error)", error: error)
        future.complete(.failure(error))
    }
}

/// Permits for items in flight: a lazy `imap` reads input only while fewer than its `maxInFlight` items
/// are submitted and not yet consumed, so memory stays flat however long the input.
final class Credit: @unchecked Sendable {  // state behind `condition`'s lock
    private let lock = Lock()
    private let condition: Condition
    private var available: Int
    private var cancelled = false

    init(_ limit: Int) {
        self.limit = limit
        available = limit
        condition = Condition(lock)
    }

    let limit: Int

    /// Takes `n` permits if they are available now.
    func tryAcquire(_ n: Int) -> Bool {
        lock.withLock {
            guard !cancelled, available >= n else { return false }
            available -= n
            return true
        }
    }

    /// Takes `n` permits, waiting for them; `false` if cancelled.
    func acquire(_ n: Int) -> Bool {
        lock.withLock {
            while available < n && !cancelled { _ = try? condition.wait() }
            if cancelled { return false }
            available -= n
            return true
        }
    }

    func release(_ n: Int) {
        lock.withLock {
            available += n
            try? condition.notifyAll()
        }
    }

    func cancel() {
        lock.withLock {
            cancelled = true
            try? condition.notifyAll()
        }
    }
}

/// Cuts `inputs` into chunks for a multi-item call and ends the call's results — the loop both pools'
/// feeders share.
///
/// - Parameters:
///   - size: the next chunk's size (asked again after each chunk; it may grow).
///   - emit: hands over one chunk and the index of its first item; returns how many items are now with
///     the pool (submitted, as opposed to batched), and throws `CancellationError` when the consumer left.
///   - finish: submits whatever `emit` batched; returns the items now with the pool.
///   - reportErrors: deliver an error (encoding, a closed pool) to the consumer at the first item not
///     with the pool, then end the results there; otherwise throw it.
func feedChunks<Input, Output: Codable & Sendable>(
    _ inputs: some Sequence<Input>,
    into call: StreamCall<Output>,
    reportErrors: Bool,
    size: () -> Int,
    emit: (ArraySlice<Input>, _ base: Int) throws -> Int,
    finish: () throws -> Int
) throws {
    var index = 0
    var withPool = 0
    do {
        if let array = inputs as? [Input] {
            // Slices of the caller's array: no copy, no per-item work.
            while index < array.count && !call.isCancelled {
                let end = Swift.min(array.count, index + size())
                withPool = try emit(array[index..<end], index)
                index = end
            }
        } else {
            var chunk: [Input] = []
            var limit = size()
            for x in inputs {
                if call.isCancelled { break }
                chunk.append(x)
                index += 1
                if chunk.count >= limit {
                    withPool = try emit(chunk[...], index - chunk.count)
                    chunk = []
                    limit = size()
                }
            }
            if !chunk.isEmpty { withPool = try emit(chunk[...], index - chunk.count) }
        }
        withPool = try finish()
    } catch is CancellationError {
        // The consumer went away; nothing more to send.
    } catch {
        guard reportErrors else { throw error }
        call.fail(index: withPool, error)
        call.totalItems.store(withPool + 1, ordering: .relaxed)
        call.inputEnded(total: withPool + 1)
        try? call.deliveries.put(.end(total: withPool + 1))
        return
    }
    call.totalItems.store(index, ordering: .relaxed)
    call.inputEnded(total: index)
    try? call.deliveries.put(.end(total: index))
}
