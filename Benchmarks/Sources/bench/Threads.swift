import Dispatch
import Foundation
import Multiprocessing
import Synchronization
import Threading

// Workloads mirror shared/bench/python/threads.py (see its header) and Benchmarks/python/threadpool.py.
private let L = 1_000_000
private let R = 20_000
private let RE = 10_000
private let L_SEM = 200_000
private let Q = 200_000
private let B = 10_000
private let S = 2_000

private func perOp(_ n: Int, _ body: () -> Void) -> Double {
    let t0 = now()
    body()
    return (now() - t0) / Double(n) * 1e9
}

private func twoThreads(_ a: @escaping @Sendable () -> Void, _ b: @escaping @Sendable () -> Void) -> Double {
    let ta = OSThread(a)
    let tb = OSThread(b)
    let t0 = now()
    try! ta.start()
    try! tb.start()
    try! ta.join()
    try! tb.join()
    return now() - t0
}

final class Turn: @unchecked Sendable { var value = 0 }

func runThreadsSuite(_ only: Set<String>) {
    func want(_ name: String) -> Bool { only.isEmpty || only.contains(name) }

    if want("lock_uncontended") {
        report(
            "lock_uncontended_swift",
            (0..<REPS).map { _ in
                let lock = Lock()
                return perOp(L) {
                    for _ in 0..<L {
                        lock.acquire()
                        try! lock.release()
                    }
                }
            },
            "ns/op",
            digits: 2
        )
        report(
            "lock_with_swift",
            (0..<REPS).map { _ in
                let lock = Lock()
                return perOp(L) { for _ in 0..<L { lock.withLock {} } }
            },
            "ns/op",
            digits: 2
        )
        report(
            "mutex_uncontended_swiftnative",
            (0..<REPS).map { _ in
                let m = Mutex<Int>(0)
                return perOp(L) { for _ in 0..<L { m.withLock { $0 &+= 1 } } }
            },
            "ns/op",
            digits: 2
        )
        report(
            "nslock_uncontended_swiftnative",
            (0..<REPS).map { _ in
                let l = NSLock()
                return perOp(L) {
                    for _ in 0..<L {
                        l.lock()
                        l.unlock()
                    }
                }
            },
            "ns/op",
            digits: 2
        )
    }
    if want("rlock_uncontended") {
        report(
            "rlock_uncontended_swift",
            (0..<REPS).map { _ in
                let lock = RLock()
                return perOp(L) {
                    for _ in 0..<L {
                        lock.acquire()
                        try! lock.release()
                    }
                }
            },
            "ns/op",
            digits: 2
        )
    }
    if want("semaphore_uncontended") {
        report(
            "semaphore_uncontended_swift",
            (0..<REPS).map { _ in
                let s = Semaphore(1)
                return perOp(L_SEM) {
                    for _ in 0..<L_SEM {
                        s.acquire()
                        try! s.release()
                    }
                }
            },
            "ns/op",
            digits: 2
        )
        report(
            "dispatchsemaphore_uncontended_swiftnative",
            (0..<REPS).map { _ in
                let s = DispatchSemaphore(value: 1)
                return perOp(L_SEM) {
                    for _ in 0..<L_SEM {
                        s.wait()
                        s.signal()
                    }
                }
            },
            "ns/op",
            digits: 2
        )
    }
    if want("condition_pingpong") {
        report(
            "condition_pingpong_swift",
            (0..<REPS).map { _ in
                let c = Condition(Lock())
                let turn = Turn()
                func side(_ me: Int) -> @Sendable () -> Void {
                    {
                        for _ in 0..<R {
                            c.acquire()
                            while turn.value != me { try! c.wait() }
                            turn.value = 1 - me
                            try! c.notify()
                            try! c.release()
                        }
                    }
                }
                return twoThreads(side(0), side(1)) / Double(R) * 1e6
            },
            "us/roundtrip",
            digits: 2
        )
        report(
            "nscondition_pingpong_swiftnative",
            (0..<REPS).map { _ in
                let c = NSCondition()
                let turn = Turn()
                func side(_ me: Int) -> @Sendable () -> Void {
                    {
                        for _ in 0..<R {
                            c.lock()
                            while turn.value != me { c.wait() }
                            turn.value = 1 - me
                            c.signal()
                            c.unlock()
                        }
                    }
                }
                return twoThreads(side(0), side(1)) / Double(R) * 1e6
            },
            "us/roundtrip",
            digits: 2
        )
    }
    if want("event_pingpong") {
        report(
            "event_pingpong_swift",
            (0..<REPS).map { _ in
                let e1 = Event()
                let e2 = Event()
                return twoThreads(
                    {
                        for _ in 0..<RE {
                            e1.set()
                            e2.wait()
                            e2.clear()
                        }
                    },
                    {
                        for _ in 0..<RE {
                            e1.wait()
                            e1.clear()
                            e2.set()
                        }
                    }
                ) / Double(RE) * 1e6
            },
            "us/roundtrip",
            digits: 2
        )
    }
    if want("barrier_2threads") {
        report(
            "barrier_2threads_swift",
            (0..<REPS).map { _ in
                let b = Barrier(parties: 2)
                let body: @Sendable () -> Void = { for _ in 0..<B { _ = try! b.wait() } }
                return twoThreads(body, body) / Double(B) * 1e6
            },
            "us/cycle",
            digits: 2
        )
    }
    if want("queue_threads") {
        func queueRun(_ q: BlockingQueue<Int>) -> Double {
            let sum = Atomic<Int>(0)
            let dt = twoThreads(
                {
                    for i in 0..<Q { try! q.put(i) }
                    try! q.put(-1)
                },
                {
                    var s = 0
                    while true {
                        let x = try! q.get()
                        if x < 0 { break }
                        s &+= x
                    }
                    sum.store(s, ordering: .relaxed)
                }
            )
            precondition(sum.load(ordering: .relaxed) == Q * (Q - 1) / 2)
            return Double(Q) / dt
        }
        report("queue_threads_swift", (0..<REPS).map { _ in queueRun(BlockingQueue<Int>()) }, "items/s", digits: 0)
        report(
            "queue_threads_bounded_swift",
            (0..<REPS).map { _ in queueRun(BlockingQueue<Int>(maxsize: 1_000)) },
            "items/s",
            digits: 0
        )
        report(
            "asyncstream_swiftnative",
            (0..<REPS).map { _ in
                let (stream, cont) = AsyncStream<Int>.makeStream(bufferingPolicy: .unbounded)
                let done = DispatchSemaphore(value: 0)
                let t0 = now()
                Task.detached {
                    var s = 0
                    for await x in stream { s &+= x }
                    precondition(s == Q * (Q - 1) / 2)
                    done.signal()
                }
                for i in 0..<Q { cont.yield(i) }
                cont.finish()
                done.wait()
                return Double(Q) / (now() - t0)
            },
            "items/s",
            digits: 0
        )
    }
    if want("local_read") {
        report(
            "local_read_swift",
            (0..<REPS).map { _ in
                let local = ThreadLocal<Int>(default: { 0 })
                local.value = 1
                var v = 0
                let ns = perOp(L) { for _ in 0..<L { v &+= local.value } }
                precondition(v == L)
                return ns
            },
            "ns/op",
            digits: 2
        )
    }
    if want("thread_start") {
        // The same work with bare pthreads in this process: the floor for a Swift process (a tiny C
        // process, phys.c, creates threads faster than any process with the Swift runtime loaded).
        var raw: [Double] = []
        for _ in 0..<S {
            let t0 = now()
            var t = pthread_t()
            pthread_create(&t, nil, noopThread, nil)
            pthread_join(t, nil)
            raw.append((now() - t0) * 1e6)
        }
        report("thread_create_swiftnative", raw, "us", digits: 1)
        var times: [Double] = []
        for _ in 0..<S {
            let t0 = now()
            let t = OSThread {}
            try! t.start()
            try! t.join()
            times.append((now() - t0) * 1e6)
        }
        report("thread_start_swift", times, "us", digits: 1)
    }
    if want("inprocess_pool") { runInProcessPoolRows() }
    if want("threadpool") {
        let pool = ThreadPool(maxWorkers: 2)
        _ = try! pool.submit {}.result()
        report(
            "threadpool_submit_swift",
            (0..<REPS).map { _ in
                let n = 20_000
                let t0 = now()
                let fs = (0..<n).map { _ in try! pool.submit {} }
                for f in fs { try! f.result() }
                return Double(n) / (now() - t0)
            },
            "tasks/s",
            digits: 0
        )
        report(
            "threadpool_roundtrip_swift",
            (0..<REPS).map { _ in
                var times: [Double] = []
                for _ in 0..<S {
                    let t0 = now()
                    try! pool.submit {}.result()
                    times.append((now() - t0) * 1e6)
                }
                return median(times)
            },
            "us",
            digits: 2
        )
        pool.shutdown()
    }
}

/// An item that suspends once (`Task.yield()`): on `InProcessPool`, the resumption is the cost measured.
struct YieldOnce: TaskFunction {
    func callAsFunction(_ x: Int) async -> Int {
        await Task.yield()
        return x
    }
}

/// An item that never suspends.
struct PlainItem: TaskFunction {
    func callAsFunction(_ x: Int) -> Int { x }
}

/// `InProcessPool.map`, chunk size 1, items that suspend once and items that do not; `submit` round trips
/// of an async job. Items run on the pool's threads (`CallerRunsExecutor`): what this measures is the
/// cost of a suspension and of a task per item there.
func runInProcessPoolRows() {
    let pool = InProcessPool(workers: 2)
    let n = 20_000
    for (name, run) in [
        ("inprocess_map_yielding_swift", { _ = try! pool.map(YieldOnce(), 0..<n, chunksize: 1) }),
        ("inprocess_map_plain_swift", { _ = try! pool.map(PlainItem(), 0..<n, chunksize: 1) }),
        ("inprocess_submit_yielding_swift", { for i in 0..<n { _ = try! pool.submit(YieldOnce(), i).get() } }),
    ] as [(String, () -> Void)] {
        report(
            name,
            (0..<REPS).map { _ in
                let t0 = now()
                run()
                return Double(n) / (now() - t0)
            },
            "items/s",
            digits: 0
        )
    }
    pool.close()
    _ = try? pool.join(timeout: .seconds(30))
}

private func noopThread(_: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? { nil }
