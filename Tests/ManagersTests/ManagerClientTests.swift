import Foundation
import Multiprocessing
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingManagers

/// The seed's `f(d, l)`, run in a child process on proxies it was sent.
struct SeedF: Job {
    let d: DictProxy
    let l: ListProxy
    func run() throws -> NoOutput {
        try d.set(1, "1")
        try d.set("2", 2)
        try d.set(0.25, .none)
        try l.reverse()
        return NoOutput()
    }
}

/// `Foo(i, dic)`: sets `dic[i] = 100 + i` and answers what it sees.
struct SeedFoo: Job {
    let i: Int
    let dic: DictProxy
    func run() throws -> String {
        try dic.set(.int(Int64(i)), .int(Int64(100 + i)))
        return try dic.copy().pythonDescription + " \(try dic.count)"
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct ManagerClientTests {
    @Test func theSeedProgramWithAManagerProcess() throws {
        let manager = try Manager.start()
        defer { manager.shutdown() }
        let d = try manager.client.dict()
        let l = try manager.client.list((0..<10).map { .int($0) })
        let p = ChildProcess(job: SeedF(d: d, l: l))
        try p.start()
        _ = try p.result(timeout: .seconds(30))
        _ = try p.join(timeout: .seconds(10))
        // Python 3.7+ keeps insertion order; the notes show Python 2's order {0.25: None, 1: '1', '2': 2}.
        #expect(try d.copy().pythonDescription == "{1: '1', '2': 2, 0.25: None}")
        #expect(try l.copy().pythonDescription == "[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]")
        // Foo(i, dic) in two processes in turn: the second sees the first's key.
        let dic = try manager.client.dict()
        var seen: [String] = []
        for i in 0..<2 {
            let q = ChildProcess(job: SeedFoo(i: i, dic: dic))
            try q.start()
            seen.append(try q.result(timeout: .seconds(30)))
            _ = try q.join(timeout: .seconds(10))
        }
        #expect(seen == ["{0: 100} 1", "{0: 100, 1: 101} 2"])
    }

    @Test func errorsAndQueueTimeoutsArriveTyped() throws {
        let manager = try Manager.start()
        defer { manager.shutdown() }
        let d = try manager.client.dict()
        #expect(throws: PythonException("KeyError", ["nope"])) { try d.get("nope") }
        let q = try manager.client.queue()
        try q.put(.tuple([1, "a"]))
        #expect(try q.get(timeout: .seconds(1)) == .tuple([1, "a"]))
        let t0 = ContinuousClock.now
        #expect(throws: PythonException.queueEmpty) { try q.get(timeout: .milliseconds(200)) }
        #expect(ContinuousClock.now - t0 < .seconds(20))  // it did not hang (the client's limit is 30 s)
        let unexposed = #expect(throws: ManagerError.self) { try d.proxy.call("no_such_method") }
        #expect(unexposed?.code == .notExposed)
    }

    @Test func asyncCallsWaitOffTheCooperativePool() async throws {
        let manager = try ObservedManager.start()
        defer { manager.shutdown() }
        let q = try manager.client.queue()
        // Eight blocking gets at once (more than the cooperative pool's threads on this machine), then
        // the puts that answer them: blocked cooperative threads would deadlock this.
        let gets = (0..<8).map { _ in Task { try await q.proxy.call("get", [true, 30.0], timeout: .seconds(40)) } }
        try await eventually("the eight gets waiting on the server") { try await manager.blockedCalls() == 8 }
        for i in 0..<8 { _ = try await q.proxy.call("put", [.int(Int64(i))]) }
        var got: [Int] = []
        for g in gets { got.append(try await g.value.intValue ?? -1) }
        #expect(got.sorted() == Array(0..<8))
    }

    @Test func droppedProxiesFreeTheirObjects() throws {
        let manager = try Manager.start()
        defer { manager.shutdown() }
        for i in 0..<200 {
            let d = try manager.client.dict([PythonPair("i", .int(Int64(i)))])
            #expect(try d.get("i") == .int(Int64(i)))
        }
        // Dropped on a thread of the cooperative pool (the test's), each release goes from a thread of
        // its own: wait for them.
        try eventually("every proxy released") { try manager.client.objectCount() == 0 }
    }

    @Test func aServerThatDiesFailsCallsAtOnce() throws {
        let manager = try Manager.start()
        defer { manager.shutdown() }
        let d = try manager.client.dict()
        try d.set("a", 1)
        manager.process.kill()
        _ = try manager.process.join(timeout: .seconds(10))
        let t0 = ContinuousClock.now
        #expect(throws: (any Error).self) { try d.get("a") }
        // At once: well before the client's 30 s limit (the call's timeout), the other way it could end.
        #expect(ContinuousClock.now - t0 < .seconds(15))
    }

    /// A call blocked on the server (a queue's get with a long timeout) fails as soon as the server dies.
    @Test func aBlockedCallFailsWhenTheServerDies() throws {
        let manager = try ObservedManager.start()
        defer { manager.shutdown() }
        let q = try manager.client.queue()
        let waiting = background { try q.get(timeout: .seconds(60)) }
        try eventually("the get waiting on the server") { try manager.blockedCalls() == 1 }
        let t0 = ContinuousClock.now
        manager.process.kill()
        // The get ends, with an error (not its own 60 s timeout, nor ours waiting for it).
        let error = try waiting.error(timeout: .seconds(50))
        #expect(error != nil, "the get returned although its server died")
        #expect(ContinuousClock.now - t0 < .seconds(20), "the get failed at once, not at a timeout")
    }

    /// A Swift client of CPython's own SyncManager server.
    @Test func swiftClientOfACPythonManager() throws {
        let server = try PythonPeer(
            """
            import sys, time
            from multiprocessing.managers import SyncManager
            m = SyncManager(address=('127.0.0.1', 0), authkey=b'abc')
            m.start()
            print(m.address[1], flush=True)
            time.sleep(60)  # (stdin may be /dev/null: reading it would end the program and the server)
            """
        )
        defer { _ = server.finish(timeout: 0.1) }
        guard let port = UInt16(server.out.fileHandleForReading.availableLine()) else {
            Issue.record("no port from python")
            return
        }
        let client = try ManagerClient(address: .tcp(host: "127.0.0.1", port: port), authkey: Array("abc".utf8))
        let d = try client.dict()
        try d.set(0.25, .none)
        try d.set(1, "1")
        try d.set("big", .bigInt([0, 0, 0, 0, 0, 0, 0, 0, 0, 1]))
        #expect(
            try d.copy()
                == .dict([
                    PythonPair(0.25, .none), PythonPair(1, "1"),
                    PythonPair("big", .bigInt([0, 0, 0, 0, 0, 0, 0, 0, 0, 1])),
                ])
        )
        #expect(throws: PythonException("KeyError", ["x"])) { try d.get("x") }
        let l = try client.list([1, 2, 3])
        try l.reverse()
        #expect(try l.copy() == [3, 2, 1])
        let q = try client.queue()
        try q.put(true)
        #expect(try q.get(timeout: .seconds(1)) == true)
        #expect(throws: PythonException.queueEmpty) { try q.get(timeout: .milliseconds(100)) }
        try client.shutdown()  // CPython's server process does not watch its parent: stop it
    }
}

@Suite struct TypedProxyTests {
    @Test func codableKeysAndValuesThroughADictProxy() throws {
        let manager = try Manager.start()
        defer { manager.shutdown() }
        let d = try manager.client.dict()
        struct Job: Codable, Equatable {
            var name: String
            var sizes: [Int]
        }
        try d.set(42, Job(name: "a", sizes: [1, 2]))
        #expect(try d.get(42, as: Job.self) == Job(name: "a", sizes: [1, 2]))
        #expect(try d.get(42)["name"] == "a")
    }
}

/// Issue 25: proxies take and give Swift values, counts read as counts, and strings print as strings.
@Suite struct SwiftValuesThroughProxiesTests {
    @Test func dictListQueueAndNamespaceSpeakSwift() throws {
        let manager = try Manager.start()
        defer { manager.shutdown() }
        let client = manager.client
        let d = try client.dict()
        for id in 1...3 { try d.set("p\(id)", id * 100) }
        let n: Int = try d.get("p2")
        #expect(n == 200)
        #expect("\(try d.count)" == "3")
        #expect(try d["p3"] == 300)
        let all: [String: Int] = try d.copy()
        #expect(all == ["p1": 100, "p2": 200, "p3": 300])

        let l = try client.list()
        try l.append(1.5)
        try l.append("two")
        let first: Double = try l.get(0)
        #expect(first == 1.5)
        #expect(try l[1] == "two")
        #expect(try l.count == 2)

        let q = try client.queue(of: Int.self)
        try q.put(7)
        try q.put(8)
        #expect(try q.count == 2)
        #expect(try q.get(timeout: .seconds(5)) == 7)
        #expect(try q.get(timeout: .seconds(5)) == 8)
        try q.queue.put("not an int")
        let undecodable = #expect(throws: (any Error).self) { try q.get(timeout: .seconds(5)) }
        #expect(undecodable as? PythonException != .queueEmpty, "the item was there, and is not an Int")
        #expect(throws: PythonException.queueEmpty) { try q.get(timeout: .milliseconds(50)) }

        let ns = try client.namespace()
        try ns.set("ratio", 0.25)
        let ratio: Double = try ns.get("ratio")
        #expect(ratio == 0.25)
    }

    /// `print(v)` shows what Python's `print(v)` shows: a str without quotes, anything else as its repr.
    @Test func valuesPrintAsPythonPrintsThem() {
        let r: PythonValue = .string("6944 * 6944 = 48219136")
        #expect("Result: \(r)" == "Result: 6944 * 6944 = 48219136")
        #expect(r.pythonDescription == "'6944 * 6944 = 48219136'")
        #expect("\(PythonValue.list(["a", 1]))" == "['a', 1]")
        #expect("\(PythonValue.none)" == "None")
    }
}
