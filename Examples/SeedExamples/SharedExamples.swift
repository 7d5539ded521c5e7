// The tutorial's shared-memory programs (§9, "进程间的数据共享"), ported to SharedValue and SharedArray.

import Glibc
public import Multiprocessing

/// ```python
/// def f(n, a):
///     n.value = 3.1415927
///     for i in range(len(a)):
///         a[i] = -a[i]
/// ```
public struct NegateShared: Job {
    let n: SharedValue<Double>
    let a: SharedArray<Int32>

    /// Python's `f(n, a)`, in the child: sets `n` to 3.1415927 and negates each element of `a`, in memory
    /// the parent shares.
    public func run() {
        n.value = 3.1415927
        for i in a.indices { a[i] = -a[i] }
    }
}

/// ```python
/// num = Value('d', 0.0)
/// arr = Array('i', range(10))
/// p = Process(target=f, args=(num, arr)); p.start(); p.join()
/// print(num.value)
/// print(arr[:])
/// ```
/// `'d'` is `Double` and `'i'` is `Int32`; the child changes the parent's memory, not a copy.
public func sharedValueAndArray() async throws {
    let num = try SharedValue<Double>(0.0)
    let arr = try SharedArray<Int32>((0..<10).map(Int32.init))
    let p = ChildProcess(job: NegateShared(n: num, a: arr))
    try p.start()
    try await p.join()
    print(num.value)
    print(arr.toArray())
}

/// Python's dictionary printed the way Python prints it.
func pythonDict(_ d: [Int: Int]) -> String {
    "{" + d.keys.sorted().map { "\($0): \(d[$0]!)" }.joined(separator: ", ") + "}"
}

/// `Foo(i, dic)` with a plain dictionary: the child gets a copy.
public struct FooCopy: Job {
    let i: Int
    var dic: [Int: Int]

    /// `Foo(i, dic)` in the child: sets `dic[i] = 100 + i` in its own copy and prints the dictionary and
    /// its size, as Python's `print(dic)` and `print(len(dic))`; the parent's dictionary stays empty.
    public func run() {
        var dic = dic
        dic[i] = 100 + i
        print(pythonDict(dic))
        print(dic.count)
    }
}

/// `Foo(i, dic)` with shared memory: slot `i` of a shared array (0 = no key), so every child sees what
/// the ones before it wrote.
public struct FooShared: Job {
    let i: Int
    let dic: SharedArray<Int32>

    /// `Foo(i, dic)` in the child: under the array's lock, stores `100 + i` in slot `i`, then prints the
    /// keys set so far as a Python dictionary, and their count.
    /// - Throws: what the shared array's lock throws (`MultiprocessingError`).
    public func run() throws {
        try dic.withLock { slots in
            slots[i] = Int32(100 + i)
            var d: [Int: Int] = [:]
            for (k, v) in slots.enumerated() where v != 0 { d[k] = Int(v) }
            print(pythonDict(d))
            print(d.count)
        }
    }
}

/// The tutorial's "dic不同结果不同" (a different `dic`, a different result): two processes run `Foo(i, dic)`
/// in turn. With `dic = {}` each child changes its own copy; with a shared one (the notes use a
/// manager's dict, here shared memory) the second child sees the first one's key.
public func copiedVersusShared() async throws {
    print("dic = {} (each child gets a copy):")
    let plain: [Int: Int] = [:]
    for i in 0..<2 {
        let p = ChildProcess(job: FooCopy(i: i, dic: plain))
        try p.start()
        try await p.join()
    }
    print("the parent's dic afterwards: \(pythonDict(plain))")
    print("dic in shared memory (every child changes the same one):")
    let shared = try SharedArray<Int32>(repeating: 0, count: 2)
    for i in 0..<2 {
        let p = ChildProcess(job: FooShared(i: i, dic: shared))
        try p.start()
        try await p.join()
    }
}
