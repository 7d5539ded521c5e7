internal import CMultiprocessingShims
import CoreMetrics
import Glibc
import Logging
import Synchronization
import SystemCalls
import Threading

/// The engine of a ``ProcessPool``: it starts workers, reads their replies and exit, supervises them, and
/// performs what the pool's state (``PoolState``) decides.
///
/// The state and the workers' I/O objects sit behind one lock. Every entry point runs one event of the
/// state under the lock, then performs the returned actions once the lock is released: frames are
/// encoded and written, signals sent, items failed, workers and the supervisor woken. Workers' shared
/// pages are written under the lock (a worker's page is unmapped once its exit is handled). Replies
/// are read on the library's reactor thread; a supervisor thread per pool enforces timeouts, kills after
/// grace periods, schedules retries and replaces workers.
final class PoolCore: @unchecked Sendable {  // everything mutable is in `guarded`, behind `lock`
    private struct Guarded: Sendable {
        var state: PoolState
        var io: [PoolState.WorkerID: WorkerIO] = [:]
        /// The state's totals as last reported to metrics.
        var reported = PoolState.Tally()
    }

    let size: Int
    let options: ProcessPoolOptions
    private let initializer: (type: String, payload: [UInt8])?
    /// The library's futex lock (it spins briefly before parking, like every lock on the pool's paths)
    /// rather than `Synchronization.Mutex`, a priority-inheritance futex on Linux that enters the kernel
    /// whenever the reactor thread and a submitter meet.
    private let lock = Lock()
    private var guarded: Guarded
    private let supervisorWake = Event()
    private let allExited = Event()
    private let callbacks = BlockingQueue<@Sendable () -> Void>()
    let telemetry: PoolTelemetry

    init(size: Int, options: ProcessPoolOptions, initializer: (type: String, payload: [UInt8])?) throws {
        self.size = size
        self.options = options
        self.initializer = initializer
        telemetry = PoolTelemetry(name: options.name, logger: options.logger)
        guarded = Guarded(
            state: PoolState(size: size, options: options, now: PoolInstant.now, cpus: Processes.cpuCount)
        )
        for _ in 0..<size { try addWorker() }
        let t = OSThread(name: "mp-pool-supervisor", daemon: true) { [weak self] in
            while let core = self { if !core.superviseOnce() { break } }
        }
        try t.start()
        let cb = OSThread(name: "mp-pool-callbacks", daemon: true) { [callbacks] in
            while let body = try? callbacks.get() { body() }
        }
        try cb.start()
        if options.interrupt != .ignore { Interrupts.register(self) }
    }

    deinit { callbacks.shutdown() }

    // MARK: - running events

    /// Runs one event of the state under the lock, then performs its actions.
    @discardableResult
    private func step<R: Sendable, E: Error>(
        _ event: (inout Guarded) throws(E) -> (R, [PoolState.Action])
    ) throws(E) -> R {
        let (r, actions, io, tallies, toWake) = try withGuarded { g throws(E) in
            let (r, actions) = try event(&g)
            let now = g.state.tally
            var tallies: (PoolState.Tally, PoolState.Tally)?
            if now != g.reported {
                tallies = (g.reported, now)
                g.reported = now
            }
            let toWake = Self.storeCancellations(actions, g.io)
            return (r, actions, actions.isEmpty ? [:] : g.io, tallies, toWake)
        }
        if let (old, new) = tallies { telemetry.report(from: old, to: new) }
        if !actions.isEmpty { perform(actions, io) }
        for w in toWake { w.wakeWorker() }
        return r
    }

    /// With the lock held: writes the cancellations among `actions` into the workers' shared pages, and
    /// returns the workers to wake (after the lock). Under the lock because a worker's page is unmapped
    /// once its exit is handled, which takes it out of `io` under the same lock first: written outside,
    /// a cancellation racing with the worker's exit wrote to an unmapped page (the process died of
    /// SIGSEGV; under ThreadSanitizer its signal handler deadlocked).
    private static func storeCancellations(
        _ actions: [PoolState.Action],
        _ io: [PoolState.WorkerID: WorkerIO]
    ) -> [WorkerIO] {
        var toWake: [WorkerIO] = []
        for action in actions {
            switch action {
            case .cancelUnit(let id, let unit, let ring):
                guard let w = io[id] else { continue }
                w.shared.markCancelled(unit, ring: ring)
                if w.shared.running.unit == unit {
                    w.shared.requestCancel(unit)
                    toWake.append(w)
                }
            case .cancelItem(let id, let unit, let index):
                guard let w = io[id] else { continue }
                w.shared.requestItemCancel(unit: unit, index: index)
                toWake.append(w)
            default:
                continue
            }
        }
        return toWake
    }

    private func withGuarded<R, E: Error>(_ body: (inout Guarded) throws(E) -> R) throws(E) -> R {
        try lock.withLock { () throws(E) -> R in try body(&guarded) }
    }

    /// ``step(_:)`` for an event of the state alone.
    private func apply(_ event: (inout PoolState) -> [PoolState.Action]) {
        step { g in ((), event(&g.state)) }
    }

    private func perform(_ actions: [PoolState.Action], _ io: [PoolState.WorkerID: WorkerIO]) {
        var written: [WorkerIO] = []
        for action in actions {
            switch action {
            case .send(let id, let seq, let items):
                guard let w = io[id] else { continue }
                w.outbox.append(Self.encode(items), seq: seq)
                if !written.contains(where: { $0 === w }) { written.append(w) }
            case .terminate(let id):
                io[id]?.handle.terminate()
            case .kill(let id):
                io[id]?.handle.kill()
            case .cancelUnit, .cancelItem:
                continue  // written under the lock (`storeCancellations`), woken by `step`
            case .fail(let call, let index, let error):
                call.fail(index: index, error)
            case .wakeSupervisor:
                supervisorWake.set()
            case .allExited:
                allExited.set()
            }
        }
        for w in written { w.outbox.flush() }
    }

    /// Payloads at least this large are written from the unit's own array rather than copied into the
    /// frame: a chunk's items copied into fresh pages per send were a large part of a tiny-item map's cost.
    private static var ownArrayPayload: Int { 16 << 10 }

    /// The frames of `items`, as byte arrays to write in order: fixed fields and small payloads copied
    /// together, each large payload its unit's own array.
    private static func encode(_ items: [PoolState.Outgoing]) -> [[UInt8]] {
        var arrays: [[UInt8]] = []
        var w = FrameWriter()
        var size = 0  // sized once
        for item in items {
            switch item {
            case .define(let f): size += 14 + f.name.utf8.count + f.payload.count
            case .task(let unit):
                size += 22 + (unit.payload.count < ownArrayPayload ? unit.payload.count : 0)
                if let trace = unit.call.trace { size += 4 + trace.carrier.count }
            case .shutdown: size += 5
            }
        }
        w.bytes.reserveCapacity(size)
        for item in items {
            switch item {
            case .define(let f):
                let at = w.begin(PoolWire.define)
                w.put(f.id)
                w.put(f.kind.rawValue)
                let name = Array(f.name.utf8)
                w.put(UInt32(name.count))
                w.put(name)
                w.put(f.payload)
                w.end(at)
            case .task(let unit):
                let trace = unit.call.trace
                let at = w.begin(trace == nil ? PoolWire.task : PoolWire.tracedTask)
                w.put(unit.id)
                w.put(unit.function.id)
                w.put(UInt32(unit.count))
                w.put(unit.call.options.limitsItemTime ? PoolWire.stampEachItem : 0)
                if let trace {
                    w.put(UInt32(trace.carrier.count))
                    w.put(trace.carrier)
                }
                if unit.payload.count < ownArrayPayload {
                    w.put(unit.payload)
                    w.end(at)
                } else {
                    w.end(at, followedBy: unit.payload.count)
                    arrays.append(w.take())
                    arrays.append(unit.payload)
                }
            case .shutdown:
                w.end(w.begin(PoolWire.shutdown))
            }
        }
        if !w.isEmpty { arrays.append(w.take()) }
        return arrays
    }

    // MARK: - workers

    private func addWorker() throws {
        let id = withGuarded { $0.state.startingWorker() }
        do {
            try startWorker(id)
        } catch {
            apply { $0.spawnFailed(error, now: PoolInstant.now) }
            throw error
        }
    }

    private func startWorker(_ id: PoolState.WorkerID) throws {
        // First: a process out of descriptors fails here, with nothing to undo.
        let reactor = try Reactor.shared
        let (w, errRead) = try Spawner.spawnCapturingStderr(options.crashReport)
        let handle = ProcessHandle(pid: w.pid, pidfd: w.pidfd, name: "PoolWorker-\(id)", daemon: true)
        let wake = mp_eventfd(0)
        let shared: SharedSlot
        let sharedFd: Int32
        let outbox: Outbox
        let bytes: [UInt8]
        let fds: [Int32]
        do {
            guard wake >= 0 else { throw MultiprocessingError.system("eventfd", -wake) }
            // Without its own descriptor the outbox could send nothing to a worker that waits for work.
            outbox = try Outbox(channel: w.channel.fileDescriptor)
            do {
                (shared, sharedFd) = try SharedSlot.create()
            } catch {
                outbox.release()
                throw error
            }
            do {
                let setup = PoolSetup(
                    slot: PassedDescriptor(sharedFd),
                    wake: PassedDescriptor(wake),
                    initializer: initializer?.payload,
                    initializerType: initializer?.type,
                    memoryLimit: options.memoryLimit
                )
                (bytes, fds) = try MessageCodec.encode(ToWorker.pool(setup))
            } catch {
                outbox.release()
                shared.unmap()
                Syscall.close(sharedFd)
                throw error
            }
        } catch {
            handle.kill()
            _ = try? handle.join(timeout: .seconds(2))
            Syscall.close(errRead)
            if wake >= 0 { Syscall.close(wake) }
            throw error
        }
        defer { Syscall.close(sharedFd) }
        // If the worker is already dead this fails; its exit is then reported through the pidfd.
        try? bytes.withUnsafeBytes { try w.channel.sendFrame($0, fds: fds) }
        let slot = WorkerIO(
            id: id,
            handle: handle,
            channel: w.channel,
            stderrFd: errRead,
            shared: shared,
            wakeFd: wake,
            outbox: outbox
        )
        // Known to the state and registered together: the state may send it work at once.
        step { g in
            g.io[id] = slot
            return ((), g.state.workerStarted(id, pid: w.pid, now: PoolInstant.now))
        }
        // The exit first: once it is watched, any failure below ends in the usual report of a death.
        do {
            try reactor.watch(handle.sentinel) { [weak self] in
                guard handle.reapIfExited() else { return true }
                self?.exited(slot)
                return false
            }
        } catch {
            // The kernel refused (out of memory): nothing will report this worker's exit, so end it here.
            // The state knows it as started: its end is reported as a death (then replaced, as any).
            telemetry.logger.error("cannot watch a new worker", metadata: ["error": "\(error)"])
            handle.kill()
            _ = try? handle.join(timeout: .seconds(5))
            exited(slot)
            return
        }
        do {
            try reactor.watch(w.channel.fileDescriptor) { [weak self] in self?.readable(slot) ?? false }
            try reactor.watch(errRead) { [weak self] in self?.readStderr(slot) ?? false }
        } catch {
            telemetry.logger.error("cannot watch a new worker", metadata: ["error": "\(error)"])
            handle.kill()  // reported as a death through the sentinel watched above
        }
    }

    // MARK: - submitting

    func function(kind: PoolWire.FunctionKind, name: String, payload: [UInt8]) -> FunctionRef {
        withGuarded { $0.state.function(kind: kind, name: name, payload: payload) }
    }

    /// Queues units and dispatches what the workers can take.
    func submit(_ units: [Unit]) throws(PoolError) {
        try step { g throws(PoolError) in
            // Read under the lock: a `cancel` that marked the call before takes its lock after this
            // event, or this reads the mark.
            var units = units
            for i in units.indices where units[i].call.isCancelled { units[i].callCancelled = true }
            return ((), try g.state.submit(units, now: PoolInstant.now))
        }
    }

    // MARK: - replies (reactor thread)

    private func readable(_ slot: WorkerIO) -> Bool {
        // After a protocol violation nothing more from this worker is trusted, not even replies already
        // buffered behind the bad frame (they would settle items the violation charges).
        if slot.brokeProtocol { return false }
        var open = true
        var touched: [CallCore] = []
        defer { for c in touched { c.flushDeliveries() } }
        var now = PoolInstant.now
        while true {
            let n: Int
            do { n = try slot.reader.fill(from: slot.channel.fileDescriptor, blocking: false) } catch { n = 0 }
            if n == 0 { open = false }
            // One clock read per read: the replies it brought arrived together (it was 3 % of this thread).
            now = PoolInstant.now
            do {
                while let call = try slot.reader.nextPoolFrame({ body in try handleFrame(slot, body, now: now) }) {
                    if let call, !touched.contains(where: { $0 === call }) { touched.append(call) }
                }
            } catch {
                slot.brokeProtocol = true
                apply { $0.protocolViolation(slot.id, error) }
                return false
            }
            if n <= 0 || slot.reader.lastReadWasShort { break }  // drained (epoll re-arms if more comes)
        }
        // Units finished: whatever waits goes to the workers with room.
        apply { $0.dispatch(now: now) }
        if !open {
            // The worker closed its end: it is exiting (or broken); make sure it does.
            let expected = withGuarded { $0.state.expectsExit(slot.id) }
            if !expected { slot.handle.kill() }
        }
        return open
    }

    /// Handles one reply; returns the call it delivered to.
    private func handleFrame(_ slot: WorkerIO, _ body: UnsafeRawBufferPointer, now: PoolInstant) throws -> CallCore? {
        if !slot.sawReady {
            // The first frame is the worker's `FromWorker.ready` in the general codec.
            _ = try BinaryDecoder().decode(FromWorker.self, from: body)
            slot.sawReady = true
            withGuarded { $0.state.ready(slot.id, now: now) }
            return nil
        }
        let reply: PoolState.Reply
        let payload: UnsafeRawBufferPointer
        switch try PoolWire.parseReply(body) {
        case .resend(let unitId):
            try step { g throws(MultiprocessingError) in
                ((), try g.state.resendAlone(unitId, from: slot.id, now: now))
            }
            return nil
        case .reply(let r, let rest):
            switch r {
            case .output(_, _, _, let busy), .failure(_, _, let busy):
                telemetry.busy.recordNanoseconds(Int64(clamping: busy))
            }
            (reply, payload) = (r, rest)
        }
        let delivery = try step { g throws(MultiprocessingError) in
            try g.state.received(reply, from: slot.id, now: now)
        }
        switch delivery {
        case nil:
            return nil
        case .output(let call, let index, let count):
            call.deliver(start: index, count: count, payload: payload)
            return call
        case .failure(let call, let index, let softTimedOut, let attempts):
            let wire = try? BinaryDecoder().decode(WireError.self, from: payload)
            var error =
                wire?.rebuild() ?? MultiprocessingError(.decodingFailed, "an undecodable error from worker \(slot.pid)")
            if error is CancellationError, softTimedOut {
                error = PoolError(
                    .timedOut,
                    "the task passed its soft timeout and was cancelled in worker \(slot.pid)",
                    pid: slot.pid,
                    attempts: attempts
                )
            }
            call.fail(index: index, error)
            return call
        }
    }

    private func readStderr(_ slot: WorkerIO) -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let got: Int?
            do {
                got = try buf.withUnsafeMutableBytes { try Syscall.receive(slot.stderrFd, into: $0, socket: false) }
            } catch {
                got = 0  // a read error: the pipe is unusable, as at its end
            }
            guard let n = got else { return true }  // nothing more now
            if n > 0 {
                let out = slot.stderr.take(buf[0..<n], forwarding: options.forwardStderr)
                if !out.isEmpty { writeForwarded(out) }
                if n < buf.count { return true }
                continue
            }
            // End of file (or a read error: the worker is gone either way): pass on an unfinished line.
            let out = slot.stderr.end()
            if !out.isEmpty { writeForwarded(out) }
            return false
        }
    }

    private func writeForwarded(_ bytes: [UInt8]) {
        if let sink = options.stderrSink { return sink(bytes) }
        bytes.withUnsafeBytes { SystemCall.writeDiagnostic(2, $0) }
    }

    // MARK: - deaths (reactor thread)

    private func exited(_ slot: WorkerIO) {
        // Everything the worker wrote before dying is in the socket and the pipe: take it first.
        _ = readable(slot)
        _ = readStderr(slot)
        let report = slot.stderr.crashReport
        let facts = PoolState.ExitFacts(
            exitCode: slot.handle.exitCode,
            peakMemoryBytes: slot.handle.peakMemoryBytes,
            running: slot.shared.running,
            lastStarted: slot.shared.lastStarted,
            retiredItself: slot.shared.retiredItself,
            stderrTail: slot.stderr.lines(options.stderrLines),
            crashReport: report,
            crash: report.map { CrashSummary(report: $0, executable: WorkerStart.executablePath) },
            hint: WorkerStart.startedBeforeMainHint(exitCode: slot.handle.exitCode)
        )
        slot.outbox.close()
        let (everyoneGone, deathsBefore, deathsAfter, broken) = step { g in
            g.io[slot.id] = nil
            let before = g.state.unexpectedDeaths
            let wasBroken = g.state.brokenBy != nil
            let (gone, actions) = g.state.exited(slot.id, facts, now: PoolInstant.now)
            return ((gone, before, g.state.unexpectedDeaths, wasBroken ? nil : g.state.brokenBy), actions)
        }
        if deathsAfter > deathsBefore {
            telemetry.logger.warning(
                "worker died",
                metadata: [
                    "pid": "\(slot.pid)",
                    "exit": "\(facts.exitCode.map { "\($0)" } ?? "?")",
                    "stderr": "\(facts.stderrTail.last ?? "")",
                ]
            )
        }
        if let broken { telemetry.logger.error("pool broken", metadata: ["error": "\(broken)"]) }
        slot.release()
        // We are inside the pidfd's own handler: close it once the reactor has unregistered it. Only
        // then does `join()` return, so that every descriptor and mapping of the pool is released.
        Reactor.afterCurrentEvent { [self] in
            slot.handle.closeSentinel()
            if everyoneGone { allExited.set() }
            supervisorWake.set()
        }
    }

    // MARK: - supervision

    /// One round of the supervisor: timeouts, grace periods, retries, replacements. Returns `false` when
    /// the pool is finished.
    private func superviseOnce() -> Bool {
        // Cleared before the state is read, so a wake-up sent during this round is never lost: the wait
        // at the end then returns at once.
        supervisorWake.clear()
        let now = PoolInstant.now
        let round = step { g -> (PoolState.Round, [PoolState.Action]) in
            // The clock workers stamp item starts with, read under the lock: an item first seen now
            // started no later than this.
            let monoNow = PoolClock.coarse()
            var running: [PoolState.WorkerID: PoolState.RunningFacts] = [:]
            for (id, w) in g.io {
                let r = w.shared.running
                guard r.unit != 0 else { continue }
                let age = w.itemAge(
                    unit: r.unit,
                    index: r.index,
                    stamped: g.state.stampsEachItem(id, unit: r.unit),
                    now: monoNow
                )
                let elapsed = Duration.nanoseconds(Int64(age))
                running[id] = PoolState.RunningFacts(unit: r.unit, index: r.index, elapsed: elapsed)
            }
            // A worker on an overdue item writes the replies it holds for units it finished before it.
            for (id, unit) in g.state.repliesOwed(running: running) {
                guard let w = g.io[id] else { continue }
                w.shared.requestReplies(during: unit)
                w.wakeWorker()
            }
            // Units queued behind an overdue item go to other workers, if the worker has not started them.
            var actions: [PoolState.Action] = []
            for (id, through) in g.state.overdue(running: running) {
                guard let w = g.io[id] else { continue }
                let gate = w.shared.taskGate
                guard gate & SharedSlot.fenceBit == 0, gate < UInt64(through),
                    w.shared.fenceTasks(after: gate, through: UInt64(through))
                else { continue }
                actions += g.state.reclaim(id, startedThrough: Int(gate), now: now)
            }
            var round = g.state.supervise(now: now, running: running)
            actions += round.actions
            round.actions = []
            return (round, actions)
        }
        var next = round.wakeAt
        for _ in 0..<round.spawn {
            if (try? addWorker()) == nil {
                let retry = PoolInstant.now + .milliseconds(50)
                if next == nil || retry < next! { next = retry }
            }
        }
        if round.finished { return false }
        if let next {
            let wait = next - PoolInstant.now
            if wait > .zero { _ = supervisorWake.wait(timeout: wait) }
        } else {
            _ = supervisorWake.wait(timeout: .seconds(1))
        }
        return true
    }

    // MARK: - cancellation, close, terminate

    /// Cancels every unit of `call`: queued ones fail at once; running ones are cancelled inside their
    /// worker, which is killed if they are still running after the call's grace period.
    func cancel(_ call: CallCore) {
        guard call.markCancelled() else { return }
        apply { $0.cancel(call, now: PoolInstant.now) }
    }

    func close() { apply { $0.close(now: PoolInstant.now) } }

    func terminate(_ error: PoolError = PoolError(.terminated, "the pool was terminated")) {
        apply { $0.terminate(error, now: PoolInstant.now) }
    }

    /// Waits until every worker has exited (after `close` or `terminate`).
    func join(timeout: Duration?) throws -> Bool {
        guard !isRunning else {
            throw PoolError(.closed, "join() needs close() or terminate() first (Python raises ValueError)")
        }
        return allExited.wait(timeout: timeout)
    }

    func join() async throws {
        _ = try join(timeout: .zero)
        try await allExited.wait()
    }

    /// Whether fewer units are queued than the workers could take now.
    var isHungry: Bool { withGuarded { $0.state.isHungry } }

    var isRunning: Bool { withGuarded { $0.state.isRunning } }

    /// Mean nanoseconds per item measured so far (0 before any), for chunk sizes.
    var measuredItemNanos: Double { withGuarded { $0.state.itemNanos } }

    /// Runs `body` on the pool's callback thread (Python's result-handler thread).
    func callback(_ body: @escaping @Sendable () -> Void) { try? callbacks.put(body) }

    // MARK: - progress and insight

    /// A snapshot of the pool's progress, with each worker's current item's age (from its shared page) and,
    /// with `peakMemory`, its peak memory (from `/proc`, read outside the pool's lock: a file read per
    /// worker, which a snapshot taken every 100 ms does not pay).
    func progress(peakMemory: Bool = true) -> PoolProgress {
        var p = withGuarded { g in
            var p = g.state.progress(now: PoolInstant.now)
            let monoNow = PoolClock.coarse()  // the clock workers stamp item starts with
            var ages: [Int32: Duration] = [:]
            for w in g.state.workers {
                guard let io = g.io[w.id] else { continue }
                let r = io.shared.running
                guard r.unit != 0 else { continue }
                let stamped = g.state.stampsEachItem(w.id, unit: r.unit)
                ages[w.pid] = .nanoseconds(
                    Int64(io.itemAge(unit: r.unit, index: r.index, stamped: stamped, now: monoNow))
                )
            }
            for i in p.workers.indices { p.workers[i].currentItemAge = ages[p.workers[i].pid] }
            return p
        }
        guard peakMemory else { return p }
        for i in p.workers.indices { p.workers[i].peakMemory = ProcessMemory.peakResident(pid: p.workers[i].pid) }
        return p
    }

    var workerPIDs: [Int32] { withGuarded { $0.state.workers.map(\.pid) } }

    /// Workers running a unit now.
    var busyWorkers: Int { withGuarded { $0.io.values.filter { $0.shared.running.unit != 0 }.count } }

    /// Workers that died unexpectedly (crashed, were killed from outside, broke the protocol) so far.
    var workerDeaths: Int { withGuarded { $0.state.unexpectedDeaths } }

    /// Every descriptor the live workers hold (channel and its outbox's duplicate, stderr pipe, wake-up
    /// eventfd, pidfd), for leak tests.
    var descriptors: [Int32] {
        withGuarded {
            $0.io.values.flatMap {
                [$0.channel.fileDescriptor, $0.outbox.descriptor, $0.stderrFd, $0.wakeFd, $0.handle.sentinel]
            }
        }
    }

    /// Kills every worker and reaps it, without settling any work (the program is about to end).
    func stopWorkersNow() {
        let handles = withGuarded { g in g.state.abandon().compactMap { g.io[$0]?.handle } }
        for h in handles { h.terminate() }
        for h in handles where (try? h.join(timeout: .milliseconds(300))) != true {
            h.kill()
            _ = try? h.join(timeout: .seconds(2))
        }
    }
}
