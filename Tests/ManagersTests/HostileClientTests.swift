import Foundation
import MultiprocessingTestSupport
import Testing
import Threading

/// A manager server in a process of its own (`mp-test-helper manager-server [NOFILE]`): started, its port
/// read, and reaped by `finish`. Its standard error (the server's log) goes to the same pipe.
final class ServerProcess: @unchecked Sendable {  // used by one test at a time
    let process = Foundation.Process()
    let out = Pipe()
    let port: Int
    /// Signalled when the process exits (its termination handler).
    private let exited = DispatchSemaphore(value: 0)

    init(_ arguments: [String]) throws {
        guard let helper = testHelperExecutable() else { throw CocoaError(.fileNoSuchFile) }
        process.executableURL = helper
        process.arguments = arguments
        process.standardOutput = out
        process.standardError = out
        process.terminationHandler = { [exited] _ in exited.signal() }
        try process.run()
        var line = ""
        repeat { line = out.fileHandleForReading.availableLine() } while !line.isEmpty && !line.hasPrefix("port ")
        guard let p = Int(line.dropFirst("port ".count)) else {
            process.terminate()
            process.waitUntilExit()
            throw MultiprocessingTestError("the server did not start: \(line)")
        }
        port = p
    }

    /// Waits for the process to exit (killing it after `timeout`); returns its status, how it ended and
    /// the rest of its output.
    func finish(
        timeout: TimeInterval = 60
    ) -> (status: Int32, reason: Foundation.Process.TerminationReason, out: String) {
        if exited.wait(timeout: .now() + timeout) == .timedOut {
            kill(process.processIdentifier, SIGKILL)
            exited.wait()
        }
        process.waitUntilExit()
        let rest = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (process.terminationStatus, process.terminationReason, rest)
    }
}

struct MultiprocessingTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Python helpers for raw requests: a request pickled by hand (so that it can be as hostile as wanted),
/// and the five ways of nesting a value 10⁵ or 10⁶ deep that used to kill the server.
let rawRequests = """
    import sys
    from multiprocessing.connection import Client
    port = int(sys.argv[1])
    def s(x):
        b = x.encode()
        return b'X' + len(b).to_bytes(4, 'little') + b
    def request(method, args):
        return b'\\x80\\x02(N' + s(method) + b'(' + args + b't}t.'
    def G(m, n):
        return b'c' + m.encode() + b'\\n' + n.encode() + b'\\n'
    def shapes(n):
        yield 'list', b']' * n + b'a' * (n - 1)
        yield 'tuple', b')' + b'\\x85' * n
        yield 'dict', b'}K\\x01' * n + b'}' + b's' * n
        yield 'frozenset', (G('builtins', 'frozenset') + b']') * n + G('builtins', 'frozenset') + b')R' + b'a\\x85R' * n
        yield 'reduce', G('builtins', 'Exception') * n + b'N' + b'\\x85R' * n
    def call(raw):
        c = Client(('127.0.0.1', port), authkey=b'abc')
        try:
            c.send_bytes(raw)
            return c.recv()
        finally:
            c.close()
    """

@Suite(.serialized, .timeLimit(.minutes(5)))
struct HostileClientTests {
    /// Lists, tuples, dicts, frozensets and REDUCE calls nested 10⁵ and 10⁶ deep, sent by a client that
    /// holds the key: each is refused with an error naming the depth limit, and the server goes on
    /// serving. A list nested 150 deep (within the limit of 200) is stored, then released by `decref` (it used to be
    /// the `decref` of a proxy that killed the server).
    @Test func aTooDeepRequestIsAnErrorAndTheServerGoesOn() async throws {
        let server = try ServerProcess(["manager-server"])
        let script =
            rawRequests + "\n" + """
                for n in (10**5, 10**6):
                    for name, deep in shapes(n):
                        kind, msg = call(request('create', s('list') + deep))
                        print(name, n, kind, 'deeper than' in str(msg) or 'stack over' in str(msg))
                kind, (ident, exposed) = call(request('create', s('list') + b'](' + shapes(150).__next__()[1] + b'e'))
                print('stored', kind)
                print('decref', call(request('decref', s(ident)))[0])
                print('objects', call(request('number_of_objects', b''))[1])
                print('alive', call(request('dummy', b''))[0])
                print('shutdown', call(request('shutdown', b''))[0])
                """
        let (code, out, ended) = try await background {
            let (code, out) = try runPython(script, ["\(server.port)"], timeout: 240)
            return (code, out, server.finish())
        }.value
        #expect(code == 0, "\(out)")
        let lines = out.split(separator: "\n").map(String.init)
        for n in ["100000", "1000000"] {
            for shape in ["list", "tuple", "dict", "frozenset", "reduce"] {
                #expect(lines.contains("\(shape) \(n) #TRACEBACK True"), "\(shape) \(n): \(out)")
            }
        }
        #expect(lines.contains("stored #RETURN"), "\(out)")
        #expect(lines.contains("decref #RETURN"), "\(out)")
        #expect(lines.contains("objects 0"), "\(out)")
        #expect(lines.contains("alive #RETURN"), "\(out)")
        #expect(lines.contains("shutdown #RETURN"), "\(out)")
        #expect(ended.reason == .exit && ended.status == 0, "\(ended)")
    }

    /// A server at its descriptor limit (64) under 100 clients refuses the excess at once (a client is
    /// never left waiting in the handshake), logs it, and serves a new client once the others leave: a
    /// `ManagerServer`, and a user's own accept loop on a `Listener`.
    @Test(arguments: [
        ("manager-server", "out of file descriptors"),
        ("listener-server", "exhausted: MultiprocessingError.resourceExhausted"),
    ])
    func aServerOutOfDescriptorsRefusesPromptlyAndRecovers(server kind: String, logged: String) async throws {
        let server = try ServerProcess([kind, "64"])
        let script = exhaustionScript(manager: kind == "manager-server")
        let (code, out, ended) = try await background {
            let (code, out) = try runPython(script, ["\(server.port)"], timeout: 240)
            return (code, out, server.finish())
        }.value
        #expect(code == 0, "\(out)")
        #expect(out.contains("stuck 0"), "\(out)")
        #expect(out.contains("refused 0") == false, "the limit was never reached: \(out)")
        #expect(out.contains("served again"), "\(out)")
        #expect(ended.reason == .exit && ended.status == 0, "\(ended)")
        #expect(ended.out.contains(logged), "\(ended.out)")
    }

    /// 100 clients connect and stay; each is either served or refused (the connection ends), none waits
    /// for the handshake until its 60 s socket timeout. Then they leave, and a new client is served (tried
    /// until the server has closed the old connections).
    func exhaustionScript(manager: Bool) -> String {
        """
        import socket, sys, time
        from multiprocessing.connection import Client
        from multiprocessing.managers import dispatch
        socket.setdefaulttimeout(60)
        port = int(sys.argv[1])
        held, refused, stuck = [], 0, 0
        for i in range(100):
            try:
                c = Client(('127.0.0.1', port), authkey=b'abc')
                held.append(c)
            except socket.timeout:
                stuck += 1
            except (EOFError, OSError):
                refused += 1
        print('held', len(held), 'refused', refused, 'stuck', stuck, flush=True)
        for c in held:
            c.close()
        deadline = time.time() + 60
        while True:
            try:
                c = Client(('127.0.0.1', port), authkey=b'abc')
                if \(manager ? "True" : "False"):
                    dispatch(c, None, 'dummy')
                else:
                    c.send_bytes(b'hello')
                    assert c.recv_bytes() == b'hello'
                print('served again', flush=True)
                break
            except (EOFError, OSError) as e:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)  # the server is still closing the old connections: try again
        if \(manager ? "True" : "False"):
            c2 = Client(('127.0.0.1', port), authkey=b'abc')
            dispatch(c2, None, 'shutdown')
        else:
            c.send_bytes(b'stop')
        """
    }
}
