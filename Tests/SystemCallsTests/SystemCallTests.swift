internal import CMultiprocessingShims
import Foundation
import Glibc
import MultiprocessingTestSupport
import Synchronization
import SystemCalls
import SystemPackage
import Testing
import Threading

/// Signals the interrupted-read test's handler has seen.
private let interruptions = Atomic<Int>(0)

/// The one errno policy of the package's system calls, row by row, against the real kernel.
@Suite struct SystemCallTests {
    @Test func anInterruptedBlockingReadIsMadeAgainAndReturnsTheData() throws {
        // A handler installed without SA_RESTART: the kernel ends the blocked read with EINTR.
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in interruptions.add(1, ordering: .relaxed) }
        action.sa_flags = 0
        sigemptyset(&action.sa_mask)
        var previous = sigaction()
        #expect(sigaction(SIGURG, &action, &previous) == 0)
        defer { sigaction(SIGURG, &previous, nil) }

        let (r, w) = try SystemCall.pipe()
        defer { SystemCall.close(w) }
        let tid = Atomic<Int32>(0)
        let thread = Atomic<UInt>(0)
        let result = TrackedMutex<Result<Int, SystemCallError>?>(nil)
        let reader = OSThread(name: "eintr-reader") {
            // The test process may have inherited a mask that blocks it.
            var urg = sigset_t()
            sigemptyset(&urg)
            sigaddset(&urg, SIGURG)
            pthread_sigmask(SIG_UNBLOCK, &urg, nil)
            thread.store(UInt(pthread_self()), ordering: .releasing)
            tid.store(mp_gettid(), ordering: .releasing)
            var buf = [UInt8](repeating: 0, count: 8)
            let r = buf.withUnsafeMutableBytes { p in
                Result { () throws(SystemCallError) in try SystemCall.read(r, p).value ?? -1 }
            }
            result.withLock { $0 = r }
        }
        try reader.start()
        // Wait until the reader sleeps in read(2) (its only blocking point), then interrupt it.
        try eventually { tid.load(ordering: .acquiring) != 0 }
        try eventually { threadState(tid.load(ordering: .acquiring)) == "S" }
        #expect(pthread_kill(pthread_t(thread.load(ordering: .acquiring)), SIGURG) == 0)
        try eventually { interruptions.load(ordering: .relaxed) > 0 }
        // Still waiting after the signal: the read was made again. Now give it data.
        #expect(result.withLock { $0 } == nil)
        _ = try [UInt8]([7, 7, 7]).withUnsafeBytes { p throws(SystemCallError) in try SystemCall.write(w, p) }
        try reader.join(timeout: .seconds(30))
        SystemCall.close(r)
        #expect(try result.withLock { $0 }?.get() == 3)
    }

    @Test func aCallThatWouldBlockSaysSoAndDoesNothing() throws {
        let (a, b) = try SystemCall.socketpair(Int32(SOCK_STREAM.rawValue))
        defer {
            SystemCall.close(a)
            SystemCall.close(b)
        }
        var buf = [UInt8](repeating: 0, count: 8)
        let r = try buf.withUnsafeMutableBytes { p throws(SystemCallError) in try SystemCall.recv(a, p) }
        #expect(r.value == nil)
        // A full socket: sends stop with wouldBlock, never an error.
        let chunk = [UInt8](repeating: 1, count: 64 * 1024)
        var sawWouldBlock = false
        for _ in 0..<1000 where !sawWouldBlock {
            sawWouldBlock =
                try chunk.withUnsafeBytes { p throws(SystemCallError) in try SystemCall.send(b, p) }.value == nil
        }
        #expect(sawWouldBlock)
    }

    @Test func aResetConnectionReadsAsEndOfInputAndAWriteToItSaysThePeerClosed() throws {
        // TCP on loopback: the accepted end closes with SO_LINGER 0, which sends a reset.
        let listener = try SystemCall.streamSocket(family: AF_INET)
        defer { SystemCall.close(listener) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &addr) { p throws(SystemCallError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(SystemCallError) in
                try SystemCall.listen(listener, family: AF_INET, sa, len, backlog: 1)
                _ = getsockname(listener, sa, &len)
            }
        }
        let client = try SystemCall.streamSocket(family: AF_INET)
        defer { SystemCall.close(client) }
        let inProgress = try withUnsafePointer(to: &addr) { p throws(SystemCallError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(SystemCallError) in
                !(try SystemCall.connect(client, sa, len))
            }
        }
        if inProgress { _ = try SystemCall.poll(client, events: Int16(POLLOUT), timeoutMs: 30_000) }
        _ = try SystemCall.poll(listener, events: Int16(POLLIN), timeoutMs: 30_000)
        guard case .done(let accepted) = try SystemCall.accept(listener) else {
            Issue.record("no connection to accept")
            return
        }
        let server = Int32(accepted)
        try SystemCall.setOption(server, SOL_SOCKET, SO_LINGER, linger(l_onoff: 1, l_linger: 0))
        SystemCall.close(server)
        // The reset has arrived once the client's socket reports it.
        let events = try SystemCall.poll(client, events: Int16(POLLIN), timeoutMs: 30_000)
        #expect(events & (Int16(POLLERR) | Int16(POLLHUP) | Int16(POLLIN)) != 0)
        var buf = [UInt8](repeating: 0, count: 8)
        let n = try buf.withUnsafeMutableBytes { p throws(SystemCallError) in try SystemCall.recv(client, p) }
        #expect(n.value == 0)

        // A write to a socket pair whose other end is gone.
        let (a, b) = try SystemCall.socketpair(Int32(SOCK_STREAM.rawValue))
        defer { SystemCall.close(a) }
        SystemCall.close(b)
        let written = oneByte(to: a, send: true)
        #expect(throws: SystemCallError.self) { try written.get() }
        if case .failure(let error) = written {
            #expect(error.peerClosed)
            #expect(error.errno == .brokenPipe)
        }
    }

    @Test func aClosedDescriptorInAMessageIsAnErrorNotATrap() throws {
        // The descriptors a sendmsg carries come from the user's message: a closed one is their error.
        let (a, b) = try SystemCall.socketpair(Int32(SOCK_STREAM.rawValue))
        defer {
            SystemCall.close(a)
            SystemCall.close(b)
        }
        // Not a descriptor just closed: tests run in parallel, and another may be given its number at once.
        // No descriptor is ever numbered at or above the process's limit.
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let closed = Int32(clamping: limit.rlim_cur)
        var byte: UInt8 = 1
        let sent = withUnsafeBytes(of: &byte) { p in
            Result { () throws(SystemCallError) in try SystemCall.sendWithDescriptors(a, p, fds: [closed]) }
        }
        #expect(throws: SystemCallError.self) { try sent.get() }
        if case .failure(let e) = sent { #expect(e.errno == .badFileDescriptor && e.call == "sendmsg") }
    }

    @Test func otherFailuresCarryTheCallAndItsTypedErrno() throws {
        #expect {
            _ = try SystemCall.open("/nonexistent/swift-multiprocessing", O_RDONLY)
        } throws: { e in
            let e = e as? SystemCallError
            return e?.errno == .noSuchFileOrDirectory && e?.call == "open /nonexistent/swift-multiprocessing"
                && e?.peerClosed == false
        }
    }

    // The traps run in a process of their own (`mp-test-helper trap ...`): an exit test of Swift Testing
    // would share its any-child wait with the pool's own children in this process.
    @Test(arguments: [
        ("read-closed", "read failed with Bad file descriptor: a descriptor used after its close"),
        ("double-close", "close failed with Bad file descriptor: a descriptor used after its close"),
        ("closed-connection", "Connection(fileDescriptor: -1): not an open descriptor"),
    ])
    func aBadDescriptorStopsTheProgramWithItsCause(_ scenario: String, _ message: String) async throws {
        let helper = try #require(testHelperExecutable(), "mp-test-helper is built beside the tests")
        let (status, out, err) = try await background { try runTestHelper(helper, ["trap", scenario]) }.value
        #expect(status < 0, "killed by a signal (a trap), not an exit: \(status), \(out)")
        #expect(!out.contains("no trap"), "\(out)")
        #expect(err.contains(message), "\(err)")
    }
}

/// The guarded close of descriptors shared by threads.
@Suite struct DescriptorLifetimeTests {
    /// Whether the pipe's read end is closed, seen from its write end (EPIPE), whatever number it had.
    private func readerIsGone(_ w: Int32) -> Bool {
        if case .failure(let error) = oneByte(to: w, send: false) { return error.peerClosed }
        return false
    }

    @Test func aCloseDuringAUseWaitsForItAndLaterUsesAreRefused() throws {
        // Writes to a closed pipe must fail with EPIPE, not kill the test process.
        let previous = signal(SIGPIPE, SIG_IGN)
        defer { signal(SIGPIPE, previous) }
        let (r, w) = try SystemCall.pipe()
        defer { SystemCall.close(w) }
        let lifetime = DescriptorLifetime(r)
        let inside: (Bool, Bool, Bool)? = lifetime.use { _ in
            let first = lifetime.close()
            let second = lifetime.close()  // idempotent
            return (first, second, readerIsGone(w))
        }
        #expect(inside?.0 == true && inside?.1 == false)
        #expect(inside?.2 == false)  // still open while the use ran
        let closed = lifetime.isClosed
        #expect(closed)
        try eventually { readerIsGone(w) }  // released when the use ended
        let later: Bool? = lifetime.use { _ in true }
        #expect(later == nil)
    }

    @Test func manyThreadsUsingAndOneClosingCloseItExactlyOnce() throws {
        let previous = signal(SIGPIPE, SIG_IGN)
        defer { signal(SIGPIPE, previous) }
        for _ in 0..<50 {
            let (r, w) = try SystemCall.pipe()
            defer { SystemCall.close(w) }
            let lifetime = DescriptorLifetime(r)
            let started = Atomic<Int>(0)
            let threads = (0..<4).map { i in
                OSThread(name: "user-\(i)") {
                    started.add(1, ordering: .relaxed)
                    for _ in 0..<200 {
                        // A read of an empty non-blocking pipe: a real call on the number, every time.
                        _ = lifetime.use { fd in
                            var b: UInt8 = 0
                            return fcntl(fd, F_GETFD) >= 0 && Glibc.read(fd, &b, 0) >= 0
                        }
                    }
                }
            }
            for t in threads { try t.start() }
            try eventually { started.load(ordering: .relaxed) == 4 }
            lifetime.close()
            for t in threads { try t.join(timeout: .seconds(30)) }
            // (A process being spawned meanwhile holds a copy until its exec: look again until it is gone.)
            try eventually { readerIsGone(w) }
        }
    }
}

/// The scheduler state letter of thread `tid` ("R", "S", ...), from `/proc/self/task/TID/stat`.
private func threadState(_ tid: Int32) -> String? {
    guard let f = fopen("/proc/self/task/\(tid)/stat", "r") else { return nil }
    defer { fclose(f) }
    var buf = [CChar](repeating: 0, count: 512)
    guard fgets(&buf, 512, f) != nil else { return nil }
    let line = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard let close = line.lastIndex(of: ")") else { return nil }
    return line[line.index(close, offsetBy: 2)...].first.map(String.init)
}

/// One byte sent (`send`) or written to `fd`, and what the call said.
private func oneByte(to fd: Int32, send: Bool) -> Result<IOResult, SystemCallError> {
    var byte: UInt8 = 1
    return withUnsafeBytes(of: &byte) { p in
        Result { () throws(SystemCallError) in send ? try SystemCall.send(fd, p) : try SystemCall.write(fd, p) }
    }
}
