internal import CMultiprocessingShims
import Glibc
import Threading

// Process-shared semaphores, events, conditions and barriers: Python's `multiprocessing.Semaphore`,
// `BoundedSemaphore`, `Event`, `Condition` and `Barrier`. Each lives in shared memory, travels inside
// jobs (`Codable`), waits on a futex with a timeout, has an async twin that never blocks a thread of the
// cooperative pool, and copes with a process that dies at the wrong moment.

/// Sleeps on a shared futex word while it holds `expected`, until `deadline` or at most one liveness
/// slice. Returns whether the slice ended without a wake-up.
@discardableResult
private func sleep(on word: UnsafeMutablePointer<UInt32>, while expected: UInt32, until deadline: Deadline?) -> Bool {
    var end = Deadline(nanoseconds: Deadline.now().nanoseconds + SharedLockWord.livenessSlice)
    if let deadline, deadline < end { end = deadline }
    var ts = end.timespec
    return mp_futex_wait_shared(word, expected, &ts) == -ETIMEDOUT
}

/// A slice end for one bounded async attempt.
private func sliceEnd(_ slice: Duration?) -> Deadline { Deadline.after(slice ?? .milliseconds(50))! }

private func earlier(_ a: Deadline?, _ b: Deadline) -> Deadline { a.map { min($0, b) } ?? b }

// MARK: - Semaphore

/// A counting semaphore shared between processes — Python's `multiprocessing.Semaphore` (and, with
/// `bounded: true`, `BoundedSemaphore`).
///
/// It remembers how many permits each process holds (for up to 32 processes at once): when a process
/// dies holding permits, a waiter returns them to the semaphore and learns it
/// (``LockOutcome/acquiredFromDeadOwner``). A permit released by another process than the one that took
/// it is allowed, as in Python; it is then no longer counted against the taker.
public final class ProcessSemaphore: Codable, @unchecked Sendable {  // state is in shared memory, atomic
    let place: SharedPlace
    private static let slots = 32
    static let size = 16 + slots * 8

    private var value: UnsafeMutablePointer<UInt32> { place.pointer.assumingMemoryBound(to: UInt32.self) }
    private var sleepers: UnsafeMutablePointer<UInt32> { (place.pointer + 4).assumingMemoryBound(to: UInt32.self) }
    /// The initial value of a bounded semaphore (its ceiling), or 0.
    private var bound: UnsafeMutablePointer<UInt32> { (place.pointer + 8).assumingMemoryBound(to: UInt32.self) }
    private var deadHolders: UnsafeMutablePointer<UInt32> { (place.pointer + 12).assumingMemoryBound(to: UInt32.self) }
    /// Holders: pid in the high 32 bits, permits held in the low 32.
    private func slot(_ i: Int) -> UnsafeMutablePointer<UInt64> {
        (place.pointer + 16 + i * 8).assumingMemoryBound(to: UInt64.self)
    }

    /// A semaphore with `value` permits; `bounded`: releasing more than `value` is an error.
    public init(value: Int = 1, bounded: Bool = false) throws {
        guard value >= 0, value < Int(Int32.max) else {
            throw MultiprocessingError(.invalidState, "a semaphore's value must be in 0..<2^31, not \(value)")
        }
        place = try .standalone(Self.size)
        mp_atomic_store_u32(self.value, UInt32(value))
        mp_atomic_store_u32(bound, bounded ? UInt32(value) : 0)
    }

    /// Attaches to a semaphore encoded in another process (or this one): the same shared memory, not a copy.
    /// Throws if the sender no longer holds it (see ``SharedSegment``).
    public init(from decoder: any Decoder) throws { place = try SharedPlace(from: decoder) }
    /// Encodes a reference to the semaphore's shared memory, to send it inside a job; the sender must keep
    /// the semaphore until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws { try place.encode(to: encoder) }

    /// Permits available now (Python's `get_value()`).
    public var currentValue: Int { Int(mp_atomic_load_u32(value)) }

    /// How many times permits were taken back from a process that died holding them.
    public var deadHolderCount: Int { Int(mp_atomic_load_u32(deadHolders)) }

    private func tryTake() -> Bool {
        while true {
            let v = mp_atomic_load_u32(value)
            if v == 0 { return false }
            if mp_atomic_cas_u32(value, v, v - 1) {
                note(+1)
                return true
            }
        }
    }

    /// Adds `delta` to this process's count of held permits.
    private func note(_ delta: Int64) {
        let me = UInt64(currentPID) << 32
        var free: Int?
        for i in 0..<Self.slots {
            let s = mp_atomic_load_u64(slot(i))
            if s & 0xFFFF_FFFF_0000_0000 == me {
                while true {
                    let cur = mp_atomic_load_u64(slot(i))
                    let held = Int64(cur & 0xFFFF_FFFF)
                    let next = max(0, held + delta)
                    if mp_atomic_cas_u64(slot(i), cur, me | UInt64(next)) { return }
                }
            }
            if s == 0 && free == nil { free = i }
        }
        guard delta > 0, let start = free else { return }  // a release we did not take; or the table is full
        for i in start..<Self.slots where mp_atomic_cas_u64(slot(i), 0, me | UInt64(delta)) { return }
    }

    /// Returns to the semaphore the permits of holders that have ended; whether there were any.
    private func reclaimFromDeadHolders() -> Bool {
        var any = false
        for i in 0..<Self.slots {
            let s = mp_atomic_load_u64(slot(i))
            let pid = UInt32(s >> 32)
            guard pid != 0, pid != currentPID, Syscall.processHasEnded(pid) else { continue }
            guard mp_atomic_cas_u64(slot(i), s, 0) else { continue }
            let held = UInt32(s & 0xFFFF_FFFF)
            if held > 0 {
                _ = mp_atomic_fetch_add_u32(value, held)
                _ = mp_atomic_fetch_add_u32(deadHolders, 1)
                _ = mp_futex_wake_shared(value, Int32(clamping: held))
                any = true
            }
        }
        return any
    }

    private func acquire(until deadline: Deadline?) -> LockOutcome {
        var reclaimed = false
        while true {
            if tryTake() { return reclaimed ? .acquiredFromDeadOwner : .acquired }
            if let deadline, deadline.hasPassed { return .timedOut }
            _ = mp_atomic_fetch_add_u32(sleepers, 1)
            let quiet = sleep(on: value, while: 0, until: deadline)
            _ = mp_atomic_fetch_sub_u32(sleepers, 1)
            if quiet && reclaimFromDeadHolders() { reclaimed = true }
        }
    }

    /// Takes a permit, waiting at most `timeout` (nil: as long as it takes) — Python's `acquire`.
    @discardableResult
    public func acquire(timeout: Duration? = nil) -> LockOutcome {
        if tryTake() { return .acquired }
        return acquire(until: Deadline.after(timeout))
    }

    /// Takes a permit without blocking a thread of the cooperative pool; honours cancellation.
    @discardableResult
    public func acquire(timeout: Duration? = nil) async throws -> LockOutcome {
        if tryTake() { return .acquired }
        let deadline = Deadline.after(timeout)
        return try await AsyncBridge.run { [self] slice in
            let end = earlier(deadline, sliceEnd(slice))
            let r = acquire(until: end)
            return r == .timedOut && end != deadline ? nil : r
        }
    }

    /// Returns a permit. Throws for a bounded semaphore already at its initial value (Python raises
    /// `ValueError`).
    public func release() throws {
        let ceiling = mp_atomic_load_u32(bound)
        while true {
            let v = mp_atomic_load_u32(value)
            if ceiling != 0 && v >= ceiling {
                throw MultiprocessingError(.invalidState, "a bounded semaphore released too many times")
            }
            if mp_atomic_cas_u32(value, v, v + 1) { break }
        }
        note(-1)
        if mp_atomic_load_u32(sleepers) > 0 { _ = mp_futex_wake_shared(value, 1) }
    }
}

// MARK: - Event

/// A flag shared between processes that waiters sleep on — Python's `multiprocessing.Event`.
public final class ProcessEvent: Codable, @unchecked Sendable {  // state is in shared memory, atomic
    let place: SharedPlace
    private var flag: UnsafeMutablePointer<UInt32> { place.pointer.assumingMemoryBound(to: UInt32.self) }

    /// A new event, not set.
    public init() throws { place = try .standalone(8) }
    /// Attaches to an event encoded in another process (or this one): the same shared flag, not a copy.
    /// Throws if the sender no longer holds it (see ``SharedSegment``).
    public init(from decoder: any Decoder) throws { place = try SharedPlace(from: decoder) }
    /// Encodes a reference to the event's shared memory, to send it inside a job; the sender must keep the
    /// event until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws { try place.encode(to: encoder) }

    /// Whether the flag is set (Python's `is_set()`).
    public var isSet: Bool { mp_atomic_load_u32(flag) != 0 }

    /// Sets the flag and wakes every waiter.
    public func set() {
        mp_atomic_store_u32(flag, 1)
        _ = mp_futex_wake_shared(flag, Int32.max)
    }

    /// Clears the flag.
    public func clear() { mp_atomic_store_u32(flag, 0) }

    private func wait(until deadline: Deadline?) -> Bool {
        while mp_atomic_load_u32(flag) == 0 {
            if let deadline, deadline.hasPassed { return false }
            sleep(on: flag, while: 0, until: deadline)
        }
        return true
    }

    /// Waits until the flag is set; returns `false` if `timeout` passed first.
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Bool { wait(until: Deadline.after(timeout)) }

    /// Waits without blocking a thread of the cooperative pool; honours cancellation.
    @discardableResult
    public func wait(timeout: Duration? = nil) async throws -> Bool {
        if isSet { return true }
        let deadline = Deadline.after(timeout)
        return try await AsyncBridge.run { [self] slice in
            let end = earlier(deadline, sliceEnd(slice))
            if wait(until: end) { return true }
            return end == deadline ? false : nil
        }
    }
}

// MARK: - Condition

/// A condition variable shared between processes — Python's `multiprocessing.Condition`, on a
/// ``ProcessRLock`` (Python's default).
public final class ProcessCondition: Codable, @unchecked Sendable {  // state is in shared memory, atomic
    /// The lock the condition's predicate is guarded by.
    public let lock: ProcessRLock
    let place: SharedPlace
    private var sequence: UnsafeMutablePointer<UInt32> { place.pointer.assumingMemoryBound(to: UInt32.self) }

    /// A condition on `lock` (a new one by default).
    public init(lock: ProcessRLock? = nil) throws {
        self.lock = try lock ?? ProcessRLock()
        place = try .standalone(8)
    }

    private enum Key: String, CodingKey { case lock, place }

    /// Attaches to a condition encoded in another process (or this one): the same lock and shared memory,
    /// not copies. Throws if the sender no longer holds them (see ``SharedSegment``).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        lock = try c.decode(ProcessRLock.self, forKey: .lock)
        place = try c.decode(SharedPlace.self, forKey: .place)
    }

    /// Encodes references to the condition's lock and shared memory, to send it inside a job; the sender
    /// must keep the condition until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(lock, forKey: .lock)
        try c.encode(place, forKey: .place)
    }

    /// Releases the lock, waits for a notification (or `timeout`), and takes the lock again — Python's
    /// `wait`. The caller must hold the lock. Returns `false` if the timeout passed. Like every condition
    /// variable it may wake without a notification: check the predicate in a loop, or use
    /// ``wait(for:timeout:)``.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws -> Bool {
        let deadline = Deadline.after(timeout)
        let seen = mp_atomic_load_u32(sequence)
        let depth = try lock.releaseFully()
        var notified = true
        if let deadline {
            var ts = deadline.timespec
            notified = mp_futex_wait_shared(sequence, seen, &ts) != -ETIMEDOUT
        } else {
            _ = mp_futex_wait_shared(sequence, seen, nil)
        }
        lock.acquire()
        lock.restore(depth)
        return notified
    }

    /// The async twin of ``wait(timeout:)``: the wait runs on the library's waiting threads; the lock is
    /// taken again by the calling task.
    @discardableResult
    public func wait(timeout: Duration? = nil) async throws -> Bool {
        let deadline = Deadline.after(timeout)
        let seen = mp_atomic_load_u32(sequence)
        let depth = try lock.releaseFully()
        let sequence = UncheckedPointer(sequence)
        let notified: Bool
        do {
            notified = try await AsyncBridge.run { slice in
                let end = earlier(deadline, sliceEnd(slice))
                var ts = end.timespec
                if mp_futex_wait_shared(sequence.pointer, seen, &ts) != -ETIMEDOUT { return true }
                return end == deadline ? false : nil
            }
        } catch {
            await lock.reacquireAfterWait()  // cancelled: still return holding the lock
            lock.restore(depth)
            throw error
        }
        await lock.reacquireAfterWait()
        lock.restore(depth)
        return notified
    }

    /// Waits until `predicate` holds (checked under the lock), or `timeout` passes; returns the last
    /// value of the predicate — Python's `wait_for`.
    public func wait(for predicate: () throws -> Bool, timeout: Duration? = nil) throws -> Bool {
        let deadline = Deadline.after(timeout)
        while true {
            if try predicate() { return true }
            if let deadline, deadline.hasPassed { return false }
            try wait(timeout: deadline.map { $0.remaining })
        }
    }

    /// Wakes at most `n` waiters. The caller must hold the lock.
    public func notify(_ n: Int = 1) throws {
        guard lock.isHeldByCaller else {
            throw MultiprocessingError(.invalidState, "notify on a condition whose lock the caller does not hold")
        }
        _ = mp_atomic_fetch_add_u32(sequence, 1)
        _ = mp_futex_wake_shared(sequence, Int32(clamping: n))
    }

    /// Wakes every waiter (Python's `notify_all`). The caller must hold the lock.
    public func notifyAll() throws { try notify(Int(Int32.max)) }
}

/// A pointer that may cross into a `@Sendable` closure (it points into shared memory, accessed
/// atomically).
struct UncheckedPointer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<UInt32>
    init(_ p: UnsafeMutablePointer<UInt32>) { pointer = p }
}

extension ProcessRLock {
    /// Whether the calling thread or task holds the lock.
    var isHeldByCaller: Bool {
        callerToken() != nil
    }

    /// Releases every level the caller holds, for a condition wait; returns the depth to restore.
    func releaseFully() throws -> UInt32 {
        guard isHeldByCaller else {
            throw MultiprocessingError(.invalidState, "wait on a condition whose lock the caller does not hold")
        }
        let depth = mp_atomic_load_u32(core.depth)
        mp_atomic_store_u32(core.depth, 0)
        mp_atomic_store_u64(core.ownerToken, 0)
        core.unlock()
        return depth
    }

    /// Takes the lock back after a condition wait, whatever happens to the calling task: a cancelled wait
    /// must still return holding the lock, as Python's `Condition.wait` always does. The owner is the
    /// calling task; no thread of the cooperative pool blocks.
    func reacquireAfterWait() async {
        let token = taskToken()
        if let r = core.tryLock() {
            _ = took(r, token)
            return
        }
        let core = self.core
        let r = await AsyncBridge.runIgnoringCancellation { slice in
            core.lock(deadline: nil, sliceEnd: Deadline.after(slice ?? .milliseconds(50))!)
        }
        _ = took(r, token)
    }

    /// After re-acquiring (at depth 1), restores the depth saved by ``releaseFully()``.
    func restore(_ depth: UInt32) {
        mp_atomic_store_u32(core.depth, max(1, depth))
    }
}

// MARK: - Barrier

/// Raised by `ProcessBarrier.wait(timeout:)` when the barrier is broken — Python's
/// `threading.BrokenBarrierError`.
public struct BrokenBarrierError: Error, CustomStringConvertible, Sendable {
    /// Why it broke.
    public let reason: String
    /// `broken barrier: ` followed by the reason.
    public var description: String { "broken barrier: \(reason)" }
}

/// A barrier for `parties` processes — Python's `multiprocessing.Barrier`.
///
/// A process that waits on the barrier, or receives it inside a job, becomes a member; if a member
/// process ends while others wait, the barrier breaks (every waiter gets ``BrokenBarrierError``) within
/// about 20 ms instead of waiting for ever. A wait that times out breaks it too, as in Python.
public final class ProcessBarrier: Codable, @unchecked Sendable {  // state is in shared memory, atomic
    let place: SharedPlace
    private static let members = 64
    static let size = 16 + members * 4

    private var arrived: UnsafeMutablePointer<UInt32> { place.pointer.assumingMemoryBound(to: UInt32.self) }
    private var generation: UnsafeMutablePointer<UInt32> { (place.pointer + 4).assumingMemoryBound(to: UInt32.self) }
    private var brokenFlag: UnsafeMutablePointer<UInt32> { (place.pointer + 8).assumingMemoryBound(to: UInt32.self) }
    private var partiesWord: UnsafeMutablePointer<UInt32> { (place.pointer + 12).assumingMemoryBound(to: UInt32.self) }
    private func member(_ i: Int) -> UnsafeMutablePointer<UInt32> {
        (place.pointer + 16 + i * 4).assumingMemoryBound(to: UInt32.self)
    }

    /// A barrier that opens when `parties` processes (or threads) wait on it.
    public init(parties: Int) throws {
        guard parties > 0, parties < Self.members else {
            throw MultiprocessingError(.invalidState, "a barrier needs 1..<\(Self.members) parties, not \(parties)")
        }
        place = try .standalone(Self.size)
        mp_atomic_store_u32(partiesWord, UInt32(parties))
    }

    /// Attaches to a barrier encoded in another process (or this one) — the same shared memory, not a
    /// copy — and makes the decoding process a member: if it ends while others wait, the barrier breaks.
    /// Throws if the sender no longer holds it (see ``SharedSegment``).
    public init(from decoder: any Decoder) throws {
        place = try SharedPlace(from: decoder)
        join()
    }

    /// Encodes a reference to the barrier's shared memory, to send it inside a job; the sender must keep the
    /// barrier until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws { try place.encode(to: encoder) }

    /// The number of parties.
    public var parties: Int { Int(mp_atomic_load_u32(partiesWord)) }
    /// Parties waiting now (Python's `n_waiting`).
    public var waiting: Int { Int(mp_atomic_load_u32(arrived)) }
    /// Whether the barrier is broken.
    public var isBroken: Bool { mp_atomic_load_u32(brokenFlag) != 0 }

    /// Records this process as a member.
    private func join() {
        var free: Int?
        for i in 0..<Self.members {
            let p = mp_atomic_load_u32(member(i))
            if p == currentPID { return }
            if p == 0 && free == nil { free = i }
        }
        guard let start = free else { return }
        for i in start..<Self.members where mp_atomic_cas_u32(member(i), 0, currentPID) { return }
    }

    private func deadMember() -> UInt32? {
        for i in 0..<Self.members {
            let p = mp_atomic_load_u32(member(i))
            if p != 0 && p != currentPID && Syscall.processHasEnded(p) { return p }
        }
        return nil
    }

    private func breakBarrier() {
        mp_atomic_store_u32(brokenFlag, 1)
        _ = mp_futex_wake_shared(generation, Int32.max)
    }

    /// Puts the barrier into the broken state: current and future waits fail until ``reset()``.
    public func abort() { breakBarrier() }

    /// Returns the barrier to its initial state (waiters now fail with ``BrokenBarrierError``).
    public func reset() {
        breakBarrier()
        mp_atomic_store_u32(arrived, 0)
        _ = mp_atomic_fetch_add_u32(generation, 1)
        mp_atomic_store_u32(brokenFlag, 0)
        _ = mp_futex_wake_shared(generation, Int32.max)
    }

    /// Arrives, and returns once all `parties` have arrived: this party's arrival index (`0 ..< parties`,
    /// each once per round, as Python's). Throws
    /// ``BrokenBarrierError`` if the barrier is or becomes broken, the timeout passes (which breaks it),
    /// or a member process ends while this one waits.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws -> Int {
        let (gen, index) = try arrive()
        if let index { return index }
        return try awaitOpening(gen: gen.gen, index: gen.index, until: Deadline.after(timeout), final: true)!
    }

    /// The async twin of ``wait(timeout:)``.
    @discardableResult
    public func wait(timeout: Duration? = nil) async throws -> Int {
        let (gen, index) = try arrive()
        if let index { return index }
        let deadline = Deadline.after(timeout)
        return try await AsyncBridge.run { [self] slice in
            let end = earlier(deadline, sliceEnd(slice))
            return try awaitOpening(gen: gen.gen, index: gen.index, until: end, final: end == deadline)
        }
    }

    /// Arrives: returns the generation and index, and the index alone if this arrival opened it.
    private func arrive() throws -> (gen: (gen: UInt32, index: Int), opened: Int?) {
        join()
        if isBroken { throw BrokenBarrierError(reason: "the barrier was already broken") }
        let gen = mp_atomic_load_u32(generation)
        let index = Int(mp_atomic_fetch_add_u32(arrived, 1))
        if index + 1 >= parties {
            mp_atomic_store_u32(arrived, 0)
            _ = mp_atomic_fetch_add_u32(generation, 1)
            _ = mp_futex_wake_shared(generation, Int32.max)
            return ((gen, index), index)
        }
        return ((gen, index), nil)
    }

    /// Waits for generation `gen` to end; `nil` when `until` passed and this is not the final slice.
    private func awaitOpening(gen: UInt32, index: Int, until deadline: Deadline?, final: Bool) throws -> Int? {
        while mp_atomic_load_u32(generation) == gen {
            if isBroken { throw BrokenBarrierError(reason: "the barrier was broken while waiting") }
            if let deadline, deadline.hasPassed {
                guard final else { return nil }
                breakBarrier()
                throw BrokenBarrierError(reason: "the wait timed out")
            }
            if sleep(on: generation, while: gen, until: deadline), let dead = deadMember() {
                breakBarrier()
                throw BrokenBarrierError(reason: "member process \(dead) ended")
            }
        }
        if isBroken { throw BrokenBarrierError(reason: "the barrier was broken while waiting") }
        return index
    }
}
