import Foundation
import Multiprocessing
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingManagers

/// Replaces CPython 3.11's handshake with 3.12's (`{sha256}` challenges and answers), so a 3.11
/// interpreter exercises the modern flavour.
let forceModernHandshake = """
    import hmac, os
    import multiprocessing.connection as mc
    def deliver(c, authkey):
        msg = b'{sha256}' + os.urandom(40)
        c.send_bytes(b'#CHALLENGE#' + msg)
        r = c.recv_bytes(256)
        if r != b'{sha256}' + hmac.new(authkey, msg, 'sha256').digest():
            c.send_bytes(b'#FAILURE#'); raise mc.AuthenticationError('digest received was wrong')
        c.send_bytes(b'#WELCOME#')
    def answer(c, authkey):
        msg = c.recv_bytes(256)[len(b'#CHALLENGE#'):]
        c.send_bytes(b'{sha256}' + hmac.new(authkey, msg, 'sha256').digest())
        if c.recv_bytes(256) != b'#WELCOME#': raise mc.AuthenticationError('digest sent was rejected')
    mc.deliver_challenge, mc.answer_challenge = deliver, answer

    """

/// A CPython worker's first lines: connects to the queue `get_task_queue` served at `host:port` (key
/// `abc`) and binds it to `q` — the seed's task_worker.py.
func pythonTaskQueueClient(host: String, port: UInt16) -> String {
    """
    from multiprocessing.managers import BaseManager
    class M(BaseManager): pass
    M.register('get_task_queue')
    m = M(address=('\(host)', \(port)), authkey=b'abc')
    m.connect()
    q = m.get_task_queue()

    """
}

/// The seed's program as a CPython client of our server, plus exact types, errors and the other proxies.
let seedClient = """
    import sys, queue
    from multiprocessing.managers import SyncManager
    port, key = int(sys.argv[1]), sys.argv[2].encode()
    m = SyncManager(address=('127.0.0.1', port), authkey=key)
    m.connect()
    d = m.dict()
    l = m.list(range(10))
    d[1] = '1'; d['2'] = 2; d[0.25] = None
    l.reverse()
    print(d)
    print(l)
    d['types'] = (True, 1.0, 2**70, b'x', [None], {'k': (1,)})
    t = d['types']
    print(type(t).__name__, [type(x).__name__ for x in t], t[2] == 2**70)
    try:
        d['missing']
    except KeyError as e:
        print('KeyError', e)
    q = m.Queue()
    q.put(5); q.put('five')
    print(q.qsize(), q.get(), q.get(timeout=1))
    try:
        q.get(timeout=0.2)
    except queue.Empty:
        print('Empty')
    ns = m.Namespace()
    ns.x = 10
    print(ns.x)
    del d, l, t, q, ns
    print('done')
    """

@Suite(.serialized, .timeLimit(.minutes(2)))
struct ManagerServerTests {
    let key = Array("abc".utf8)

    func port(_ s: ManagerServer) throws -> Int { Int(try tcpPort(s)) }

    @Test(arguments: ["legacy", "modern"])
    func cpythonClientRunsTheSeedProgram(handshake: String) throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let script = (handshake == "modern" ? forceModernHandshake : "") + seedClient
        let (code, out) = try runPython(script, ["\(try port(server))", "abc"])
        #expect(code == 0, "\(out)")
        let lines = out.split(separator: "\n").map(String.init)
        #expect(
            lines == [
                "{1: '1', '2': 2, 0.25: None}", "[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]",
                "tuple ['bool', 'float', 'int', 'bytes', 'list', 'dict'] True", "KeyError 'missing'",
                "2 5 five", "Empty", "10", "done",
            ],
            "\(out)"
        )
        // Every proxy is gone: the server freed every object.
        try eventually("every object freed (\(server.objectCount) left)") { server.objectCount == 0 }
    }

    @Test func aWrongKeyIsRefusedAndTheServerGoesOn() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let bad = """
            import sys
            from multiprocessing import AuthenticationError
            from multiprocessing.managers import SyncManager
            m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'wrong')
            try:
                m.connect(); print('connected')
            except AuthenticationError as e:
                print('AuthenticationError', e)
            """
        let (_, out) = try runPython(bad, ["\(try port(server))"])
        #expect(out.contains("AuthenticationError"), "\(out)")
        let (code, good) = try runPython(seedClient, ["\(try port(server))", "abc"])
        #expect(code == 0 && good.contains("done"), "\(good)")
    }

    /// 50 clients connect and say nothing; a good client still gets its proxy without waiting for them
    /// (one silent client holding the server up would cost the listener's 10 s handshake limit).
    @Test func silentClientsDoNotStallTheServer() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let silent = try (0..<50).map { _ in try connect(to: server.address, authkey: nil) }
        let timed = """
            import sys, time
            from multiprocessing.managers import SyncManager
            t0 = time.perf_counter()
            m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
            m.connect()
            d = m.dict(); d['a'] = 1
            print('%.1f' % ((time.perf_counter() - t0) * 1000))
            """
        let (code, out) = try runPython(timed, ["\(try port(server))"])
        #expect(code == 0, "\(out)")
        let ms = Double(out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 1e9
        // Below the handshake limit (10 s) that a silent client ahead of it would cost, with room for a
        // busy machine (it takes milliseconds).
        #expect(ms < 8_000, "connect + dict() + one call took \(ms) ms with 50 silent clients")
        withExtendedLifetime(silent) {}
    }

    /// A pickle naming `os.system`, garbage and a truncated pickle: each refused with a traceback reply,
    /// and the connection and the server still serve.
    @Test func hostilePicklesAreRefused() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let c = try connect(to: server.address, authkey: key)
        try c.sendBytes(try PickleWriter().write(.tuple([.none, "accept_connection", .tuple(["x"]), .dict([])])))
        #expect(try PickleReader().read(try c.recvBytes(timeout: .seconds(5))) == .tuple(["#RETURN", .none]))
        // (os.system, 'id') as a call request.
        let system = hex("8004 8c05706f736978 94 8c0673797374656d 94 93 94 8c026964 94 85 94 52 94 2e")
        for bad in [system, [0x80, 0x04, 0x4e], [1, 2, 3], hex("80048c03616263 2e")] {
            try c.sendBytes(bad)
            let reply = try PickleReader().read(try c.recvBytes(timeout: .seconds(5)))
            #expect(reply.items?.first == "#TRACEBACK", "\(reply)")
        }
        // Still serving, on the same connection and on new ones.
        let d = try PickleReader().read(
            try oneShot(server, .tuple([.none, "create", .tuple(["dict"]), .dict([])]))
        )
        #expect(d.items?.first == "#RETURN")
        #expect(server.objectCount == 1)
    }

    /// A frame announcing 2 GiB: that connection is dropped, the server goes on serving.
    @Test func anOversizedFrameDropsOnlyItsConnection() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let c = try connect(to: server.address, authkey: key)
        var header: [UInt8] = [0x7f, 0xff, 0xff, 0xff, 0x80, 0x04]
        _ = write(c.fileDescriptor, &header, header.count)
        let closed = #expect(throws: MultiprocessingError.self) { try c.recvBytes(timeout: .seconds(5)) }
        #expect(closed?.code != .timedOut, "closed on us, not left open: \(String(describing: closed))")
        let r = try PickleReader().read(try oneShot(server, .tuple([.none, "dummy", .tuple([]), .dict([])])))
        #expect(r == .tuple(["#RETURN", .string(ManagerServer.keepOpenMarker)]))
    }

    /// A pipelined `put(contentsOf:)` into a bounded queue that fills: the call fails at its timeout, the
    /// queue keeps exactly the items whose puts were answered, and the put left blocked on the server is
    /// abandoned with its connection (it does not land later, when room appears).
    @Test func aPipelinedPutThatCannotFinishKeepsOnlyWhatWasAnswered() throws {
        let key = Array("abc".utf8)
        let server = try ManagerServer(authkey: key)
        let queue = server.registerQueue("bounded", maxsize: 5)
        try server.start()
        defer { server.shutdown() }
        let client = try ManagerClient(address: server.address, authkey: key)
        let q = QueueProxy(try client.create("bounded"))
        #expect(throws: (any Error).self) {
            try q.put(contentsOf: (0..<10).map { PythonValue.int(Int64($0)) }, timeout: .milliseconds(500))
        }
        // The server sees the channel go: the blocked put gives up, and the connection's thread (the only
        // one that could still carry it out) has ended once the server has only the kept connection left.
        try eventually("the blocked put given up (clients: \(server.clientCount))") {
            server.blockedCallCount == 0 && server.clientCount == 1
        }
        #expect(queue.count == 5)
        #expect(try queue.get(timeout: .seconds(1)) == .int(0))
        #expect(queue.count == 4)  // the abandoned put did not take the room
        // The client still works on a new channel.
        try q.put(.int(99))
        #expect(queue.count == 5)
    }

    /// Our client keeps the one connection `connect()` opened for its one-shot requests (no handshake per
    /// `create`/`incref`/`decref`); the server serves several requests on it, and a CPython client's one
    /// request per connection is served as before (the interoperability tests).
    @Test func oneShotRequestsShareTheKeptConnection() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let client = try ManagerClient(address: server.address, authkey: key)
        #expect(server.clientCount == 1)
        for _ in 0..<20 { _ = try client.dict() }
        // Tests run inside tasks, where a dropped proxy releases its reference from a thread of its own.
        try eventually("every proxy released") { try client.objectCount() == 0 }
        // The kept connection; the proxies' channel closed with them (the server's thread for it ends soon
        // after).
        try eventually("the proxies' channel closed (clients: \(server.clientCount))") { server.clientCount == 1 }
    }

    func oneShot(_ server: ManagerServer, _ request: PythonValue) throws -> [UInt8] {
        let c = try connect(to: server.address, authkey: key)
        defer { c.close() }
        try c.sendBytes(try PickleWriter().write(request))
        return try c.recvBytes(timeout: .seconds(5))
    }

    @Test func thousandsOfProxiesLeaveNoObject() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let churn = """
            import sys
            from multiprocessing.managers import SyncManager
            m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
            m.connect()
            import time; t0 = time.perf_counter()
            for i in range(int(sys.argv[2])):
                d = m.dict({'i': i}); l = m.list([i])
                assert d['i'] == i and l[0] == i
                del d, l
            print('ok %.1f' % ((time.perf_counter() - t0) * 1000), flush=True)
            """
        let (code, out) = try runPython(churn, ["\(try port(server))", "1000"], timeout: 60)
        #expect(code == 0 && out.contains("ok"), "\(out)")
        try eventually("every object freed (\(server.objectCount) left)") { server.objectCount == 0 }
    }

    /// SyncManager's synchronisation proxies against our server.
    @Test func cpythonSynchronisationProxies() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let script = """
            import sys, threading
            from multiprocessing.managers import SyncManager
            m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
            m.connect()
            l = m.Lock()
            with l:
                print('locked', l.acquire(timeout=0.1))
            print('again', l.acquire(False)); l.release()
            r = m.RLock()
            r.acquire(); r.acquire(); r.release(); r.release()
            s = m.BoundedSemaphore(1)
            s.acquire()
            print('sem', s.acquire(timeout=0.05))
            s.release()
            try:
                s.release()
            except ValueError:
                print('ValueError')
            e = m.Event()
            print('event', e.is_set(), e.wait(0.05))
            e.set(); print('event', e.wait(1))
            c = m.Condition()
            with c:
                print('cond', c.wait(0.05))
            v = m.Value('d', 0.0)
            v.value = 3.1415927
            print('value', v.value)
            a = m.Array('i', range(5))
            a[0] = -1
            print('array', len(a), a[0], a[4])
            b = m.Barrier(2, timeout=5)
            t = threading.Thread(target=b.wait); t.start()
            print('barrier', b.wait() in (0, 1)); t.join()
            print('done')
            """
        let (code, out) = try runPython(script, ["\(try port(server))"])
        #expect(code == 0, "\(out)")
        #expect(
            out.split(separator: "\n").map(String.init) == [
                "locked False", "again True", "sem False", "ValueError", "event False False", "event True",
                "cond False", "value 3.1415927", "array 5 -1 4", "barrier True", "done",
            ],
            "\(out)"
        )
        try eventually("every object freed (\(server.objectCount) left)") { server.objectCount == 0 }
    }

    /// A client that dies holding a served lock: the lock is released when its connection ends (CPython's
    /// own server keeps it locked for ever).
    @Test func aClientKilledHoldingALockReleasesIt() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let holder = try PythonPeer(
            """
            import sys, os, time
            from multiprocessing.managers import SyncManager
            m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
            m.connect()
            l = m.Lock()
            l.acquire()
            print(l._token.id, flush=True)
            time.sleep(60)
            """,
            ["\(try port(server))"]
        )
        let ident = holder.out.fileHandleForReading.availableLine()
        #expect(!ident.isEmpty)
        // Held: a second client waits in vain.
        let c = try connect(to: server.address, authkey: key)
        defer { c.close() }
        func call(_ method: String, _ args: PythonValue) throws -> PythonValue {
            try c.sendBytes(try PickleWriter().write(.tuple([.string(ident), .string(method), args, .dict([])])))
            return try PickleReader().read(try c.recvBytes(timeout: .seconds(10)))
        }
        #expect(
            try PickleReader().read(
                try { () throws -> [UInt8] in
                    try c.sendBytes(
                        try PickleWriter().write(.tuple([.none, "accept_connection", .tuple(["t"]), .dict([])]))
                    )
                    return try c.recvBytes(timeout: .seconds(5))
                }()
            ) == .tuple(["#RETURN", .none])
        )
        #expect(try call("acquire", .tuple([true, 0.1])) == .tuple(["#RETURN", false]))
        kill(holder.process.processIdentifier, SIGKILL)
        _ = holder.finish(timeout: 5)
        #expect(try call("acquire", .tuple([true, 5.0])) == .tuple(["#RETURN", true]))
    }
}

/// A client killed while its `get` blocks on the server: the server gives the call up (its client is
/// gone) instead of taking the next item for nobody — CPython's server would, and the item is lost.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct AbandonedCallTests {
    @Test func aKilledClientsBlockedGetTakesNothing() throws {
        let server = try ManagerServer(authkey: Array("abc".utf8))
        let queue = server.registerQueue("get_task_queue")
        try server.start()
        defer { server.shutdown() }
        let port = try tcpPort(server)
        try killPythonClientBlockedIn(
            server,
            pythonTaskQueueClient(host: "127.0.0.1", port: port),
            "q.get(timeout=30)"
        )
        // The dead client's get has ended with its connection's thread: nothing is left to take the item.
        try queue.put(.int(42))
        #expect(queue.count == 1)  // still there for the next worker
        #expect(try queue.get(timeout: .seconds(1)) == .int(42))
    }

    /// A CPython client whose proxy for the object `ident` (typeid `typeid`) runs `call`, killed while
    /// the call is blocked on the server.
    private func killClientBlockedIn(
        _ server: ManagerServer,
        _ typeid: String,
        _ proxyClass: String,
        ident: String,
        call: String
    ) throws {
        let port = try tcpPort(server)
        try killPythonClientBlockedIn(
            server,
            """
            from multiprocessing.managers import Token, \(proxyClass)
            p = \(proxyClass)(Token('\(typeid)', ('127.0.0.1', \(port)), '\(ident)'), 'pickle', authkey=b'abc')

            """,
            "p.\(call)"
        )
    }

    /// Runs `setup` then `call` (which waits up to 30 s) in CPython, and kills it (SIGKILL) once `call` is
    /// blocked on `server`; returns once the server has given the call up and its connection is gone
    /// (the connection's thread, the only one that could still carry the call out, has ended). Within
    /// 20 s: a server that waited the call's 30 s out would be too late.
    private func killPythonClientBlockedIn(_ server: ManagerServer, _ setup: String, _ call: String) throws {
        let before = server.clientCount
        let peer = try PythonPeer(setup + "print('waiting', flush=True)\n\(call)\nprint('returned', flush=True)\n")
        #expect(peer.out.fileHandleForReading.availableLine() == "waiting")
        try eventually("the call blocked on the server") { server.blockedCallCount == 1 }
        kill(peer.process.processIdentifier, SIGKILL)
        _ = peer.finish(timeout: 5)
        try eventually(
            within: .seconds(20),
            "the dead client's call given up (blocked: \(server.blockedCallCount), clients: \(server.clientCount), "
                + "before: \(before))"
        ) { server.blockedCallCount == 0 && server.clientCount == before }
    }

    /// Without the abandonment check the dead client's acquire, still waiting on the server, takes the
    /// next permit released.
    @Test func aKilledClientsBlockedAcquireTakesNoPermit() throws {
        let key = Array("abc".utf8)
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let client = try ManagerClient(address: server.address, authkey: key)
        let sem = try client.create("Semaphore", [.int(0)])
        // Returns once the dead client's connection is gone. (A permit taken by a call whose client is gone
        // would also come back when the reply fails to send, through the holder's release on disconnect;
        // the connection count tells the two apart: that call would hold its connection until then.)
        try killClientBlockedIn(server, "Semaphore", "AcquirerProxy", ident: sem.ident, call: "acquire(timeout=30)")
        _ = try sem.call("release")
        #expect(try sem.call("acquire", [.bool(true), .float(2)]) == .bool(true))
    }

    /// A dead client's `Event.wait` ends within the slices: its connection (and thread) is released,
    /// not held for the call's 30 s.
    @Test func aKilledClientsBlockedEventWaitReleasesItsConnection() throws {
        let key = Array("abc".utf8)
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let client = try ManagerClient(address: server.address, authkey: key)
        let event = try client.create("Event")
        // Returns once the dead client's connection is gone, well before the wait's 30 s.
        try killClientBlockedIn(server, "Event", "EventProxy", ident: event.ident, call: "wait(30)")
        _ = try event.call("set")
        #expect(try event.call("is_set") == .bool(true))
    }
}

/// Served dicts use Python's key equality.
@Suite struct PythonKeyTests {
    @Test func numbersThatPythonCallsEqualAreOneKey() throws {
        let key = Array("abc".utf8)
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let client = try ManagerClient(address: server.address, authkey: key)
        let d = try client.dict()
        _ = try d.proxy.call("__setitem__", [.int(1), "a"])
        _ = try d.proxy.call("__setitem__", [.float(1.0), "b"])
        _ = try d.proxy.call("__setitem__", [.bool(true), "c"])
        _ = try d.proxy.call("__setitem__", [.tuple([.int(2)]), "t"])
        _ = try d.proxy.call("__setitem__", [.float(1.5), "f"])
        #expect(try d.proxy.call("__len__") == .int(3))
        #expect(try d.proxy.call("__getitem__", [.int(1)]) == "c")
        #expect(try d.proxy.call("__getitem__", [.tuple([.float(2.0)])]) == "t")
        #expect(try d.proxy.call("__contains__", [.float(1.5)]) == .bool(true))
        #expect(try d.proxy.call("__contains__", [.int(2)]) == .bool(false))
        // The key first inserted stays (Python: {1: 'c', (2,): 't', 1.5: 'f'}).
        #expect(try d.proxy.call("keys") == .list([.int(1), .tuple([.int(2)]), .float(1.5)]))
        _ = try d.proxy.call("__delitem__", [.bool(true)])
        #expect(try d.proxy.call("__len__") == .int(2))
    }
}

/// The port of a server listening on TCP (every server here does).
func tcpPort(_ server: ManagerServer) throws -> UInt16 {
    guard case .tcp(_, let port) = server.address else {
        throw MultiprocessingTestError("the server listens on \(server.address), not on TCP")
    }
    return port
}
