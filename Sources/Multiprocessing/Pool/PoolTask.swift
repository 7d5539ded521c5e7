import DequeModule
import Synchronization
import Threading

/// A task submitted to a pool — Python's `AsyncResult` (from `apply_async`) and
/// `concurrent.futures.Future` (from `submit`) in one.
public final class PoolTask<Output: Codable & Sendable>: Sendable {
    let call: SingleCall<Output>
    let cancelAction: @Sendable () -> Void

    init(call: SingleCall<Output>, cancel: @escaping @Sendable () -> Void) {
        self.call = call
        cancelAction = cancel
    }

    /// The result, waiting at most `timeout` — Python's `AsyncResult.get(timeout)`.
    ///
    /// - Throws: the task's error; ``PoolError``; `CancellationError` if it was cancelled;
    ///   ``MultiprocessingError/Code/timedOut`` if no result came in time (the task keeps running).
    public func get(timeout: Duration? = nil) throws -> Output {
        do {
            return try call.future.result(timeout: timeout)
        } catch let e as ThreadingError where e.code == .timedOut {
            throw MultiprocessingError(.timedOut, "no result within \(timeout!)")
        }
    }

    /// Waits until the task has finished — Python's `AsyncResult.wait(timeout)`.
    /// - Returns: whether it finished within `timeout`.
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Bool {
        do {
            _ = try call.future.result(timeout: timeout)
            return true
        } catch let e as ThreadingError where e.code == .timedOut {
            return false
        } catch {
            return true
        }
    }

    /// Whether the task has finished — Python's `AsyncResult.ready()`.
    public var isReady: Bool { call.future.isDone }

    /// Whether the task finished without an error — Python's `AsyncResult.successful()`; `nil` while it runs
    /// (Python raises `ValueError`).
    public var isSuccessful: Bool? {
        guard call.future.isDone else { return nil }
        return !call.future.hasFailed
    }

    /// The result, awaited without blocking a thread. Cancelling the awaiting Swift task cancels the pool
    /// task (cooperatively in its worker, then by stopping the worker after the grace period).
    public var value: Output {
        get async throws {
            try await withTaskCancellationHandler {
                try await call.future.value
            } onCancel: {
                cancelAction()
            }
        }
    }

    /// Cancels the task: a queued task fails at once with `CancellationError`; a running one has its Swift
    /// `Task` cancelled inside the worker, and the worker is stopped if it is still running after the
    /// call's ``TaskOptions/cancelGrace``. Beyond Python, whose `cancel()` cannot stop a running task.
    public func cancel() { cancelAction() }
}

/// Results of `imap`/`imapUnordered`, read lazily: blocking with ``next(timeout:)`` or
/// `for try await` (an `AsyncSequence`).
///
/// An item whose task failed throws its error from `next` at its place; the following `next` goes on
/// with the other items (as Python's `imap` iterator). Dropping the sequence cancels the rest of the call.
public final class PoolResults<Output: Codable & Sendable>: @unchecked Sendable {  // consumer state: one consumer
    let call: StreamCall<Output>
    let credit: Credit?
    let ordered: Bool
    private let cancelAction: @Sendable () -> Void
    private var nextIndex = 0
    private var total: Int?
    private var consumed = 0
    private var parked: [Int: Delivery<Output>] = [:]
    private var current: (start: Int, items: [Output], at: Int)?
    private var arrival = Deque<Delivery<Output>>()
    /// Permits consumed but not yet returned: returned in batches, so the feeder is not woken per item.
    private var unreleased = 0

    private func consumed(_ n: Int) {
        consumed += n
        guard let credit else { return }
        unreleased += n
        if unreleased >= Swift.max(1, credit.limit / 8) {
            credit.release(unreleased)
            unreleased = 0
        }
    }

    init(call: StreamCall<Output>, credit: Credit?, ordered: Bool, cancel: @escaping @Sendable () -> Void) {
        self.call = call
        self.credit = credit
        self.ordered = ordered
        cancelAction = cancel
    }

    deinit {
        if total == nil || consumed < total! { cancelAction() }
        credit?.cancel()
        call.progress?.finish(timeout: .seconds(1))
    }

    /// Stops the call: queued tasks are dropped, running ones cancelled. Its progress display draws its
    /// last report first.
    public func cancel() {
        credit?.cancel()
        cancelAction()
        call.progress?.finish(timeout: .seconds(1))
    }

    /// The next result, waiting at most `timeout` for it; `nil` when all have been read.
    /// - Throws: the item's error, ``MultiprocessingError/Code/timedOut``.
    public func next(timeout: Duration? = nil) throws -> Output? {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while true {
            if let r = try take() { return r }
            if let total, consumed >= total {
                // The progress display's last frame is drawn before the caller hears the call is over.
                call.progress?.finish(timeout: deadline.map { Swift.max(.zero, $0 - .now) })
                return nil
            }
            let wait = deadline.map { Swift.max(.zero, $0 - .now) }
            do {
                accept(try call.deliveries.get(timeout: wait))
            } catch {
                if error.code == .empty || error.code == .timedOut {
                    throw MultiprocessingError(.timedOut, "no result within \(timeout!)")
                }
                throw error
            }
        }
    }

    /// The next result, suspending the task (not a thread). Cancelling the task cancels the call.
    public func next() async throws -> Output? {
        while true {
            if let r = try take() { return r }
            if let total, consumed >= total {
                await call.progress?.finish()
                return nil
            }
            do {
                accept(try await call.deliveries.get())
            } catch is CancellationError {
                cancel()
                throw CancellationError()
            }
        }
    }

    private func accept(_ d: Delivery<Output>) {
        switch d {
        case .batch(let all): for x in all { accept(x) }
        case .encoded(let results):
            assert(results.placed == 0, "results are placed only for collect(timeout:)")
            for k in results.runs.indices { call.unpack(results, k) { accept($0) } }
        case .end(let n): total = n
        case .items(let start, _), .failed(let start, _):
            if ordered { parked[start] = d } else { arrival.append(d) }
        }
    }

    /// The next result already at hand, in order (or arrival order when unordered).
    private func take() throws -> Output? {
        if let c = current {
            let v = c.items[c.at]
            current = c.at + 1 < c.items.count ? (c.start, c.items, c.at + 1) : nil
            consumed(1)
            return v
        }
        let d: Delivery<Output>?
        if ordered {
            d = parked.removeValue(forKey: nextIndex)
        } else {
            d = arrival.isEmpty ? nil : arrival.removeFirst()
        }
        guard let d else { return nil }
        switch d {
        case .items(let start, let items):
            nextIndex = start + items.count
            current = (start, items, 0)
            return try take()
        case .failed(let index, let error):
            nextIndex = index + 1
            consumed(1)
            throw error
        case .end, .batch, .encoded:
            return nil
        }
    }

    /// Every remaining outcome, in order (ordered calls) — failures included.
    /// - Parameter timeout: for all of it; when it expires the call is cancelled and
    ///   ``MultiprocessingError/Code/timedOut`` thrown.
    public func collectResults(timeout: Duration? = nil) throws -> [Result<Output, any Error>] {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var out: [Result<Output, any Error>] = []
        while true {
            do {
                guard let v = try next(timeout: deadline.map { Swift.max(.zero, $0 - .now) }) else { break }
                out.append(.success(v))
            } catch let e as MultiprocessingError where e.code == .timedOut {
                cancel()
                throw e
            } catch {
                out.append(.failure(error))
            }
        }
        return out
    }

    /// Reads everything left, in order; the first failure is thrown (and the rest of the call cancelled).
    /// - Parameter timeout: for all of it; when it expires the call is cancelled and
    ///   ``MultiprocessingError/Code/timedOut`` thrown.
    public func collect(timeout: Duration? = nil) throws -> [Output] {
        try collect(timeout: timeout, placingResults: false)
    }

    /// ``collect(timeout:)``; with `placingResults`, raw-bytes results are copied from each reply straight
    /// into the result (``StreamCall/placeResults()``). Only for a caller that collects once and drops
    /// these results (the eager `map`): placed items reach no other reader, so a second `collect` or a
    /// `next()` after a failed one would not see them.
    func collect(timeout: Duration?, placingResults: Bool) throws -> [Output] {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        func remaining() -> Duration? { deadline.map { Swift.max(.zero, $0 - .now) } }
        guard ordered, current == nil, consumed == 0, parked.isEmpty else {
            var out: [Output] = []
            do {
                while let v = try next(timeout: remaining()) { out.append(v) }
            } catch let e as MultiprocessingError where e.code == .timedOut {
                cancel()
                throw e
            }
            return out
        }
        // Whole chunks at a time, kept in arrival order with their start indices, then joined in order
        // (sorted first only if they arrived out of order): no hashing per chunk, which at chunk size 1
        // is per item.
        var starts: [Int] = []
        var chunks: [[Output]] = []
        var inOrder = true
        var received = 0
        // Results whose items are raw bytes stay bytes until the end, then are copied into place.
        var raw = RawRuns()
        var placedCount = 0  // items the reactor put straight into the call's result
        func take(_ d: Delivery<Output>) throws {
            switch d {
            case .batch(let all): for x in all { try take(x) }
            case .encoded(let results):
                placedCount += results.placed
                received += results.placed
                credit?.release(results.placed)
                for k in results.runs.indices {
                    if call.codec.kind != nil {
                        let run = results.runs[k]
                        do {
                            let n = try results.bytes.withUnsafeBytes { all in
                                let bytes = UnsafeRawBufferPointer(rebasing: all[run.bytes])
                                let (n, items) = try call.codec.rawItems(bytes)
                                if n == run.count {
                                    raw.append(
                                        start: run.start,
                                        count: n,
                                        UnsafeRawBufferPointer(rebasing: bytes[items])
                                    )
                                }
                                return n
                            }
                            guard n == run.count else {
                                throw MultiprocessingError(.malformedMessage, "\(n) results announced as \(run.count)")
                            }
                        } catch {
                            call.failedItems.add(run.count, ordering: .relaxed)
                            cancel()
                            throw MultiprocessingError.cannotDecode("the results", error)
                        }
                        received += run.count
                        credit?.release(run.count)
                    } else {
                        try call.unpack(results, k) { try take($0) }
                    }
                }
            case .end(let n): total = n
            case .items(let start, let items):
                if let last = starts.last, last > start { inOrder = false }
                starts.append(start)
                chunks.append(items)
                received += items.count
                credit?.release(items.count)
            case .failed(_, let error):
                cancel()
                throw error
            }
        }
        // Nothing but the whole result is wanted: the reactor may hold results back until all are in.
        // Only raw-bytes results, whose decoding fails only for a malformed peer: any other type's decoder
        // may refuse a value, and that failure must stop the call as soon as it arrives.
        if credit == nil && call.codec.kind != nil { call.wantWholeResult() }
        // With the input's length final, such results go straight to their place as they arrive.
        let placing = placingResults && credit == nil && call.placeResults()
        while total == nil || received < total! {
            if let held = call.takeHeldBack() {
                try take(.encoded(held))
                continue
            }
            do {
                try take(try call.deliveries.get(timeout: remaining()))
            } catch let e as ThreadingError where e.code == .empty || e.code == .timedOut {
                if let held = call.takeHeldBack() {
                    try take(.encoded(held))
                    continue
                }
                cancel()
                throw MultiprocessingError(.timedOut, "the call did not finish within \(timeout!)")
            }
        }
        consumed = received
        call.progress?.finish(timeout: remaining())
        if placing, var placed = call.takePlaced(), placedCount > 0 {
            // Each unit's results are delivered once, so the placed items and the runs taken before
            // placing began (if any) tile the call.
            guard chunks.isEmpty, placed.count == received, raw.copy(into: &placed) else {
                cancel()
                throw MultiprocessingError(.malformedMessage, "results that do not cover the call's items exactly once")
            }
            return placed
        }
        if !raw.runs.isEmpty {
            // Raw runs come only from a process pool's replies (never with arrays): they must tile the call.
            guard chunks.isEmpty, let placed = raw.place(as: Output.self, total: received) else {
                cancel()
                throw MultiprocessingError(.malformedMessage, "results that do not cover the call's items exactly once")
            }
            return placed
        }
        var out: [Output] = []
        out.reserveCapacity(received)
        if inOrder {
            for items in chunks { out.append(contentsOf: items) }
        } else {
            for k in starts.indices.sorted(by: { starts[$0] < starts[$1] }) { out.append(contentsOf: chunks[k]) }
        }
        return out
    }
}

extension PoolResults: AsyncSequence {
    /// Each result, in the order the results deliver them.
    public typealias Element = Output
    /// Iterates the results as they arrive, suspending between them.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let results: PoolResults<Output>
        /// The next result; `nil` after the last. Throws an item's failure at its place.
        public mutating func next() async throws -> Output? { try await results.next() }
    }
    /// An iterator over the results.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(results: self) }
}

extension PoolTask {
    /// Calls `callback` with the value or `errorCallback` with the error once the task is done, through
    /// `deliver` (a pool's callback thread, or inline); Python's `apply_async` callbacks. Returns `self`.
    func reporting(
        on deliver: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void,
        _ callback: (@Sendable (Output) -> Void)?,
        _ errorCallback: (@Sendable (any Error) -> Void)?
    ) -> PoolTask<Output> {
        guard callback != nil || errorCallback != nil else { return self }
        call.future.addDoneCallback { f in
            deliver {
                switch Result(catching: { try f.result(timeout: .zero) }) {
                case .success(let v): callback?(v)
                case .failure(let e): errorCallback?(e)
                }
            }
        }
        return self
    }
}

/// Raw-bytes results gathered by `collect`: each run's item bytes and where the run starts.
struct RawRuns {
    var bytes: [UInt8] = []
    var runs: [EncodedResults.Run] = []

    mutating func append(start: Int, count: Int, _ items: UnsafeRawBufferPointer) {
        runs.append(EncodedResults.Run(start: start, count: count, bytes: bytes.count..<(bytes.count + items.count)))
        bytes.append(contentsOf: items)
    }

    /// Copies each run to its place in `result`; `false` (nothing copied) if a run does not fit in it
    /// with items of `T`'s size.
    func copy<T>(into result: inout [T]) -> Bool {
        let stride = MemoryLayout<T>.stride
        for run in runs {
            guard run.start >= 0, run.count <= result.count - run.start, run.bytes.count == run.count * stride else {
                return false
            }
        }
        bytes.withUnsafeBytes { all in
            result.withUnsafeMutableBytes { dst in
                for run in runs where run.count > 0 {
                    UnsafeMutableRawBufferPointer(rebasing: dst[(run.start * stride)...])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: all[run.bytes]))
                }
            }
        }
        return true
    }

    /// The runs as one `[T]` of `total` items, each copied to its place; `nil` unless the runs cover
    /// `0..<total` exactly once with items of `T`'s size.
    func place<T>(as: T.Type, total: Int) -> [T]? {
        let stride = MemoryLayout<T>.stride
        var covered = 0
        for run in runs {
            guard run.start >= 0, run.count <= total - run.start, run.bytes.count == run.count * stride else {
                return nil
            }
            covered += run.count
        }
        guard covered == total, runs.count > 0 || total == 0 else { return nil }
        // Tiling: in start order, each run begins where the previous one ended (runs mostly arrive in
        // order; sorted only if not).
        var next = 0
        var inOrder = true
        for run in runs {
            if run.start != next {
                inOrder = false
                break
            }
            next += run.count
        }
        if !inOrder {
            next = 0
            for k in runs.indices.sorted(by: { runs[$0].start < runs[$1].start }) {
                guard runs[k].start == next else { return nil }
                next += runs[k].count
            }
        }
        return bytes.withUnsafeBytes { all in
            [T](unsafeUninitializedCapacity: total) { out, n in
                let dst = UnsafeMutableRawBufferPointer(out)
                for run in runs where run.count > 0 {
                    UnsafeMutableRawBufferPointer(rebasing: dst[(run.start * stride)...])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: all[run.bytes]))
                }
                n = total
            }
        }
    }
}
