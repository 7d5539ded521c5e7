// What the kernel shows of this process's threads and descriptors (and of its children's threads), read
// from /proc: how a test waits until another thread or process is *blocked* in a call where the library
// keeps no counter of its own waiters (process-shared primitives, the reactor). Linux only.
import Glibc
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Testing
import Threading

@testable import Multiprocessing

enum KernelView {
    /// System calls a test waits for a thread to block in.
    enum Call {
        /// A futex wait (locks, semaphores, events, conditions, queues in shared memory).
        case futex
        /// A socket receive.
        case recvmsg
        /// `poll` (or `ppoll`).
        case poll
        /// `nanosleep` or `clock_nanosleep` (`usleep`, `sleep`).
        case sleep

        var numbers: Set<Int> {
            #if arch(x86_64)
            switch self {
            case .futex: [202]
            case .recvmsg: [47]
            case .poll: [7, 271]
            case .sleep: [35, 230]
            }
            #elseif arch(arm64)
            switch self {
            case .futex: [98]
            case .recvmsg: [212]
            case .poll: [73]
            case .sleep: [101, 115]
            }
            #else
            #error("KernelView: system call numbers for this architecture")
            #endif
        }
    }

    /// The system call that thread `tid` of process `pid` is blocked in (its number and arguments), or
    /// nil while it runs (or has ended).
    static func blockedCall(pid: Int32 = getpid(), tid: Int32) -> (number: Int, arguments: [UInt64])? {
        // "running" while on a CPU; "-1 sp pc" when blocked outside a system call; else "nr a0 .. a5 sp pc".
        guard let text = read("/proc/\(pid)/task/\(tid)/syscall") else { return nil }
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard let first = fields.first, let number = Int(first), number >= 0 else { return nil }
        let arguments = fields.dropFirst().prefix(6).compactMap { UInt64($0.dropFirst(2), radix: 16) }
        return (number, arguments)
    }

    /// Whether thread `tid` of process `pid` is blocked in `call`.
    static func isBlocked(pid: Int32 = getpid(), tid: Int32, in call: Call) -> Bool {
        blockedCall(pid: pid, tid: tid).map { call.numbers.contains($0.number) } ?? false
    }

    /// Whether some thread of process `pid` is blocked in `call`.
    static func aThreadIsBlocked(pid: Int32, in call: Call) -> Bool {
        threads(of: pid).contains { isBlocked(pid: pid, tid: $0, in: call) }
    }

    /// Whether some thread of process `pid` sleeps in a futex wait on a shared (not process-private) word:
    /// where a primitive in shared memory waits (a thread's private locks use private futexes).
    static func aThreadSleepsOnASharedFutex(pid: Int32) -> Bool {
        threads(of: pid).contains { tid in
            guard let call = blockedCall(pid: pid, tid: tid), Call.futex.numbers.contains(call.number),
                call.arguments.count > 1
            else { return false }
            let op = call.arguments[1]
            return op & 128 == 0 && (op & 127 == 0 || op & 127 == 9)  // FUTEX_WAIT or _BITSET, not PRIVATE
        }
    }

    /// Whether some thread of this process sleeps in a futex wait on a word in `start ..< start + count`.
    static func aThreadSleepsOnFutex(in start: UnsafeRawPointer, count: Int) -> Bool {
        let low = UInt64(UInt(bitPattern: start))
        let range = low..<low + UInt64(count)
        return threads(of: getpid()).contains { tid in
            guard let call = blockedCall(tid: tid), Call.futex.numbers.contains(call.number),
                let address = call.arguments.first
            else { return false }
            return range.contains(address)
        }
    }

    /// Whether some thread of this process sleeps in a futex wait on a word of `segment` (where a
    /// process-shared primitive keeps its state).
    static func aThreadSleepsOnFutex(in segment: SharedSegment) -> Bool {
        aThreadSleepsOnFutex(in: segment.baseAddress, count: segment.size)
    }

    /// Whether an epoll instance of this process (the reactor's) has the file `inode` armed for input:
    /// a task waits on it (the reactor arms a descriptor one-shot, for the tasks waiting on it).
    static func epollWaitsForInput(onInode inode: UInt64) -> Bool {
        for fd in descriptors() where link("/proc/self/fd/\(fd)") == "anon_inode:[eventpoll]" {
            guard let info = read("/proc/self/fdinfo/\(fd)") else { continue }
            // tfd:        7 events:       19 data:                7  pos:0 ino:1bab34 sdev:9
            for line in info.split(separator: "\n") where line.hasPrefix("tfd:") {
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                guard let e = f.firstIndex(of: "events:"), e + 1 < f.count,
                    let events = UInt32(f[e + 1], radix: 16),
                    let i = f.first(where: { $0.hasPrefix("ino:") }), UInt64(i.dropFirst(4), radix: 16) == inode
                else { continue }
                if events & 0x001 != 0 { return true }  // EPOLLIN
            }
        }
        return false
    }

    /// Whether a task of this process waits in the reactor for `fd` to become readable.
    static func epollWaitsForInput(on fd: Int32) -> Bool {
        inode(of: fd).map { epollWaitsForInput(onInode: $0) } ?? false
    }

    /// The inode of an open descriptor.
    static func inode(of fd: Int32) -> UInt64? {
        var st = stat()
        return fstat(fd, &st) == 0 ? UInt64(st.st_ino) : nil
    }

    /// The inode of the TCP socket of this network namespace listening on `port` (IPv4 or IPv6).
    static func tcpListenerInode(port: UInt16) -> UInt64? {
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let text = read(table) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                guard f.count > 9, f[3] == "0A", let colon = f[1].lastIndex(of: ":"),
                    UInt16(f[1][f[1].index(after: colon)...], radix: 16) == port
                else { continue }
                return UInt64(f[9])
            }
        }
        return nil
    }

    /// Where this process maps the file open as `fd` (the start of its mapping at offset 0).
    static func mapping(of fd: Int32) -> UnsafeRawPointer? {
        guard let inode = inode(of: fd), let path = link("/proc/self/fd/\(fd)"), let maps = read("/proc/self/maps")
        else { return nil }
        for line in maps.split(separator: "\n") {
            // start-end perms offset dev inode path
            let f = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard f.count == 6, UInt64(f[2], radix: 16) == 0, UInt64(f[4]) == inode,
                f[5].trimmingPrefix(while: { $0 == " " }) == path,
                let dash = f[0].firstIndex(of: "-"), let start = UInt(f[0][..<dash], radix: 16)
            else { continue }
            return UnsafeRawPointer(bitPattern: start)
        }
        return nil
    }

    // MARK: - /proc

    private static func threads(of pid: Int32) -> [Int32] { entries("/proc/\(pid)/task").compactMap { Int32($0) } }

    private static func descriptors() -> [Int32] { entries("/proc/self/fd").compactMap { Int32($0) } }

    private static func entries(_ directory: String) -> [String] {
        guard let d = opendir(directory) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    private static func link(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n >= 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = Glibc.read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The seed of a randomized test: `MP_TEST_SEED` when set (to replay a failure), else a random one.
/// Put it in every expectation's comment, so that a failure says how to replay it.
func replayableSeed() -> UInt64 {
    if let text = getenv("MP_TEST_SEED"), let seed = UInt64(String(cString: text)) { return seed }
    return UInt64.random(in: 0...UInt64.max)
}

/// The observations other tests wait for: each is false before its state and true in it.
@Suite(.timeLimit(.minutes(3)))
struct KernelViewTests {
    @Test func aThreadBlockedInAReceiveThenInPoll() throws {
        let (a, b) = try makePipe()
        let got = Future<Int>()
        let receiver = OSThread { got.complete(Result { try b.recv(Int.self, timeout: .seconds(2)) }) }
        try receiver.start()
        let tid = try #require(receiver.nativeID)
        try eventually("the receiver blocks in recvmsg") { KernelView.isBlocked(tid: tid, in: .recvmsg) }
        #expect(!KernelView.isBlocked(tid: tid, in: .poll))
        #expect(!KernelView.isBlocked(tid: tid, in: .futex))
        try eventually("its first step ended: it polls") { KernelView.isBlocked(tid: tid, in: .poll) }
        try a.send(1)
        #expect(try got.result(timeout: .seconds(30)) == 1)
        try receiver.join()
        #expect(!KernelView.isBlocked(tid: tid, in: .poll))
    }

    @Test func aThreadSleepingOnAProcessLock() throws {
        let lock = try ProcessLock()
        let other = try ProcessLock()
        lock.acquire()
        #expect(!KernelView.aThreadSleepsOnFutex(in: lock.place.segment))
        let waiter = background { lock.acquire(timeout: .seconds(30)) }
        try eventually("the waiter sleeps on the lock") { KernelView.aThreadSleepsOnFutex(in: lock.place.segment) }
        #expect(!KernelView.aThreadSleepsOnFutex(in: other.place.segment))
        try lock.release()
        #expect(try waiter.result(timeout: .seconds(30)) == .acquired)
        #expect(!KernelView.aThreadSleepsOnFutex(in: lock.place.segment))
    }

    @Test func aTaskWaitingInTheReactorAndAListeningSocket() async throws {
        let (a, b) = try makePipe()
        #expect(!KernelView.epollWaitsForInput(on: b.fileDescriptor))
        let task = Task { try await b.recv(Int.self) }
        try await eventually("the task waits in the reactor") { () async in
            KernelView.epollWaitsForInput(on: b.fileDescriptor)
        }
        #expect(!KernelView.epollWaitsForInput(on: a.fileDescriptor))
        try a.send(1)
        #expect(try await task.value == 1)
        #expect(!KernelView.epollWaitsForInput(on: b.fileDescriptor))  // one-shot: disarmed once fired

        let listener = try AsyncListener()
        guard case .tcp(_, let port) = listener.address else {
            Issue.record("an AsyncListener() listens on TCP, not at \(listener.address)")
            return
        }
        #expect(KernelView.tcpListenerInode(port: port) != nil)
        listener.close()
        #expect(KernelView.tcpListenerInode(port: port) == nil)
    }

    @Test func aQueuesMapping() throws {
        let q = try ProcessQueue<Int>()
        let header = try #require(KernelView.mapping(of: q.ring.fd))
        try q.put(7)
        // The ring's header starts with its mutex; its fields follow at 64 (the magic number first).
        #expect(header.load(fromByteOffset: 64, as: UInt64.self) == 0x6d70_7175_6575_6532)  // "mpqueue2"
    }
}
