// The seed notes' thread programs, ported from Python's `threading` to the Threading module.
// `swift run mp demo` runs them all; `swift run mp demo NAME` runs one.

import Synchronization
import Threading

/// The seed notes' programs, by name.
public enum SeedExamples {
    /// Every example, in the order the notes present them; the pool with its progress bar closes the demo.
    public static let all: [(name: String, summary: String, run: @Sendable () async throws -> Void)] = [
        ("fork", "os.fork: a parent starts a child process (by re-executing itself)", { try await forkStyle() }),
        ("process", "multiprocessing.Process: run a function in a child, join it", { try await processWithJoin() }),
        ("queue", "a writer and a reader process share a Queue", { try await queueWriterReader() }),
        ("pipe", "parent and child talk over a Pipe", { try await pipe() }),
        (
            "shared-value", "Value('d') and Array('i') changed by a child: shared memory, not a copy",
            { try await sharedValueAndArray() }
        ),
        (
            "shared-vs-copy", "Foo(i, dic) in two processes: a copied dict vs a shared one",
            { try await copiedVersusShared() }
        ),
        (
            "manager", "with Manager(): a dict and a list changed by a child through proxies",
            { try await managerDictAndList() }
        ),
        ("manager-foo", "Foo(i, dic) in two processes on a manager's dict", { try await managerFoo() }),
        (
            "distributed", "task_master/task_worker: queues served on port 5000 with authkey abc, a worker process",
            { try await distributedMasterWorker() }
        ),
        ("subprocess", "subprocess call and communicate() (swift-subprocess)", { try await subprocessCommunicate() }),
        ("pool", "Pool(4) with apply_async(long_time_task), close, join", { try poolApplyAsync() }),
        ("pool-callback", "apply_async with a callback (end_call)", { try poolCallback() }),
        (
            "pool-with", "with Pool(4): map, imap_unordered, get(timeout=1) raising a timeout",
            { try await poolContextManager() }
        ),
        ("loop-thread", "start a named thread running a loop, join it", { try loopThread() }),
        ("balance", "two threads change a balance, without and with a Lock", { try balance() }),
        ("thread-local", "ThreadLocal binds a student per thread (Alice/Bob)", { try threadLocal() }),
        ("rlock", "an RLock re-entered by the thread that holds it", { try rlockReentry() }),
        ("event", "workers wait for an Event before starting", { try event() }),
        ("condition", "producer/consumer over a Condition", { try conditionProducerConsumer() }),
        ("callback-pool", "the hand-written thread pool with callback(success, result)", { try callbackPool() }),
        (
            "pool-progress", "a CPU-bound map with a progress bar and worker insights; a crash fails one item",
            { try await poolWithProgress() }
        ),
    ]
}

/// ```python
/// def loop():
///     print('thread %s is running...' % threading.current_thread().name)
///     n = 0
///     while n < 5:
///         n = n + 1
///         print('thread %s >>> %s' % (threading.current_thread().name, n))
///         time.sleep(1)
/// t = threading.Thread(target=loop, name='LoopThread'); t.start(); t.join()
/// ```
public func loopThread(tick: Duration = .milliseconds(100)) throws {
    print("thread \(OSThread.current.name) is running...")
    let t = OSThread(name: "LoopThread") {
        print("thread \(OSThread.current.name) is running...")
        for n in 1...5 {
            print("thread \(OSThread.current.name) >>> \(n)")
            Event().wait(timeout: tick)  // time.sleep(tick)
        }
        print("thread \(OSThread.current.name) ended.")
    }
    try t.start()
    try t.join()
    print("thread \(OSThread.current.name) ended.")
}

/// The notes' `balance` program: `change_it(n)` adds then subtracts `n`, 100,000 times in each of two
/// threads. Unlocked, the read-modify-write of the two threads interleaves and updates are lost (in Swift
/// we show this with separate atomic load and store, which loses updates without undefined behaviour);
/// with `lock.acquire()` / `finally: lock.release()` the balance always ends at 0.
public func balance(iterations: Int = 100_000) throws {
    // Without a lock.
    let racy = Atomic<Int>(0)
    let unlocked = (0..<2).map { i in
        OSThread {
            let n = i == 0 ? 5 : 8
            for _ in 0..<iterations {
                racy.store(racy.load(ordering: .relaxed) + n, ordering: .relaxed)
                racy.store(racy.load(ordering: .relaxed) - n, ordering: .relaxed)
            }
        }
    }
    for t in unlocked { try t.start() }
    for t in unlocked { try t.join() }
    print("balance without a lock: \(racy.load(ordering: .relaxed)) (any value: updates were lost)")

    // With a lock.
    final class Account: @unchecked Sendable { var balance = 0 }  // guarded by `lock`
    let account = Account()
    let lock = Lock()
    @Sendable func changeIt(_ n: Int) {
        account.balance += n
        account.balance -= n
    }
    let locked = (0..<2).map { i in
        OSThread {
            for _ in 0..<iterations {
                lock.acquire()  // take the lock first
                defer { try? lock.release() }  // always release it
                changeIt(i == 0 ? 5 : 8)
            }
        }
    }
    for t in locked { try t.start() }
    for t in locked { try t.join() }
    print("balance with a lock: \(account.balance)")
}

/// ```python
/// local_school = threading.local()
/// def process_student():
///     print('Hello, %s (in %s)' % (local_school.student, threading.current_thread().name))
/// def process_thread(name):
///     local_school.student = name
///     process_student()
/// ```
public func threadLocal() throws {
    let localSchool = ThreadLocal<String?>()
    @Sendable func processStudent() {
        let std = localSchool.value ?? "nobody"
        print("Hello, \(std) (in \(OSThread.current.name))")
    }
    @Sendable func processThread(_ name: String) {
        localSchool.value = name
        processStudent()
    }
    let t1 = OSThread(name: "Thread-A") { processThread("Alice") }
    let t2 = OSThread(name: "Thread-B") { processThread("Bob") }
    try t1.start()
    try t1.join()
    try t2.start()
    try t2.join()
}

/// An `RLock` may be re-acquired by the thread that holds it (a plain `Lock` would deadlock).
public func rlockReentry() throws {
    let rlock = RLock()
    @Sendable func inner() { rlock.withLock { print("inner: acquired again by \(OSThread.current.name)") } }
    @Sendable func outer() {
        rlock.withLock {
            print("outer: acquired by \(OSThread.current.name)")
            inner()
        }
    }
    let t = OSThread(name: "Reentrant") { outer() }
    try t.start()
    try t.join()
    do {
        try rlock.release()
    } catch {
        print("release by a thread that does not own it: \(error)")
    }
}

/// Workers block on an `Event` until the main thread sets it.
public func event() throws {
    let go = Event()
    let ready = Semaphore(0)
    let workers = (1...3).map { i in
        OSThread(name: "worker-\(i)") {
            try ready.release()
            go.wait()
            print("\(OSThread.current.name) started after the event was set")
        }
    }
    for w in workers { try w.start() }
    for _ in workers { ready.acquire() }
    print("main: setting the event")
    go.set()
    for w in workers { try w.join() }
}

/// A producer and a consumer share a bounded buffer through one `Condition`.
public func conditionProducerConsumer(items: Int = 5) throws {
    final class Buffer: @unchecked Sendable {
        var items: [Int] = []
        var done = false
    }  // guarded by `cond`
    let buffer = Buffer()
    let cond = Condition(Lock())
    let consumer = OSThread(name: "consumer") {
        while true {
            let next: Int? = try cond.withLock {
                try cond.wait(for: { !buffer.items.isEmpty || buffer.done })
                let x = buffer.items.isEmpty ? nil : buffer.items.removeFirst()
                try cond.notifyAll()
                return x
            }
            guard let x = next else { break }
            print("consumer: got \(x)")
        }
    }
    let producer = OSThread(name: "producer") {
        for i in 1...items {
            try cond.withLock {
                try cond.wait(for: { buffer.items.count < 2 })
                buffer.items.append(i)
                print("producer: put \(i)")
                try cond.notifyAll()
            }
        }
        try cond.withLock {
            buffer.done = true
            try cond.notifyAll()
        }
    }
    try consumer.start()
    try producer.start()
    try producer.join()
    try consumer.join()
}

/// The notes' custom `ThreadPool`: `pool.run(action, args, callback)` where
/// `callback(status, result)` learns whether the action succeeded; `close()` finishes the queue.
public func callbackPool() throws {
    struct ActionFailed: Error, CustomStringConvertible {
        let i: Int
        var description: String { "action \(i) failed" }
    }
    let pool = ThreadPool(maxWorkers: 3, threadNamePrefix: "pool")
    let lines = Mutex<[String]>([])
    for i in 0..<6 {
        try pool.run(
            { () throws -> Int in
                if i == 4 { throw ActionFailed(i: i) }
                return i * i
            },
            callback: { success, result in
                let text =
                    switch result {
                    case .success(let v): "\(v)"
                    case .failure(let e): "\(e)"
                    }
                lines.withLock { $0.append("callback(success: \(success), result: \(text)) for action(\(i))") }
            }
        )
    }
    pool.close()
    pool.join()
    for line in lines.withLock({ $0 }).sorted() { print(line) }
    print("pool closed: \(pool.workerCount) worker threads left")
}
