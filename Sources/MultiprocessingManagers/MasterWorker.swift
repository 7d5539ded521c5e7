import Glibc
public import Logging
import Multiprocessing
public import MultiprocessingNetwork
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
        if let risk = exposure(host: host, authkey: authkey) {
            logger.warning("\(risk)", metadata: ["address": "\(server.address)"])
        }
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

    /// Why serving on `host` with `authkey` is open to others, or nil: a well-known key (the tutorial's
    /// `abc`) or a short one (under 16 bytes), on an address other than loopback (`""`: every interface).
    static func exposure(host: String, authkey: [UInt8]) -> String? {
        let loopback = host == "localhost" || host == "::1" || host.hasPrefix("127.")
        guard !loopback, authkey == Array("abc".utf8) || authkey.count < 16 else { return nil }
        let where_ = host.isEmpty ? "every interface" : host
        return "the master serves \(where_) with a well-known or short authkey: anyone who can reach it can "
            + "take tasks, send results and shut it down; serve 127.0.0.1 (--host 127.0.0.1) or use a long random "
            + "key (--authkey) on a network you do not trust"
    }

    /// Runs a worker: connects to the master, takes up to `tasks` numbers (waiting `taskTimeout` for each,
    /// and saying `task queue is empty.` when none came), answers each. Returns the number answered.
    ///
    /// Answers and the next `get` travel in one round trip
    /// (``QueueProxy/put(contentsOf:thenGetUpTo:from:timeout:)``: the same requests, in the same order, so
    /// a Python master serves it too).
    ///
    /// - Parameter host: the master's host.
    /// - Parameter port: the master's port.
    /// - Parameter authkey: the master's key.
    /// - Parameter tasks: the most tasks to take.
    /// - Parameter taskTimeout: how long to wait for each task.
    /// - Parameter prefetch: how many tasks to take per round trip. With 1 (the default) the worker holds
    ///   one task at a time, as Python's does, and a worker that dies loses that one. With n it takes up
    ///   to n at once (a `get`, then `get_nowait`s that take what is already queued) and sends their n
    ///   answers with its next request: one round trip per n tasks instead of per task, for short tasks
    ///   on a busy master, at the price that a worker that dies loses up to n tasks and their answers,
    ///   and that a task can wait in one worker's hands while another worker is idle.
    /// - Parameter keepAlive: how the worker notices a master that vanished.
    /// - Parameter say: where the tutorial's lines go (standard output by default).
    /// - Parameter reconnectFor: when the master cannot be reached at the start (it is not listening yet)
    ///   or the connection to it is lost (it restarted, the network dropped, keep-alive found it dead), the
    ///   worker reconnects with exponential backoff (50 ms doubling
    ///   to 2 s, with jitter) for up to this long, then continues; `.zero` (the default, as Python's
    ///   worker) ends the loop at the first loss. The tasks being answered when the connection broke are
    ///   lost, as in Python: the master's queue is in its memory. For at-least-once delivery use the
    ///   durable job queue.
    public static func worker(
        host: String = "127.0.0.1",
        port: UInt16 = 5000,
        authkey: [UInt8] = Array("abc".utf8),
        tasks: Int = 10,
        taskTimeout: Duration = .seconds(1),
        prefetch: Int = 1,
        reconnectFor: Duration = .zero,
        keepAlive: KeepAlive? = .standard,
        say: (String) -> Void = { print($0) }
    ) throws -> Int {
        precondition(prefetch >= 1, "prefetch must be at least 1")
        say("Connect to server \(host)...")
        func open() throws -> (QueueProxy, QueueProxy) {
            let client = try ManagerClient(
                address: .tcp(host: host, port: port),
                authkey: authkey,
                keepAlive: keepAlive
            )
            return (QueueProxy(try client.create("get_task_queue")), QueueProxy(try client.create("get_result_queue")))
        }
        // A worker started before its master (two programs started together) waits for it as it would
        // after losing it: within `reconnectFor`.
        // A wrong key or a master without the queues is an answer, not an absence: it fails at once.
        var (taskQueue, resultQueue): (QueueProxy, QueueProxy)
        do {
            (taskQueue, resultQueue) = try open()
        } catch let e as MultiprocessingError where reconnectFor > .zero && Self.isAbsence(e) {
            guard let opened = reconnect(within: reconnectFor, open, say: say) else { throw e }
            (taskQueue, resultQueue) = opened
        }
        var done = 0
        var iterations = 0  // tasks taken plus empty waits, as Python's `for i in range(tasks)`
        var answers: [PythonValue] = []  // answers to send with the next request
        var held: [PythonValue] = []  // tasks taken and not yet run
        while iterations < tasks || !answers.isEmpty || !held.isEmpty {
            if !held.isEmpty {
                let v = held.removeFirst()
                guard let n = v.intValue else {
                    say("not a number: \(v.pythonDescription)")
                    continue
                }
                say("run task \(n) * \(n)...")
                answers.append(.string(Self.answer(n)))
                continue
            }
            do {
                if iterations == tasks {
                    try resultQueue.put(contentsOf: answers)
                    done += answers.count
                    answers = []
                    break
                }
                held = try resultQueue.put(
                    contentsOf: answers,
                    thenGetUpTo: min(prefetch, tasks - iterations),
                    from: taskQueue,
                    timeout: taskTimeout
                )
                done += answers.count
                answers = []
                iterations += held.count
            } catch let e as PythonException where e == .queueEmpty {
                done += answers.count  // the puts went through; the get found nothing
                answers = []
                iterations += 1
                say("task queue is empty.")
            } catch {
                // The master is gone: it finished and closed (it has every result it wanted), or died.
                if error is PipelineError || iterations == tasks {
                    for a in answers { say("the answer \(a.stringValue ?? a.pythonDescription) is lost: \(error)") }
                } else {
                    done += answers.count  // the puts went through; the get that followed them failed
                }
                answers = []
                if let p = error as? PipelineError { held = p.takenAll }
                guard reconnectFor > .zero, let reopened = reconnect(within: reconnectFor, open, say: say) else {
                    say("the master is gone: \(error)")
                    break
                }
                (taskQueue, resultQueue) = reopened
            }
        }
        say("worker exit.")
        return done
    }

    /// Whether `error` says nobody answered at the address (yet): refused, unreachable, timed out.
    static func isAbsence(_ error: MultiprocessingError) -> Bool {
        if error.code == .timedOut || error.code == .endOfFile { return true }
        guard let e = error.errnoCode else { return false }
        return [ECONNREFUSED, ECONNRESET, ENOENT, EHOSTUNREACH, ENETUNREACH, ETIMEDOUT, EAGAIN].contains(e)
    }

    /// Calls `open` until it succeeds or `window` has passed, waiting 50 ms, 100 ms, … up to 2 s between
    /// attempts (each wait ±25 % at random, so that many workers do not come back in step).
    static func reconnect<T>(within window: Duration, _ open: () throws -> T, say: (String) -> Void) -> T? {
        let clock = ContinuousClock()
        let deadline = clock.now + window
        var wait = Duration.milliseconds(50)
        while clock.now < deadline {
            let jittered = wait * Double.random(in: 0.75...1.25)
            let pause = min(jittered, deadline - clock.now)
            let ms = pause.components.seconds * 1000 + pause.components.attoseconds / 1_000_000_000_000_000
            say("reconnecting in \(ms) ms...")
            usleep(UInt32(clamping: max(0, ms) * 1000))
            if let r = try? open() {
                say("reconnected.")
                return r
            }
            wait = min(wait * 2, .seconds(2))
        }
        return nil
    }
}
