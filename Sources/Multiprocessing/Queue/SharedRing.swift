internal import CMultiprocessingShims
import Glibc
import Threading

/// A ring buffer of byte records in a `memfd` mapped by every process that holds the queue: the engine
/// of the inter-process queues.
///
/// A process-shared, robust mutex guards the indices; waiting uses futexes on shared memory. A record is
/// written before the tail moves past it, and read before the head moves past it, so a producer or a
/// consumer killed at any point leaves the ring consistent: the next locker is told the owner died,
/// marks the mutex consistent and carries on; an item whose consumer died mid-`get` is still there.
final class SharedRing: @unchecked Sendable {  // shared state behind the robust mutex in `base`
    // Header layout (bytes): mutex at 0; fields from 64.
    private static let headerSize = 4096
    private static let magic: UInt64 = 0x6d70_7175_6575_6532  // "mpqueue2": with the wake-up flag
    private enum Field: Int {
        case magic = 64
        case head = 72
        case tail = 80
        case count = 88
        case unfinished = 96
        case maxsize = 104
        case capacity = 112
        case itemsSeq = 128
        case spaceSeq = 132
        case doneSeq = 136
        case waitingGetters = 140
        case waitingPutters = 144
        case waitingJoiners = 148
        /// 1 while a getter woken by `put` (or by another getter) has not yet come back to the lock.
        case getterSignalled = 152
    }

    /// The longest a getter sleeps before it looks again by itself. Wake-ups are passed on one at a time
    /// (`getterSignalled`); a getter killed after its wake-up and before it came back would stop them, and
    /// this bounds that stop (any getter coming back clears the flag).
    private static let sleepSlice = Duration.milliseconds(50)

    let fd: Int32
    let capacity: Int
    private let base: UnsafeMutableRawPointer
    private let mappedSize: Int

    /// Creates a new ring of `capacity` data bytes (sparse: pages are allocated when first written).
    init(capacity: Int, maxsize: Int) throws {
        let size = SharedRing.headerSize + capacity
        let fd = try Syscall.sharedMemory(name: "swift-mp-queue", size: size)
        let p: UnsafeMutableRawPointer
        do {
            p = try Syscall.mapShared(fd, size: size)
        } catch {
            Syscall.close(fd)
            throw error
        }
        self.fd = fd
        self.capacity = capacity
        base = p
        mappedSize = size
        let mrc = mp_shared_mutex_init(p.assumingMemoryBound(to: pthread_mutex_t.self))
        precondition(mrc == 0, "pthread_mutex_init failed: errno \(-mrc)")
        set(.maxsize, Int64(maxsize))
        set(.capacity, Int64(capacity))
        set(.magic, Int64(bitPattern: SharedRing.magic))
    }

    /// Maps an existing ring received from another process (takes ownership of `fd`).
    init(adopting fd: Int32) throws {
        guard let size = try? Syscall.fileSize(fd), size > SharedRing.headerSize,
            let p = try? Syscall.mapShared(fd, size: size)
        else {
            Syscall.close(fd)
            throw MultiprocessingError(.decodingFailed, "the descriptor received is not a queue")
        }
        self.fd = fd
        base = p
        mappedSize = size
        capacity = size - SharedRing.headerSize
        guard UInt64(bitPattern: get(.magic)) == SharedRing.magic, Int(get(.capacity)) == capacity else {
            _ = mp_unmap(p, size)
            Syscall.close(fd)
            throw MultiprocessingError(.decodingFailed, "the descriptor received is not a queue")
        }
    }

    deinit {
        _ = mp_unmap(base, mappedSize)
        Syscall.close(fd)
    }

    // MARK: fields

    @inline(__always) private func get(_ f: Field) -> Int64 { base.load(fromByteOffset: f.rawValue, as: Int64.self) }
    @inline(__always) private func set(_ f: Field, _ v: Int64) {
        base.storeBytes(of: v, toByteOffset: f.rawValue, as: Int64.self)
    }
    @inline(__always) private func word(_ f: Field) -> UnsafeMutablePointer<UInt32> {
        (base + f.rawValue).assumingMemoryBound(to: UInt32.self)
    }
    @inline(__always) private func bump(_ f: Field) {
        let w = word(f)
        w.pointee &+= 1
    }

    var maxsize: Int { Int(get(.maxsize)) }

    // MARK: locking

    private func withLock<R>(_ body: () throws -> R) rethrows -> R {
        let rc = mp_shared_mutex_lock(base.assumingMemoryBound(to: pthread_mutex_t.self))
        precondition(rc >= 0, "locking the queue failed: errno \(-rc)")
        defer { _ = mp_shared_mutex_unlock(base.assumingMemoryBound(to: pthread_mutex_t.self)) }
        if rc == 1 { repairAfterOwnerDeath() }
        return try body()
    }

    /// The previous holder died inside the lock. Head and tail only move after the bytes they cover are
    /// complete, so the records between them are intact; `count` is rebuilt from them (it may have been
    /// updated on one side of a head or tail move that never happened).
    private func repairAfterOwnerDeath() {
        var position = get(.head)
        let tail = get(.tail)
        var records: Int64 = 0
        while position < tail {
            var len: UInt32 = 0
            withUnsafeMutableBytes(of: &len) { copyOut($0, at: position) }
            position += 4 + Int64(UInt32(littleEndian: len))
            records += 1
        }
        set(.count, records)
    }

    /// The waiting half of every blocking operation. The caller, holding the lock, counted itself in
    /// `registeredIn` and read `seen` from the futex word `f`; this sleeps until the word changes from
    /// `seen` (or the deadline passes) and uncounts the caller.
    /// - Returns: `false` when the deadline had already passed (the caller gives up after its last
    ///   attempt); `true` to make another attempt.
    private func sleep(on f: Field, seen: UInt32, deadline: Deadline?, registeredIn counter: Field) -> Bool {
        defer {
            withLock {
                word(counter).pointee -= 1
                // Whoever was woken, a getter is back: the next item may wake another.
                if counter == .waitingGetters { word(.getterSignalled).pointee = 0 }
            }
        }
        if let deadline, deadline.hasPassed { return false }
        if counter == .waitingGetters {
            let slice = Deadline.after(Self.sleepSlice)!
            var ts = (deadline.map { min($0, slice) } ?? slice).timespec
            _ = mp_futex_wait_shared(word(f), seen, &ts)
        } else if let deadline {
            var ts = deadline.timespec
            _ = mp_futex_wait_shared(word(f), seen, &ts)
        } else {
            _ = mp_futex_wait_shared(word(f), seen, nil)
        }
        return true
    }

    /// With the lock held, after an item arrived or was left behind: whether to wake one sleeping getter
    /// (one is asleep and none is on its way back already: every item does not need its own wake-up, and
    /// a getter woken for an item another took only goes back to sleep).
    private func signalGetter() -> Bool {
        guard word(.waitingGetters).pointee > 0, word(.getterSignalled).pointee == 0 else { return false }
        word(.getterSignalled).pointee = 1
        return true
    }

    // MARK: copying, with wrap-around

    private func copyIn(_ src: UnsafeRawBufferPointer, at position: Int64) {
        let off = Int(position % Int64(capacity))
        let first = min(src.count, capacity - off)
        let data = base + SharedRing.headerSize
        if first > 0 { (data + off).copyMemory(from: src.baseAddress!, byteCount: first) }
        if first < src.count { data.copyMemory(from: src.baseAddress! + first, byteCount: src.count - first) }
    }

    private func copyOut(_ dst: UnsafeMutableRawBufferPointer, at position: Int64) {
        let off = Int(position % Int64(capacity))
        let first = min(dst.count, capacity - off)
        let data = base + SharedRing.headerSize
        if first > 0 { dst.baseAddress!.copyMemory(from: data + off, byteCount: first) }
        if first < dst.count { (dst.baseAddress! + first).copyMemory(from: data, byteCount: dst.count - first) }
    }

    // MARK: operations

    /// Appends one record. `blocking: false` fails at once when full.
    /// - Returns: `false` if there was no room before the deadline.
    func put(_ record: UnsafeRawBufferPointer, blocking: Bool, deadline: Deadline?) throws -> Bool {
        let need = 4 + record.count
        guard need <= capacity else {
            throw MultiprocessingError(
                .full,
                "an item of \(record.count) bytes is larger than the queue's capacity of \(capacity) bytes"
            )
        }
        while true {
            var wakeGetter = false
            var seen: UInt32 = 0
            let done: Bool = withLock {
                let head = get(.head)
                let tail = get(.tail)
                let count = get(.count)
                let maxsize = get(.maxsize)
                let room = Int64(capacity) - (tail - head) >= Int64(need) && (maxsize <= 0 || count < maxsize)
                if room {
                    var len = UInt32(record.count).littleEndian
                    withUnsafeBytes(of: &len) { copyIn($0, at: tail) }
                    copyIn(record, at: tail + 4)
                    set(.count, count + 1)
                    set(.unfinished, get(.unfinished) + 1)
                    set(.tail, tail + Int64(need))  // publish last
                    bump(.itemsSeq)
                    wakeGetter = signalGetter()
                    return true
                }
                if blocking {
                    word(.waitingPutters).pointee += 1
                    seen = word(.spaceSeq).pointee
                }
                return false
            }
            if done {
                if wakeGetter { _ = mp_futex_wake_shared(word(.itemsSeq), 1) }
                return true
            }
            if !blocking || !sleep(on: .spaceSeq, seen: seen, deadline: deadline, registeredIn: .waitingPutters) {
                return false
            }
        }
    }

    /// Removes the oldest record; `nil` if none arrived before the deadline (or at once when not blocking).
    func get(blocking: Bool, deadline: Deadline?) -> [UInt8]? {
        while true {
            var wakePutter = false
            var wakeGetter = false
            var seen: UInt32 = 0
            let item: [UInt8]? = withLock {
                let head = get(.head)
                let tail = get(.tail)
                if tail > head {
                    var len: UInt32 = 0
                    withUnsafeMutableBytes(of: &len) { copyOut($0, at: head) }
                    let n = Int(UInt32(littleEndian: len))
                    let out = [UInt8](unsafeUninitializedCapacity: n) { buf, initialized in
                        copyOut(UnsafeMutableRawBufferPointer(buf), at: head + 4)
                        initialized = n
                    }
                    set(.count, get(.count) - 1)
                    set(.head, head + 4 + Int64(n))  // commit last: a consumer dying before this loses nothing
                    bump(.spaceSeq)
                    wakePutter = word(.waitingPutters).pointee > 0
                    if tail > head + 4 + Int64(n) {
                        // Items left behind: pass the wake-up on (put woke only one getter for them all).
                        wakeGetter = signalGetter()
                    } else {
                        // The ring is empty: any getter woken for these items finds none. Clearing the flag
                        // here also keeps a getter killed while counted asleep (its count never taken back)
                        // from holding the flag for the next item: whoever sleeps next is woken by it.
                        word(.getterSignalled).pointee = 0
                    }
                    return out
                }
                if blocking {
                    word(.waitingGetters).pointee += 1
                    seen = word(.itemsSeq).pointee
                }
                return nil
            }
            if let item {
                if wakePutter { _ = mp_futex_wake_shared(word(.spaceSeq), Int32.max) }
                if wakeGetter { _ = mp_futex_wake_shared(word(.itemsSeq), 1) }
                return item
            }
            if !blocking || !sleep(on: .itemsSeq, seen: seen, deadline: deadline, registeredIn: .waitingGetters) {
                return nil
            }
        }
    }

    var count: Int { withLock { Int(get(.count)) } }

    /// Fault injection for tests: runs `body` holding the ring's lock (body may kill the process).
    func withLockForTesting(_ body: () -> Void) { withLock(body) }

    /// Fault injection for tests: scribbles on the item count while holding the lock.
    func corruptCountForTesting(_ value: Int64) { set(.count, value) }

    var unfinished: Int { withLock { Int(get(.unfinished)) } }

    /// For tests: getters asleep (or on their way to sleep) in `get` now.
    var sleepingGettersForTesting: Int { withLock { Int(word(.waitingGetters).pointee) } }

    /// Fault injection for tests: as if a getter had been woken and killed before it came back, so that
    /// no wake-up is sent until a sleeping getter's slice ends.
    func strandWakeUpForTesting() { withLock { word(.getterSignalled).pointee = 1 } }

    /// For tests: whether a wake-up is in flight (a getter woken and not yet back).
    var wakeUpInFlightForTesting: Bool { withLock { word(.getterSignalled).pointee != 0 } }

    func taskDone() throws {
        let wake: Bool = try withLock {
            let u = get(.unfinished)
            guard u > 0 else { throw MultiprocessingError(.invalidState, "taskDone() called too many times") }
            set(.unfinished, u - 1)
            if u == 1 {
                bump(.doneSeq)
                return word(.waitingJoiners).pointee > 0
            }
            return false
        }
        if wake { _ = mp_futex_wake_shared(word(.doneSeq), Int32.max) }
    }

    /// Waits until every record put has been marked done; `false` on timeout.
    func join(deadline: Deadline?) -> Bool {
        while true {
            var seen: UInt32 = 0
            let done: Bool = withLock {
                if get(.unfinished) == 0 { return true }
                word(.waitingJoiners).pointee += 1
                seen = word(.doneSeq).pointee
                return false
            }
            if done { return true }
            if !sleep(on: .doneSeq, seen: seen, deadline: deadline, registeredIn: .waitingJoiners) { return false }
        }
    }
}
