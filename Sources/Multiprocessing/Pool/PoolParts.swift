internal import CMultiprocessingShims
import DequeModule
import Glibc
import Synchronization
import Threading

// The values PoolCore works with: functions as the workers know them, units of work, workers as the
// parent sees them, and the shared slot's pool fields.

/// A function or job type as the workers know it: defined once per worker, then referred to by id.
struct FunctionRef: Sendable {
    let id: UInt32
    let kind: PoolWire.FunctionKind
    let name: String
    let payload: [UInt8]
}

struct FunctionKey: Hashable {
    let kind: UInt8
    let name: String
    let payload: [UInt8]
}

/// A batch of items of one call sent to one worker as one message (a chunk, or a single task).
///
/// The pool's state never calls into `call`: it reads its (immutable) options and names it in the
/// actions it returns. Whether the call was cancelled is the unit's own flag, set by the state's events.
/// What never changes sits in one shared object, so that moving a unit between queues costs one
/// reference count rather than one per field (measured: 20 % of `map` throughput at chunksize 1).
struct Unit: Sendable {
    final class Body: Sendable {
        let id: UInt64
        let call: CallCore
        let function: FunctionRef
        let base: Int
        let count: Int
        let payload: [UInt8]
        let encodeRange: @Sendable (Range<Int>) throws -> [UInt8]

        init(
            id: UInt64,
            call: CallCore,
            function: FunctionRef,
            base: Int,
            count: Int,
            payload: [UInt8],
            encodeRange: @escaping @Sendable (Range<Int>) throws -> [UInt8]
        ) {
            self.id = id
            self.call = call
            self.function = function
            self.base = base
            self.count = count
            self.payload = payload
            self.encodeRange = encodeRange
        }
    }

    let body: Body
    var attempt: Int
    var kills: Int
    /// Its task frame's number on the worker it was sent to (1, 2, …: the order the worker reads them),
    /// for taking it back before it starts (``SharedSlot/fenceTasks(after:through:)``).
    var seq = 0
    var callCancelled = false
    var reported = 0
    /// Work time the worker reported for this unit so far.
    var busyNanos: UInt64 = 0
    /// A whole-unit cancellation: when the worker is killed if the unit still runs.
    var cancelAt: PoolInstant?
    /// The item a soft timeout cancelled, and when its worker is killed if that item still runs.
    var softIndex: Int?
    var softAt: PoolInstant?

    var id: UInt64 { body.id }
    var call: CallCore { body.call }
    var function: FunctionRef { body.function }
    /// Index of item 0 within the call.
    var base: Int { body.base }
    var count: Int { body.count }
    var payload: [UInt8] { body.payload }

    /// Items `range` (relative) of this unit as a new unit with its own id, for sending again.
    func part(_ range: Range<Int>, id: UInt64, attempt: Int, kills: Int) throws -> Unit {
        let payload = range == 0..<count ? self.payload : try body.encodeRange(range)
        let lower = range.lowerBound
        var again = Unit(
            id: id,
            call: call,
            function: function,
            base: base + lower,
            count: range.count,
            payload: payload,
            encodeRange: { [encodeRange = body.encodeRange] r in
                try encodeRange((r.lowerBound + lower)..<(r.upperBound + lower))
            },
            attempt: attempt,
            kills: kills
        )
        again.callCancelled = callCancelled
        return again
    }

    /// `encodeRange` re-encodes a sub-range (relative indices) of the items, to send again what a dead
    /// worker did not do.
    init(
        id: UInt64,
        call: CallCore,
        function: FunctionRef,
        base: Int,
        count: Int,
        payload: [UInt8],
        encodeRange: @escaping @Sendable (Range<Int>) throws -> [UInt8],
        attempt: Int = 1,
        kills: Int = 0
    ) {
        body = Body(
            id: id,
            call: call,
            function: function,
            base: base,
            count: count,
            payload: payload,
            encodeRange: encodeRange
        )
        self.attempt = attempt
        self.kills = kills
    }
}

/// Why the pool stopped a worker.
enum StopReason: Sendable {
    case timeout(unit: UInt64)
    case softTimeout(unit: UInt64)
    case cancelled(unit: UInt64)
    case terminate(PoolError)
    /// The worker sent something the parent cannot accept: it is killed, and the unit it was on is charged.
    case protocolViolation(PoolError)
}

/// One worker process of a pool: its process, descriptors and reading state. Its logical state (units in
/// flight, stop reason, counters) is ``PoolState/Worker``, under the same id.
final class WorkerIO: @unchecked Sendable {  // `let`s are immutable; the rest is the reactor thread's
    let id: PoolState.WorkerID
    let handle: ProcessHandle
    let channel: Connection
    let stderrFd: Int32
    let shared: SharedSlot
    let wakeFd: Int32
    let outbox: Outbox

    // Reactor thread only.
    var reader = FrameDecoder.pool()
    var sawReady = false
    /// The worker sent something unacceptable: nothing more it sent is read (it is being killed).
    var brokeProtocol = false
    /// What the worker wrote to standard error: kept for its errors, passed on line by line.
    var stderr = StderrCapture()

    init(
        id: PoolState.WorkerID,
        handle: ProcessHandle,
        channel: Connection,
        stderrFd: Int32,
        shared: SharedSlot,
        wakeFd: Int32,
        outbox: Outbox
    ) {
        self.id = id
        self.handle = handle
        self.channel = channel
        self.stderrFd = stderrFd
        self.shared = shared
        self.wakeFd = wakeFd
        self.outbox = outbox
    }

    var pid: Int32 { handle.pid }

    /// Closes what this slot owns — the outbox's descriptor, the channel, the stderr pipe, the wake-up
    /// eventfd — and unmaps the shared page, once the worker has exited and everything it sent was read.
    /// The pidfd is the handle's, closed by it.
    func release() {
        outbox.release()
        Reactor.started?.cancelWaits(on: channel.fileDescriptor)
        channel.close()
        Reactor.started?.cancelWaits(on: stderrFd)
        Syscall.close(stderrFd)
        Syscall.close(wakeFd)
        shared.unmap()
    }

    /// Wakes the worker's cancellation watcher (an eventfd write; a dead worker's is ignored).
    func wake() {
        withUnsafeBytes(of: UInt64(1)) { _ = try? Syscall.writeAll(wakeFd, $0) }
    }

}

/// A process's standard error as it arrives (a pool worker's, a `ChildProcess`'s): the last 64 KiB kept
/// for its errors, and what to pass on to this program's — whole lines, until a crash report begins (the
/// report goes into the error, not onto the terminal). A line still open is passed on when more arrives,
/// past 4 KiB, or at the end.
struct StderrCapture {
    private(set) var tail: [UInt8] = []
    /// Bytes not yet passed on: the start of a line that has not ended.
    private var pending: [UInt8] = []
    /// A crash report has begun: the rest goes to the error only.
    private var inReport = false

    /// Takes what was read; returns what to pass on now (nothing when not `forwarding`).
    mutating func take(_ bytes: ArraySlice<UInt8>, forwarding: Bool) -> [UInt8] {
        tail += bytes
        if tail.count > 65536 { tail.removeFirst(tail.count - 65536) }
        guard forwarding, !inReport else { return [] }
        pending += bytes
        var out: [UInt8] = []
        while let nl = pending.firstIndex(of: 10) {
            let line = pending[...nl]
            if startsCrashReport(Substring(decoding: line, as: UTF8.self)) {
                inReport = true
                pending = []
                break
            }
            out += line
            pending.removeSubrange(...nl)
        }
        if !inReport, pending.count > 4096 {
            out += pending
            pending = []
        }
        return out
    }

    /// At the end of the stream: the unfinished line to pass on.
    mutating func end() -> [UInt8] {
        defer { pending = [] }
        return inReport ? [] : pending
    }

    /// At most `n` lines of it (see ``crashTail(_:lines:)``).
    func lines(_ n: Int) -> [String] { crashTail(String(decoding: tail, as: UTF8.self), lines: n) }

    /// The last crash report, whole (nil when there is none).
    var crashReport: String? {
        let text = String(decoding: tail, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let first = lines.lastIndex(where: { startsCrashReport($0) }) else { return nil }
        let from = first > 0 && startsCrashReport(lines[first - 1]) ? first - 1 : first
        return lines[from...].joined(separator: "\n")
    }
}

/// At most `n` lines of a dead worker's standard error: from the start of its crash report if there is
/// one (so that `Fatal error: …` and the frames nearest the crash are kept, not the bottom of the
/// stack), else the last lines. The report is the *last* one written (an earlier task may have printed
/// a line that looks like one); it starts at its `Fatal error:` line, or at `*** Signal` when the crash
/// was a signal, and the line before it is kept too (often what the program printed last).
func crashTail(_ text: String, lines n: Int) -> [String] {
    let lines = text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
    func starts(_ l: String) -> Bool { startsCrashReport(l[...]) }
    guard var first = lines.lastIndex(where: starts) else { return Array(lines.suffix(n)) }
    if first > 0 && starts(lines[first - 1]) { first -= 1 }  // `Fatal error:` just before `*** Signal`
    let from = max(0, first - 1)
    return Array(lines[from..<min(lines.count, from + n)])
}

extension SharedSlot {
    /// When the running item started (CLOCK_MONOTONIC nanoseconds).
    var itemStart: UInt64 { mp_atomic_load_u64((base + 24).assumingMemoryBound(to: UInt64.self)) }
    func setItemStart(_ t: UInt64) { mp_atomic_store_u64((base + 24).assumingMemoryBound(to: UInt64.self), t) }

    /// Units cancelled before they started: a ring of 64 ids the worker checks when a unit starts.
    func markCancelled(_ unit: UInt64, ring: Int) {
        mp_atomic_store_u64((base + 64 + (ring % 64) * 8).assumingMemoryBound(to: UInt64.self), unit)
    }

    func isMarkedCancelled(_ unit: UInt64) -> Bool {
        for i in 0..<64 where mp_atomic_load_u64((base + 64 + i * 8).assumingMemoryBound(to: UInt64.self)) == unit {
            return true
        }
        return false
    }
}

/// Whether a line of standard error starts the runtime's or the backtracer's crash report.
func startsCrashReport(_ line: Substring) -> Bool {
    line.contains("Fatal error:") || line.contains("*** Signal ") || line.hasPrefix("💣 Program crashed")
}

func signalName(_ sig: Int32) -> String {
    switch sig {
    case SIGKILL: "SIGKILL"
    case SIGTERM: "SIGTERM"
    case SIGSEGV: "SIGSEGV"
    case SIGILL: "SIGILL"
    case SIGTRAP: "SIGTRAP"
    case SIGABRT: "SIGABRT"
    case SIGBUS: "SIGBUS"
    case SIGFPE: "SIGFPE"
    case SIGINT: "SIGINT"
    default: "signal \(sig)"
    }
}
