import Glibc
import MultiprocessingTestSupport
import SystemCalls
import SystemPackage
import Testing
import Threading

@testable import Multiprocessing

/// The system-call layer: one return convention for the C shims (>= 0, or -errno), typed errors with the
/// real errno (the eventfd failure used to be reported as EPERM whatever happened).
@Suite struct SyscallTests {
    @Test func shimResultsBecomeErrorsWithTheirErrno() throws {
        #expect(try Syscall.check("x", Int32(5)) == 5)
        #expect { try Syscall.check("eventfd", -EMFILE) } throws: { e in
            let m = e as? MultiprocessingError
            return m?.code == .resourceExhausted && m?.errnoCode == EMFILE && m?.message.contains("eventfd") == true
        }
        #expect { try Syscall.check("fstat", Int(-EBADF)) } throws: {
            ($0 as? MultiprocessingError)?.errnoCode == EBADF
        }
    }

    @Test func sharedMemoryAndMappingReportTheRealCause() throws {
        #expect { try Syscall.mapShared(-1, size: 4096) } throws: { ($0 as? MultiprocessingError)?.errnoCode == EBADF }
        #expect { try Syscall.fileSize(-1) } throws: { ($0 as? MultiprocessingError)?.errnoCode == EBADF }
        let fd = try Syscall.sharedMemory(name: "swift-mp-test", size: 8192)
        defer { Syscall.close(fd) }
        #expect(try Syscall.fileSize(fd) == 8192)
        let p = try Syscall.mapShared(fd, size: 8192)
        p.storeBytes(of: 42, as: Int.self)
        #expect(munmap(p, 8192) == 0)
    }

    @Test func connectingToAClosedPortSaysRefused() throws {
        // A port that nothing listens on: bind one, learn its number, close it.
        let probe = try Syscall.streamSocket(family: AF_INET)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafePointer(to: &addr) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                try Syscall.listen(probe, family: AF_INET, sa, len, backlog: 1)
            }
        }
        withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in _ = getsockname(probe, sa, &len) }
        }
        Syscall.close(probe)
        let s = try Syscall.streamSocket(family: AF_INET)
        defer { Syscall.close(s) }
        #expect {
            try withUnsafePointer(to: &addr) { p in
                try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    try Syscall.connect(s, sa, len, deadline: Deadline.after(.seconds(5)))
                }
            }
        } throws: { ($0 as? MultiprocessingError)?.errnoCode == ECONNREFUSED }
    }

    @Test func aPeerGoneOnAWriteIsEndOfFileWithItsTypedErrno() throws {
        let (a, b) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        defer { Syscall.close(a) }
        Syscall.close(b)
        #expect {
            _ = try [UInt8]([1]).withUnsafeBytes { try Syscall.sendNow(a, $0) }
        } throws: { e in
            let e = e as? MultiprocessingError
            return e?.code == .endOfFile && e?.errno == .brokenPipe && e?.errnoCode == EPIPE
        }
        // The same policy for the public Connection.
        let (c, d) = try makePipe()
        d.close()
        #expect { try c.sendBytes([1, 2, 3]) } throws: { ($0 as? MultiprocessingError)?.code == .endOfFile }
    }

    @Test func aWaitForADescriptorItsOwnerClosedFailsInsteadOfWaitingForEver() async throws {
        // The owner closed it, but a call in progress defers the real close: the reactor must not arm
        // a number that is about to go (the kernel would drop the registration, the task would hang).
        let (a, b) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        defer {
            Syscall.close(a)
            Syscall.close(b)
        }
        await #expect {
            try await Reactor.shared.wait(a, unless: { true })
        } throws: { ($0 as? MultiprocessingError)?.code == .closed }
    }

    @Test func errorsTravelWithTheirErrno() throws {
        let e = MultiprocessingError(SystemCallError("recv", .connectionRefused))
        let back = try BinaryDecoder().decode(MultiprocessingError.self, from: try BinaryEncoder().encode(e))
        #expect(back.code == .system && back.errno == .connectionRefused && back.errnoCode == ECONNREFUSED)
        #expect(back.description.contains("errno \(ECONNREFUSED)"))
    }

    @Test func receiveSaysWouldBlockEndOfInputAndData() throws {
        let (a, b) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        defer { Syscall.close(a) }
        var buf = [UInt8](repeating: 0, count: 16)
        #expect(try buf.withUnsafeMutableBytes { try Syscall.receive(a, into: $0) } == nil)
        #expect(try [UInt8]([1, 2, 3]).withUnsafeBytes { try Syscall.sendNow(b, $0) } == 3)
        #expect(try buf.withUnsafeMutableBytes { try Syscall.receive(a, into: $0) } == 3)
        Syscall.close(b)
        #expect(try buf.withUnsafeMutableBytes { try Syscall.receive(a, into: $0) } == 0)
    }
}
