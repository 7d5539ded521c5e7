internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import Threading

/// The worker side of a pool: run tasks from the parent, reply in batches.
///
/// Replies are buffered and written when no further task is already buffered (before the worker would
/// block), when the buffer passes 256 KiB, or every 2 ms inside a long chunk — so a chunk's finished
/// items reach the parent even if a later item crashes the worker. When the parent finds an item overdue
/// with replies still owed for units before it, it asks through the shared slot and the wake-up thread
/// writes them, so a quick unit's result never waits for the long one queued after it. Before each item
/// the worker records (unit, index, start time) in the shared slot, so the parent charges a crash to
/// exactly that item.
enum PoolWorker {
    typealias Runner = (_ unit: UInt64, _ count: Int, _ payload: UnsafeRawBufferPointer, _ out: Replies) -> Void

    /// The running item's Swift task, for cancellation from the wake-up thread.
    private static let current = TrackedMutex<(unit: UInt64, task: Task<Void, Never>?)>((0, nil))
    nonisolated(unsafe) static var slot: SharedSlot!  // set once in `run`, before other threads start
    nonisolated(unsafe) static var memoryLimit: Int?  // likewise

    static func run(fd: Int32, setup: PoolSetup, pid: Int32) -> Never {
        do {
            slot = try SharedSlot.map(setup.slot.fd)
        } catch {
            WorkerRuntime.fail("cannot map the pool slot: \(error)")
        }
        Syscall.close(setup.slot.fd)
        memoryLimit = setup.memoryLimit
        let out = Replies(fd: fd, pid: pid)
        startWakeWatch(setup.wake.fd, out)
        if let type = setup.initializerType, let payload = setup.initializer {
            runInitializer(type, payload)
        }
        var reader = FrameDecoder.pool(prefill: PoolWorker.leftover)
        var runners: [UInt32: Runner] = [:]
        while true {
            do {
                while let _ = try reader.nextPoolFrame({ body in try handle(body, &runners, out) }) {
                    if out.pending > 256 * 1024 { out.flush() }
                }
            } catch {
                WorkerRuntime.fail("bad message from the parent: \(error)")
            }
            out.flush()
            let n: Int
            do { n = try reader.fill(from: fd, blocking: true) } catch { exit(0) }
            if n == 0 { exit(0) }  // the parent closed the channel
        }
    }

    /// Task frames read so far (the parent numbers the frames it sends the same way).
    nonisolated(unsafe) static var taskFrames: UInt64 = 0

    /// Whether the running unit's items are each stamped with the clock (it has a time limit).
    nonisolated(unsafe) static var stampEachItem = true

    /// Bytes that arrived with the setup message (set by the worker loop before `run`).
    nonisolated(unsafe) static var leftover: [UInt8] = []

    private static func handle(_ body: UnsafeRawBufferPointer, _ runners: inout [UInt32: Runner], _ out: Replies) throws
    {
        var c = FrameCursor(body)
        switch body[0] {
        case PoolWire.task, PoolWire.tracedTask:
            let unit: UInt64 = try c.get()
            let fnId: UInt32 = try c.get()
            let count = Int(try c.get(UInt32.self))
            stampEachItem = try c.get(UInt8.self) & PoolWire.stampEachItem != 0
            let carrier = body[0] == PoolWire.tracedTask ? try c.bytes(Int(try c.get(UInt32.self))) : nil
            guard let runner = runners[fnId] else {
                throw MultiprocessingError(.malformedMessage, "task for undefined function \(fnId)")
            }
            taskFrames += 1
            // Taken back by the parent while this worker was stuck on an earlier task: another worker
            // runs it, and this one says nothing of it.
            guard slot.startTask(taskFrames) else { return }
            let started = out.startUnit()
            if slot.isMarkedCancelled(unit) {
                for i in 0..<count { out.failure(unit: unit, index: i, CancellationError()) }
                return
            }
            // Stamped before the unit is published, so the supervisor never times this unit against the
            // start of the previous unit's last item (a unit's decoding counts as its first item's time).
            slot.setItemStart(PoolClock.coarse())
            slot.setIndex(0)
            slot.setRunning(unit: unit)
            if let carrier {
                let rest = c.rest
                PoolTracing.runUnit(carrier, unit: unit, count: count, pid: out.pid) { runner(unit, count, rest, out) }
            } else {
                runner(unit, count, c.rest, out)
            }
            slot.setRunning(unit: 0)
            // Batching replies pays only for tiny units: after one that took 100 µs or more, answer now,
            // so the parent can send more work before this worker runs dry.
            if PoolClock.precise() &- started >= 100_000 { out.flush() }
            // Over the memory limit: answer, then leave before starting anything else.
            if let limit = memoryLimit, mp_statm_resident_bytes(getpid()) > limit {
                slot.markRetired()
                out.flush()
                exit(0)
            }
        case PoolWire.define:
            let fnId: UInt32 = try c.get()
            let kind = try c.get(UInt8.self)
            let nameLength = Int(try c.get(UInt32.self))
            let name = String(decoding: try c.bytes(nameLength), as: UTF8.self)
            runners[fnId] = makeRunner(kind: kind, name: name, payload: c.rest)
        case PoolWire.shutdown:
            out.flush()
            exit(0)
        default:
            throw MultiprocessingError(.malformedMessage, "unknown pool frame kind \(body[0])")
        }
    }

    /// A runner for the named type, or one that fails every item with the reason it cannot run.
    private static func makeRunner(kind: UInt8, name: String, payload: UnsafeRawBufferPointer) -> Runner {
        let failing: (any Error) -> Runner = { error in
            { unit, count, _, out in
                for i in 0..<count { out.failure(unit: unit, index: i, error) }
            }
        }
        let type = _typeByName(name)
        switch PoolWire.FunctionKind(rawValue: kind) {
        case .job:
            guard let job = type as? any Job.Type else {
                return failing(MultiprocessingError(.unknownJob, "no Job type named \(name) in this executable"))
            }
            return jobRunner(job)
        case .function:
            guard let fn = type as? any TaskFunction.Type else {
                return failing(
                    MultiprocessingError(.unknownJob, "no TaskFunction type named \(name) in this executable")
                )
            }
            do {
                if let sync = type as? any SyncTaskFunction.Type { return try syncRunner(sync, payload) }
                return try functionRunner(fn, payload)
            } catch {
                return failing(error)
            }
        case nil:
            return failing(MultiprocessingError(.malformedMessage, "unknown function kind \(kind)"))
        }
    }

    private static func jobRunner<J: Job>(_: J.Type) -> Runner {
        chunkRunner(JobFunction<J>())
    }

    private static func syncRunner<F: SyncTaskFunction>(_: F.Type, _ payload: UnsafeRawBufferPointer) throws -> Runner {
        let f = try BinaryDecoder().decode(F.self, from: payload)
        let inputKind = ItemsCodec<F.Input>().kind
        let outputKind = ItemsCodec<F.Output>().kind
        return { unit, count, payload, out in
            let context = ChunkContext(
                unit: unit,
                out: out,
                slot: slot,
                F.Input.self,
                F.Output.self,
                inputKind: inputKind,
                outputKind: outputKind,
                stampEachItem: stampEachItem
            )
            defer { ResultScratch.trim() }
            guard f._runEncodedChunk(payload, count: count, context) else { return }
            if context.next < count {  // cancelled
                for j in context.next..<count { out.failure(unit: unit, index: j, CancellationError()) }
            }
        }
    }

    /// A chunk's items, or `nil` after reporting that they cannot be decoded.
    static func decodeChunk<T: Decodable>(
        _ codec: ItemsCodec<T>,
        unit: UInt64,
        count: Int,
        _ payload: UnsafeRawBufferPointer,
        _ out: Replies
    ) -> [T]? {
        do {
            let inputs = try codec.decode(payload)
            guard inputs.count == count else {
                throw MultiprocessingError(.malformedMessage, "chunk of \(inputs.count) items announced as \(count)")
            }
            return inputs
        } catch {
            out.undecodableInputs(unit: unit, count: count, error)
            return nil
        }
    }

    private static func functionRunner<F: TaskFunction>(_: F.Type, _ payload: UnsafeRawBufferPointer) throws -> Runner {
        chunkRunner(try BinaryDecoder().decode(F.self, from: payload))
    }

    private static func chunkRunner<F: TaskFunction>(_ f: F) -> Runner {
        let inputCodec = ItemsCodec<F.Input>()
        let outputCodec = ItemsCodec<F.Output>()
        return { unit, count, payload, out in
            guard let inputs = decodeChunk(inputCodec, unit: unit, count: count, payload, out) else { return }
            let chunk = Chunk<F>(f: f, unit: unit, inputs: inputs, out: out, codec: outputCodec)
            while chunk.next < count {
                if slot.cancelRequest == unit {
                    for j in chunk.next..<count { out.failure(unit: unit, index: j, CancellationError()) }
                    break
                }
                runSlice(chunk)
            }
        }
    }

    /// Runs the chunk's items from `chunk.next` in one Swift task, on this thread (``CallerRunsExecutor``:
    /// it starts here and resumes here after a suspension), so a synchronous function costs no task or
    /// thread hop per item. The slice ends early when its task is cancelled (a soft timeout or a cancelled
    /// unit); the next slice then starts in a fresh task.
    private static func runSlice<F: TaskFunction>(_ chunk: Chunk<F>) {
        func register(_ task: Task<Void, Never>?) {
            current.withLock { $0 = task.map { (chunk.unit, $0) } ?? (0, nil) }
            // Asked before the task was registered.
            if let task, slot.wantsCancel(of: chunk.unit) { task.cancel() }
        }
        _ = CallerRunsExecutor.run(running: register) { () async -> Void in await chunk.run() }
    }

    /// The wake-up thread: on each wake from the parent, cancels the running item if the parent asked
    /// to, and writes the buffered replies if the parent asked for them while this unit runs.
    private static func startWakeWatch(_ wake: Int32, _ out: Replies) {
        let t = OSThread(name: "mp-pool-cancel", daemon: true) {
            var sink: UInt64 = 0
            while true {
                guard (try? SystemCall.poll(wake, events: Int16(POLLIN), timeoutMs: -1)) ?? 0 != 0 else { continue }
                _ = try? withUnsafeMutableBytes(of: &sink) { p throws(SystemCallError) in try SystemCall.read(wake, p) }
                let task = current.withLock { c -> Task<Void, Never>? in
                    c.unit != 0 && c.unit == slot.running.unit && slot.wantsCancel(of: c.unit) ? c.task : nil
                }
                task?.cancel()
                // After the cancellation, which must not wait behind a write the main thread may be doing.
                let running = slot.running.unit
                if running != 0 && slot.repliesRequest == running { out.flushForParent() }
            }
        }
        try? t.start()
    }

    private static func runInitializer(_ name: String, _ payload: [UInt8]) {
        guard let type = _typeByName(name) as? any Job.Type else {
            WorkerRuntime.fail("no initializer Job type named \(name) in this executable")
        }
        func go<J: Job>(_: J.Type) throws {
            let job = try BinaryDecoder().decode(J.self, from: payload)
            _ = try WorkerRuntime.runBlocking { try await job.run() }
        }
        do {
            try go(type)
        } catch {
            let line = "swift-multiprocessing worker \(getpid()): the pool initializer failed: \(error)\n"
            _ = line.withCString { write(2, $0, strlen($0)) }
            exit(1)
        }
    }
}

/// The state of one chunk being run: its items, the results not yet sent, where it is.
// Used by one thread at a time: the worker waits while a slice runs.
final class Chunk<F: TaskFunction>: @unchecked Sendable {
    let f: F
    let unit: UInt64
    let inputs: [F.Input]
    let out: Replies
    var next = 0
    private let codec: ItemsCodec<F.Output>
    private var done: [F.Output] = []
    private var first = 0  // index of done[0]

    init(f: F, unit: UInt64, inputs: [F.Input], out: Replies, codec: ItemsCodec<F.Output>) {
        self.f = f
        self.codec = codec
        self.unit = unit
        self.inputs = inputs
        self.out = out
        done.reserveCapacity(inputs.count)
    }

    func run() async {
        let slot = PoolWorker.slot!
        while next < inputs.count {
            let i = next
            let (t, unitCancelled) = slot.itemStarting(unit: unit, index: i)
            if unitCancelled { break }
            next = i + 1
            do {
                done.append(try await f(inputs[i]))
            } catch {
                send()
                first = i + 1
                out.failure(unit: unit, index: i, error)
                if Task.isCancelled { break }  // a fresh task runs the rest
            }
            if out.dueForPartialFlush(now: t) {
                send()
                first = i + 1
                out.flush()
            }
        }
        send()
        first = next
    }

    private func send() {
        out.outputs(unit: unit, start: first, done, codec)
        done.removeAll(keepingCapacity: true)
    }
}

/// A pool worker's outgoing replies, written in batches.
///
/// The worker's main thread builds and writes them; the wake-up thread may also write what is buffered
/// (``flushForParent()``), so the buffer and the descriptor are used under `lock`. `lastFlush` and `mark`
/// belong to the main thread alone.
final class Replies: @unchecked Sendable {  // `writer` only under `lock`; the rest on the main thread
    let fd: Int32
    let pid: Int32
    private let lock = TrackedMutex(())
    private var writer = FrameWriter()
    private var lastFlush: UInt64
    private var mark: UInt64

    init(fd: Int32, pid: Int32) {
        self.fd = fd
        self.pid = pid
        lastFlush = PoolClock.coarse()
        mark = PoolClock.precise()
    }

    var pending: Int { lock.withLock { _ in writer.bytes.count } }

    /// Appends one frame of kind `kind`, built by `body`, to the buffer.
    private func frame(_ kind: UInt8, _ body: (inout FrameWriter) -> Void) {
        lock.withLock { _ in
            let at = writer.begin(kind)
            body(&writer)
            writer.end(at)
        }
    }

    /// Whether a long chunk should send what it has: 2 ms since the last write.
    /// `now` may be older than the last flush (a chunk that reads the clock every few items): not due.
    func dueForPartialFlush(now: UInt64) -> Bool { now > lastFlush && now - lastFlush > 2_000_000 }

    /// Marks the start of a unit's work; returns the time (precise clock).
    @discardableResult
    func startUnit() -> UInt64 {
        mark = PoolClock.precise()
        return mark
    }

    /// Nanoseconds of work since the last reply (reported so the parent can tell work from waiting).
    private func busy() -> UInt64 {
        let t = PoolClock.precise()
        defer { mark = t }
        return t &- mark
    }

    func outputs<T: Encodable>(unit: UInt64, start: Int, _ values: [T], _ codec: ItemsCodec<T>) {
        guard !values.isEmpty else { return }
        let encoded: [UInt8]
        do {
            encoded = try codec.encode(values)
        } catch {
            // Find the items that cannot be encoded; send the others one by one.
            for (k, v) in values.enumerated() {
                if (try? BinaryEncoder().encode([v])) != nil {
                    outputs(unit: unit, start: start + k, [v], codec)
                } else {
                    failure(
                        unit: unit,
                        index: start + k,
                        MultiprocessingError(
                            .encodingFailed,
                            "the result of \(T.self) could not be encoded: \(error)"
                        )
                    )
                }
            }
            return
        }
        // A frame the parent would refuse (it kills a worker that sends one): split the batch, and fail an
        // item whose result alone is too large, saying how large.
        if encoded.count > PoolWire.maxBody {
            if values.count > 1 {
                for (k, v) in values.enumerated() { outputs(unit: unit, start: start + k, [v], codec) }
            } else {
                failure(
                    unit: unit,
                    index: start,
                    MultiprocessingError(
                        .messageTooLarge,
                        "the result of \(T.self) is \(encoded.count) bytes encoded, over the pool's limit of \(PoolWire.maxBody) bytes per result"
                    )
                )
            }
            return
        }
        let busy = busy()
        frame(PoolWire.output) { w in
            w.put(unit)
            w.put(UInt32(start))
            w.put(UInt32(values.count))
            w.put(busy)
            w.put(encoded)
        }
    }

    /// Results `start..<start+count` of `unit`, of a raw-bytes type: `raw` is their bytes. The encoded
    /// array (header, then the bytes) goes straight into the frame.
    func outputs(unit: UInt64, start: Int, count: Int, kind: TrivialKind, raw: UnsafeRawBufferPointer) {
        var header: [UInt8] = [BinaryTag.trivialArray.rawValue, kind.rawValue]
        writeVarint(UInt64(count), into: &header)
        guard header.count + raw.count <= PoolWire.maxBody || count == 1 else {
            // Too large for one frame (a frame the parent would refuse): in halves.
            let half = count / 2
            let cut = half * (raw.count / count)
            outputs(
                unit: unit,
                start: start,
                count: half,
                kind: kind,
                raw: UnsafeRawBufferPointer(rebasing: raw[..<cut])
            )
            outputs(
                unit: unit,
                start: start + half,
                count: count - half,
                kind: kind,
                raw: UnsafeRawBufferPointer(rebasing: raw[cut...])
            )
            return
        }
        let busy = busy()
        frame(PoolWire.output) { w in
            w.put(unit)
            w.put(UInt32(start))
            w.put(UInt32(count))
            w.put(busy)
            w.put(header)
            w.put(raw)
        }
    }

    /// Reports that `unit`'s `count` inputs could not be decoded. Which item failed is unknown: the
    /// parent sends them again one by one, so only that item fails.
    func undecodableInputs(unit: UInt64, count: Int, _ error: any Error) {
        if count > 1 {
            resend(unit: unit)
        } else {
            failure(unit: unit, index: 0, MultiprocessingError.cannotDecode("the task's input", error))
        }
    }

    /// Asks the parent to send `unit`'s items again one per unit.
    func resend(unit: UInt64) {
        frame(PoolWire.resend) { w in w.put(unit) }
    }

    func failure(unit: UInt64, index: Int, _ error: any Error) {
        let wire = WireError(error, pid: pid)
        var encoded =
            (try? BinaryEncoder().encode(wire))
            ?? (try? BinaryEncoder().encode(WireError(MultiprocessingError(.encodingFailed, "\(error)"), pid: pid)))
            ?? []
        if encoded.count > PoolWire.maxBody {
            let what =
                "an error of type \(type(of: error)) that is \(encoded.count) bytes encoded, over the pool's limit of \(PoolWire.maxBody)"
            encoded =
                (try? BinaryEncoder().encode(
                    WireError(MultiprocessingError(.messageTooLarge, "the task threw " + what), pid: pid)
                )) ?? []
        }
        let busy = busy()
        frame(PoolWire.failure) { w in
            w.put(unit)
            w.put(UInt32(index))
            w.put(busy)
            w.put(encoded)
        }
    }

    func flush() {
        lastFlush = PoolClock.coarse()
        lock.withLock { _ in writeBuffered() }
    }

    /// Writes what is buffered, from the wake-up thread: the parent asked for the replies owed while a
    /// long item runs.
    func flushForParent() {
        lock.withLock { _ in writeBuffered(mainThread: false) }
    }

    private func writeBuffered(mainThread: Bool = true) {
        guard !writer.isEmpty else { return }
        // Written from the buffer, which is then emptied in place: its pages stay for the next replies
        // (a fresh buffer per flush was page faults on every chunk's results).
        defer { writer.reset() }
        do {
            try writer.bytes.withUnsafeBytes { try Syscall.writeAll(fd, $0) }
        } catch {
            // The parent is gone. Off the main thread, which may be running the user's code (or exiting
            // itself), leave without running exit handlers.
            if mainThread { exit(0) } else { _exit(0) }
        }
    }
}
