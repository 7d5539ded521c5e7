import Foundation
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingManagers

/// Why no network namespace can be made here (nil when one can): one is made and removed at once, the
/// first time a test asks.
let networkNamespacesUnavailable: String? = {
    let (ns, why) = VethNamespace.make("probe")
    ns?.remove()
    return ns == nil ? why : nil
}()

/// Master and workers on two "machines": this test's network namespace and one of its own, joined by a
/// veth pair, so the traffic crosses a real interface (not loopback) and one side can vanish by taking
/// its link down. Skipped, with the reason, where network namespaces are not permitted (they need root
/// and iproute2), unless the run requires them (`MP_TEST_REQUIRE=netns`).
@Suite(
    .serialized,
    .timeLimit(.minutes(3)),
    .enabled(
        if: runs(needing: "netns", unavailable: networkNamespacesUnavailable),
        Comment(rawValue: networkNamespacesUnavailable ?? "")
    )
)
struct MultiHostTests {
    /// Makes the namespace (the suite runs only where the probe made one: failing now is an error).
    func namespace(_ tag: String) throws -> VethNamespace {
        let (ns, why) = VethNamespace.make(tag)
        guard let ns else { throw MultiprocessingTestError(why) }
        return ns
    }

    /// The seed's task_worker.py in the other namespace against the Swift master bound to every interface.
    @Test func pythonWorkerOnAnotherHost() throws {
        let ns = try namespace("w")
        defer { ns.remove() }
        let port = try freePort()
        let master = background {
            try TaskMasterWorker.master(host: "", port: port, resultTimeout: .seconds(20), say: { _ in })
        }
        try waitUntilListening(port, host: ns.hostAddress)
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
        let ns = try namespace("m")
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
    /// finds the connection dead and releases it (long before the worker's 120 s get would have ended).
    @Test func aMasterNoticesAVanishedWorker() throws {
        let ns = try namespace("k")
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
        let port = try tcpPort(server)
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
        try eventually("the worker's get waiting on the server (clients: \(server.clientCount))") {
            server.blockedCallCount == 1 && server.clientCount == 1
        }
        let cut = ContinuousClock.now
        ns.cutLink()
        try eventually("the vanished worker's connection released") { server.clientCount == 0 }
        let noticed = ContinuousClock.now - cut
        // The bound is 3 s (the probes run on the kernel's timer); generously: keep-alive found it, not the
        // get's 120 s. (That these settings, not the standard 11 s, are applied is for a test of the socket
        // options.)
        #expect(noticed < .seconds(30), "noticed after \(noticed)")
    }

    /// The master's machine vanishes while a worker waits in a long `get`: the call fails within the
    /// keep-alive bound instead of waiting out its 60 s.
    @Test func aWorkerNoticesAVanishedMaster() throws {
        let ns = try namespace("d")
        defer { ns.remove() }
        let port = try freePort()
        let peer = try PythonPeer(
            """
            import queue, time
            from multiprocessing.managers import BaseManager
            class Q(queue.Queue):
                def get(self, *args, **kwargs):
                    print('get', flush=True)  # the worker's get has reached the server
                    return super().get(*args, **kwargs)
            q = Q()
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
        #expect(peer.out.fileHandleForReading.availableLine() == "get")  // the get is on the server
        ns.cutLink()
        // The get ends, with an error (waited for up to 50 s: longer than a keep-alive bound, shorter
        // than the get's own 60 s).
        let error = try call.error(timeout: .seconds(50))
        #expect(error != nil, "the get returned although its master vanished")
        let failedAfter = ContinuousClock.now - start
        // The bound is 3 s; generously: keep-alive found the master gone, not the get's 60 s.
        #expect(failedAfter < .seconds(40), "failed after \(failedAfter)")
    }
}
