// The tutorial's "Server process" programs (§9): a Manager's dict and list changed by a child process.

public import Multiprocessing
import MultiprocessingManagers
import MultiprocessingNetwork

/// ```python
/// def f(d, l):
///     d[1] = '1'
///     d['2'] = 2
///     d[0.25] = None
///     l.reverse()
/// ```
public struct ManagerF: Job {
    let d: DictProxy
    let l: ListProxy

    /// Python's `f(d, l)`, in the child: sets three keys of the manager's dict and reverses its list,
    /// through the proxies (each change is a request to the manager's server process).
    /// - Throws: the proxies' errors (the manager unreachable, or an error it reports).
    public func run() throws {
        try d.set(1, "1")
        try d.set("2", 2)
        try d.set(0.25, .none)
        try l.reverse()
    }
}

/// ```python
/// with Manager() as manager:
///     d = manager.dict()
///     l = manager.list(range(10))
///     p = Process(target=f, args=(d, l)); p.start(); p.join()
///     print(d)
///     print(l)
/// ```
/// Python 3.7+ prints the dict in insertion order, `{1: '1', '2': 2, 0.25: None}`; the tutorial's output,
/// `{0.25: None, 1: '1', '2': 2}`, is Python 2's hash order.
public func managerDictAndList() async throws {
    let manager = try Manager.start()
    defer { manager.shutdown() }
    let d = try manager.client.dict()
    let l = try manager.client.list((0..<10).map { .int($0) })
    let p = ChildProcess(job: ManagerF(d: d, l: l))
    try p.start()
    try await p.join()
    print(try d.copy())
    print(try l.copy())
}

/// ```python
/// def Foo(i, dic):
///     dic[i] = 100 + i
///     print(dic)
///     print(len(dic))
/// ```
public struct ManagerFoo: Job {
    let i: Int
    let dic: DictProxy

    /// Python's `Foo(i, dic)`, in the child: sets `dic[i] = 100 + i` in the manager's dict and prints the
    /// dict and its size, both read back from the manager.
    /// - Throws: the proxy's errors (the manager unreachable, or an error it reports).
    public func run() throws {
        try dic.set(.int(Int64(i)), .int(Int64(100 + i)))
        print(try dic.copy())
        print(try dic.count)
    }
}

/// The tutorial's `Foo(i, dic)` with `dic = manage.dict()`: two processes in turn, the second sees the first's
/// key (with `dic = {}` each would see only its own; see `shared-vs-copy`).
public func managerFoo() async throws {
    let manager = try Manager.start()
    defer { manager.shutdown() }
    let dic = try manager.client.dict()
    for i in 0..<2 {
        let p = ChildProcess(job: ManagerFoo(i: i, dic: dic))
        try p.start()
        try await p.join()
    }
}

/// One worker of the distributed pair, in a process of its own.
public struct DistributedWorker: Job {
    let port: UInt16
    let tasks: Int

    /// Python's `task_worker.py`, in a process of its own: takes up to `tasks` numbers from the master on
    /// `127.0.0.1:port` and answers each; returns how many it answered. Started beside its master, it
    /// connects once the master listens (within 30 s).
    public func run() throws -> Int {
        try TaskMasterWorker.worker(port: port, tasks: tasks, reconnectFor: .seconds(30))
    }
}

/// The tutorial's "分布式进程": the master (here, on a thread, serving on 127.0.0.1) and a worker process, as
/// `mp master` and `mp worker` run them in two terminals or on two machines.
public func distributedMasterWorker() async throws {
    // The notes use port 5000; the demo takes a free one, so that it runs wherever 5000 is taken.
    let probe = try Listener(address: .tcp(host: "127.0.0.1", port: 0))
    guard case .tcp(_, let port) = probe.address else { return }
    probe.close()
    let worker = ChildProcess(job: DistributedWorker(port: port, tasks: 10))
    let master = Task.detached { try TaskMasterWorker.master(host: "127.0.0.1", port: port, tasks: 10) }
    try worker.start()
    let ok = try await master.value
    try await worker.join()
    print(ok ? "every result came back right" : "some results were wrong or missing")
}
