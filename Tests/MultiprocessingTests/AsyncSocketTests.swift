import Glibc
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import Multiprocessing

@Suite(.timeLimit(.minutes(3)))
struct AsyncSocketTests {
    /// An echo server and many clients, all tasks, none holding a thread while it waits; large writes
    /// wait for room (the peer reads slowly at first).
    @Test func echoManyClientsWithLargeTransfers() async throws {
        let listener = try AsyncListener()
        defer { listener.close() }
        let server = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    let s = try await listener.accept()
                    group.addTask {
                        defer { s.close() }
                        while true {
                            let part = try await s.read()
                            if part.isEmpty { return }
                            try await s.write(part)
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<8 {
                group.addTask {
                    let c = try await AsyncSocket.connect(to: listener.address)
                    defer { c.close() }
                    let payload = (0..<(1 << 20) + i).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }
                    async let echoed = c.readAll(count: payload.count)
                    try await c.write(payload)
                    #expect(try await echoed == payload)
                    c.shutdownWrite()
                    #expect(try await c.read().isEmpty)
                }
            }
            try await group.waitForAll()
        }
        try await server.value
    }

    /// A read waiting for data honours cancellation, and the socket still works afterwards; `close()`
    /// fails a waiting `accept()`.
    @Test func cancellationAndClose() async throws {
        let listener = try AsyncListener()
        let accepted = Task { try await listener.accept() }
        let client = try await AsyncSocket.connect(to: listener.address)
        let server = try await accepted.value
        let waiting = Task { try await client.read() }
        try await eventually("the read waits in the reactor") { () async in
            KernelView.epollWaitsForInput(on: client.fileDescriptor)
        }
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        try await server.write(Array("still here".utf8))
        #expect(try await client.read() == Array("still here".utf8))
        server.close()
        #expect(try await client.read().isEmpty)  // end of file
        client.close()

        guard case .tcp(_, let port) = listener.address else {
            Issue.record("an AsyncListener() listens on TCP, not at \(listener.address)")
            return
        }
        let socket = try #require(KernelView.tcpListenerInode(port: port), "the listening socket")
        let blocked = Task { try await listener.accept() }
        try await eventually("the accept waits in the reactor") { () async in
            KernelView.epollWaitsForInput(onInode: socket)
        }
        listener.close()
        await #expect(throws: MultiprocessingError.self) { try await blocked.value }
    }

    /// Connecting where nothing listens fails with the system's reason; a host name resolves off the
    /// cooperative pool.
    @Test func connectErrorsAndNames() async throws {
        let listener = try AsyncListener()
        guard case .tcp(_, let port) = listener.address else {
            Issue.record("an AsyncListener() listens on TCP, not at \(listener.address)")
            return
        }
        listener.close()
        await #expect(throws: MultiprocessingError.self) {
            try await AsyncSocket.connect(to: .tcp(host: "127.0.0.1", port: port))
        }
        let named = try AsyncListener()
        defer { named.close() }
        guard case .tcp(_, let namedPort) = named.address else {
            Issue.record("an AsyncListener() listens on TCP, not at \(named.address)")
            return
        }
        let c = try await AsyncSocket.connect(to: .tcp(host: "localhost", port: namedPort))
        c.close()
    }
}

extension AsyncSocket {
    /// Exactly `count` bytes (fewer only at end of file).
    func readAll(count: Int) async throws -> [UInt8] {
        var all: [UInt8] = []
        while all.count < count {
            let part = try await read(upTo: min(64 * 1024, count - all.count))
            if part.isEmpty { break }
            all += part
        }
        return all
    }
}
