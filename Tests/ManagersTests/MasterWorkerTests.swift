import Foundation
import Multiprocessing
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import MultiprocessingManagers

/// The tutorial's task_master.py, verbatim but for the port (a free one instead of 5000) and `time.sleep`
/// (no pause: the test would take 10 s).
func taskMasterScript(port: Int) -> String {
    """
    import time; time.sleep = lambda s: None
    import random, time, queue
    from multiprocessing.managers import BaseManager
    task_queue = queue.Queue()
    result_queue = queue.Queue()
    class QueueManager(BaseManager):
        pass
    QueueManager.register('get_task_queue', callable=lambda: task_queue)
    QueueManager.register('get_result_queue', callable=lambda: result_queue)
    manager = QueueManager(address=('', \(port)), authkey=b'abc')
    manager.start()
    task = manager.get_task_queue()
    result = manager.get_result_queue()
    for i in range(10):
        n = random.randint(0, 10000)
        print('Put task %d...' % n, flush=True)
        task.put(n)
    print('Try get results...', flush=True)
    for i in range(10):
        r = result.get(timeout=10)
        print('Result: %s' % r)
    manager.shutdown()
    print('master exit.')
    """
}

/// The tutorial's task_worker.py with its `Queue.Empty` typo fixed to `queue.Empty`.
func taskWorkerScript(port: Int) -> String {
    """
    import time; time.sleep = lambda s: None
    import time, sys, queue
    from multiprocessing.managers import BaseManager
    class QueueManager(BaseManager):
        pass
    QueueManager.register('get_task_queue')
    QueueManager.register('get_result_queue')
    server_addr = '127.0.0.1'
    print('Connect to server %s...' % server_addr)
    m = QueueManager(address=(server_addr, \(port)), authkey=b'abc')
    m.connect()
    task = m.get_task_queue()
    result = m.get_result_queue()
    for i in range(10):
        try:
            n = task.get(timeout=1)
            print('run task %d * %d...' % (n, n))
            r = '%d * %d = %d' % (n, n, n*n)
            time.sleep(1)
            result.put(r)
        except queue.Empty:
            print('task queue is empty.')
    print('worker exit.')
    """
}

/// Waits until something listens on `port` (a master started on a thread of the test's).
func waitUntilListening(_ port: UInt16, host: String = "127.0.0.1") throws {
    try eventually("a master listening on \(host):\(port)") {
        (try? connect(to: .tcp(host: host, port: port), timeout: .seconds(1))) != nil
    }
}

/// A free TCP port (bound and released).
func freePort() throws -> UInt16 {
    let l = try Listener(address: .tcp(host: "127.0.0.1", port: 0))
    defer { l.close() }
    guard case .tcp(_, let p) = l.address else { return 0 }
    return p
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct MasterWorkerTests {
    @Test(arguments: ["legacy", "modern"])
    func pythonWorkerAgainstTheSwiftMaster(handshake: String) throws {
        let port = try freePort()
        let lines = Locked<[String]>([])
        let master = background {
            try TaskMasterWorker.master(host: "", port: port, resultTimeout: .seconds(20)) { l in
                lines.withLock { $0.append(l) }
            }
        }
        try waitUntilListening(port)
        let script = (handshake == "modern" ? forceModernHandshake : "") + taskWorkerScript(port: Int(port))
        let (code, out) = try runPython(script)
        #expect(code == 0, "\(out)")
        #expect(out.contains("worker exit."))
        #expect(out.components(separatedBy: "run task").count - 1 == 10)
        #expect(try master.result(timeout: .seconds(30)))
        let said = lines.withLock { $0 }
        #expect(said.filter { $0.hasPrefix("Result: ") }.count == 10)
        #expect(said.last == "master exit.")
    }

    /// With `prefetch: 4` the worker pipelines puts, a `get` and `get_nowait`s, which Python's server
    /// serves as separate calls.
    @Test(arguments: [("legacy", 1), ("modern", 1), ("legacy", 4)])
    func swiftWorkerAgainstThePythonMaster(handshake: String, prefetch: Int) throws {
        let port = try freePort()
        let peer = try PythonPeer(
            (handshake == "modern" ? forceModernHandshake : "") + taskMasterScript(port: Int(port))
        )
        var out = ""
        defer { _ = peer.finish(timeout: 1) }
        // The master prints its tasks, then "Try get results...": then it serves.
        while true {
            let line = peer.out.fileHandleForReading.availableLine()
            out += line + "\n"
            if line.isEmpty || line == "Try get results..." { break }
        }
        let lines = Locked<[String]>([])
        let done = try TaskMasterWorker.worker(port: port, prefetch: prefetch) { l in lines.withLock { $0.append(l) } }
        #expect(done == 10)
        #expect(lines.withLock { $0.filter { $0.hasPrefix("run task ") }.count } == 10)
        let (code, rest) = peer.finish(timeout: 30)
        #expect(code == 0, "\(out)\(rest)")
        #expect(rest.components(separatedBy: "Result: ").count - 1 == 10, "\(rest)")
        #expect(rest.contains("master exit."))
    }

    /// Two workers share 100 tasks: each is answered exactly once (the master checks), whether a worker
    /// holds one task at a time or takes up to 8 per round trip.
    @Test(arguments: [1, 8])
    func swiftWorkersAgainstTheSwiftMaster(prefetch: Int) throws {
        let port = try freePort()
        let master = background { try TaskMasterWorker.master(port: port, tasks: 100, say: { _ in }) }
        try waitUntilListening(port)
        let workers = (0..<2).map { _ in
            background {
                try TaskMasterWorker.worker(
                    port: port,
                    tasks: 100,
                    taskTimeout: .milliseconds(300),
                    prefetch: prefetch,
                    say: { _ in }
                )
            }
        }
        let outcomes = workers.map { w in Result { try w.result(timeout: .seconds(60)) } }
        let answered = outcomes.reduce(0) { $0 + ((try? $1.get()) ?? 0) }
        #expect(answered == 100)
        // With prefetching, one worker may take all 100 tasks before the other connects: that one then
        // finds the master gone (refused, or closed during shutdown) having taken nothing. Any other
        // failure is one.
        for case .failure(let e) in outcomes {
            let code = (e as? MultiprocessingError)?.code
            #expect(code == .endOfFile || code == .system || code == .closed, "\(e)")
        }
        #expect(try master.result(timeout: .seconds(30)))
    }

    /// The tutorial's defaults (every interface, key `abc`) still work, but the master says on start that
    /// anyone who can reach it can use it; on loopback, or with a long key, it says nothing.
    @Test func theMasterSaysWhenAWellKnownKeyServesTheNetwork() throws {
        #expect(TaskMasterWorker.exposure(host: "", authkey: Array("abc".utf8)) != nil)
        #expect(TaskMasterWorker.exposure(host: "10.0.0.5", authkey: Array("short".utf8)) != nil)
        #expect(TaskMasterWorker.exposure(host: "127.0.0.1", authkey: Array("abc".utf8)) == nil)
        #expect(TaskMasterWorker.exposure(host: "", authkey: Array("a long random key, 32 bytes!!!!".utf8)) == nil)
        guard let mp = builtExecutable("mp") else { return }
        for (host, warned) in [(nil, true), ("127.0.0.1", false)] as [(String?, Bool)] {
            let run = try runToEnd(
                mp,
                ["master", "--port", "\(try freePort())", "--tasks", "0"] + (host.map { ["--host", $0] } ?? [])
            )
            #expect(run.status == 0, "\(run.output)")
            #expect(run.output.contains("well-known or short authkey") == warned, "\(host ?? "all"): \(run.output)")
        }
    }

    /// The master restarts on the same port: the worker reconnects (with backoff) and serves the new one.
    @Test func aWorkerReconnectsWhenItsMasterRestarts() throws {
        let port = try freePort()
        let key = Array("abc".utf8)
        func startMaster() throws -> (ManagerServer, BlockingQueue<PythonValue>, BlockingQueue<PythonValue>) {
            let server = try ManagerServer(address: .tcp(host: "127.0.0.1", port: port), authkey: key)
            let tasks = server.registerQueue("get_task_queue")
            let results = server.registerQueue("get_result_queue")
            try server.start()
            return (server, tasks, results)
        }
        var (server, tasks, results) = try startMaster()
        let said = Locked<[String]>([])
        let worker = background {
            try TaskMasterWorker.worker(
                port: port,
                tasks: 6,
                taskTimeout: .seconds(5),
                reconnectFor: .seconds(20),
                say: { l in said.withLock { $0.append(l) } }
            )
        }
        for n in 1...3 { try tasks.put(.int(Int64(n))) }
        for n in 1...3 { #expect(try results.get(timeout: .seconds(10)) == .string(TaskMasterWorker.answer(n))) }
        try eventually("the worker waiting for its fourth task") { server.blockedCallCount == 1 }
        server.shutdown()
        // The worker has seen its master go (it says so before its first retry): what follows is a
        // reconnection to a new master, not a connection that never broke.
        try eventually("the worker retrying (\(said.withLock { $0 }))") {
            said.withLock { $0.contains { $0.hasPrefix("reconnecting in") } }
        }
        (server, tasks, results) = try startMaster()
        defer { server.shutdown() }
        for n in 4...6 { try tasks.put(.int(Int64(n))) }
        for n in 4...6 {
            #expect(
                try results.get(timeout: .seconds(20)) == .string(TaskMasterWorker.answer(n)),
                "\(said.withLock { $0 })"
            )
        }
        #expect(try worker.result(timeout: .seconds(30)) == 6)
        let lines = said.withLock { $0 }
        #expect(lines.contains("reconnected."), "\(lines)")
        #expect(lines.contains { $0.hasPrefix("reconnecting in") })
    }

    /// A worker started before its master (nothing listens yet) connects once the master listens, within
    /// `reconnectFor` (the demo starts both at once and no longer sleeps in between).
    @Test func aWorkerStartedBeforeItsMasterWaitsForIt() throws {
        let port = try freePort()
        let key = Array("abc".utf8)
        let waiting = Event()
        let worker = background {
            try TaskMasterWorker.worker(
                port: port,
                tasks: 2,
                taskTimeout: .seconds(5),
                reconnectFor: .seconds(20),
                say: { l in if l.hasPrefix("reconnecting in") { waiting.set() } }
            )
        }
        #expect(waiting.wait(timeout: .seconds(20)))  // it found no master and is retrying
        let server = try ManagerServer(address: .tcp(host: "127.0.0.1", port: port), authkey: key)
        let tasks = server.registerQueue("get_task_queue")
        let results = server.registerQueue("get_result_queue")
        try server.start()
        defer { server.shutdown() }
        for n in 1...2 { try tasks.put(.int(Int64(n))) }
        for n in 1...2 { #expect(try results.get(timeout: .seconds(30)) == .string(TaskMasterWorker.answer(n))) }
        #expect(try worker.result(timeout: .seconds(30)) == 2)
    }

    /// A wrong key is an answer, not an absence: with `reconnectFor` too, the worker fails at once instead
    /// of retrying for the whole window.
    @Test func aWrongKeyFailsAtOnceEvenWithReconnect() throws {
        let port = try freePort()
        let server = try ManagerServer(address: .tcp(host: "127.0.0.1", port: port), authkey: Array("abc".utf8))
        _ = server.registerQueue("get_task_queue")
        _ = server.registerQueue("get_result_queue")
        try server.start()
        defer { server.shutdown() }
        let said = Locked<[String]>([])
        let started = ContinuousClock.now
        #expect(throws: MultiprocessingError.self) {
            try TaskMasterWorker.worker(
                port: port,
                authkey: Array("wrong".utf8),
                tasks: 1,
                reconnectFor: .seconds(600),
                say: { l in said.withLock { $0.append(l) } }
            )
        }
        #expect(ContinuousClock.now - started < .seconds(300))  // not the 600 s window
        #expect(!said.withLock { $0 }.contains { $0.hasPrefix("reconnecting in") })
    }

    /// Without `reconnectFor`, a lost master ends the worker (Python's behaviour).
    @Test func withoutReconnectALostMasterEndsTheWorker() throws {
        let port = try freePort()
        let server = try ManagerServer(address: .tcp(host: "127.0.0.1", port: port), authkey: Array("abc".utf8))
        _ = server.registerQueue("get_task_queue")
        _ = server.registerQueue("get_result_queue")
        try server.start()
        let worker = background {
            try TaskMasterWorker.worker(port: port, tasks: 5, taskTimeout: .seconds(5), say: { _ in })
        }
        try eventually("the worker waiting for a task") { server.blockedCallCount == 1 }
        server.shutdown()
        #expect(try worker.result(timeout: .seconds(10)) == 0)
    }

    @Test func aWrongKeyIsRefused() throws {
        let port = try freePort()
        let master = background {
            try TaskMasterWorker.master(port: port, tasks: 1, resultTimeout: .milliseconds(500), say: { _ in })
        }
        try waitUntilListening(port)
        #expect(throws: (any Error).self) {
            try TaskMasterWorker.worker(port: port, authkey: Array("wrong".utf8), say: { _ in })
        }
        #expect(try master.result(timeout: .seconds(10)) == false)  // no result came back
    }
}
