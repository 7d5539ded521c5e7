internal import CMultiprocessingShims
import Glibc
import Threading

/// How an acquisition of a process-shared lock went.
public enum LockOutcome: Sendable, Hashable {
    /// The lock is held.
    case acquired
    /// The lock is held, taken over from a process that died holding it. Whatever the lock protects may
    /// be half-updated: check or repair it before relying on it. (CPython's `multiprocessing.Lock` hangs
    /// for ever in this case, gh-96062.)
    case acquiredFromDeadOwner
    /// The timeout passed first; the lock is not held.
    case timedOut

    /// Whether the lock is held.
    public var isHeld: Bool { self != .timedOut }
}

/// The calling thread's identity for lock ownership (top bit clear).
@inline(__always)
func threadToken() -> UInt64 { mp_pthread_self() & ~(1 << 63) }

/// The current task's identity (its address, unique while it lives; top bit set), or 0 outside a task.
/// Costly (the task type is resilient): computed only for async calls and when a thread check fails.
func taskToken() -> UInt64 {
    withUnsafeCurrentTask { t in t.map { UInt64(unsafeBitCast($0, to: UInt.self)) | (1 << 63) } ?? 0 }
}

/// This process's id (cached: workers are started by exec, never forked, so it never changes under us).
let currentPID = UInt32(bitPattern: getpid())

/// The lock word and owner fields of a process-shared lock, in shared memory (32 bytes).
///
/// The word holds the owner's process id, with the top bit set when a waiter may be asleep on it, so
/// taking the lock and naming the owner is one atomic step: a process killed at any instant leaves
/// either a free lock or one that names it. A waiter that sleeps longer than `livenessSlice` checks
/// whether the named owner still lives and, if not, takes the lock over (`.acquiredFromDeadOwner`).
struct SharedLockWord: @unchecked Sendable {  // points into shared memory, accessed atomically
    let base: UnsafeMutableRawPointer
    /// This process's id (read once: a global's lazy initialisation check costs on every access).
    let me = currentPID

    static let size = 32
    static let waiters: UInt32 = 1 << 31
    /// How long a waiter sleeps before it checks that the owner is alive.
    static let livenessSlice: Int64 = 20_000_000

    var word: UnsafeMutablePointer<UInt32> { base.assumingMemoryBound(to: UInt32.self) }
    /// Recursion depth (RLock).
    var depth: UnsafeMutablePointer<UInt32> { (base + 4).assumingMemoryBound(to: UInt32.self) }
    /// The owning thread or task within the owning process (RLock).
    var ownerToken: UnsafeMutablePointer<UInt64> { (base + 8).assumingMemoryBound(to: UInt64.self) }
    /// Times the lock was taken over from a dead owner.
    var deadOwners: UnsafeMutablePointer<UInt32> { (base + 16).assumingMemoryBound(to: UInt32.self) }

    /// The owning process, or 0.
    var owner: UInt32 { mp_atomic_load_u32(word) & ~Self.waiters }

    /// Tries once; `nil` if held by someone else.
    @inline(__always)
    func tryLock() -> LockOutcome? {
        mp_atomic_cas_acquire_u32(word, 0, me) ? .acquired : nil
    }

    /// Waits for the lock until `deadline` (nil: none), `sliceLimit` at most when given (async slices).
    func lock(deadline: Deadline?) -> LockOutcome {
        if mp_atomic_cas_acquire_u32(word, 0, me) { return .acquired }
        // A short spin: the holder is usually on another core and about to release.
        for _ in 0..<64 {
            mp_cpu_relax()
            if mp_atomic_load_u32(word) == 0 && mp_atomic_cas_acquire_u32(word, 0, me) { return .acquired }
        }
        let mine = me | Self.waiters
        while true {
            let v = mp_atomic_load_u32(word)
            if v == 0 {
                // Taken with the waiters bit: others may still sleep, and our release must wake them.
                if mp_atomic_cas_acquire_u32(word, 0, mine) { return .acquired }
                continue
            }
            if v & Self.waiters == 0 && !mp_atomic_cas_u32(word, v, v | Self.waiters) { continue }
            let now = Deadline.now()
            if let deadline, now >= deadline { return .timedOut }
            var slice = Deadline(nanoseconds: now.nanoseconds + Self.livenessSlice)
            if let deadline, deadline < slice { slice = deadline }
            var ts = slice.timespec
            let rc = mp_futex_wait_shared(word, v | Self.waiters, &ts)
            if rc == -ETIMEDOUT, let taken = takeOverIfOwnerDied(seen: v | Self.waiters) { return taken }
        }
    }

    /// After a slice: if the owner named by `seen` has ended, takes the lock from it.
    private func takeOverIfOwnerDied(seen: UInt32) -> LockOutcome? {
        let owner = seen & ~Self.waiters
        guard owner != me, Syscall.processHasEnded(owner) else { return nil }
        guard mp_atomic_cas_u32(word, seen, me | Self.waiters) else { return nil }
        _ = mp_atomic_fetch_add_u32(deadOwners, 1)
        return .acquiredFromDeadOwner
    }

    /// One bounded attempt for async callers: waits at most until `sliceEnd`; `nil` if still not held.
    func lock(deadline: Deadline?, sliceEnd: Deadline) -> LockOutcome? {
        let end = deadline.map { min($0, sliceEnd) } ?? sliceEnd
        let r = lock(deadline: end)
        if r == .timedOut, deadline.map({ $0 > end }) ?? true { return nil }
        return r
    }

    /// Releases; wakes one sleeper if any.
    @inline(__always)
    func unlock() {
        let old = mp_atomic_exchange_release_u32(word, 0)
        if old & Self.waiters != 0 { _ = mp_futex_wake_shared(word, 1) }
    }
}

/// Where a process-shared primitive lives: a segment and an offset in it. Standalone primitives own a
/// small segment of their own; those of a ``SharedValue`` or ``SharedArray`` live in its header.
struct SharedPlace: Codable, @unchecked Sendable {  // the segment is immutable; the memory is atomic
    let segment: SharedSegment
    let offset: Int

    var pointer: UnsafeMutableRawPointer { segment.baseAddress + offset }

    static func standalone(_ size: Int) throws -> SharedPlace {
        SharedPlace(segment: try SharedSegment(size: max(size, 64)), offset: 0)
    }
}

/// A lock shared between processes — Python's `multiprocessing.Lock`.
///
/// Create it, hand it to other processes inside jobs (it is `Codable`), and use it as a lock. It is owned
/// by the *process* that acquired it: any thread or task of that process may release it, and when that
/// process dies holding it, the next acquirer takes it over and is told so
/// (``LockOutcome/acquiredFromDeadOwner``) within about 20 ms, instead of hanging for ever as CPython's
/// does. Uncontended, acquiring and releasing is one atomic instruction each; waiters sleep on a futex.
///
/// Unlike CPython's `Lock` (a semaphore), a process that does not hold the lock cannot release it.
public final class ProcessLock: Codable, @unchecked Sendable {  // state is in shared memory, atomic
    let place: SharedPlace
    let core: SharedLockWord

    /// A new, unlocked lock in shared memory of its own.
    public convenience init() throws { self.init(place: try .standalone(SharedLockWord.size)) }

    init(place: SharedPlace) {
        self.place = place
        core = SharedLockWord(base: place.pointer)
    }

    /// Attaches to a lock encoded in another process (or this one): the same lock, not a copy. Throws
    /// if the sender no longer holds it (see ``SharedSegment``).
    public convenience init(from decoder: any Decoder) throws {
        self.init(place: try SharedPlace(from: decoder))
    }

    /// Encodes a reference to the lock's shared memory, to send it inside a job; the sender must keep the
    /// lock until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws { try place.encode(to: encoder) }

    /// Acquires the lock, waiting at most `timeout` (nil: as long as it takes) — Python's
    /// `acquire(block, timeout)`; a `timeout` of zero is `block=False`.
    @discardableResult
    public func acquire(timeout: Duration? = nil) -> LockOutcome {
        if let r = core.tryLock() { return r }
        return core.lock(deadline: Deadline.after(timeout))
    }

    /// Acquires without blocking a thread of the cooperative pool (the wait runs in slices on the
    /// library's waiting threads); honours cancellation.
    @discardableResult
    public func acquire(timeout: Duration? = nil) async throws -> LockOutcome {
        if let r = core.tryLock() { return r }
        let deadline = Deadline.after(timeout)
        let core = self.core
        return try await AsyncBridge.run { slice in
            core.lock(deadline: deadline, sliceEnd: Deadline.after(slice ?? .milliseconds(50))!)
        }
    }

    /// Releases the lock. Throws if this process does not hold it (Python raises `ValueError`).
    public func release() throws {
        guard core.owner == core.me else {
            throw MultiprocessingError(
                .invalidState,
                core.owner == 0 ? "release of an unlocked lock" : "release of a lock held by process \(core.owner)"
            )
        }
        core.unlock()
    }

    /// Runs `body` holding the lock. Throws ``MultiprocessingError/Code/timedOut`` if the lock could not
    /// be acquired within `timeout`. When the previous owner died holding the lock, `ownerDied` runs first
    /// (repair what it was doing); without one, the body just runs.
    public func withLock<R>(
        timeout: Duration? = nil,
        ownerDied: (() throws -> Void)? = nil,
        _ body: () throws -> R
    ) throws -> R {
        let outcome = acquire(timeout: timeout)
        guard outcome.isHeld else {
            throw lockTimedOut(timeout)
        }
        defer { core.unlock() }
        if outcome == .acquiredFromDeadOwner { try ownerDied?() }
        return try body()
    }

    /// Whether some process holds the lock now.
    public var isLocked: Bool { core.owner != 0 }

    /// The process holding the lock now, if any.
    public var owner: Int32? { core.owner == 0 ? nil : Int32(bitPattern: core.owner) }

    /// How many times the lock was taken over from a process that died holding it.
    public var deadOwnerCount: Int { Int(mp_atomic_load_u32(core.deadOwners)) }
}

/// A re-entrant lock shared between processes — Python's `multiprocessing.RLock`.
///
/// The owner is a thread of a process when taken with the blocking `acquire(timeout:)`, or a task
/// when taken with the async one; the owner may acquire again, and must release as many times. (Do not
/// hold it across an `await` after a blocking acquire: the task may resume on another thread.) A dead
/// owning process is detected as for ``ProcessLock``.
public final class ProcessRLock: Codable, @unchecked Sendable {  // state is in shared memory, atomic
    let place: SharedPlace
    let core: SharedLockWord

    /// A new, unlocked lock in shared memory of its own.
    public convenience init() throws { self.init(place: try .standalone(SharedLockWord.size)) }

    init(place: SharedPlace) {
        self.place = place
        core = SharedLockWord(base: place.pointer)
    }

    /// Attaches to a re-entrant lock encoded in another process (or this one): the same lock, not a copy. Throws
    /// if the sender no longer holds it (see ``SharedSegment``).
    public convenience init(from decoder: any Decoder) throws {
        self.init(place: try SharedPlace(from: decoder))
    }

    /// Encodes a reference to the lock's shared memory, to send it inside a job; the sender must keep the
    /// lock until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws { try place.encode(to: encoder) }

    /// The owner token if the calling thread, or else the calling task, holds the lock; nil otherwise.
    func callerToken() -> UInt64? {
        guard core.owner == core.me else { return nil }
        let owner = mp_atomic_load_u64(core.ownerToken)
        if owner == threadToken() { return owner }
        if owner & (1 << 63) != 0 && owner == taskToken() { return owner }
        return nil
    }

    func took(_ outcome: LockOutcome, _ token: UInt64) -> LockOutcome {
        guard outcome.isHeld else { return outcome }
        mp_atomic_store_u64(core.ownerToken, token)
        mp_atomic_store_u32(core.depth, 1)
        return outcome
    }

    /// Acquires the lock (again, if the caller holds it), waiting at most `timeout`.
    @discardableResult
    public func acquire(timeout: Duration? = nil) -> LockOutcome {
        if let r = core.tryLock() { return took(r, threadToken()) }
        if callerToken() != nil {
            _ = mp_atomic_fetch_add_u32(core.depth, 1)
            return .acquired
        }
        let token = threadToken()
        return took(core.lock(deadline: Deadline.after(timeout)), token)
    }

    /// Acquires without blocking a thread of the cooperative pool; honours cancellation. The owner is the
    /// calling task.
    @discardableResult
    public func acquire(timeout: Duration? = nil) async throws -> LockOutcome {
        if callerToken() != nil {
            _ = mp_atomic_fetch_add_u32(core.depth, 1)
            return .acquired
        }
        let token = taskToken()
        if let r = core.tryLock() { return took(r, token) }
        let deadline = Deadline.after(timeout)
        let core = self.core
        let r = try await AsyncBridge.run { slice in
            core.lock(deadline: deadline, sliceEnd: Deadline.after(slice ?? .milliseconds(50))!)
        }
        return took(r, token)
    }

    /// Releases one level; the lock is free once every acquisition is released. Throws if the caller
    /// does not hold it.
    public func release() throws {
        guard callerToken() != nil else {
            throw MultiprocessingError(.invalidState, "release of an RLock the caller does not hold")
        }
        if mp_atomic_fetch_sub_u32(core.depth, 1) == 1 {
            mp_atomic_store_u64(core.ownerToken, 0)
            core.unlock()
        }
    }

    /// Runs `body` holding the lock; see ``ProcessLock/withLock(timeout:ownerDied:_:)``.
    public func withLock<R>(
        timeout: Duration? = nil,
        ownerDied: (() throws -> Void)? = nil,
        _ body: () throws -> R
    ) throws -> R {
        let outcome = acquire(timeout: timeout)
        guard outcome.isHeld else {
            throw lockTimedOut(timeout)
        }
        defer { try? release() }
        if outcome == .acquiredFromDeadOwner { try ownerDied?() }
        return try body()
    }

    /// Whether some process holds the lock now.
    public var isLocked: Bool { core.owner != 0 }

    /// How many times the lock was taken over from a process that died holding it.
    public var deadOwnerCount: Int { Int(mp_atomic_load_u32(core.deadOwners)) }
}
