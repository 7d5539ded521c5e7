import Foundation
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingManagers

/// Master and workers on two "machines": this test's network namespace and one of its own, joined by a
/// veth pair, so the traffic crosses a real interface (not loopback) and one side can vanish by taking
/// its link down. Skipped, with the reason, where network namespaces are not permitted (they need root).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct MultiHostTests {
    /// Makes the namespace or records why the test is skipped.
    func namespace(_ tag: String) -> VethNamespace? {
        let (ns, why) = VethNamespace.make(tag)
        if ns == nil { print("MultiHostTests skipped: \(why)") }
        return ns
    }

    /// The seed's task_worker.py in the other namespace against the Swift master bound to every interface.
    @Test func pythonWorkerOnAnotherHost() throws {
        guard let ns = namespace("w") else { return }
        defer { ns.remove() }
        let port = try freePort()
        let master = background {
            try TaskMasterWorker.master(host: "", port: port, resultTimeout: .seconds(20), say: { _ in })
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while (try? connect(to: .tcp(host: ns.hostAddress, port: port), timeout: .seconds(1))) == nil
            && ContinuousClock.now < deadline
        {
            usleep(10_000)
        }
        let script = taskWorkerScript(port: Int(port)).replacingOccurrences(
            of: "server_addr = '127.0.0.1'",
            with: "server_addr = '\(ns.hostAddress)'"
        )
        #expect(script.contains(ns.hostAddress))
        let peer = try PythonPeer(script, inNetworkNamespace: ns.name)
        let (code, out) = peer.finish(timeout: 60)
        #expect(code == 0, "\(out)")
        #expect(out.components(separatedBy: "run task").count - 1 == 10, "\(out)")
        #expect(try master.result(timeout: .seconds(30)))
    }

    /// The Swift worker here against the seed's task_master.py in the other namespace.
    @Test func swiftWorkerAgainstAMasterOnAnotherHost() throws {
        guard let ns = namespace("m") else { return }
        defer { ns.remove() }
        let port = try freePort()
        let peer = try PythonPeer(taskMasterScript(port: Int(port)), inNetworkNamespace: ns.name)
        defer { _ = peer.finish(timeout: 1) }
        while true {
            let line = peer.out.fileHandleForReading.availableLine()
            if line.isEmpty || line == "Try get results..." { break }
        }
        let done = try TaskMasterWorker.worker(host: ns.namespaceAddress, port: port, say: { _ in })
        #expect(done == 10)
        let (code, rest) = peer.finish(timeout: 30)
        #expect(code == 0, "\(rest)")
        #expect(rest.components(separatedBy: "Result: ").count - 1 == 10, "\(rest)")
    }

    /// A worker's machine vanishes (its link goes down: no reset, no answer). The master's keep-alive
    /// finds the connection dead within the bound and releases it.
    @Test func aMasterNoticesAVanishedWorker() throws {
        guard let ns = namespace("k") else { return }
        defer { ns.remove() }
        let keepAlive = KeepAlive(idle: .seconds(1), interval: .seconds(1), probes: 2)  // bound: 3 s
        let server = try ManagerServer(
            address: .tcp(host: "", port: 0),
            authkey: Array("abc".utf8),
            keepAlive: keepAlive
        )
        _ = server.registerQueue("get_task_queue")
        try server.start()
        defer { server.shutdown() }
        guard case .tcp(_, let port) = server.address else { return }
        // A Python worker that connects, opens its channel and then sits in a long get.
        let peer = try PythonPeer(
            pythonTaskQueueClient(host: ns.hostAddress, port: port) + """
                print('connected', flush=True)
                q.get(timeout=120)
                """,
            inNetworkNamespace: ns.name
        )
        defer { _ = peer.finish(timeout: 0) }
        #expect(peer.out.fileHandleForReading.availableLine() == "connected")
        var waited = ContinuousClock.now + .seconds(5)
        while server.clientCount == 0 && ContinuousClock.now < waited { usleep(10_000) }
        #expect(server.clientCount == 1)
        let cut = ContinuousClock.now
        ns.cutLink()
        waited = cut + .seconds(20)
        while server.clientCount > 0 && ContinuousClock.now < waited { usleep(20_000) }
        let noticed = ContinuousClock.now - cut
        #expect(server.clientCount == 0)
        // The bound is 3 s; the probes run on the kernel's timer, allow it a margin.
        #expect(noticed < keepAlive.bound + .seconds(3), "noticed after \(noticed)")
    }

    /// The master's machine vanishes while a worker waits in a long `get`: the call fails within the
    /// keep-alive bound instead of waiting out its 60 s.
    @Test func aWorkerNoticesAVanishedMaster() throws {
        guard let ns = namespace("d") else { return }
        defer { ns.remove() }
        let port = try freePort()
        let peer = try PythonPeer(
            """
            import queue, time
            from multiprocessing.managers import BaseManager
            q = queue.Queue()
            class M(BaseManager): pass
            M.register('get_task_queue', callable=lambda: q)
            m = M(address=('', \(port)), authkey=b'abc')
            s = m.get_server()
            print('serving', flush=True)
            s.serve_forever()
            """,
            inNetworkNamespace: ns.name
        )
        defer { _ = peer.finish(timeout: 0) }
        #expect(peer.out.fileHandleForReading.availableLine() == "serving")
        let keepAlive = KeepAlive(idle: .seconds(1), interval: .seconds(1), probes: 2)
        let client = try ManagerClient(
            address: .tcp(host: ns.namespaceAddress, port: port),
            authkey: Array("abc".utf8),
            keepAlive: keepAlive
        )
        let tasks = QueueProxy(try client.create("get_task_queue"))
        let start = ContinuousClock.now
        let call = background { try tasks.get(timeout: .seconds(60)) }
        usleep(300_000)  // the get is on the server
        ns.cutLink()
        #expect(throws: (any Error).self) { try call.result(timeout: .seconds(30)) }
        let failedAfter = ContinuousClock.now - start
        #expect(failedAfter < keepAlive.bound + .seconds(4), "failed after \(failedAfter)")
    }
}
