// The seed notes' "Server process" programs (§9): a Manager's dict and list changed by a child process.

public import Multiprocessing
import MultiprocessingManagers

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

    public func run() throws -> NoOutput {
        try d.set(1, "1")
        try d.set("2", 2)
        try d.set(0.25, .none)
        try l.reverse()
        return NoOutput()
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
/// Python 3.7+ prints the dict in insertion order, `{1: '1', '2': 2, 0.25: None}`; the notes' output,
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

    public func run() throws -> NoOutput {
        try dic.set(.int(Int64(i)), .int(Int64(100 + i)))
        print(try dic.copy())
        print(try dic.count())
        return NoOutput()
    }
}

/// The notes' `Foo(i, dic)` with `dic = manage.dict()`: two processes in turn, the second sees the first's
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
