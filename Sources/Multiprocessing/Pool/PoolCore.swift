internal import CMultiprocessingShims
import DequeModule
import Glibc
import Synchronization
import Threading

/// The engine of a ``ProcessPool``: workers, the queue of units, dispatch, failure handling, supervision.
///
/// One lock guards the state. Replies are read on the library's reactor thread; a supervisor thread per
/// pool enforces timeouts, kills after grace periods, schedules retries and replaces workers.
final class PoolCore: @unchecked Sendable {  // everything mutable is guarded by `lock`
    enum Phase {
        case running, closed, terminated
        case broken(PoolError)
    }

    let size: Int
    let options: ProcessPoolOptions
    private let initializer: (type: String, payload: [UInt8])?
    let lock = Lock()
    private let supervisorWake = Event()
    private let allExited = Event()

    private var phase = Phase.running
    private var slots: [WorkerSlot] = []
    private var pending = Deque<Unit>()
    private var delayed: [(at: ContinuousClock.Instant, unit: Unit)] = []
    private var spawning = 0
    private var nextSerial = 0
    private var nextUnit: UInt64 = 1
    private var nextFunction: UInt32 = 1
    private var functions: [FunctionKey: UInt32] = [:]
    private var deaths: [ContinuousClock.Instant] = []
    private var unexpectedDeaths = 0
    private var cancelRing = 0
    /// Mean nanoseconds per item and per unit (exponentially weighted), for windows and chunk sizes.
    private var itemNanos: Double = 0
    /// Mean nanoseconds per item measured so far (0 before any), for chunk sizes.
    var measuredItemNanos: Double { lock.withLock { itemNanos } }
    private var unitNanos: Double = 0
    // progress
    private var done = 0
    private var failed = 0
    private var total = 0
    private var firstSubmit: ContinuousClock.Instant?
    private let callbacks = BlockingQueue<@Sendable () -> Void>()

    init(size: Int, options: ProcessPoolOptions, initializer: (type: String, payload: [UInt8])?) throws {
        self.size = size
        self.options = options
        self.initializer = initializer
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

    // MARK: - workers

    private func addWorker() throws {
        let (errRead, errWrite) = try Syscall.pipe()
        defer { Syscall.close(errWrite) }
        Syscall.setNonBlocking(errRead)
        let w: SpawnedWorker
        do {
            w = try Spawner.spawn(stderr: errWrite, environment: ["SWIFT_BACKTRACE": options.crashReport.environment])
        } catch {
            Syscall.close(errRead)
            throw error
        }
        let serial = lock.withLock { () -> Int in
            nextSerial += 1
            return nextSerial
        }
        let handle = ProcessHandle(pid: w.pid, pidfd: w.pidfd, name: "PoolWorker-\(serial)", daemon: true)
        let wake = mp_eventfd(0)
        let shared: SharedSlot
        let sharedFd: Int32
        do {
            guard wake >= 0 else { throw MultiprocessingError.system("eventfd", -wake) }
            (shared, sharedFd) = try SharedSlot.create()
        } catch {
            handle.kill()
            _ = try? handle.join(timeout: .seconds(2))
            Syscall.close(errRead)
            if wake >= 0 { Syscall.close(wake) }
            throw error
        }
        defer { Syscall.close(sharedFd) }
        let setup = PoolSetup(
            slot: PassedDescriptor(sharedFd),
            wake: PassedDescriptor(wake),
            initializer: initializer?.payload,
            initializerType: initializer?.type,
            memoryLimit: options.memoryLimit
        )
        let (bytes, fds) = try MessageCodec.encode(ToWorker.pool(setup))
        // If the worker is already dead this fails; its exit is then reported through the pidfd.
        try? bytes.withUnsafeBytes { try w.channel.sendFrame($0, fds: fds) }
        let slot = WorkerSlot(handle: handle, channel: w.channel, stderrFd: errRead, shared: shared, wakeFd: wake)
        withLockThenDeliver {
            slots.append(slot)
            // Started while the pool was being terminated or broken: stop it like the others.
            switch phase {
            case .terminated, .broken: stopWorker(slot, .terminate(terminalError), grace: .milliseconds(500))
            case .running, .closed: break
            }
        }
        let fd = w.channel.fileDescriptor
        Reactor.shared.watch(fd) { [weak self] in self?.readable(slot) ?? false }
        Reactor.shared.watch(errRead) { [weak self] in self?.readStderr(slot) ?? false }
        Reactor.shared.watch(handle.sentinel) { [weak self] in
            guard handle.reapIfExited() else { return true }
            self?.exited(slot)
            return false
        }
    }

    // MARK: - submitting

    func function(kind: PoolWire.FunctionKind, name: String, payload: [UInt8]) -> FunctionRef {
        lock.withLock {
            let key = FunctionKey(kind: kind.rawValue, name: name, payload: payload)
            if let id = functions[key] { return FunctionRef(id: id, kind: kind, name: name, payload: payload) }
            let id = nextFunction
            nextFunction += 1
            functions[key] = id
            return FunctionRef(id: id, kind: kind, name: name, payload: payload)
        }
    }

    func makeUnitId() -> UInt64 {
        lock.withLock {
            defer { nextUnit += 1 }
            return nextUnit
        }
    }

    /// Queues units and dispatches what the workers can take.
    func submit(_ units: [Unit]) throws {
        let refused: PoolError? = withLockThenDeliver {
            switch phase {
            case .running: break
            case .closed: return PoolError(.closed, "the pool is closed")
            case .terminated: return PoolError(.terminated, "the pool was terminated")
            case .broken(let e): return e
            }
            if firstSubmit == nil { firstSubmit = .now }
            for u in units {
                pending.append(u)
                total += u.count
            }
            pump()  // may settle units of cancelled calls: delivered as the lock is released
            return nil
        }
        if let refused { throw refused }
        flushAll()
    }

    /// Assigns pending units to workers with room. Lock held.
    @discardableResult
    private func pump() -> [WorkerSlot] {
        var given: [WorkerSlot] = []
        guard !pending.isEmpty else { return given }
        // Each worker holds the unit it runs plus the next one, so it never waits for the parent (whose
        // reactor thread may wait milliseconds for a CPU while workers keep both cores busy: pulling
        // 2 ms units one at a time halved the CPU benchmark's speed-up). Tiny units are pipelined
        // deeper; units of 50 ms or more are pulled one at a time, so none waits behind a long one.
        let window = unitNanos >= 50_000_000 ? 1 : unitNanos > 100_000 || unitNanos == 0 ? 2 : 32
        while !pending.isEmpty {
            var best: WorkerSlot?
            for s in slots where !s.exited && !s.retiring && s.stop == nil && s.inflight.count < window {
                if best == nil || s.inflight.count < best!.inflight.count { best = s }
            }
            guard let slot = best else { return given }
            let unit = pending.removeFirst()
            if unit.call.isCancelled {
                settleRange(unit, unit.reported..<unit.count, CancellationError())
                continue
            }
            if unit.payload.count > PoolWire.maxBody {
                // A frame the worker would refuse: items go alone, and an item too large alone fails.
                if unit.count > 1 {
                    pending.prepend(contentsOf: singletons(unit, 0..<unit.count))
                } else {
                    settleItem(
                        unit,
                        0,
                        MultiprocessingError(
                            .messageTooLarge,
                            "the task's input is \(unit.payload.count) bytes encoded, over the pool's limit of \(PoolWire.maxBody) bytes per task"
                        )
                    )
                }
                continue
            }
            var w = FrameWriter()
            if !slot.knownFunctions.contains(unit.function.id) {
                slot.knownFunctions.insert(unit.function.id)
                let at = w.begin(PoolWire.define)
                w.put(unit.function.id)
                w.put(unit.function.kind.rawValue)
                let name = Array(unit.function.name.utf8)
                w.put(UInt32(name.count))
                w.put(name)
                w.put(unit.function.payload)
                w.end(at)
            }
            let at = w.begin(PoolWire.task)
            w.put(unit.id)
            w.put(unit.function.id)
            w.put(UInt32(unit.count))
            w.put(unit.payload)
            w.end(at)
            slot.outbox.append(w.take())
            if !given.contains(where: { $0 === slot }) { given.append(slot) }
            if slot.inflight.isEmpty, let since = slot.idleSince {
                slot.idle += .now - since
                slot.idleSince = nil
            }
            slot.inflight.append(unit)
            slot.dispatched += 1
            // A unit with a deadline: the supervisor must know it is out there, or it sleeps through it.
            if unit.call.options.timeout != nil || unit.call.options.softTimeout != nil { supervisorDue = true }
            if PoolDecisions.retires(dispatched: slot.dispatched, maxTasksPerChild: options.maxTasksPerChild) {
                slot.retiring = true
            }
        }
        return given
    }

    private func flushAll() {
        let all = lock.withLock { slots }
        for s in all { s.outbox.flush() }
    }

    /// Work to do once the lock is released: deliveries to calls, signals, eventfd writes.
    private var deferred: [() -> Void] = []
    /// The supervisor must look again (a unit with a deadline was sent, a retry was scheduled): it is
    /// woken once the lock is released.
    private var supervisorDue = false

    @discardableResult
    private func withLockThenDeliver<R>(_ body: () -> R) -> R {
        let (r, work, wake) = lock.withLock { () -> (R, [() -> Void], Bool) in
            let r = body()
            defer {
                deferred = []
                supervisorDue = false
            }
            return (r, deferred, supervisorDue)
        }
        for w in work { w() }
        if wake { supervisorWake.set() }
        return r
    }

    // MARK: - replies (reactor thread)

    private func readable(_ slot: WorkerSlot) -> Bool {
        // After a protocol violation nothing more from this worker is trusted, not even replies already
        // buffered behind the bad frame (they would settle items the violation charges).
        if slot.brokeProtocol { return false }
        var open = true
        var touched: [CallCore] = []
        defer { for c in touched { c.flushDeliveries() } }
        while true {
            let n: Int
            do { n = try slot.reader.fill(from: slot.channel.fileDescriptor, blocking: false) } catch { n = 0 }
            if n == 0 { open = false }
            do {
                while let call = try slot.reader.nextPoolFrame({ body in try handleFrame(slot, body) }) {
                    if let call, !touched.contains(where: { $0 === call }) { touched.append(call) }
                }
            } catch {
                protocolViolation(slot, error)
                return false
            }
            if n <= 0 || slot.reader.lastReadWasShort { break }  // drained (epoll re-arms if more comes)
        }
        let given = withLockThenDeliver { pump() }
        // pump() may have given work to any worker, not only this one: those outboxes too, or a unit
        // waits for the supervisor's next round.
        slot.outbox.flush()
        for s in given where s !== slot { s.outbox.flush() }
        if !open {
            // The worker closed its end: it is exiting (or broken); make sure it does.
            let expected = lock.withLock { slot.shutdownSent || slot.stop != nil || slot.exited }
            if !expected { slot.handle.kill() }
        }
        return open
    }

    /// Handles one reply; returns the call it delivered to.
    private func handleFrame(_ slot: WorkerSlot, _ body: UnsafeRawBufferPointer) throws -> CallCore? {
        if !slot.sawReady {
            // The first frame is the worker's `FromWorker.ready` in the general codec.
            _ = try BinaryDecoder().decode(FromWorker.self, from: body)
            slot.sawReady = true
            lock.withLock {
                slot.readyAt = .now
                if slot.inflight.isEmpty { slot.idleSince = .now }
            }
            return nil
        }
        var c = FrameCursor(body)
        let kind = body[0]
        let unitId: UInt64 = try c.get()
        if kind == PoolWire.resend {
            try resendAlone(slot, unitId)
            return nil
        }
        let start = Int(try c.get(UInt32.self))
        let count = kind == PoolWire.output ? Int(try c.get(UInt32.self)) : 1
        let busyNanos: UInt64 = try c.get()
        guard kind == PoolWire.output || kind == PoolWire.failure else {
            throw MultiprocessingError(.malformedMessage, "unknown pool reply kind \(kind)")
        }
        // Account under the lock; deliver outside it.
        let target: (Unit, retry: Bool)? = try lock.withLock { () throws -> (Unit, retry: Bool)? in
            slot.busy += .nanoseconds(Int64(busyNanos))
            // Not in flight: cancelled and settled already.
            guard let k = slot.inflight.firstIndex(where: { $0.id == unitId }) else { return nil }
            let unit = slot.inflight[k]
            unit.busyNanos &+= busyNanos
            guard start == unit.reported, count > 0, start + count <= unit.count else {
                throw MultiprocessingError(
                    .malformedMessage,
                    "reply for items \(start)..<\(start + count) of a task at \(unit.reported)/\(unit.count)"
                )
            }
            unit.reported += count
            var retry = false
            if kind == PoolWire.failure {
                retry =
                    unit.call.options.retry.causes.contains(.error) && unit.attempt < unit.call.options.retry.attempts
                    && !unit.call.isCancelled
                if retry {
                    scheduleRetry(unit, index: start, crashed: false)
                } else {
                    failed += 1
                    done += 1
                }
            } else {
                done += count
                if busyNanos > 0 {
                    let per = Double(busyNanos) / Double(count)
                    itemNanos = itemNanos == 0 ? per : itemNanos * 0.8 + per * 0.2
                }
            }
            if unit.reported == unit.count {
                slot.inflight.remove(at: k)
                slot.tasksDone += 1
                let took = Double(unit.busyNanos)
                unitNanos = unitNanos == 0 ? took : unitNanos * 0.8 + took * 0.2
                unitFinished(slot)
            }
            return (unit, retry)
        }
        guard let (unit, retry) = target else { return nil }
        let payload = c.rest
        if kind == PoolWire.output {
            unit.call.deliver(start: unit.base + start, count: count, payload: payload)
        } else if !retry {
            let wire = try? BinaryDecoder().decode(WireError.self, from: payload)
            var error =
                wire?.rebuild() ?? MultiprocessingError(.decodingFailed, "an undecodable error from worker \(slot.pid)")
            if error is CancellationError, unit.softIndex == start {
                error = PoolError(
                    .timedOut,
                    "the task passed its soft timeout and was cancelled in worker \(slot.pid)",
                    pid: slot.pid,
                    attempts: unit.attempt
                )
            }
            unit.call.fail(index: unit.base + start, error)
        }
        return unit.call
    }

    /// The worker could not decode a chunk as a whole: its items go again one by one, so an item that
    /// cannot be decoded fails alone. A worker asks this only of a chunk of several items it has not
    /// answered: any other request would send the same unit round for ever, and breaks the protocol.
    private func resendAlone(_ slot: WorkerSlot, _ unitId: UInt64) throws {
        let refused: Bool = withLockThenDeliver {
            guard let k = slot.inflight.firstIndex(where: { $0.id == unitId }) else { return false }
            let unit = slot.inflight[k]
            guard unit.reported == 0, unit.count > 1 else { return true }
            slot.inflight.remove(at: k)
            pending.prepend(contentsOf: singletons(unit, 0..<unit.count))
            unitFinished(slot)
            return false
        }
        if refused { throw MultiprocessingError(.malformedMessage, "a request to resend a unit of one item") }
    }

    /// A unit finished on `slot`: shut it down if it is retiring and idle. Lock held. (The memory limit is
    /// the worker's own check, after each unit: a check here would lag behind the units it has queued.)
    private func unitFinished(_ slot: WorkerSlot) {
        if slot.inflight.isEmpty {
            slot.idleSince = .now
            if slot.retiring || isDrainedAndClosed { sendShutdown(slot) }
        }
    }

    private var isDrainedAndClosed: Bool {
        if case .closed = phase, pending.isEmpty, delayed.isEmpty { return true }
        return false
    }

    private func sendShutdown(_ slot: WorkerSlot) {
        guard !slot.shutdownSent else { return }
        slot.shutdownSent = true
        var w = FrameWriter()
        w.end(w.begin(PoolWire.shutdown))
        slot.outbox.append(w.take())
        slot.retiring = true
    }

    private func protocolViolation(_ slot: WorkerSlot, _ error: any Error) {
        slot.brokeProtocol = true
        lock.withLock {
            if slot.stop == nil {
                slot.stop = .protocolViolation(
                    PoolError(.workerDied, "worker \(slot.pid) broke the pool protocol: \(error)", pid: slot.pid)
                )
            }
        }
        slot.handle.kill()
    }

    private func readStderr(_ slot: WorkerSlot) -> Bool {
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
                if options.forwardStderr {
                    buf.withUnsafeBytes { _ = try? Syscall.writeAll(2, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                }
                slot.stderrTail += buf[0..<n]
                if slot.stderrTail.count > 65536 { slot.stderrTail.removeFirst(slot.stderrTail.count - 65536) }
                if n < buf.count { return true }
                continue
            }
            return false  // end of file (or a read error: the worker is gone either way)
        }
    }

    // MARK: - deaths (reactor thread)

    private func exited(_ slot: WorkerSlot) {
        // Everything the worker wrote before dying is in the socket and the pipe: take it first.
        _ = readable(slot)
        _ = readStderr(slot)
        let code = slot.handle.exitCode
        let peak = slot.handle.peakMemoryBytes
        let running = slot.shared.running
        var everyoneGone = false
        withLockThenDeliver {
            slot.exited = true
            slots.removeAll { $0 === slot }
            slot.outbox.close()
            let clean = (slot.shutdownSent || slot.retiring || slot.shared.retiredItself) && code == 0
            let unexpected = slot.stop == nil && !clean
            let tail = slot.stderrLines(options.stderrLines)
            let what =
                code.map { $0 < 0 ? "was killed by signal \($0 * -1) (\(signalName(-$0)))" : "exited with code \($0)" }
                ?? "ended"
            let death = PoolError(
                .workerDied,
                "worker \(slot.pid) \(what)",
                pid: slot.pid,
                exitCode: code,
                stderrTail: tail,
                peakMemoryBytes: peak
            )
            // A worker that died of its own accord or broke the protocol charges the unit it last started,
            // even outside a known item (between items, or sending its replies).
            let violation: Bool = if case .protocolViolation = slot.stop { true } else { false }
            let chargeable = !clean && (slot.stop == nil || violation)
            let lastStarted = slot.shared.lastStarted
            for unit in slot.inflight {
                handleLost(
                    unit,
                    running: running,
                    slot: slot,
                    death: death,
                    charge: chargeable && unit.id == lastStarted
                )
            }
            slot.inflight = []
            pending.prepend(contentsOf: requeued)
            requeued = []
            if unexpected || violation {
                unexpectedDeaths += 1
                let breaks: Bool
                (deaths, breaks) = PoolDecisions.death(at: .now, recent: deaths, limit: options.deathLimit)
                if breaks, case .running = phase {
                    breakPool(
                        PoolError(
                            .broken,
                            "\(deaths.count) workers died within \(options.deathLimit.window); the last: \(death.message)",
                            pid: slot.pid,
                            exitCode: code,
                            stderrTail: tail,
                            peakMemoryBytes: peak
                        )
                    )
                }
            }
            pump()
            everyoneGone = slots.isEmpty && spawning == 0 && !wantsWorkers
        }
        flushAll()
        slot.release()
        // We are inside the pidfd's own handler: close it once the reactor has unregistered it. Only
        // then does `join()` return, so that every descriptor and mapping of the pool is released.
        Reactor.shared.afterCurrentEvent { [self] in
            slot.handle.closeSentinel()
            if everyoneGone { allExited.set() }
            supervisorWake.set()
        }
    }

    /// A unit whose worker died: keep what was reported, fail or retry the item that was running, send
    /// the rest again. Lock held.
    /// `charge`: the worker died on this unit (of its own accord or for a protocol violation) even if
    /// no item of it was running — between items, or sending its replies.
    private func handleLost(
        _ unit: Unit,
        running: (unit: UInt64, index: UInt64),
        slot: WorkerSlot,
        death: PoolError,
        charge: Bool
    ) {
        let stop: PoolDecisions.Stop =
            switch slot.stop {
            case nil: .none
            case .timeout(let u)?: u == unit.id ? .timeout : .other
            case .softTimeout(let u)?: u == unit.id ? .softTimeout : .other
            case .cancelled(let u)?: u == unit.id ? .cancelled : .other
            case .terminate?: .terminate
            case .protocolViolation?: .protocolViolation
            }
        let loss = PoolDecisions.lost(
            reported: unit.reported,
            count: unit.count,
            attempt: unit.attempt,
            kills: unit.kills,
            runningIndex: running.unit == unit.id ? Int(running.index) : nil,
            stop: stop,
            charge: charge,
            policy: unit.call.options.retry,
            callCancelled: unit.call.isCancelled,
            deliversResults: deliversResults
        )
        for r in loss.requeue { requeue(unit, r.range, kills: r.kills) }
        guard let i = loss.item, let fate = loss.fate else { return }
        func error(_ code: PoolError.Code, _ message: String, pid: Int32? = death.pid) -> PoolError {
            PoolError(
                code,
                message,
                pid: pid,
                exitCode: death.exitCode,
                stderrTail: death.stderrTail,
                peakMemoryBytes: death.peakMemoryBytes,
                attempts: unit.attempt
            )
        }
        switch fate {
        case .retry(let crashed):
            scheduleRetry(unit, index: i, crashed: crashed)
        case .settleRest:
            switch slot.stop {
            case .terminate(let e)?: settleRange(unit, i..<unit.count, e)
            default: settleRange(unit, i..<unit.count, CancellationError())
            }
        case .fail(let failure):
            let e: PoolError
            switch failure {
            case .timedOut:
                let limit = unit.call.options.timeout.map { "\($0)" } ?? "?"
                e = error(
                    .timedOut,
                    "the task ran past its timeout of \(limit) in worker \(slot.pid), which was stopped",
                    pid: slot.pid
                )
            case .softTimedOut:
                e = error(
                    .timedOut,
                    "the task passed its soft timeout, ignored cancellation and worker \(slot.pid) was stopped",
                    pid: slot.pid
                )
            case .protocolViolation:
                let m: String = if case .protocolViolation(let v)? = slot.stop { v.message } else { death.message }
                e = error(.workerDied, m + " while running this task")
            case .crashed:
                e = error(.workerDied, death.message + " while running this task")
            case .killedTooMany(let kills):
                e = error(
                    .workerDied,
                    "the task killed \(kills) workers and is not retried again; the last: \(death.message)"
                )
            }
            settleItem(unit, i, e)
        }
    }

    private func settleItem(_ unit: Unit, _ i: Int, _ error: any Error) {
        failed += 1
        done += 1
        let call = unit.call
        let index = unit.base + i
        deferred.append { call.fail(index: index, error) }
    }

    /// Units of a dead worker to send again; they go first in line, in order, once all are collected.
    private var requeued: [Unit] = []

    /// Collects items `range` (relative) of `unit` to be sent again. Lock held.
    private func requeue(_ unit: Unit, _ range: Range<Int>, kills: Int? = nil) {
        guard !range.isEmpty else { return }
        if unit.call.isCancelled {
            settleRange(unit, range, CancellationError())
            return
        }
        guard deliversResults else {
            settleRange(unit, range, terminalError)
            return
        }
        if let again = part(unit, range, attempt: unit.attempt, kills: kills ?? unit.kills) { requeued.append(again) }
    }

    /// Items `range` (relative) of `unit` as a new unit with the next id; `nil` after failing those items
    /// if they cannot be encoded again. Lock held.
    private func part(_ unit: Unit, _ range: Range<Int>, attempt: Int, kills: Int) -> Unit? {
        do {
            defer { nextUnit += 1 }
            return try unit.part(range, id: nextUnit, attempt: attempt, kills: kills)
        } catch {
            settleRange(unit, range, error)
            return nil
        }
    }

    /// Items `range` (relative) of `unit`, each as a unit of its own (an item that cannot be re-encoded
    /// fails). Lock held.
    private func singletons(_ unit: Unit, _ range: Range<Int>) -> [Unit] {
        range.compactMap { j in part(unit, j..<(j + 1), attempt: unit.attempt, kills: unit.kills) }
    }

    private func settleRange(_ unit: Unit, _ range: Range<Int>, _ error: any Error) {
        for i in range { settleItem(unit, i, error) }
    }

    private func scheduleRetry(_ unit: Unit, index i: Int, crashed: Bool) {
        guard let again = part(unit, i..<(i + 1), attempt: unit.attempt + 1, kills: unit.kills + (crashed ? 1 : 0))
        else { return }
        delayed.append((.now + unit.call.options.retry.delay(beforeAttempt: unit.attempt + 1), again))
        supervisorDue = true
    }

    private var terminalError: PoolError {
        switch phase {
        case .broken(let e): e
        case .terminated: PoolError(.terminated, "the pool was terminated")
        default: PoolError(.closed, "the pool is closed")
        }
    }

    /// Whether work in the pool still runs to its end: running or closed (draining), not terminated or broken.
    private var deliversResults: Bool {
        switch phase {
        case .running, .closed: true
        case .terminated, .broken: false
        }
    }

    /// Whether the pool should keep `size` workers.
    private var wantsWorkers: Bool {
        switch phase {
        case .running: true
        case .closed: !pending.isEmpty || !delayed.isEmpty || slots.contains { !$0.inflight.isEmpty }
        case .terminated, .broken: false
        }
    }

    // MARK: - supervision

    /// One round of the supervisor: timeouts, grace periods, retries, replacements. Returns `false` when
    /// the pool is finished.
    private func superviseOnce() -> Bool {
        // Cleared before the state is read, so a wake-up sent during this round is never lost: the wait
        // at the end then returns at once.
        supervisorWake.clear()
        let now = ContinuousClock.now
        let monoNow = PoolClock.coarse()  // the clock workers stamp item starts with
        var next: ContinuousClock.Instant? = nil
        func wakeAt(_ t: ContinuousClock.Instant) { if next == nil || t < next! { next = t } }
        var toSpawn = 0
        var finished = false
        withLockThenDeliver {
            for slot in slots where !slot.exited {
                if slot.stop != nil {
                    if let k = slot.killAt {
                        if now >= k {
                            let handle = slot.handle
                            deferred.append { handle.kill() }
                            slot.killAt = nil
                        } else {
                            wakeAt(k)
                        }
                    }
                    continue
                }
                let running = slot.shared.running
                for u in slot.inflight where u.id != running.unit {
                    if let at = PoolDecisions.lookAgainForQueued(now: now, options: u.call.options) { wakeAt(at) }
                }
                guard running.unit != 0, let unit = slot.inflight.first(where: { $0.id == running.unit }) else {
                    continue
                }
                let opts = unit.call.options
                let elapsed = Duration.nanoseconds(Int64(monoNow &- min(monoNow, slot.shared.itemStart)))
                let index = Int(running.index)
                let decision = PoolDecisions.timing(
                    now: now,
                    elapsed: elapsed,
                    options: opts,
                    softCancelled: unit.softIndex == index ? unit.softAt : nil,
                    cancelAt: unit.cancelAt
                )
                if let until = decision.cancelItemUntil {
                    unit.softIndex = index
                    unit.softAt = until
                    slot.shared.requestItemCancel(unit: unit.id, index: running.index)
                    deferred.append { slot.wake() }  // an eventfd write: after the lock
                }
                if let at = decision.lookAgainAt { wakeAt(at) }
                switch decision.stop {
                case .timeout?: stopWorker(slot, .timeout(unit: unit.id), grace: opts.killGrace)
                case .softTimeout?: stopWorker(slot, .softTimeout(unit: unit.id), grace: opts.killGrace)
                case .cancelled?: stopWorker(slot, .cancelled(unit: unit.id), grace: opts.killGrace)
                default: break
                }
                if let k = slot.killAt { wakeAt(k) }
            }
            // Retries whose backoff has passed join the queue.
            delayed.sort { $0.at < $1.at }
            while let first = delayed.first, first.at <= now {
                delayed.removeFirst()
                if deliversResults {
                    pending.append(first.unit)
                } else {
                    settleRange(first.unit, 0..<first.unit.count, terminalError)
                }
            }
            if let first = delayed.first { wakeAt(first.at) }
            let live = slots.filter { !$0.retiring && $0.stop == nil }.count
            if wantsWorkers { toSpawn = max(0, size - live - spawning) }
            spawning += toSpawn
            if isDrainedAndClosed { for s in slots where s.inflight.isEmpty { sendShutdown(s) } }
            pump()
            if !wantsWorkers && slots.isEmpty && spawning == 0 {
                deferred.append { [allExited] in allExited.set() }
                if case .running = phase {} else { finished = true }
            }
        }
        for _ in 0..<toSpawn {
            do {
                try addWorker()
            } catch {
                withLockThenDeliver {
                    let breaks: Bool
                    (deaths, breaks) = PoolDecisions.death(at: .now, recent: deaths, limit: options.deathLimit)
                    if breaks, case .running = phase {
                        breakPool(PoolError(.broken, "workers cannot be started: \(error)"))
                    }
                }
                wakeAt(.now + .milliseconds(50))
            }
            lock.withLock { spawning -= 1 }
        }
        if toSpawn > 0 {
            withLockThenDeliver { pump() }
        }
        flushAll()
        if finished { return false }
        if let next {
            let wait = next - .now
            if wait > .zero { _ = supervisorWake.wait(timeout: wait) }
        } else {
            _ = supervisorWake.wait(timeout: .seconds(1))
        }
        return true
    }

    /// SIGTERM (sent once the lock is released), SIGKILL after `grace`. Lock held, inside
    /// `withLockThenDeliver`.
    private func stopWorker(_ slot: WorkerSlot, _ reason: StopReason, grace: Duration) {
        guard slot.stop == nil else { return }
        slot.stop = reason
        slot.killAt = .now + grace
        let handle = slot.handle
        deferred.append { handle.terminate() }
    }

    private func requestCancel(_ slot: WorkerSlot, _ unit: Unit) {
        slot.shared.requestCancel(unit.id)
        deferred.append { slot.wake() }  // an eventfd write: after the lock
    }

    // MARK: - cancellation, close, terminate

    /// Cancels every unit of `call`: queued ones fail at once; running ones are cancelled inside their
    /// worker, which is killed if they are still running after the call's grace period.
    func cancel(_ call: CallCore) {
        guard call.markCancelled() else { return }
        withLockThenDeliver {
            var keep = Deque<Unit>()
            for u in pending {
                if u.call === call { settleRange(u, u.reported..<u.count, CancellationError()) } else { keep.append(u) }
            }
            pending = keep
            delayed.removeAll { d in
                guard d.unit.call === call else { return false }
                settleRange(d.unit, 0..<d.unit.count, CancellationError())
                return true
            }
            for slot in slots {
                for u in slot.inflight where u.call === call && u.cancelAt == nil {
                    u.cancelAt = .now + call.options.cancelGrace
                    slot.shared.markCancelled(u.id, ring: &cancelRing)
                    if slot.shared.running.unit == u.id { requestCancel(slot, u) }
                }
            }
        }
        supervisorWake.set()
    }

    func close() {
        withLockThenDeliver {
            if case .running = phase { phase = .closed }
            if isDrainedAndClosed { for s in slots where s.inflight.isEmpty { sendShutdown(s) } }
        }
        flushAll()
        supervisorWake.set()
    }

    func terminate(_ error: PoolError = PoolError(.terminated, "the pool was terminated")) {
        withLockThenDeliver {
            switch phase {
            case .terminated, .broken: return
            default: break
            }
            phase = .terminated
            failEverything(error)
        }
        supervisorWake.set()
    }

    /// Fails all work and stops all workers. Lock held.
    private func failEverything(_ error: PoolError) {
        for u in pending { settleRange(u, u.reported..<u.count, error) }
        pending = []
        for d in delayed { settleRange(d.unit, 0..<d.unit.count, error) }
        delayed = []
        for slot in slots {
            for u in slot.inflight { settleRange(u, u.reported..<u.count, error) }
            slot.inflight = []
            if slot.stop == nil { stopWorker(slot, .terminate(error), grace: .milliseconds(500)) }
        }
        if slots.isEmpty && spawning == 0 { deferred.append { [allExited] in allExited.set() } }
    }

    private func breakPool(_ error: PoolError) {
        phase = .broken(error)
        failEverything(error)
    }

    /// Waits until every worker has exited (after `close` or `terminate`).
    func join(timeout: Duration?) throws -> Bool {
        let ok = lock.withLock { () -> Bool in
            if case .running = phase { return false }
            return true
        }
        guard ok else {
            throw PoolError(.closed, "join() needs close() or terminate() first (Python raises ValueError)")
        }
        return allExited.wait(timeout: timeout)
    }

    func join() async throws {
        _ = try join(timeout: .zero)
        try await allExited.wait()
    }

    /// Whether fewer units are queued than the workers could take now.
    var isHungry: Bool { lock.withLock { pending.count < slots.count * 2 } }

    var isRunning: Bool { lock.withLock { if case .running = phase { true } else { false } } }

    /// Runs `body` on the pool's callback thread (Python's result-handler thread).
    func callback(_ body: @escaping @Sendable () -> Void) { try? callbacks.put(body) }

    // MARK: - progress

    func progress() -> PoolProgress {
        lock.withLock {
            let now = ContinuousClock.now
            let elapsed = firstSubmit.map { now - $0 } ?? .zero
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            let rate = seconds > 0 ? Double(done) / seconds : 0
            let eta: Duration? = rate > 0 ? .seconds(Double(total - done) / rate) : nil
            let workers = slots.map { s -> WorkerInsight in
                var idle = s.idle
                if let since = s.idleSince { idle += now - since }
                return WorkerInsight(
                    pid: s.pid,
                    startup: s.readyAt.map { $0 - s.spawnedAt },
                    waiting: idle,
                    working: s.busy,
                    tasks: s.tasksDone
                )
            }
            return PoolProgress(done: done, failed: failed, total: total, rate: rate, eta: eta, workers: workers)
        }
    }

    var workerPIDs: [Int32] { lock.withLock { slots.filter { !$0.exited }.map(\.pid) } }

    /// Workers running a unit now.
    var busyWorkers: Int { lock.withLock { slots.filter { !$0.exited && $0.shared.running.unit != 0 }.count } }

    /// Workers that died unexpectedly (crashed, were killed from outside, broke the protocol) so far.
    var workerDeaths: Int { lock.withLock { unexpectedDeaths } }

    /// Every descriptor the live workers' slots hold (channel and its outbox's duplicate, stderr pipe,
    /// wake-up eventfd, pidfd), for leak tests.
    var descriptors: [Int32] {
        lock.withLock {
            slots.flatMap {
                [$0.channel.fileDescriptor, $0.outbox.descriptor, $0.stderrFd, $0.wakeFd, $0.handle.sentinel]
            }
        }
    }

    /// Kills every worker and reaps it, without settling any work (the program is about to end).
    func stopWorkersNow() {
        let handles = lock.withLock { () -> [ProcessHandle] in
            phase = .terminated
            // Nothing is settled: callers stay blocked until the program ends, rather than waking to
            // a failure and carrying on in the moment before it does.
            pending = []
            delayed = []
            for slot in slots {
                slot.inflight = []
                slot.stop = .terminate(PoolError(.interrupted, "interrupted by SIGINT"))
            }
            return slots.map(\.handle)
        }
        for h in handles { h.terminate() }
        for h in handles where (try? h.join(timeout: .milliseconds(300))) != true {
            h.kill()
            _ = try? h.join(timeout: .seconds(2))
        }
    }
}
