import Foundation
import Multiprocessing
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import MultiprocessingManagers

/// A method channel opened by hand (one connection, so that "the caller" of a lock is exactly it).
private struct RawChannel {
    let c: Connection

    init(_ server: ManagerServer, key: [UInt8]) throws {
        c = try connect(to: server.address, authkey: key)
        try c.sendBytes(try PickleWriter().write(.tuple([.none, "accept_connection", .tuple(["test"]), .dict([])])))
        _ = try c.recvBytes(timeout: .seconds(30))
    }

    func send(_ ident: String, _ method: String, _ args: [PythonValue] = []) throws {
        try c.sendBytes(try PickleWriter().write(.tuple([.string(ident), .string(method), .tuple(args), .dict([])])))
    }

    func reply(timeout: Duration = .seconds(30)) throws -> PythonValue {
        try PickleReader().read(try c.recvBytes(timeout: timeout))
    }

    func call(_ ident: String, _ method: String, _ args: [PythonValue] = []) throws -> PythonValue {
        try send(ident, method, args)
        return try reply()
    }
}

/// Creates a `typeid` object on `server` (a one-shot request) and returns its ident.
private func create(
    _ server: ManagerServer,
    key: [UInt8],
    _ typeid: String,
    _ args: [PythonValue] = []
) throws -> String {
    let c = try connect(to: server.address, authkey: key)
    defer { c.close() }
    try c.sendBytes(try PickleWriter().write(.tuple([.none, "create", .tuple([.string(typeid)] + args), .dict([])])))
    guard case .tuple(let r) = try PickleReader().read(try c.recvBytes(timeout: .seconds(30))), r.count == 2,
        case .tuple(let made) = r[1], let ident = made.first?.stringValue
    else { throw MultiprocessingTestError("create \(typeid) failed") }
    return ident
}

private let ok = PythonValue.tuple(["#RETURN", .none])
private func returned(_ v: PythonValue) -> PythonValue { .tuple(["#RETURN", v]) }
private func raised(_ reply: PythonValue) -> String? {
    guard case .tuple(let r) = reply, r.first == "#ERROR" else { return nil }
    return "\(r[1])"
}

/// The server's event loop: many clients on one thread, calls that wait on threads of their own.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ManagerLoopTests {
    let key = Array("abc".utf8)

    /// 200 CPython connections (CPython's own `Client` and handshake), each a method channel setting its
    /// key in one served dict, all open at once: every one is served, and the server runs no thread for
    /// them (its pool of call threads stays empty — a thread per connection would be 200).
    @Test func twoHundredCPythonConnectionsNeedNoThreadOfTheirOwn() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let ident = try create(server, key: key, "dict")
        let release = tempPath("loop-release")
        defer { unlink(release) }
        let script = """
            import os, sys, time
            from multiprocessing.connection import Client
            port, ident, release = int(sys.argv[1]), sys.argv[2], sys.argv[3]
            conns = []
            for i in range(200):
                c = Client(('127.0.0.1', port), authkey=b'abc')
                c.send((None, 'accept_connection', ('py',), {}))
                assert c.recv() == ('#RETURN', None)
                conns.append(c)
            for i, c in enumerate(conns):
                c.send((ident, '__setitem__', (i, i * i), {}))
            for c in conns:
                assert c.recv() == ('#RETURN', None)
            print('connected', flush=True)
            while not os.path.exists(release):
                time.sleep(0.01)
            conns[0].send((ident, '__len__', (), {}))
            print('len', conns[0].recv()[1], flush=True)
            for c in conns:
                c.close()
            """
        let peer = try PythonPeer(script, ["\(try tcpPort(server))", ident, release])
        #expect(peer.out.fileHandleForReading.availableLine() == "connected")
        try eventually("200 connections open (\(server.clientCount))") { server.clientCount == 200 }
        #expect(server.callThreadCount == 0)
        #expect(FileManager.default.createFile(atPath: release, contents: nil))
        let (code, out) = peer.finish()
        #expect(code == 0 && out.contains("len 200"), "\(out)")
        try eventually("every connection closed (\(server.clientCount))") { server.clientCount == 0 }
    }

    /// A client waiting in `get` on an empty queue holds up nobody: another connection's calls are
    /// answered meanwhile; the waiting call runs on one thread, and its own connection's next request
    /// (sent behind it) is answered after it, in order.
    @Test func aWaitingCallHoldsUpNoOtherClient() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let q = try create(server, key: key, "Queue")
        let d = try create(server, key: key, "dict")
        let waiter = try RawChannel(server, key: key)
        let other = try RawChannel(server, key: key)
        try waiter.send(q, "get")
        try waiter.send(q, "qsize")  // pipelined behind the get
        try eventually("the get waits") { server.blockedCallCount == 1 }
        #expect(server.callThreadCount == 1)
        for i in 0..<100 { #expect(try other.call(d, "__setitem__", [.int(Int64(i)), .int(Int64(i))]) == ok) }
        #expect(try other.call(d, "__len__") == returned(.int(100)))
        #expect(try other.call(q, "put", ["item"]) == ok)
        #expect(try waiter.reply() == returned("item"))
        #expect(try waiter.reply() == returned(.int(0)))
        #expect(server.blockedCallCount == 0)
    }

    /// With `maxCallThreads: 2`, a third waiting call waits for a thread: two threads, two calls
    /// blocked; when items arrive every call is answered and none is lost.
    @Test func callsBeyondTheThreadLimitWaitTheirTurn() throws {
        let server = try ManagerServer(authkey: key, maxCallThreads: 2)
        try server.start()
        defer { server.shutdown() }
        let q = try create(server, key: key, "Queue")
        let waiters = try (0..<3).map { _ in try RawChannel(server, key: key) }
        for w in waiters { try w.send(q, "get", [.bool(true), .float(30)]) }
        try eventually("two calls block") { server.blockedCallCount == 2 }
        #expect(server.callThreadCount == 2)
        let producer = try RawChannel(server, key: key)
        for i in 0..<3 { #expect(try producer.call(q, "put", [.int(Int64(i))]) == ok) }
        var got: [Int64] = []
        for w in waiters {
            guard case .tuple(let r) = try w.reply(), let v = r.last?.intValue else { continue }
            got.append(Int64(v))
        }
        #expect(got.sorted() == [0, 1, 2])
    }

    /// An `RLock` belongs to the connection that acquired it, not to a thread: another connection can
    /// neither take it nor release it, its owner can take it again; a `Lock` is not reentrant.
    @Test func anRLockBelongsToItsConnection() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let r = try create(server, key: key, "RLock")
        let l = try create(server, key: key, "Lock")
        let a = try RawChannel(server, key: key)
        let b = try RawChannel(server, key: key)
        #expect(try a.call(r, "acquire") == returned(true))
        #expect(try b.call(r, "acquire", [false]) == returned(false))
        #expect(raised(try b.call(r, "release")) != nil)
        #expect(try a.call(r, "acquire", [false]) == returned(true))  // reentrant for its owner
        #expect(try a.call(r, "release") == ok)
        #expect(try b.call(r, "acquire", [false]) == returned(false))  // still held once
        #expect(try a.call(r, "release") == ok)
        #expect(try b.call(r, "acquire", [false]) == returned(true))
        #expect(try a.call(l, "acquire") == returned(true))
        #expect(try a.call(l, "acquire", [false]) == returned(false))  // a Lock is not reentrant
        #expect(try a.call(l, "acquire", [true, .float(0.05)]) == returned(false))  // timed out on a thread
        #expect(try b.call(l, "release") == ok)  // a Lock may be released by anyone, as Python's
        #expect(try a.call(l, "acquire", [false]) == returned(true))
    }

    /// `Condition.wait` frees the lock for the others (on a thread), `notify` by another connection
    /// wakes it, and the waiter holds the lock again at its depth; a client that ends while waiting
    /// holds nothing.
    @Test func aConditionWaitsOnAThreadAndWakesOnNotify() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let cv = try create(server, key: key, "Condition")
        let a = try RawChannel(server, key: key)
        let b = try RawChannel(server, key: key)
        #expect(try a.call(cv, "acquire") == returned(true))
        #expect(try a.call(cv, "acquire") == returned(true))  // depth 2
        try a.send(cv, "wait", [.float(30)])
        try eventually("the waiter blocks") { server.blockedCallCount == 1 }
        #expect(try b.call(cv, "acquire", [false]) == returned(true))  // wait freed it
        #expect(try b.call(cv, "notify") == ok)
        #expect(try b.call(cv, "release") == ok)
        #expect(try a.reply() == returned(true))
        #expect(try b.call(cv, "acquire", [false]) == returned(false))  // a holds it again, twice
        #expect(try a.call(cv, "release") == ok)
        #expect(try b.call(cv, "acquire", [false]) == returned(false))
        #expect(try a.call(cv, "release") == ok)
        #expect(try b.call(cv, "acquire", [false]) == returned(true))
        #expect(raised(try a.call(cv, "notify")) != nil)  // not the owner
        // A waiter whose client goes away: the lock is not left with it.
        #expect(try b.call(cv, "wait", [.float(0.05)]) == returned(false))  // timed out, holds it again
        try b.send(cv, "wait")
        try eventually("the second waiter blocks") { server.blockedCallCount == 1 }
        b.c.close()
        try eventually("the abandoned wait ends") { server.blockedCallCount == 0 }
        #expect(try a.call(cv, "acquire", [true, .float(10)]) == returned(true))
    }

    /// A semaphore used as a signal (one connection releases, another acquires, over and over): when the
    /// acquiring connection ends, the server gives back at most what is outstanding, not one permit per
    /// acquire (which would leave phantom permits for everyone after it).
    @Test func aSignalSemaphoreGainsNoPermitsWhenItsConsumerLeaves() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let sem = try create(server, key: key, "Semaphore", [.int(0)])
        let producer = try RawChannel(server, key: key)
        let other = try RawChannel(server, key: key)
        do {
            let consumer = try RawChannel(server, key: key)
            for _ in 0..<5 {
                #expect(try producer.call(sem, "release") == ok)
                #expect(try consumer.call(sem, "acquire") == returned(true))
            }
            consumer.c.close()
        }
        try eventually("the consumer's connection is closed") { server.clientCount == 2 }
        // At most the one permit it may be said to hold came back; never five.
        var taken = 0
        while try other.call(sem, "acquire", [false]) == returned(true) { taken += 1 }
        #expect(taken <= 1, "\(taken) permits appeared when the consumer left")
    }

    /// A client that sends its last request and shuts its sending side at once, the request and the end of
    /// input arriving together in one edge of the loop's edge-triggered `epoll` (made certain here: the
    /// loop is held in a call while they arrive): the request is answered, the end is noticed (the server
    /// closes the connection), and the lock the connection held is released.
    @Test func aRequestAndTheEndOfInputInOneReadAreBothSeen() throws {
        let server = try ManagerServer(authkey: key)
        let gate = LoopGate()
        server.register("Gate", shared: gate)
        try server.start()
        defer { server.shutdown() }
        let g = try create(server, key: key, "Gate")
        let l = try create(server, key: key, "Lock")
        let d = try create(server, key: key, "dict")
        let holder = try RawChannel(server, key: key)
        let b = try RawChannel(server, key: key)
        for round in 0..<3 {
            let a = try RawChannel(server, key: key)
            #expect(try a.call(l, "acquire") == returned(true))
            try holder.send(g, "hold")
            #expect(gate.entered.wait(timeout: .seconds(30)))  // the loop is inside the call
            try a.send(d, "__setitem__", ["last", .int(Int64(round))])
            // Done sending (a full close would also bring a reset later, and with it a second edge).
            a.c.shutdownSocket(reading: false, writing: true)
            try gate.release.release()
            #expect(try holder.reply() == ok)
            #expect(try a.reply() == ok)
            do {  // and then the server closed it
                _ = try a.reply()
                Issue.record("a reply after the last request")
            } catch let e as MultiprocessingError {
                #expect(e.code == .endOfFile, "round \(round): \(e)")
            }
            #expect(try b.call(l, "acquire", [true, .float(10)]) == returned(true), "round \(round)")
            #expect(try b.call(d, "__getitem__", ["last"]) == returned(.int(Int64(round))))
            #expect(try b.call(l, "release") == ok)
        }
    }
    /// A client that connects and never answers the challenge is disconnected at the handshake limit (the
    /// loop's own deadline, not a thread's timed read), and the server goes on.
    @Test func aClientSilentInTheHandshakeIsDisconnectedAtTheLimit() throws {
        let server = try ManagerServer(authkey: key, handshakeTimeout: .milliseconds(200))
        try server.start()
        defer { server.shutdown() }
        let silent = try connect(to: server.address, authkey: nil)
        defer { silent.close() }
        _ = try silent.recvBytes(timeout: .seconds(30))  // the challenge, which it leaves unanswered
        // The server ends the connection; 30 s is the test's patience, 200 ms the limit under test.
        do {
            let more = try silent.recvBytes(timeout: .seconds(30))
            Issue.record("expected the connection to end, got \(more.count) bytes")
        } catch let e as MultiprocessingError {
            #expect(e.code != .timedOut, "the silent client was not disconnected: \(e)")
        }
        // And a client that does answer is served.
        let d = try create(server, key: key, "dict")
        #expect(!d.isEmpty)
    }
}

/// A served object whose `hold` runs on the server's event loop (it says it never blocks) and waits
/// there until the test releases it: the loop does nothing else meanwhile.
private final class LoopGate: ManagedObject, @unchecked Sendable {  // thread-safe parts
    let entered = Threading.Event()
    let release = Threading.Semaphore(0)
    let exposed = ["hold"]

    func mayBlock(_ method: String) -> Bool { false }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        entered.set()
        _ = release.acquire(timeout: .seconds(30))
        entered.clear()
        return .none
    }
}

/// The call threads when the system refuses a new thread (`pthread_create` failing: out of memory or a
/// thread limit), with a thread starter that succeeds as often as allowed and then fails.
@Suite(.timeLimit(.minutes(1)))
struct ServedThreadsTests {
    /// Starts real threads while `allowed` lasts, then refuses.
    final class Starter: Sendable {
        let allowed: Atomic<Int>
        init(_ allowed: Int) { self.allowed = Atomic(allowed) }
        func start(_ body: @escaping @Sendable () -> Void) throws(ThreadingError) {
            guard allowed.subtract(1, ordering: .relaxed).oldValue > 0 else {
                throw ThreadingError(.threadCreation, "refused for the test")
            }
            try OSThread(daemon: true, body).start()
        }
    }

    @Test func aCallWithNoThreadAtAllIsRefusedNotLost() {
        let starter = Starter(0)
        let threads = ServedThreads(limit: 4, startThread: starter.start) { _ in }
        let ran = Atomic<Bool>(false)
        #expect(throws: ThreadingError.self) { try threads.submit { ran.store(true, ordering: .relaxed) } }
        #expect(threads.count == 0)
        let didRun = ran.load(ordering: .relaxed)
        #expect(!didRun)
    }

    @Test func aCallThatGetsNoThreadOfItsOwnWaitsForABusyOne() throws {
        let starter = Starter(1)
        let threads = ServedThreads(limit: 4, startThread: starter.start) { _ in }
        let first = Threading.Event()
        let release = Threading.Event()
        let second = Threading.Event()
        try threads.submit {
            first.set()
            _ = release.wait(timeout: .seconds(30))
        }
        #expect(first.wait(timeout: .seconds(30)))
        // The first thread is busy and no second one can start: the call is queued to the busy one.
        try threads.submit { second.set() }
        #expect(threads.count == 1)
        #expect(!second.isSet)
        release.set()
        #expect(second.wait(timeout: .seconds(30)), "the queued call ran once the thread was free")
    }
}
