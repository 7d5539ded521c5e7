public import Logging
import MultiprocessingNetwork
import Threading

/// The tutorial's distributed master and worker (`task_master.py`, `task_worker.py`): a master serves a
/// task queue and a result queue on a TCP port with an authkey (`get_task_queue`, `get_result_queue`);
/// workers on any machine connect, take numbers and answer `'n * n = n²'`. Both ends interoperate with
/// the Python programs, in either role. A worker that dies loses the task it took, as in Python; the
/// durable job queue is the at-least-once alternative.
public enum TaskMasterWorker {
    /// The result line a worker sends for task `n` (the tutorial's `'%d * %d = %d' % (n, n, n*n)`).
    public static func answer(_ n: Int) -> String { "\(n) * \(n) = \(n * n)" }

    /// Runs the master: serves the two queues on `host:port` (`""`: every interface), puts `tasks` random
    /// numbers, reads as many results (each within `resultTimeout`), prints the tutorial's lines through
    /// `say`, and returns whether every result came back right (each task's answer exactly once).
    public static func master(
        host: String = "",
        port: UInt16 = 5000,
        authkey: [UInt8] = Array("abc".utf8),
        tasks: Int = 10,
        resultTimeout: Duration = .seconds(10),
        logger: Logger = {
            var l = Logger(label: "swift-multiprocessing.master")
            l.logLevel = .warning  // the tutorial's lines only, and what goes wrong (rejected clients)
            return l
        }(),
        say: (String) -> Void = { print($0) }
    ) throws -> Bool {
        let server = try ManagerServer(address: .tcp(host: host, port: port), authkey: authkey, logger: logger)
        let taskQueue = server.registerQueue("get_task_queue")
        let resultQueue = server.registerQueue("get_result_queue")
        try server.start()
        defer { server.shutdown() }
        var expected: [String: Int] = [:]
        for _ in 0..<tasks {
            let n = Int.random(in: 0...10_000)
            say("Put task \(n)...")
            try taskQueue.put(.int(Int64(n)))
            expected[answer(n), default: 0] += 1
        }
        say("Try get results...")
        var ok = true
        for _ in 0..<tasks {
            let r: PythonValue
            do {
                r = try resultQueue.get(timeout: resultTimeout)
            } catch {
                say("no result within \(resultTimeout)")
                ok = false
                break
            }
            let text = r.stringValue ?? r.pythonDescription
            say("Result: \(text)")
            if let left = expected[text], left > 0 {
                expected[text] = left - 1
            } else {
                say("unexpected result: \(r.pythonDescription)")
                ok = false
            }
        }
        say("master exit.")
        return ok
    }

    /// Runs a worker: connects to the master, takes up to `tasks` numbers (waiting `taskTimeout` for each,
    /// and saying `task queue is empty.` when none came), answers each. Returns the number answered; a
    /// master that goes away ends the loop early (it is not an error once connected).
    public static func worker(
        host: String = "127.0.0.1",
        port: UInt16 = 5000,
        authkey: [UInt8] = Array("abc".utf8),
        tasks: Int = 10,
        taskTimeout: Duration = .seconds(1),
        say: (String) -> Void = { print($0) }
    ) throws -> Int {
        say("Connect to server \(host)...")
        let client = try ManagerClient(address: .tcp(host: host, port: port), authkey: authkey)
        let task = QueueProxy(try client.create("get_task_queue"))
        let result = QueueProxy(try client.create("get_result_queue"))
        var done = 0
        for _ in 0..<tasks {
            do {
                let v = try task.get(timeout: taskTimeout)
                guard let n = v.intValue else {
                    say("not a number: \(v.pythonDescription)")
                    continue
                }
                say("run task \(n) * \(n)...")
                try result.put(.string(answer(n)))
                done += 1
            } catch let e as PythonException where e == .queueEmpty {
                say("task queue is empty.")
            } catch {
                // The master finished and closed (it has every result it wanted), or died.
                say("the master is gone: \(error)")
                break
            }
        }
        say("worker exit.")
        return done
    }
}
