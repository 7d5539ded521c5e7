import Glibc
import MultiprocessingTestSupport
import Testing
import Threading

@testable import Multiprocessing

@Suite(.timeLimit(.minutes(3)))
struct ConnectionTests {
    struct Message: Codable, Equatable {
        var id: Int
        var text: String
        var values: [Double]
    }

    @Test func duplexPipeValuesAndBytes() throws {
        let (a, b) = try makePipe()
        try a.send(Message(id: 1, text: "hello", values: [1.5]))
        #expect(try b.recv(Message.self, timeout: .seconds(5)) == Message(id: 1, text: "hello", values: [1.5]))
        try b.sendBytes(Array("raw".utf8))
        #expect(try a.recvBytes(timeout: .seconds(5)) == Array("raw".utf8))
        try a.sendBytes([])
        #expect(try b.recvBytes(timeout: .seconds(5)) == [])
    }

    @Test func simplexPipeDirection() throws {
        let (r, w) = try makePipe(duplex: false)
        #expect(r.isReadable && !r.isWritable && w.isWritable && !w.isReadable)
        try w.send([1, 2, 3])
        #expect(try r.recv([Int].self, timeout: .seconds(5)) == [1, 2, 3])
        #expect(throws: MultiprocessingError.self) { try r.sendBytes([1]) }
    }

    @Test func asyncReceiversWaitTheirTurnAndHonourCancellation() async throws {
        let (a, b) = try makePipe()
        // Two tasks wait on one end (each in the reactor, taking the receive lock in turn once woken).
        let first = Task { try await a.recv(Int.self) }
        let second = Task { try await a.recv(Int.self) }
        try await eventually("a receiver waits in the reactor") { () async in
            KernelView.epollWaitsForInput(on: a.fileDescriptor)
        }
        // TODO(hook): the reactor shows one waiter at least, not both: with `Reactor.waiterCount(on:)` this
        // would wait for 2. Until then the second may still be on its way (the test passes either way).
        try await Task.sleep(for: .milliseconds(50))
        try b.send(1)
        try b.send(2)
        let got = Set([try await first.value, try await second.value])
        #expect(got == [1, 2])
        // A waiting receiver that is cancelled returns at once, and the connection still works.
        let waiting = Task { try await a.recv(Int.self) }
        try await eventually("the receiver waits in the reactor") { () async in
            KernelView.epollWaitsForInput(on: a.fileDescriptor)
        }
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        try b.send(3)
        #expect(try a.recv(Int.self, timeout: .seconds(5)) == 3)
    }

    @Test func pollAndTimeout() throws {
        let (a, b) = try makePipe()
        #expect(try !b.poll())
        #expect(try !b.poll(timeout: .milliseconds(20)))
        do {
            _ = try b.recvBytes(timeout: .milliseconds(30))
            Issue.record("expected timeout")
        } catch let e as MultiprocessingError {
            #expect(e.code == .timedOut)
        }
        try a.send(5)
        #expect(try b.poll(timeout: .seconds(5)))
        #expect(try b.recv(Int.self) == 5)
    }

    /// A socket's timed receive sleeps in `recvmsg` under SO_RCVTIMEO (the largest power of two of
    /// milliseconds within the time left), then waits in `poll` for the rest: it must still end at its
    /// deadline (not at a shorter step), receive a message that arrives after the first step, and leave
    /// the connection usable for blocking receives.
    @Test func timedReceiveOnASocketEndsAtItsDeadline() throws {
        let (a, b) = try makePipe()
        // 3.9 s is a 2048 ms sleep in recvmsg, then poll: the message is sent once the receiver polls.
        let got = Future<Int>()
        let receiver = OSThread { got.complete(Result { try b.recv(Int.self, timeout: .milliseconds(3_900)) }) }
        try receiver.start()
        let tid = try #require(receiver.nativeID)
        try eventually("the receive's first sleep (in recvmsg) ended") { KernelView.isBlocked(tid: tid, in: .poll) }
        try a.send(7)
        #expect(try got.result(timeout: .seconds(30)) == 7)
        try receiver.join()
        for timeout in [300, 45, 3] {
            let t0 = ContinuousClock.now
            #expect(throws: MultiprocessingError.self) { try b.recvBytes(timeout: .milliseconds(timeout)) }
            let took = ContinuousClock.now - t0
            // Not before the deadline; the upper bound only says it did not hang (other suites load the
            // machine): ending *at* the deadline needs a fake clock (see the report on issue 26).
            #expect(
                took >= .milliseconds(timeout) && took < .milliseconds(timeout) + .seconds(20),
                "\(timeout) ms: \(took)"
            )
        }
        // A receive without a timeout outlasts the option's last value (a few ms, set by the 3 ms receive): the
        // message is sent once that has run out and the receiver polls.
        let late = Future<Int>()
        let blocking = OSThread { late.complete(Result { try b.recv(Int.self) }) }
        try blocking.start()
        let blockingTid = try #require(blocking.nativeID)
        try eventually("the blocking receive outlived SO_RCVTIMEO") {
            KernelView.isBlocked(tid: blockingTid, in: .poll)
        }
        try a.send(8)
        #expect(try late.result(timeout: .seconds(30)) == 8)
        try blocking.join()
    }

    @Test func closedPeerIsEndOfFile() throws {
        let (a, b) = try makePipe()
        try a.send(1)
        a.close()
        #expect(try b.recv(Int.self, timeout: .seconds(5)) == 1)  // what was sent is still delivered
        do {
            _ = try b.recvBytes(timeout: .seconds(5))
            Issue.record("expected EOF")
        } catch let e as MultiprocessingError {
            #expect(e.code == .endOfFile)
        }
        #expect(throws: MultiprocessingError.self) { try a.send(2) }
    }

    @Test func oversizedFrameIsRejectedAndPoisonsTheReceiver() throws {
        let (a, b) = try makePipe()
        try a.sendBytes([UInt8](repeating: 7, count: 2_000))
        do {
            _ = try b.recvBytes(maxLength: 1_000, timeout: .seconds(5))
            Issue.record("expected messageTooLarge")
        } catch let e as MultiprocessingError {
            #expect(e.code == .messageTooLarge)
            #expect(e.message.contains("2000"))
        }
        do {
            _ = try b.recvBytes(timeout: .seconds(1))
            Issue.record("expected closed")
        } catch let e as MultiprocessingError {
            #expect(e.code == .closed)
        }
    }

    @Test func malformedHeaderIsAnError() throws {
        let (fd0, fd1) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        let b = Connection(fileDescriptor: fd1)
        var header: [UInt8] = [0xff, 0xff, 0xff, 0xfb]  // -5
        _ = write(fd0, &header, 4)
        defer { close(fd0) }
        do {
            _ = try b.recvBytes(timeout: .seconds(5))
            Issue.record("expected malformedMessage")
        } catch let e as MultiprocessingError {
            #expect(e.code == .malformedMessage)
        }
    }

    /// CPython's header for messages past 2 GiB (-1, then an 8-byte length) parses at any size.
    @Test func longFormHeaderIsUnderstood() throws {
        let (fd0, fd1) = try Syscall.socketpair(Int32(SOCK_STREAM.rawValue))
        let b = Connection(fileDescriptor: fd1)
        defer { close(fd0) }
        var frame: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 3, 7, 8, 9]
        _ = write(fd0, &frame, frame.count)
        #expect(try b.recvBytes(timeout: .seconds(5)) == [7, 8, 9])
    }

    @Test func sendTimesOutWhenThePeerDoesNotRead() throws {
        // Mid-message: a 4 MiB message into a socket nobody reads times out part-way, then the send
        // side refuses to continue (the stream would be corrupt).
        let (a, b) = try makePipe()
        let t0 = ContinuousClock.now
        do {
            try a.sendBytes([UInt8](repeating: 1, count: 4 << 20), timeout: .milliseconds(100))
            Issue.record("expected timedOut")
        } catch let e as MultiprocessingError {
            #expect(e.code == .timedOut)
        }
        #expect(ContinuousClock.now - t0 >= .milliseconds(95))
        do {
            try a.send(1, timeout: .seconds(1))
            Issue.record("expected closed")
        } catch let e as MultiprocessingError {
            #expect(e.code == .closed)
        }
        _ = b

        // Before any byte: a full simplex pipe refuses a small message in time and stays usable.
        let (r, w) = try makePipe(duplex: false)
        var filled = 0
        while true {
            do {
                try w.sendBytes([UInt8](repeating: 2, count: 1_000), timeout: .milliseconds(20))
                filled += 1
            } catch let e as MultiprocessingError where e.code == .timedOut {
                break  // full: refused in time
            }
        }
        #expect(filled > 10)
        for _ in 0..<filled { _ = try r.recvBytes(timeout: .seconds(5)) }
        // The refused message left nothing behind (not a frame, not a part of one).
        #expect(try !r.poll(timeout: .zero), "a refused send left bytes in the pipe")
        try w.send("still fine", timeout: .seconds(5))
        #expect(try r.recv(String.self, timeout: .seconds(5)) == "still fine")
    }

    /// A thread parked in a blocking receive holds the receive lock; poll and waitReady on the same
    /// connection must still honour their timeouts.
    @Test func pollHonoursItsTimeoutWhileAnotherThreadReceives() throws {
        let (a, b) = try makePipe()
        let got = Future<Int>()
        let receiver = OSThread { got.complete(Result { try b.recv(Int.self) }) }
        try receiver.start()
        let tid = try #require(receiver.nativeID)
        try eventually("the receiver blocks in recvmsg") { KernelView.isBlocked(tid: tid, in: .recvmsg) }
        let t0 = ContinuousClock.now
        #expect(try !b.poll(timeout: .milliseconds(50)))
        #expect(try waitReady([b], timeout: .milliseconds(50)).isEmpty)
        // Waiting for the receiver would mean for ever (nothing is sent until below): a generous bound.
        #expect(ContinuousClock.now - t0 < .seconds(20))
        try a.send(7)
        #expect(try got.result(timeout: .seconds(5)) == 7)
        try receiver.join()
    }

    /// A reactor watcher fires on data alone (the writer stays open: no hang-up to fall back on).
    @Test func reactorWatcherFiresOnReadableData() throws {
        let (a, b) = try makePipe()
        let fired = Event()
        try Reactor.shared.watch(b.fileDescriptor) {
            guard (try? b.receiveNow()) ?? nil != nil else { return true }
            fired.set()
            return false
        }
        try a.send("ping")
        #expect(fired.wait(timeout: .seconds(5)))
        withExtendedLifetime(a) {}
    }

    @Test func garbageValueIsADecodingError() throws {
        let (a, b) = try makePipe()
        try a.sendBytes([0xee, 0x01])
        #expect(throws: MultiprocessingError.self) { try b.recv(Message.self, timeout: .seconds(5)) }
    }

    @Test func largeMessagesRoundTrip() throws {
        let (a, b) = try makePipe()
        let big = (0..<(10 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let reader = Future<[UInt8]>()
        let t = OSThread { reader.complete(Result { try b.recvBytes(timeout: .seconds(30)) }) }
        try t.start()
        try a.sendBytes(big)
        #expect(try reader.result(timeout: .seconds(30)) == big)
        try t.join()
        // And small ones after a big one, through the same buffer (each small write takes ~1 KB of the
        // socket's buffer, so send few before reading).
        for i in 0..<100 { try a.send(i) }
        for i in 0..<100 { #expect(try b.recv(Int.self, timeout: .seconds(5)) == i) }
    }

    @Test func asyncReceive() async throws {
        let (a, b) = try makePipe()
        let task = Task { try await b.recv(String.self) }
        try await eventually("the receiver waits in the reactor") { () async in
            KernelView.epollWaitsForInput(on: b.fileDescriptor)
        }
        try a.send("later")
        #expect(try await task.value == "later")
        let cancelled = Task { try await b.recvBytes() }
        cancelled.cancel()
        await #expect(throws: (any Error).self) { try await cancelled.value }
    }

    @Test func waitReadyOverConnectionsAndSentinels() throws {
        let (a1, b1) = try makePipe()
        let (a2, b2) = try makePipe()
        #expect(try waitReady([b1, b2], timeout: .milliseconds(20)).isEmpty)
        try a1.send(1)
        let ready = try waitReady([b1, b2], timeout: .seconds(5))
        #expect(ready.count == 1 && ready[0] === b1)
        let p = ChildProcess(job: Sleep(milliseconds: 30))
        try p.start()
        let done = try waitReady([b2, p.handle!], timeout: .seconds(10))
        #expect(done.count == 1 && done[0] === p.handle!)
        try p.join()
        a2.close()  // a hung-up peer makes the other end ready (recv then reports end of file)
        #expect(try waitReady([b2], timeout: .seconds(5)).count == 1)
    }

    @Test func connectionTravelsInsideAJob() throws {
        let (mine, theirs) = try makePipe()
        let p = ChildProcess(job: Doubler(connection: theirs))
        try p.start()
        theirs.close()  // closing our copy must not cut the child's
        for i in 0..<50 {
            try mine.send(i)
            #expect(try mine.recv(Int.self, timeout: .seconds(10)) == 2 * i)
        }
        try mine.send(-1)
        #expect(try p.result(timeout: .seconds(10)) == 50)
        try p.join()
    }

    @Test func connectionsTravelThroughThreads() throws {
        let (a, b) = try makePipe()
        let n = 2_000
        let producers = (0..<4).map { k in OSThread { for i in 0..<n { try a.send(k * n + i) } } }
        for t in producers { try t.start() }
        var seen = Set<Int>()
        for _ in 0..<(4 * n) { seen.insert(try b.recv(Int.self, timeout: .seconds(10))) }
        for t in producers { try t.join() }
        #expect(seen.count == 4 * n)  // sends are atomic per message: no interleaved frames
    }
}
