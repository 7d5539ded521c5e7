import Foundation
import Glibc
import MultiprocessingTestSupport
import Testing
import Threading

@testable import Multiprocessing

// Functions and jobs for the pool tests (found by name in the workers, which run this test binary).

struct SquareFn: TaskFunction {
    func callAsFunction(_ x: Int) -> Int { x * x }
}

struct AddFn: TaskFunction2 {
    func callAsFunction(_ a: Int, _ b: Int) -> Int { a + b }
}

struct PidFn: TaskFunction {
    func callAsFunction(_ x: Int) -> Int32 { getpid() }
}

/// How a `Faulty` item ends its worker.
enum CrashMode: String, Codable, Sendable, CaseIterable {
    case trap, sigkill, sigsegv, exit
}

/// x*x, except that item `crashAt` writes a line to stderr and then kills its worker.
struct Faulty: TaskFunction {
    let crashAt: Int
    let mode: CrashMode
    func callAsFunction(_ x: Int) -> Int {
        if x == crashAt {
            let line = "faulty: crashing on \(x) by \(mode.rawValue)\n"
            _ = line.withCString { write(2, $0, strlen($0)) }
            switch mode {
            case .trap:
                let xs: [Int] = []
                return xs[x]
            case .sigkill: kill(getpid(), SIGKILL)
            case .sigsegv: UnsafeMutablePointer<Int>(bitPattern: 16)!.pointee = x  // a real fault
            case .exit: exit(3)
            }
        }
        return x * x
    }
}

/// Always kills its worker.
struct AlwaysCrash: TaskFunction {
    func callAsFunction(_ x: Int) -> Int {
        kill(getpid(), SIGKILL)
        return x
    }
}

/// Kills its worker the first time it runs (marker file), then succeeds.
struct CrashOnce: TaskFunction {
    let marker: String
    func callAsFunction(_ x: Int) -> Int {
        if firstTime(marker) {
            kill(getpid(), SIGKILL)
        }
        return x + 1000
    }
}

/// Throws the first time (marker file), then succeeds.
struct ThrowOnce: TaskFunction {
    let marker: String
    func callAsFunction(_ x: Int) throws -> Int {
        if firstTime(marker) {
            throw CodableFailure(reason: "first attempt")
        }
        return x
    }
}

/// Sleeps without looking at cancellation (a busy C call, as far as Swift can tell).
struct BlockingSleep: TaskFunction {
    func callAsFunction(_ ms: Int) -> Int {
        usleep(useconds_t(ms * 1000))
        return ms
    }
}

/// Creates the file at `marker` (the test waits for it: the item is running), then sleeps `ms` without
/// looking at cancellation.
struct MarkThenBlock: TaskFunction {
    let marker: String
    func callAsFunction(_ ms: Int) -> Int {
        close(open(marker, O_CREAT | O_WRONLY, 0o644))
        usleep(useconds_t(ms * 1000))
        return ms
    }
}

/// Creates the file at `marker` (the test waits for it: the item is running), then sleeps `ms`
/// cooperatively: cancellation ends it at once.
struct MarkThenSleep: TaskFunction {
    let marker: String
    func callAsFunction(_ ms: Int) async throws -> Int {
        close(open(marker, O_CREAT | O_WRONLY, 0o644))
        try await Task.sleep(for: .milliseconds(ms))
        return ms
    }
}

/// The resolution of the coarse clock a worker stamps its items' starts with: a deadline measured from
/// that stamp can fire up to this much before the item's true start plus its limit.
let coarseClockResolution: Duration = {
    var ts = timespec()
    clock_getres(CLOCK_MONOTONIC_COARSE, &ts)
    return .seconds(ts.tv_sec) + .nanoseconds(ts.tv_nsec)
}()

/// Whether the file at `path` exists (a `MarkThen…` item has started).
func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

/// A gate for items of an in-process pool: an item at the gate says it has started, then waits until the
/// test opens it, so the test decides when the item ends (no sleep stands in for "still running").
final class Gate: Sendable {
    let id = UInt64.random(in: 0...UInt64.max)
    /// Set by the item once it runs.
    let reached = Event()
    private let opened = Event()
    private static let all = Locked<[UInt64: Gate]>([:])

    init() { Gate.all.withLock { $0[id] = self } }

    /// Lets the item at the gate end (and forgets the gate).
    func open() {
        opened.set()
        _ = Gate.all.withLock { $0.removeValue(forKey: id) }
    }

    /// The item's side: says it has started, then waits for `open()`.
    static func pass(_ id: UInt64) async throws {
        guard let gate = all.withLock({ $0[id] }) else { return }  // opened already
        gate.reached.set()
        try await gate.opened.wait()
    }

    /// ``pass(_:)`` with the thread blocked (no suspension).
    static func passBlocking(_ id: UInt64) {
        guard let gate = all.withLock({ $0[id] }) else { return }
        gate.reached.set()
        _ = gate.opened.wait(timeout: .seconds(300))
    }
}

/// Waits at its gate with its thread blocked (its task has not suspended yet), then sleeps cooperatively
/// for ten minutes: a cancellation asked for while it waited ends the sleep at once.
struct BlocksAtGateThenSleeps: TaskFunction {
    let gate: UInt64
    func callAsFunction(_ x: Int) async throws -> Int {
        Gate.passBlocking(gate)
        try await Task.sleep(for: .seconds(600))
        return x
    }
}

/// Works until its task is cancelled, looking at `Task.isCancelled` only: never suspending (0) or
/// yielding each turn (1).
struct SpinsUntilCancelled: TaskFunction {
    func callAsFunction(_ yields: Int) async throws -> Int {
        while !Task.isCancelled {
            if yields != 0 { await Task.yield() }
        }
        throw CancellationError()
    }
}

/// Waits at its gate (``Gate``), then returns its input. For in-process pools only: gates are this
/// process's.
struct WaitsAtGate: TaskFunction {
    let gate: UInt64
    func callAsFunction(_ x: Int) async throws -> Int {
        try await Gate.pass(gate)
        return x
    }
}

/// Waits (at most `ms`) until the file at `log` has `lines` lines (a job polling a file: the test's own
/// waiting is on its results), then appends `x` as a line of its own.
func waitForLinesThenLog(_ log: String, lines: Int, ms: Int, _ x: Int) {
    let deadline = ContinuousClock.now + .milliseconds(ms)
    while lines > 0 && ContinuousClock.now < deadline {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        if text.utf8.count(where: { $0 == 10 }) >= lines { break }
        usleep(2_000)
    }
    let fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0o644)
    let line = Array("\(x)\n".utf8)
    _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

/// Appends `x` to the file at `log` (one line per run of an item). Item 0 first waits (at most `ms`,
/// without looking at cancellation) until the `count - 1` others have logged their runs; so it ends last
/// only if no other item waited behind it on its worker.
struct LoggedSlowZero: TaskFunction {
    let log: String
    let ms: Int
    let count: Int
    func callAsFunction(_ x: Int) -> Int {
        waitForLinesThenLog(log, lines: x == 0 ? count - 1 : 0, ms: ms, x)
        return x
    }
}

/// `LoggedSlowZero`'s synchronous twin, for a chunk's middle item: item `slow` waits (at most `ms`) until
/// `count - 2` other items have logged their runs (all but itself and the item after it in its chunk),
/// then logs its own. A synchronous function of `Int`s runs in the worker's raw-bytes loop, which stamps
/// no item but a unit's first with the clock.
struct LoggedSlowSync: SyncTaskFunction {
    let log: String
    let ms: Int
    let count: Int
    let slow: Int
    func callAsFunction(_ x: Int) -> Int {
        waitForLinesThenLog(log, lines: x == slow ? count - 2 : 0, ms: ms, x)
        return x
    }
}

/// Sleeps `x` ms and returns `x` (a synchronous function of `Int`s: the raw-bytes loop).
struct SleepsMs: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Int {
        usleep(useconds_t(x) * 1000)
        return x
    }
}

/// Items of multiples of 7 throw; others return `x * 3` (a raw-bytes chunk with failures in it).
struct TripleButSevens: SyncTaskFunction {
    struct Seven: Error, Codable, Equatable { let x: Int }
    func callAsFunction(_ x: Int) throws -> Int {
        if x % 7 == 0 { throw Seven(x: x) }
        return x * 3
    }
}

/// Item `last` waits (up to `ms`) for the file `path` to exist and returns `last`, or -1 if it did not
/// appear; every other item sleeps 50 µs and returns `x` (a long chunk of raw bytes, whose results must
/// stream back while it runs).
struct GatedLastItem: SyncTaskFunction {
    let path: String
    let last: Int
    let ms: Int
    func callAsFunction(_ x: Int) -> Int {
        guard x == last else {
            usleep(50)
            return x
        }
        let deadline = ContinuousClock.now + .milliseconds(ms)
        while ContinuousClock.now < deadline {
            if access(path, F_OK) == 0 { return x }
            usleep(2_000)  // a job polling a file: the test's own waiting is on its results
        }
        return -1
    }
}

/// Item 0 returns at once; item `x` > 0 waits (up to `ms`) for the file `path.x` to exist, and returns
/// `x` if it appeared, -1 if it did not.
struct AwaitsFile: TaskFunction {
    let path: String
    let ms: Int
    func callAsFunction(_ x: Int) -> Int {
        guard x != 0 else { return 0 }
        let deadline = ContinuousClock.now + .milliseconds(ms)
        while ContinuousClock.now < deadline {
            if access("\(path).\(x)", F_OK) == 0 { return x }
            usleep(2_000)  // a job polling a file: the test's own waiting is on its results
        }
        return -1
    }
}

/// Sleeps cooperatively: cancellation ends it at once.
struct CooperativeSleep: TaskFunction {
    func callAsFunction(_ ms: Int) async throws -> Int {
        try await Task.sleep(for: .milliseconds(ms))
        return ms
    }
}

/// The name of the thread an item runs on, with " moved" when it is not the same thread after a timer
/// and a yield.
struct ThreadAcrossSuspensions: TaskFunction {
    func callAsFunction(_ x: Int) async throws -> String {
        let before = pthread_self()
        try await Task.sleep(for: .milliseconds(1))
        await Task.yield()
        return OSThread.current.name + (pthread_equal(before, pthread_self()) != 0 ? "" : " moved")
    }
}

/// Throws a Codable error for multiples of 7.
struct SevensThrow: TaskFunction {
    func callAsFunction(_ x: Int) throws -> Int {
        if x % 7 == 0 { throw CodableFailure(reason: "\(x) is a multiple of 7") }
        return x
    }
}

struct NotEncodable: Codable, Sendable {
    let x: Int
    func encode(to encoder: any Encoder) throws {
        throw EncodingError.invalidValue(x, .init(codingPath: [], debugDescription: "never encodable"))
    }
}

/// Returns a value that cannot be encoded for odd inputs.
struct UnencodableOdd: TaskFunction {
    func callAsFunction(_ x: Int) -> NotEncodable { NotEncodable(x: x) }
}

/// Keeps `megabytes` of touched memory alive in the worker, returns its pid.
struct Hog: TaskFunction {
    nonisolated(unsafe) static var kept: [[UInt8]] = []
    func callAsFunction(_ megabytes: Int) -> Int32 {
        Hog.kept.append([UInt8](repeating: 1, count: megabytes << 20))
        return getpid()
    }
}

/// Sets a marker in the worker (the initializer); `ReadInit` reads it.
struct SetInit: Job {
    let value: String
    nonisolated(unsafe) static var value = ""
    func run() -> NoOutput {
        SetInit.value = value
        return NoOutput()
    }
}

struct ReadInit: TaskFunction {
    func callAsFunction(_ x: Int) -> String { "\(SetInit.value)-\(x)" }
}

struct FailingInit: Job {
    func run() throws -> NoOutput { throw CodableFailure(reason: "initializer refuses") }
}

/// Writes garbage on the worker's channel to the parent (fd 3): a worker that breaks the protocol.
struct GarbageWriter: TaskFunction {
    func callAsFunction(_ x: Int) -> Int {
        var junk: [UInt8] = [0xFF, 0xFF, 0xFF, 0xF0, 1, 2, 3]  // a negative frame length
        _ = write(3, &junk, junk.count)
        usleep(2_000_000)
        return x
    }
}

/// Ignores SIGTERM, then sleeps: only SIGKILL stops it.
struct IgnoresSIGTERM: TaskFunction {
    func callAsFunction(_ ms: Int) -> Int {
        signal(SIGTERM, SIG_IGN)
        usleep(useconds_t(ms * 1000))
        return ms
    }
}

/// An input whose encoding fails for `x == 5`.
struct Fragile: Codable, Sendable {
    let x: Int
    init(_ x: Int) { self.x = x }
    func encode(to encoder: any Encoder) throws {
        if x == 5 { throw EncodingError.invalidValue(x, .init(codingPath: [], debugDescription: "5 cannot travel")) }
        var c = encoder.singleValueContainer()
        try c.encode(x)
    }
    init(from decoder: any Decoder) throws { x = try decoder.singleValueContainer().decode(Int.self) }
}

/// Synchronous (`SyncTaskFunction`): an in-process pool runs it on its own threads. As a plain
/// `TaskFunction` each item waited for a thread of the cooperative pool, which the suite's blocking
/// tests can hold both of on two cores: the in-process half of the encoding test then timed out under
/// load (`scripts/stress-tests`, 2 runs of 2).
struct FragileFn: SyncTaskFunction {
    func callAsFunction(_ input: Fragile) -> Int { input.x }
}

/// 0..<n with no length known in advance (underestimatedCount 0): the pool must grow its chunks itself.
struct UnknownLength: Sequence, Sendable {
    let n: Int
    struct Iterator: IteratorProtocol {
        var i = 0
        let n: Int
        mutating func next() -> Int? {
            defer { i += 1 }
            return i < n ? i : nil
        }
    }
    func makeIterator() -> Iterator { Iterator(n: n) }
}

/// The size of a byte array, and the array back (payloads larger than a socket buffer both ways).
struct EchoBytes: SyncTaskFunction {
    func callAsFunction(_ bytes: [UInt8]) -> [UInt8] { bytes }
}

/// Returns `n` bytes: an item whose result can exceed the pool's frame limit.
struct Bytes: TaskFunction {
    func callAsFunction(_ n: Int) -> [UInt8] { [UInt8](repeating: 7, count: n) }
}

/// An input that the worker cannot decode when `x == 5` (it encodes fine).
struct Brittle: Codable, Sendable {
    let x: Int
    init(_ x: Int) { self.x = x }
    init(from decoder: any Decoder) throws {
        x = try decoder.singleValueContainer().decode(Int.self)
        if x == 5 { throw CodableFailure(reason: "5 cannot be decoded") }
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(x)
    }
}

struct BrittleFn: TaskFunction {
    func callAsFunction(_ input: Brittle) -> Int { input.x * 10 }
}

/// Item `badAt` writes a frame header announcing more than the pool accepts onto the worker's channel,
/// then returns at once: the parent kills the worker for it, most often once the item is over.
struct BadFrameAfterItem: TaskFunction {
    let badAt: Int
    func callAsFunction(_ x: Int) -> Int {
        if x == badAt {
            var header: [UInt8] = [0x7F, 0xFF, 0xFF, 0xFF]
            _ = write(3, &header, 4)
        }
        return x
    }
}

/// Sleeps `ms` the first time (marker file), then returns at once: a task that times out once.
struct SlowOnce: TaskFunction {
    let marker: String
    func callAsFunction(_ ms: Int) -> Int {
        if firstTime(marker) {
            usleep(useconds_t(ms * 1000))
        }
        return -ms
    }
}

/// Starts a pool of 8 workers, makes them all busy for 10 s, says so on `ready`, then ends the program
/// with `exit(0)`: the at-exit clean-up must stop and reap the 8 busy workers quickly.
struct ExitWithBusyPool: Job {
    let ready: Connection
    func run() throws -> Int {
        let pool = try ProcessPool(workers: 8, options: testPoolOptions())
        for _ in 0..<8 { _ = try pool.submit(BlockingSleep(), 10_000) }
        try eventually("all 8 workers are running their task") { pool.core.busyWorkers == 8 }
        try ready.send(pool.workerPIDs)
        exit(0)
    }
}

/// Writes a 'resend' reply for the unit it runs (as a worker that could not decode it would), then
/// answers: a worker that asks again for a unit already sent alone breaks the protocol.
struct AsksToResend: TaskFunction {
    func callAsFunction(_ x: Int) -> Int {
        let unit = PoolWorker.slot.running.unit
        var frame: [UInt8] = [0, 0, 0, 9, PoolWire.resend]
        withUnsafeBytes(of: unit.littleEndian) { frame.append(contentsOf: $0) }
        _ = write(3, &frame, frame.count)
        return x
    }
}

/// Whether this is the first call with `marker` (a file it creates): for tasks that fail once.
func firstTime(_ marker: String) -> Bool {
    guard access(marker, F_OK) != 0 else { return false }
    close(open(marker, O_CREAT | O_WRONLY, 0o644))
    return true
}

/// A result the parent cannot decode when it is 13 (the worker encodes it as any other).
struct Picky: Codable, Sendable, Equatable {
    let v: Int
    init(_ v: Int) { self.v = v }
    init(from decoder: any Decoder) throws {
        v = try decoder.singleValueContainer().decode(Int.self)
        if v == 13 { throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "13 is refused")) }
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(v)
    }
}

struct PickyFn: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Picky { Picky(x) }
}

/// `Picky(x)`, after sleeping `x` ms when `x` is over 1,000 (the slow item of a map).
struct SlowPickyFn: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Picky {
        if x > 1000 { usleep(useconds_t(x) * 1000) }
        return Picky(x)
    }
}

/// Results of each raw-bytes width: a `Bool`, a `Double`, an `Int8`.
struct ParityFn: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Bool { x % 2 == 0 }
}

struct HalfFn: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Double { Double(x) / 2 }
}

struct LowByteFn: SyncTaskFunction {
    func callAsFunction(_ x: Int) -> Int8 { Int8(truncatingIfNeeded: x) }
}
