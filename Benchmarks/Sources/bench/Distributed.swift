import Foundation
import Multiprocessing
import MultiprocessingManagers
import MultiprocessingNetwork

// The `distributed` suite: the workload of ../shared/bench/python/net_manager.py, `_swift` names.
// Differences: the master serves from its own process (a ManagerServer on a thread) instead of a
// separate server process, and talks to it through proxies as CPython's master does.

private let T = 20_000

/// A worker: connects, takes both queues, reports ready (ms since `started`, and ms for the connection
/// and the two proxies alone), then squares tasks until it gets None.
struct NetWorker: Job {
    let port: UInt16
    let authkey: [UInt8]
    let started: Double
    let ready: Connection
    let pipelined: Bool
    /// Tasks taken per round trip (pipelined only).
    let prefetch: Int
    func run() throws -> Int {
        let t0 = now()
        let client = try ManagerClient(address: .tcp(host: "127.0.0.1", port: port), authkey: authkey)
        let tasks = QueueProxy(try client.create("get_task_queue"))
        let results = QueueProxy(try client.create("get_result_queue"))
        let t1 = now()
        try ready.send([(t1 - started) * 1000, (t1 - t0) * 1000])
        var done = 0
        if pipelined && prefetch > 1 {
            // Take up to `prefetch` tasks per round trip, send their answers with the next request.
            var held = try tasks.get(upTo: prefetch, timeout: .seconds(10))
            while true {
                var answers: [PythonValue] = []
                answers.reserveCapacity(held.count)
                for (i, v) in held.enumerated() {
                    guard let n = v.intValue else {
                        // A sentinel: answer what came before it, give back the other workers' sentinels.
                        try results.put(contentsOf: answers)
                        try tasks.put(contentsOf: held[(i + 1)...])
                        return done + answers.count
                    }
                    answers.append(.int(Int64(n * n)))
                }
                held = try results.put(contentsOf: answers, thenGetUpTo: prefetch, from: tasks, timeout: .seconds(10))
                done += answers.count
            }
        }
        if pipelined {
            // Answer and take the next task in one round trip (the same two requests, in the same order).
            var v = try tasks.get(timeout: .seconds(10))
            while let n = v.intValue {
                v = try results.put(.int(Int64(n * n)), thenGetFrom: tasks, timeout: .seconds(10))
                done += 1
            }
            return done
        }
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
    var unbatched: [Double] = []
    var connects: [Double] = []
    var connectOnly: [Double] = []
    var prefetched: [Double] = []
    let prefetch = 16
    let key = Array("anchor-bench".utf8)
    // Alternating rounds: one by one (each get and put waits for its reply, as Python's loop does), then
    // pipelined (the master's puts and gets 64 per round trip, a worker's answer and next get in one).
    // A third kind of round: workers that take `prefetch` tasks per round trip (`worker(prefetch:)`).
    for round in 0..<9 {
        let pipelined = round % 3 != 0
        let workerPrefetch = round % 3 == 2 ? prefetch : 1
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
            let w = ChildProcess(
                job: NetWorker(
                    port: port,
                    authkey: key,
                    started: now(),
                    ready: theirs,
                    pipelined: pipelined,
                    prefetch: workerPrefetch
                )
            )
            try w.start()
            theirs.close()
            workers.append(w)
            readies.append(mine)
        }
        for r in readies {
            let times = try r.recv([Double].self, timeout: .seconds(30))
            connects.append(times[0])
            connectOnly.append(times[1])
        }
        let t0 = now()
        var sum = 0
        if pipelined {
            try tasks.put(contentsOf: (0..<T).map { PythonValue.int(Int64($0)) })
            var got = 0
            while got < T {
                let batch = try results.get(upTo: min(64, T - got), timeout: .seconds(10))
                got += batch.count
                for v in batch { sum += v.intValue ?? 0 }
            }
        } else {
            for i in 0..<T { try tasks.put(.int(Int64(i))) }
            for _ in 0..<T { sum += try results.get(timeout: .seconds(10)).intValue ?? 0 }
        }
        let t1 = now()
        precondition(sum == (T - 1) * T * (2 * T - 1) / 6, "wrong sum \(sum)")
        let rate = Double(T) / (t1 - t0)
        if workerPrefetch > 1 {
            prefetched.append(rate)
        } else if pipelined {
            rates.append(rate)
        } else {
            unbatched.append(rate)
        }
        for _ in workers { try tasks.put(.none) }
        for w in workers { _ = try w.result(timeout: .seconds(30)) }
        server.shutdown()
    }
    report("net_manager_tasks_swift", rates, "tasks/s", digits: 0)
    report("net_manager_tasks_unbatched_swift", unbatched, "tasks/s", digits: 0)
    report("net_manager_tasks_prefetch\(prefetch)_swift", prefetched, "tasks/s", digits: 0)
    report("net_manager_connect_swift", connects, "ms", digits: 2)
    // Without the worker process's start (which depends on the program: this one loads Foundation).
    report("net_manager_connect_only_swift", connectOnly, "ms", digits: 2)
}
