import Foundation
import Multiprocessing

// The `shared` suite: the workloads of ../shared/bench/python/shared_mem.py, same names with `_swift`.

private let I = 100_000
private let SIZE = 256 << 20

/// Nanoseconds on CLOCK_MONOTONIC (the same clock in every process).
private func monoNanos() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// `I` increments of `v` under its lock once `go` is set; returns the end time.
struct LockedIncrements: Job {
    let v: SharedValue<Int32>
    let ready: RawSharedValue<Int32>
    let go: RawSharedValue<Int32>
    func run() throws -> Int64 {
        ready.add(1)
        while go.load() == 0 {}
        for _ in 0..<I { try v.withLock { $0 += 1 } }
        return monoNanos()
    }
}

/// `I` atomic increments once `go` is set; returns the end time.
struct AtomicIncrements: Job {
    let v: RawSharedValue<Int32>
    let ready: RawSharedValue<Int32>
    let go: RawSharedValue<Int32>
    func run() -> Int64 {
        ready.add(1)
        while go.load() == 0 {}
        for _ in 0..<I { v.add(1) }
        return monoNanos()
    }
}

/// Writes `SIZE` bytes of 0x5a into the named segment twice (cold, then warm); returns the 4 times.
struct ShmWriter: Job {
    let shm: SharedMemory
    func run() -> [Int64] {
        // A page-aligned source, as the C reference's (an Array's elements sit 32 bytes into its block).
        let src = UnsafeMutableRawBufferPointer.allocate(byteCount: SIZE, alignment: 4096)
        defer { src.deallocate() }
        memset(src.baseAddress!, 0x5a, SIZE)
        let t0 = monoNanos()
        shm.buffer.copyMemory(from: UnsafeRawBufferPointer(src))
        let t1 = monoNanos()
        let t2 = monoNanos()
        shm.buffer.copyMemory(from: UnsafeRawBufferPointer(src))
        let t3 = monoNanos()
        return [t0, t1, t2, t3]
    }
}

private func twoProcesses<J: Job>(_ make: (RawSharedValue<Int32>, RawSharedValue<Int32>) -> J) throws -> Double
where J.Output == Int64 {
    let ready = try RawSharedValue<Int32>(0)
    let go = try RawSharedValue<Int32>(0)
    let ps = (0..<2).map { _ in ChildProcess(job: make(ready, go)) }
    for p in ps { try p.start() }
    while ready.load() < 2 { usleep(100) }
    let t0 = monoNanos()
    go.store(1)
    let t1 = try ps.map { try $0.result(timeout: .seconds(120)) }.max()!
    for p in ps { _ = try p.join(timeout: .seconds(10)) }
    return Double(2 * I) / (Double(t1 - t0) / 1e9)
}

func runSharedSuite(_ only: Set<String>) throws {
    func want(_ n: String) -> Bool { only.isEmpty || only.contains(n) }
    if want("value_lock_2proc") {
        var v: [Double] = []
        for _ in 0..<REPS {
            let value = try SharedValue<Int32>(0)
            v.append(try twoProcesses { LockedIncrements(v: value, ready: $0, go: $1) })
            precondition(value.value == Int32(2 * I), "lost increments: \(value.value)")
        }
        report("value_lock_2proc_swift", v, "ops/s", digits: 0)
    }
    if want("value_lock_1proc") {
        var v: [Double] = []
        for _ in 0..<REPS {
            let value = try SharedValue<Int32>(0)
            let t0 = now()
            for _ in 0..<(2 * I) { try value.withLock { $0 += 1 } }
            v.append(Double(2 * I) / (now() - t0))
            precondition(value.value == Int32(2 * I))
        }
        report("value_lock_1proc_swift", v, "ops/s", digits: 0)
    }
    if want("atomic_add_2proc") {
        var v: [Double] = []
        for _ in 0..<REPS {
            let value = try RawSharedValue<Int32>(0)
            v.append(try twoProcesses { AtomicIncrements(v: value, ready: $0, go: $1) })
            precondition(value.load() == Int32(2 * I))
        }
        report("atomic_add_2proc_swift", v, "ops/s", digits: 0)
    }
    if want("shm") {
        var dst = [UInt8](repeating: 0x5a, count: SIZE)  // pre-touched private destination
        var runs: [[Double]] = []
        for _ in 0..<REPS {
            let shm = try SharedMemory(create: SIZE)
            defer {
                try? shm.unlink()
                shm.close()
            }
            dst[0] = 0
            dst[SIZE - 1] = 0
            let p = ChildProcess(job: ShmWriter(shm: shm))
            try p.start()
            let t = try p.result(timeout: .seconds(120))
            let t4 = monoNanos()
            dst.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(shm.buffer)) }
            let t5 = monoNanos()
            let t6 = monoNanos()
            dst.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(shm.buffer)) }
            let t7 = monoNanos()
            _ = try p.join(timeout: .seconds(10))
            precondition(dst[0] == 0x5a && dst[SIZE - 1] == 0x5a)
            func gbs(_ ns: Int64) -> Double { Double(SIZE) / (Double(ns) / 1e9) / 1e9 }
            runs.append([gbs(t[1] - t[0]), gbs(t[3] - t[2]), gbs(t5 - t4), gbs(t7 - t6), gbs(t[1] - t[0] + t5 - t4)])
        }
        let names = ["shm_write_cold", "shm_write_warm", "shm_read_cold", "shm_read_warm", "shm_write_read"]
        for (i, n) in names.enumerated() { report(n + "_swift", runs.map { $0[i] }, "GB/s", digits: 2) }
    }
}
