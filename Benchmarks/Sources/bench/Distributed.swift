import Foundation
import Multiprocessing
import MultiprocessingManagers
import MultiprocessingNetwork

// The `distributed` suite: the workload of ../shared/bench/python/net_manager.py, `_swift` names.
// Differences: the master serves from its own process (a ManagerServer on a thread) instead of a
// separate server process, and talks to it through proxies as CPython's master does.

private let T = 20_000

/// A worker: connects, takes both queues, reports ready (ms since `started`), then squares tasks until
/// it gets None.
struct NetWorker: Job {
    let port: UInt16
    let authkey: [UInt8]
    let started: Double
    let ready: Connection
    func run() throws -> Int {
        let client = try ManagerClient(address: .tcp(host: "127.0.0.1", port: port), authkey: authkey)
        let tasks = QueueProxy(try client.create("get_task_queue"))
        let results = QueueProxy(try client.create("get_result_queue"))
        try ready.send((now() - started) * 1000)
        var done = 0
        while true {
            let v = try tasks.get(timeout: .seconds(10))
            guard let n = v.intValue else { break }
            try results.put(.int(Int64(n * n)))
            done += 1
        }
        return done
    }
}

func runDistributedSuite(_ only: Set<String>) throws {
    var rates: [Double] = []
    var connects: [Double] = []
    let key = Array("anchor-bench".utf8)
    for _ in 0..<3 {
        let server = try ManagerServer(address: .tcp(host: "127.0.0.1", port: 0), authkey: key)
        _ = server.registerQueue("get_task_queue")
        _ = server.registerQueue("get_result_queue")
        try server.start()
        guard case .tcp(_, let port) = server.address else { return }
        let client = try ManagerClient(address: server.address, authkey: key)
        let tasks = QueueProxy(try client.create("get_task_queue"))
        let results = QueueProxy(try client.create("get_result_queue"))
        var workers: [ChildProcess<NetWorker>] = []
        var readies: [Connection] = []
        for _ in 0..<2 {
            let (mine, theirs) = try makePipe()
            let w = ChildProcess(job: NetWorker(port: port, authkey: key, started: now(), ready: theirs))
            try w.start()
            theirs.close()
            workers.append(w)
            readies.append(mine)
        }
        for r in readies { connects.append(try r.recv(Double.self, timeout: .seconds(30))) }
        let t0 = now()
        for i in 0..<T { try tasks.put(.int(Int64(i))) }
        var sum = 0
        for _ in 0..<T { sum += try results.get(timeout: .seconds(10)).intValue ?? 0 }
        let t1 = now()
        precondition(sum == (T - 1) * T * (2 * T - 1) / 6, "wrong sum \(sum)")
        rates.append(Double(T) / (t1 - t0))
        for _ in workers { try tasks.put(.none) }
        for w in workers { _ = try w.result(timeout: .seconds(30)) }
        server.shutdown()
    }
    report("net_manager_tasks_swift", rates, "tasks/s", digits: 0)
    report("net_manager_connect_swift", connects, "ms", digits: 2)
}
