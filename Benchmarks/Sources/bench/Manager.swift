import Foundation
import Multiprocessing
import MultiprocessingManagers

// The `manager` suite: the workloads of ../shared/bench/python/manager_dict.py, with `_swift` names, plus
// pickle encode/decode of the same messages.

private let K = 20_000

/// The child of manager_dict.py: K sets then K gets on the dict proxy; returns the three timings (µs/op).
struct DictRoundTrips: Job {
    let d: DictProxy
    func run() throws -> [Double] {
        let t0 = now()
        for i in 0..<K { try d.set(.int(Int64(i % 1000)), .int(Int64(i))) }
        let t1 = now()
        for i in 0..<K {
            let x = try d.get(.int(Int64(i % 1000)))
            precondition(x == .int(Int64(K - 1000 + i % 1000)))
        }
        let t2 = now()
        return [(t1 - t0) / Double(K) * 1e6, (t2 - t1) / Double(K) * 1e6, (t2 - t0) / Double(2 * K) * 1e6]
    }
}

/// `bench serve-manager`: a manager server (authkey `bench`) on a free port of 127.0.0.1, its address
/// printed as `ADDRESS host port`, served until standard input closes — the Swift side of
/// Benchmarks/python/manager_clients.py, which measures this process's CPU per operation.
func serveManagerUntilStdinCloses() throws {
    let server = try ManagerServer(authkey: Array("bench".utf8))
    try server.start()
    guard case .tcp(let host, let port) = server.address else { return }
    print("ADDRESS \(host) \(port)")
    fflush(nil)
    var byte: UInt8 = 0
    while read(0, &byte, 1) > 0 {}
    server.shutdown()
}

func runManagerSuite(_ only: Set<String>) throws {
    func want(_ n: String) -> Bool { only.isEmpty || only.contains(n) }
    if want("manager_start") {
        var v: [Double] = []
        for _ in 0..<REPS {
            let t0 = now()
            let m = try Manager.start()
            m.shutdown()
            v.append((now() - t0) * 1000)
        }
        report("manager_start_swift", v, "ms", digits: 2)
    }
    if want("manager_dict") {
        let m = try Manager.start()
        defer { m.shutdown() }
        let d = try m.client.dict()
        var runs: [[Double]] = []
        for _ in 0..<REPS {
            let p = ChildProcess(job: DictRoundTrips(d: d))
            try p.start()
            runs.append(try p.result(timeout: .seconds(120)))
            _ = try p.join(timeout: .seconds(10))
        }
        report("manager_dict_set_swift", runs.map { $0[0] }, "us/op", digits: 2)
        report("manager_dict_get_swift", runs.map { $0[1] }, "us/op", digits: 2)
        report("manager_dict_op_swift", runs.map { $0[2] }, "us/op", digits: 2)
    }
    if want("pickle") {
        let request: PythonValue = .tuple([
            "7f0000000001", "__setitem__", .tuple([.int(517), .int(19_517)]), .dict([]),
        ])
        let reply: PythonValue = .tuple(["#RETURN", .int(19_517)])
        let n = 200_000
        var enc: [Double] = []
        var dec: [Double] = []
        let bytes = try PickleWriter().write(request)
        let replyBytes = try PickleWriter().write(reply)
        for _ in 0..<REPS {
            var t0 = now()
            for _ in 0..<n {
                blackHole(try PickleWriter().write(request))
                blackHole(try PickleWriter().write(reply))
            }
            enc.append((now() - t0) / Double(2 * n) * 1e9)
            t0 = now()
            for _ in 0..<n {
                blackHole(try PickleReader().read(bytes))
                blackHole(try PickleReader().read(replyBytes))
            }
            dec.append((now() - t0) / Double(2 * n) * 1e9)
        }
        report("pickle_encode_swift", enc, "ns/msg", digits: 0)
        report("pickle_decode_swift", dec, "ns/msg", digits: 0)
    }
}
