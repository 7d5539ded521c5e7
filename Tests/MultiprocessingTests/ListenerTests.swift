import Foundation
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import Multiprocessing

let pythonEchoClient = """
    import sys
    from multiprocessing.connection import Client
    from multiprocessing import AuthenticationError
    port, key = int(sys.argv[1]), sys.argv[2].encode()
    try:
        c = Client(('127.0.0.1', port), authkey=key)
    except AuthenticationError as e:
        print('AUTH-ERROR', type(e).__name__); sys.exit(3)
    c.send_bytes(b'hello from python')
    print('GOT', c.recv_bytes().decode())
    c.close()
    """

/// Python 3.12's client side, verbatim in logic, for the `{sha256}` handshake (python3 here is 3.11).
let python312Client = """
    import sys, hmac, os, socket
    from multiprocessing.connection import Connection
    port, key = int(sys.argv[1]), sys.argv[2].encode()
    s = socket.create_connection(('127.0.0.1', port))
    c = Connection(s.detach())
    msg = c.recv_bytes(256)
    assert msg.startswith(b'#CHALLENGE#'), msg
    msg = msg[len(b'#CHALLENGE#'):]
    assert msg.startswith(b'{sha256}') and len(msg) == 48, msg
    c.send_bytes(b'{sha256}' + hmac.new(key, msg, 'sha256').digest())
    verdict = c.recv_bytes(256)
    if verdict != b'#WELCOME#':
        print('REJECTED'); sys.exit(3)
    challenge = b'{sha256}' + os.urandom(40)
    c.send_bytes(b'#CHALLENGE#' + challenge)
    resp = c.recv_bytes(256)
    ok = resp == b'{sha256}' + hmac.new(key, challenge, 'sha256').digest()
    c.send_bytes(b'#WELCOME#' if ok else b'#FAILURE#')
    print('SERVER-ANSWER', 'OK' if ok else 'BAD')
    c.send_bytes(b'ping312')
    print('GOT', c.recv_bytes().decode())
    """

let pythonEchoServer = """
    import sys
    from multiprocessing.connection import Listener
    from multiprocessing import AuthenticationError
    key = sys.argv[1].encode()
    l = Listener(('127.0.0.1', 0), authkey=key)
    print(l.address[1], flush=True)
    try:
        c = l.accept()
    except AuthenticationError as e:
        print('AUTH-ERROR', flush=True); sys.exit(3)
    c.send_bytes(b'echo:' + c.recv_bytes())
    c.close()
    """

/// Python 3.12's server side (challenges with `{sha256}`, accepts `{sha256}` answers).
let python312Server = """
    import sys, hmac, os
    from multiprocessing.connection import Listener
    key = sys.argv[1].encode()
    l = Listener(('127.0.0.1', 0))
    print(l.address[1], flush=True)
    c = l.accept()
    challenge = b'{sha256}' + os.urandom(40)
    c.send_bytes(b'#CHALLENGE#' + challenge)
    resp = c.recv_bytes(256)
    ok = resp == b'{sha256}' + hmac.new(key, challenge, 'sha256').digest()
    c.send_bytes(b'#WELCOME#' if ok else b'#FAILURE#')
    if not ok:
        print('CLIENT-BAD', flush=True); sys.exit(3)
    msg = c.recv_bytes(256)[len(b'#CHALLENGE#'):]
    c.send_bytes(b'{sha256}' + hmac.new(key, msg, 'sha256').digest())
    assert c.recv_bytes(256) == b'#WELCOME#'
    c.send_bytes(b'echo:' + c.recv_bytes())
    print('DONE', flush=True)
    """

@Suite(.serialized, .timeLimit(.minutes(2)))
struct ListenerTests {
    let key = Array("secret-key".utf8)

    func port(_ l: Listener) -> UInt16 {
        if case .tcp(_, let p) = l.address { return p }
        return 0
    }

    @Test func swiftToSwiftWithAuthkey() async throws {
        let l = try Listener(authkey: key)
        let server = background { () throws -> String in
            let c = try l.accept(timeout: .seconds(10))
            let s: String = try c.recv(timeout: .seconds(10))
            try c.send(s.uppercased())
            return s
        }
        let c = try connect(to: l.address, authkey: key)
        var nodelay: Int32 = 0
        var len = socklen_t(4)
        getsockopt(c.fileDescriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &nodelay, &len)
        #expect(nodelay != 0)  // CPython does not set it and pays Nagle + delayed-ACK latency
        try c.send("hi")
        #expect(try c.recv(String.self, timeout: .seconds(10)) == "HI")
        #expect(try await server.value == "hi")
    }

    @Test func wrongAuthkeyFailsOnBothSides() async throws {
        let l = try Listener(authkey: key)
        let server = background { () -> MultiprocessingError.Code? in
            do {
                _ = try l.accept(timeout: .seconds(10))
                return nil
            } catch let e as ClientError {  // the client's failure, not the listener's
                #expect(e.peer != nil)
                return e.code
            }
        }
        do {
            _ = try connect(to: l.address, authkey: Array("wrong".utf8))
            Issue.record("expected authenticationFailed")
        } catch let e as MultiprocessingError {
            #expect(e.code == .authenticationFailed)
        }
        #expect(try await server.value == .authenticationFailed)
    }

    @Test func serverSurvivesBadClients() async throws {
        let l = try Listener(authkey: key, handshakeTimeout: .milliseconds(300))
        let outcomes = Locked<[String]>([])
        let server = background {
            for _ in 0..<4 {
                do {
                    let c = try l.accept(timeout: .seconds(20))
                    try c.send("welcome")
                    outcomes.withLock { $0.append("ok") }
                } catch let e as ClientError {
                    outcomes.withLock { $0.append("\(e.code)") }
                } catch {
                    outcomes.withLock { $0.append("other: \(error)") }
                }
            }
        }
        // 1: silent client
        let silent = try connect(to: l.address, authkey: nil)
        // 2: garbage (an oversized frame header)
        let garbage = try connect(to: l.address, authkey: nil)
        _ = try? garbage.recvBytes(maxLength: 256, timeout: .seconds(5))  // the challenge
        var huge: [UInt8] = [0x7f, 0xff, 0xff, 0xff]
        _ = write(garbage.fileDescriptor, &huge, 4)
        // 3: a malformed response
        let malformed = try connect(to: l.address, authkey: nil)
        _ = try? malformed.recvBytes(maxLength: 256, timeout: .seconds(5))
        try? malformed.sendBytes([1, 2, 3])
        // 4: a good client still gets in.
        let good = try connect(to: l.address, authkey: key)
        let greeting = try good.recv(String.self, timeout: .seconds(10))
        #expect(greeting == "welcome")
        try await server.value
        let results = outcomes.withLock { $0 }
        #expect(results.filter { $0 == "ok" }.count == 1)
        #expect(results.count == 4)
        #expect(results.contains("timedOut"))
        #expect(results.contains("authenticationFailed"))
        silent.close()
    }

    @Test func pythonClientToOurListener() async throws {
        let l = try Listener(authkey: key)
        let server = background { () throws in
            let c = try l.accept(timeout: .seconds(20))
            let msg = try c.recvBytes(timeout: .seconds(10))
            try c.sendBytes(Array("echo:".utf8) + msg)
        }
        let (status, out) = try await background { try runPython(pythonEchoClient, [String(port(l)), "secret-key"]) }
            .value
        #expect(status == 0, "\(out)")
        #expect(out.contains("GOT echo:hello from python"))
        try await server.value
    }

    @Test func pythonClientWithWrongKeyGetsAuthenticationError() async throws {
        let l = try Listener(authkey: key)
        let server = background { () -> Bool in
            do {
                _ = try l.accept(timeout: .seconds(20))
                return false
            } catch { return true }
        }
        let (status, out) = try await background { try runPython(pythonEchoClient, [String(port(l)), "not-the-key"]) }
            .value
        #expect(status == 3, "\(out)")
        #expect(out.contains("AUTH-ERROR AuthenticationError"))  // not EOFError: we sent #FAILURE#
        #expect(try await server.value)
    }

    @Test func python312ClientToOurListener() async throws {
        let l = try Listener(authkey: key)
        let server = background { () throws in
            let c = try l.accept(timeout: .seconds(20))
            try c.sendBytes(Array("echo:".utf8) + (try c.recvBytes(timeout: .seconds(10))))
        }
        let (status, out) = try await background { try runPython(python312Client, [String(port(l)), "secret-key"]) }
            .value
        #expect(status == 0, "\(out)")
        #expect(out.contains("SERVER-ANSWER OK"))
        #expect(out.contains("GOT echo:ping312"))
        try await server.value
    }

    @Test func ourClientToPythonListener() throws {
        let peer = try PythonPeer(pythonEchoServer, ["secret-key"])
        let line = peer.out.fileHandleForReading.availableLine()
        let c = try connect(to: .tcp(host: "127.0.0.1", port: UInt16(line)!), authkey: key)
        try c.sendBytes(Array("from swift".utf8))
        #expect(try c.recvBytes(timeout: .seconds(10)) == Array("echo:from swift".utf8))
        let (status, _) = peer.finish()
        #expect(status == 0)
    }

    @Test func ourClientWithWrongKeyToPythonListener() throws {
        let peer = try PythonPeer(pythonEchoServer, ["secret-key"])
        let line = peer.out.fileHandleForReading.availableLine()
        do {
            _ = try connect(to: .tcp(host: "127.0.0.1", port: UInt16(line)!), authkey: Array("nope".utf8))
            Issue.record("expected authenticationFailed")
        } catch let e as MultiprocessingError {
            #expect(e.code == .authenticationFailed)
        }
        let (status, out) = peer.finish()
        #expect(status == 3)
        #expect(out.contains("AUTH-ERROR"))
    }

    @Test func ourClientToPython312StyleListener() throws {
        let peer = try PythonPeer(python312Server, ["secret-key"])
        let line = peer.out.fileHandleForReading.availableLine()
        let c = try connect(to: .tcp(host: "127.0.0.1", port: UInt16(line)!), authkey: key)
        try c.sendBytes(Array("x".utf8))
        #expect(try c.recvBytes(timeout: .seconds(10)) == Array("echo:x".utf8))
        let (status, out) = peer.finish()
        #expect(status == 0, "\(out)")
    }

    @Test func unixSocketListener() async throws {
        let path = "/tmp/mp-test-\(getpid()).sock"
        let l = try Listener(address: .unix(path: path), authkey: key)
        #expect(l.address == .unix(path: path))
        let server = Task.detached { () async throws in
            let c = try await l.accept()
            try c.send(try c.recv(Int.self, timeout: .seconds(10)) + 1)
        }
        // The client blocks: on its own thread, never on one of the (two) cooperative threads the server needs.
        let answer = background { () throws -> Int in
            let c = try connect(to: .unix(path: path), authkey: key)
            try c.send(41)
            return try c.recv(Int.self, timeout: .seconds(10))
        }
        #expect(try await answer.value == 42)
        try await server.value
        l.close()
        #expect(access(path, F_OK) != 0)  // the socket file is removed
    }

    /// Async accepts stuck in handshakes with silent clients must not hold cooperative threads (there are
    /// only two here): another task keeps running meanwhile.
    @Test func asyncAcceptHandshakesDoNotBlockTheCooperativePool() async throws {
        let l = try Listener(authkey: key, handshakeTimeout: .seconds(40))
        let socket = try #require(KernelView.tcpListenerInode(port: port(l)), "the listening socket")
        let accepts = (0..<4).map { _ in Task { try await l.accept() } }
        try await eventually("the accepts wait for clients") { () async in
            KernelView.epollWaitsForInput(onInode: socket)
        }
        let clock = ContinuousClock()
        let t0 = clock.now
        let silent = try (0..<4).map { _ in try connect(to: l.address, authkey: nil) }
        // Each handshake has sent its challenge and now waits for an answer that does not come.
        try await eventually("every handshake waits on its silent client") { () async throws in
            try silent.allSatisfy { try $0.poll() }
        }
        // This task was not starved meanwhile: blocked cooperative threads would hold it until the 40 s
        // handshake timeout (the margin below it absorbs a machine loaded by other suites).
        #expect(clock.now - t0 < .seconds(20))
        for c in silent { c.close() }  // the handshakes fail now (end of file), not at their timeout
        for a in accepts {
            await #expect(throws: ClientError.self) { try await a.value }
        }
    }

    @Test func connectRefusedAndTimeouts() throws {
        let l = try Listener()
        let addr = l.address
        l.close()
        #expect(throws: MultiprocessingError.self) { try connect(to: addr, timeout: .seconds(2)) }
        let l2 = try Listener()
        do {
            _ = try l2.accept(timeout: .milliseconds(30))
            Issue.record("expected timeout")
        } catch let e as MultiprocessingError {
            #expect(e.code == .timedOut)
        }
    }
}

@Suite(.timeLimit(.minutes(3)))
struct BootstrapEntryTests {
    /// Runs `mp-test-helper` with `arguments`: its exit status and output; when it is killed by a signal,
    /// the status is minus the signal and the output ends with its standard error (a crash's report).
    func helper(_ arguments: [String]) throws -> (Int32, String)? {
        guard let exe = testHelperExecutable() else { return nil }
        let p = Foundation.Process()
        p.executableURL = exe
        p.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // A helper that hangs (a deadlock in a crash handler, say) must fail the test, not hold the
        // suite's thread for ever: it is killed after two minutes (it takes milliseconds).
        let finished = Threading.Event()
        let pid = p.processIdentifier
        _ = background { if !finished.wait(timeout: .seconds(120)) { kill(pid, SIGKILL) } }
        defer { finished.set() }
        // Standard error on a thread of its own: a full pipe must not stop the program.
        let errText = background {
            String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        if p.terminationReason == .uncaughtSignal {
            let report = (try? errText.result(timeout: .seconds(10)))?.suffix(4000) ?? ""
            return (-p.terminationStatus, text + "\n[standard error]\n" + report)
        }
        return (p.terminationStatus, text)
    }

    /// `WorkerStart.entry = .bootstrap`: the worker runs `main` until it calls `bootstrap()`. Checked with
    /// `mp-test-helper` (built beside the test runner), whose `main` calls `bootstrap()` first.
    @Test func workerEntersThroughBootstrap() throws {
        guard let (status, text) = try helper(["bootstrap-check"]) else { return }
        #expect(status == 0, "\(text)")
        #expect(text.contains("answered 42, exit code 0"))
    }

    /// A program whose main.swift declares constants (an Int, a String, a Dictionary) and then calls
    /// `bootstrap()`: its pool workers see them (without this, a String read as garbage and crashed the
    /// worker with SIGSEGV, an Int read as 0), and they get the parent's arguments.
    @Test func topLevelConstantsExistInWorkers() throws {
        guard let (status, text) = try helper(["globals-check", "--flag"]) else { return }
        #expect(status == 0, "\(text)")
        let line = { (n: Int) in "\(n) hello from main.swift 2 args=globals-check,--flag\n" }
        #expect(text == line(20) + line(40))
        // Workers that start before main do not have them: the error names the cause and the fix.
        guard let (failed, failure) = try helper(["globals-check", "before-main"]) else { return }
        #expect(failed == 1, "\(failure)")
        #expect(failure.contains("top level of main.swift") && failure.contains("Call bootstrap()"), "\(failure)")
    }
}
