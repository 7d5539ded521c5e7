import Glibc
import MultiprocessingTestSupport
import Testing
import Threading

@testable import Multiprocessing

// Jobs for the shared-state tests: they run in other processes and use the memory they were sent.

/// The seed's `f(n, a)`: `n.value = 3.1415927`, then every element negated.
struct NegateAll: Job {
    let n: SharedValue<Double>
    let a: SharedArray<Int32>
    func run() -> NoOutput {
        n.value = 3.1415927
        for i in a.indices { a[i] = -a[i] }
        return NoOutput()
    }
}

/// `times` increments of `v` under its lock, after `start` is set.
struct IncrementUnderLock: Job {
    let v: SharedValue<Int>
    let start: RawSharedValue<Int32>
    let times: Int
    func run() -> NoOutput {
        while start.load() == 0 { sched_yield() }
        for _ in 0..<times { try! v.withLock { $0 += 1 } }
        return NoOutput()
    }
}

/// `times` atomic additions to `v`.
struct AtomicIncrement: Job {
    let v: RawSharedValue<Int64>
    let times: Int
    func run() -> NoOutput {
        for _ in 0..<times { v.add(1) }
        return NoOutput()
    }
}

/// Which lock a `HoldAndHang` takes.
enum AnyProcessLock: Codable, Sendable {
    case lock(ProcessLock)
    case rlock(ProcessRLock)
    case value(SharedValue<Int>)
}

/// Takes the lock, says so in `held`, and hangs (to be SIGKILLed holding it).
struct HoldAndHang: Job {
    let lock: AnyProcessLock
    let held: RawSharedValue<Int32>
    func run() -> NoOutput {
        switch lock {
        case .lock(let l): l.acquire()
        case .rlock(let l): l.acquire()
        case .value(let v): v.lock.acquire()
        }
        held.store(1)
        while true { sleep(60) }  // until the test SIGKILLs it
    }
}

/// Writes its process id at `index` of `a` (run on a pool worker).
struct StampPid: Job {
    let a: RawSharedArray<Int64>
    let index: Int
    func run() -> Int32 {
        a[index] = Int64(getpid())
        return getpid()
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct SharedStateTests {
    @Test func theSeedsValueAndArrayAreChangedByTheChild() throws {
        let n = try SharedValue<Double>(0.0)
        let a = try SharedArray<Int32>((0..<10).map(Int32.init))
        let p = ChildProcess(job: NegateAll(n: n, a: a))
        try p.start()
        _ = try p.result(timeout: .seconds(30))
        #expect(try p.join(timeout: .seconds(10)))
        #expect(n.value == 3.1415927)
        #expect("\(n.value)" == "3.1415927")
        #expect(Array(a) == [0, -1, -2, -3, -4, -5, -6, -7, -8, -9])
        #expect("\(a.toArray())" == "[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]")
    }

    @Test func twoProcessesIncrementingUnderTheLockCountExactly() throws {
        let v = try SharedValue<Int>(0)
        let start = try RawSharedValue<Int32>(0)
        let times = 1_000_000
        let ps = (0..<2).map { _ in ChildProcess(job: IncrementUnderLock(v: v, start: start, times: times)) }
        for p in ps { try p.start() }
        start.store(1)
        for p in ps {
            _ = try p.result(timeout: .seconds(120))
            #expect(try p.join(timeout: .seconds(10)))
        }
        #expect(v.value == 2 * times)
        #expect(v.lock.deadOwnerCount == 0)
    }

    @Test func atomicAddsFromTwoProcessesCountExactly() throws {
        let v = try RawSharedValue<Int64>(0)
        let ps = (0..<2).map { _ in ChildProcess(job: AtomicIncrement(v: v, times: 1_000_000)) }
        for p in ps { try p.start() }
        for p in ps { _ = try p.result(timeout: .seconds(120)) }
        #expect(v.load() == 2_000_000)
        #expect(v.compareExchange(expected: 2_000_000, desired: 7) == (true, 2_000_000))
        #expect(v.compareExchange(expected: 2_000_000, desired: 8) == (false, 7))
    }

    /// A process SIGKILLed while holding each kind of lock: the next acquirer gets it, told so, within
    /// its timeout — before and after the dead holder is reaped.
    @Test(arguments: ["lock", "rlock", "value"])
    func aHolderKilledWhileHoldingTheLockIsDetected(kind: String) throws {
        let held = try RawSharedValue<Int32>(0)
        let value = try SharedValue<Int>(41)
        let lock: AnyProcessLock =
            switch kind {
            case "lock": .lock(try ProcessLock())
            case "rlock": .rlock(try ProcessRLock())
            default: .value(value)
            }
        let p = ChildProcess(job: HoldAndHang(lock: lock, held: held))
        try p.start()
        try eventually("the child holds the lock") { held.load() != 0 }
        // Held by the child: a timed acquire times out.
        let outcome: LockOutcome
        switch lock {
        case .lock(let l): outcome = l.acquire(timeout: .milliseconds(100))
        case .rlock(let l): outcome = l.acquire(timeout: .milliseconds(100))
        case .value(let v): outcome = v.lock.acquire(timeout: .milliseconds(100))
        }
        #expect(outcome == .timedOut)
        p.kill()  // not reaped yet: the holder is a zombie while we wait
        var repaired = false
        let waited = try elapsed {
            switch lock {
            case .lock(let l):
                #expect(l.acquire(timeout: .seconds(30)) == .acquiredFromDeadOwner)
                #expect(l.owner == getpid())
                try l.release()
                #expect(l.deadOwnerCount == 1)
                #expect(l.acquire(timeout: .seconds(1)) == .acquired)
                try l.release()
            case .rlock(let l):
                #expect(l.acquire(timeout: .seconds(30)) == .acquiredFromDeadOwner)
                #expect(l.acquire(timeout: .seconds(1)) == .acquired)  // re-entrant for us now
                try l.release()
                try l.release()
                #expect(!l.isLocked)
            case .value(let v):
                try v.withLock(
                    timeout: .seconds(30),
                    ownerDied: { x in
                        repaired = true
                        x = 0
                    }
                ) { $0 += 1 }
                #expect(v.value == 1)
            }
        }
        // Taken over well before the timeout (a waiter checks the owner every 20 ms), not at it; the margin
        // is for a machine loaded by other suites.
        #expect(waited < .seconds(15))
        if kind == "value" { #expect(repaired) }
        #expect(try p.join(timeout: .seconds(10)))
    }

    @Test func timedAcquireWaitsAboutItsTimeout() throws {
        let lock = try ProcessLock()
        let held = try RawSharedValue<Int32>(0)
        let p = ChildProcess(job: HoldAndHang(lock: .lock(lock), held: held))
        try p.start()
        defer {
            p.kill()
            _ = try? p.join(timeout: .seconds(10))
        }
        try eventually("the child holds the lock") { held.load() != 0 }
        let t = elapsed { #expect(lock.acquire(timeout: .milliseconds(300)) == .timedOut) }
        // Not before the timeout; the upper bound only says it did not hang (other suites load the machine).
        #expect(t >= .milliseconds(290))
        #expect(t < .seconds(20))
        #expect(lock.acquire(timeout: .zero) == .timedOut)
        #expect(throws: MultiprocessingError.self) { try lock.release() }  // not ours
        #expect(throws: MultiprocessingError.self) { try lock.withLock(timeout: .milliseconds(10)) {} }
    }

    @Test func asyncAcquireWaitsWithoutBlockingAndHonoursCancellation() async throws {
        let lock = try ProcessLock()
        try await lock.acquire()
        let waiter = Task { try await lock.acquire(timeout: .seconds(30)) }
        try await eventually("the waiter sleeps on the lock") { () async in
            KernelView.aThreadSleepsOnFutex(in: lock.place.segment)
        }
        try lock.release()
        #expect(try await waiter.value == .acquired)
        // Now held (by this process, for the task): another task's wait can be cancelled.
        let cancelled = Task { try await lock.acquire() }
        try await eventually("the second waiter sleeps on the lock") { () async in
            KernelView.aThreadSleepsOnFutex(in: lock.place.segment)
        }
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        try lock.release()
        #expect(!lock.isLocked)
        let r = try ProcessRLock()
        #expect(try await r.acquire() == .acquired)
        #expect(try await r.acquire() == .acquired)
        try r.release()
        try r.release()
        #expect(!r.isLocked)
    }

    @Test func poolWorkersSeeTheSameMemory() throws {
        let a = try RawSharedArray<Int64>(repeating: 0, count: 8)
        try withTestPool(workers: 2) { pool in
            let tasks = try (0..<8).map { try pool.submit(StampPid(a: a, index: $0)) }
            let pids = try tasks.map { try $0.get(timeout: .seconds(30)) }
            #expect(Array(a) == pids.map(Int64.init))
            #expect(!pids.contains(getpid()))
            pool.close()
            #expect(try pool.join(timeout: .seconds(30)))
        }
    }

    @Test func aSegmentDecodesAsTheSameMemoryAndChecksItsType() throws {
        let v = try SharedValue<Int64>(5)
        let bytes = try BinaryEncoder().encode(v)
        let again = try BinaryDecoder().decode(SharedValue<Int64>.self, from: bytes)
        again.value = 6
        #expect(v.value == 6)
        #expect(again.segment.isSameMemory(as: v.segment))
        #expect(throws: MultiprocessingError.self) { try BinaryDecoder().decode(SharedValue<Int8>.self, from: bytes) }
        let three = try BinaryEncoder().encode(try SharedArray<Int64>([1, 2, 3]))
        #expect(throws: MultiprocessingError.self) { try BinaryDecoder().decode(SharedValue<Int64>.self, from: three) }
        #expect(try BinaryDecoder().decode(SharedArray<Int64>.self, from: bytes).count == 1)
        #expect(throws: MultiprocessingError.self) { try SharedSegment(size: 0) }
    }

    @Test func aSegmentWhoseHolderLetGoCannotBeAttached() throws {
        var bytes: [UInt8] = []
        do {
            let gone = try SharedArray<Int32>(repeating: 1, count: 4)
            bytes = try BinaryEncoder().encode(gone)
        }
        // Another file may now have the descriptor's number: the inode check catches it.
        let other = try SharedSegment(size: 4096)
        #expect(throws: MultiprocessingError.self) { try BinaryDecoder().decode(SharedArray<Int32>.self, from: bytes) }
        _ = other
    }

    /// Every descriptor a segment opened is closed once the segment is gone (checked by number and
    /// inode, as other suites open and close descriptors meanwhile).
    @Test func segmentsLeaveNoDescriptorsBehind() throws {
        var used: [(fd: Int32, inode: Int)] = []
        for _ in 0..<50 {
            let v = try SharedValue<Int>(1)
            let copy = try BinaryDecoder().decode(SharedValue<Int>.self, from: try BinaryEncoder().encode(v))
            copy.value += 1
            let a = try RawSharedArray<UInt8>(repeating: 0, count: 100_000)
            a[99_999] = 1
            let l = try ProcessLock()
            for s in [v.segment, copy.segment, a.segment, l.place.segment] { used.append((s.fd, s.inode)) }
        }
        #expect(Set(used.map(\.fd)).count >= 4)
        for (fd, inode) in used {
            let stillOpen = (try? Syscall.inode(fd)) == inode
            #expect(!stillOpen, "descriptor \(fd) of a dropped segment is still open")
        }
    }

    @Test func arraysHaveBulkAndSliceAccess() throws {
        let a = try SharedArray<Int>(repeating: 0, count: 6)
        a[slice: 1..<4] = [7, 8, 9]
        #expect(a[slice: 0..<5] == [0, 7, 8, 9, 0])
        try a.replaceAll(with: [1, 2, 3, 4, 5, 6])
        #expect(a.reduce(0, +) == 21)
        #expect(throws: MultiprocessingError.self) { try a.replaceAll(with: [1]) }
        try a.withLock { buf in for i in buf.indices { buf[i] *= 10 } }
        #expect(a.toArray() == [10, 20, 30, 40, 50, 60])
        #expect(a.add(5, at: 0) == 10)
        #expect(a[0] == 15)
        // Python's idiom: the value's own lock is re-entrant.
        let v = try SharedValue<Int>(0)
        try v.lock.withLock { v.value += 1 }
        #expect(v.value == 1)
    }
}

/// Creates a named segment (tracked), publishes its name and its tracker's pid, and hangs (to be
/// SIGKILLed without unlinking it).
struct CreateNamedAndHang: Job {
    let persistent: Bool
    let name: RawSharedArray<UInt8>
    let tracker: RawSharedValue<Int32>
    func run() throws -> NoOutput {
        let shm = try SharedMemory(create: 4096, persistent: persistent)
        shm.buffer.storeBytes(of: 42, as: UInt64.self)
        for (i, b) in shm.name.utf8.enumerated() { name[i] = b }
        tracker.store(SegmentTracker.pid ?? -1)
        while true { sleep(60) }  // until the test SIGKILLs it
    }
}

/// Writes `value` at the start of a named segment it was sent.
struct WriteNamed: Job {
    let shm: SharedMemory
    let value: UInt64
    func run() -> UInt64 {
        let old = shm.buffer.load(as: UInt64.self)
        shm.buffer.storeBytes(of: value, as: UInt64.self)
        return old
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct NamedSharedMemoryTests {
    func exists(_ name: String) -> Bool { access("/dev/shm/" + name, F_OK) == 0 }

    @Test func createAttachCloseUnlink() throws {
        let shm = try SharedMemory(create: 10_000)
        #expect(shm.name.hasPrefix("mp_"))
        #expect(exists(shm.name))
        let ints = try shm.view(as: Int32.self)
        #expect(ints.count == 2_500)
        ints[7] = -7
        let other = try SharedMemory(attach: "/" + shm.name)  // Python's names may start with a slash
        #expect(other.size == 10_000)
        #expect(try other.view(as: Int32.self)[7] == -7)
        other.close()
        other.close()  // idempotent
        #expect(throws: MultiprocessingError.self) { try SharedMemory(create: 10, name: shm.name) }  // exists
        try shm.unlink()
        #expect(!exists(shm.name))
        #expect(throws: MultiprocessingError.self) { try SharedMemory(attach: shm.name) }
        #expect(throws: MultiprocessingError.self) { try shm.view(as: UInt64.self, offset: 4) }  // misaligned
        #expect(throws: MultiprocessingError.self) { try SharedMemory(attach: "../etc/passwd") }
        #expect(throws: MultiprocessingError.self) { try SharedMemory(create: 0) }
    }

    @Test func pythonAttachesToOurSegmentByName() throws {
        let shm = try SharedMemory(create: 64)
        defer { try? shm.unlink() }
        Array("hello from swift".utf8).withUnsafeBytes { shm.buffer.copyMemory(from: $0) }
        let script = """
            import sys
            from multiprocessing import shared_memory, resource_tracker
            shm = shared_memory.SharedMemory(sys.argv[1])
            resource_tracker.unregister(shm._name, "shared_memory")  # 3.11 registers on attach (gh-82300)
            print(bytes(shm.buf[:16]).decode())
            shm.buf[0:5] = b"HELLO"
            shm.close()
            """
        let (code, out) = try runPython(script, [shm.name])
        #expect(code == 0)
        #expect(out.contains("hello from swift"))
        #expect(String(decoding: UnsafeRawBufferPointer(rebasing: shm.buffer[0..<5]), as: UTF8.self) == "HELLO")
    }

    @Test func aSegmentTravelsInAJobByName() throws {
        let shm = try SharedMemory(create: 4096)
        defer { try? shm.unlink() }
        shm.buffer.storeBytes(of: 5, as: UInt64.self)
        let p = ChildProcess(job: WriteNamed(shm: shm, value: 9))
        try p.start()
        #expect(try p.result(timeout: .seconds(30)) == 5)
        #expect(shm.buffer.load(as: UInt64.self) == 9)
        #expect(try p.join(timeout: .seconds(10)))
    }

    /// The creator is SIGKILLed without unlinking: its tracker removes the segment; a persistent one
    /// stays.
    @Test(arguments: [false, true])
    func aKilledCreatorsSegmentIsRemoved(persistent: Bool) throws {
        try Processes.adoptOrphans()  // the tracker outlives its creator: reap it here, not as a zombie
        let name = try RawSharedArray<UInt8>(repeating: 0, count: 64)
        let tracker = try RawSharedValue<Int32>(0)
        let p = ChildProcess(job: CreateNamedAndHang(persistent: persistent, name: name, tracker: tracker))
        try p.start()
        try eventually("the child created the segment") { tracker.load() != 0 }
        let segment = String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
        #expect(exists(segment))
        let attached = try SharedMemory(attach: segment)
        #expect(attached.buffer.load(as: UInt64.self) == 42)
        if !persistent { #expect(kill(tracker.load(), 0) == 0, "the tracker runs") }
        p.kill()
        #expect(try p.join(timeout: .seconds(10)))
        if persistent {
            #expect(tracker.load() == -1)  // no tracker was started
            usleep(100_000)  // the sleep is the subject: nothing removes it meanwhile (its creator is dead)
            #expect(exists(segment))
            try attached.unlink()
        } else {
            try eventually("the tracker removed the segment") { !exists(segment) }
            #expect(Processes.reapAdoptedOrphan(tracker.load(), timeout: .seconds(5)))
            // Unlinked, not unmapped: this process still uses the memory it has.
            #expect(attached.buffer.load(as: UInt64.self) == 42)
        }
    }
}
