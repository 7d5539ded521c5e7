internal import CMultiprocessingShims

/// A page of memory shared by the parent and one pool worker: which task and item the worker is running
/// (so a crash is charged to exactly one item), and a cancellation request.
struct SharedSlot: @unchecked Sendable {  // a raw mapping; every field is accessed atomically
    static let size = 4096
    let base: UnsafeMutableRawPointer

    private func word(_ i: Int) -> UnsafeMutablePointer<UInt64> {
        (base + i * 8).assumingMemoryBound(to: UInt64.self)
    }

    /// The unit running now (0: none) and the index of its running item.
    var running: (unit: UInt64, index: UInt64) {
        (Atomic.load(word(0)), Atomic.load(word(1)))
    }

    func setRunning(unit: UInt64) {
        if unit != 0 { Atomic.store(word(6), unit) }
        Atomic.store(word(0), unit)
    }

    /// The last unit the worker started (kept after it ends): a worker that dies between items or while
    /// sending replies died on this unit.
    var lastStarted: UInt64 { Atomic.load(word(6)) }
    func setIndex(_ i: UInt64) { Atomic.store(word(1), i) }

    /// Set by a worker that retired itself (over its memory limit) just before exiting cleanly.
    var retiredItself: Bool { Atomic.load(word(7)) != 0 }
    func markRetired() { Atomic.store(word(7), 1) }

    /// Whether the parent asked to cancel the running item of `unit`: the whole unit, or (a soft timeout)
    /// that item only.
    func wantsCancel(of unit: UInt64) -> Bool {
        if cancelRequest == unit { return true }
        let item = itemCancelRequest
        return item.unit == unit && item.index == running.index
    }

    /// Stamps item `index` of `unit` as starting now (coarse clock), for crash attribution and timeouts.
    /// - Returns: the time stamped, and whether the whole unit was cancelled.
    func itemStarting(unit: UInt64, index: Int) -> (now: UInt64, unitCancelled: Bool) {
        let now = PoolClock.coarse()
        setItemStart(now)
        setIndex(UInt64(index))
        return (now, cancelRequest == unit)
    }

    /// Records that item `index` of `unit` starts, without reading the clock (a unit with no time limit:
    /// the parent tells an item's age from when it first saw it running, see `PoolCore`).
    /// - Returns: whether the whole unit was cancelled.
    func itemIndexed(unit: UInt64, index: Int) -> Bool {
        setIndex(UInt64(index))
        return cancelRequest == unit
    }

    /// One item the parent asks the worker to cancel (a soft timeout): unit and index.
    var itemCancelRequest: (unit: UInt64, index: UInt64) { (Atomic.load(word(4)), Atomic.load(word(5))) }
    func requestItemCancel(unit: UInt64, index: UInt64) {
        Atomic.store(word(5), index)
        Atomic.store(word(4), unit)
    }

    /// A unit the parent asks the worker to cancel.
    var cancelRequest: UInt64 { Atomic.load(word(2)) }
    func requestCancel(_ unit: UInt64) { Atomic.store(word(2), unit) }

    /// A unit during whose run the parent asks for the replies the worker still holds (0: none): the
    /// worker's wake-up thread writes them if that unit is still running.
    var repliesRequest: UInt64 { Atomic.load(word(81)) }
    func requestReplies(during unit: UInt64) { Atomic.store(word(81), unit) }

    /// The task gate: the number of the last task frame the worker started, or (with `fenceBit`) the
    /// last of the task frames the parent took back, which the worker skips. Both sides change it by
    /// compare-and-swap, so a task is either started by the worker or taken back by the parent, never
    /// both.
    static let fenceBit: UInt64 = 1 << 63
    var taskGate: UInt64 { Atomic.load(word(80)) }

    /// The worker, before starting its task frame number `k`: false if the parent took it back (skip it
    /// without a reply).
    func startTask(_ k: UInt64) -> Bool {
        while true {
            let g = Atomic.load(word(80))
            if g & SharedSlot.fenceBit != 0 && k <= g & ~SharedSlot.fenceBit { return false }
            if mp_atomic_cas_u64(word(80), g, k) { return true }
        }
    }

    /// The parent takes back task frames `after+1 ... through`, sent and not started; true if the
    /// worker had started nothing after frame `after` (then it never starts those).
    func fenceTasks(after: UInt64, through: UInt64) -> Bool {
        mp_atomic_cas_u64(word(80), after, SharedSlot.fenceBit | through)
    }

    static func create() throws -> (SharedSlot, Int32) {
        let fd = try Syscall.sharedMemory(name: "swift-mp-pool-slot", size: size)
        do {
            return (try map(fd), fd)
        } catch {
            Syscall.close(fd)
            throw error
        }
    }

    static func map(_ fd: Int32) throws -> SharedSlot {
        SharedSlot(base: try Syscall.mapShared(fd, size: size))
    }

    func unmap() { _ = mp_unmap(base, SharedSlot.size) }
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

private enum Atomic {
    static func load(_ p: UnsafeMutablePointer<UInt64>) -> UInt64 { mp_atomic_load_u64(p) }
    static func store(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) { mp_atomic_store_u64(p, v) }
}
