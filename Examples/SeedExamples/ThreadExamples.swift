// The tutorial's thread programs, ported from Python's `threading` to the Threading module.
// `swift run mp demo` runs them all; `swift run mp demo NAME` runs one.

import Synchronization
import Threading

/// How a program runs.
public enum Program: Sendable {
    /// On the calling thread, which ``run()`` expects to be the main thread: where Python runs top-level
    /// code, so that `current_thread()` there is `MainThread`. (Code isolated to Swift's main actor does
    /// not always run on the main thread: on Linux it may run on another after the first `await`.)
    case onMainThread(@Sendable () throws -> Void)
    /// As a task; the calling thread waits for it.
    case async(@Sendable () async throws -> Void)

    /// Runs the program and waits for it. Call it from the main thread, outside any task (the `mp`
    /// tool's top-level code does), never from a thread of Swift's pool: it blocks the calling thread.
    public func run() throws {
        switch self {
        case .onMainThread(let body): try body()
        case .async(let body):
            let outcome = Mutex<Result<Void, any Error>?>(nil)
            let done = Semaphore(0)
            Task {
                let r: Result<Void, any Error>
                do {
                    try await body()
                    r = .success(())
                } catch {
                    r = .failure(error)
                }
                outcome.withLock { $0 = r }
                try? done.release()
            }
            done.acquire()
            try outcome.withLock { $0! }.get()
        }
    }
}

/// The tutorial's programs, by name.
public enum SeedExamples {
    /// Every example, in the order the notes present them; the pool with its progress bar closes the demo.
    public static let all: [(name: String, summary: String, run: Program)] = [
        ("fork", "os.fork: a parent starts a child process (by re-executing itself)", .async { try await forkStyle() }),
        (
            "process", "multiprocessing.Process: run a function in a child, join it",
            .async { try await processWithJoin() }
        ),
        ("queue", "a writer and a reader process share a Queue", .async { try await queueWriterReader() }),
        ("pipe", "parent and child talk over a Pipe", .async { try await pipe() }),
        (
            "shared-value", "Value('d') and Array('i') changed by a child: shared memory, not a copy",
            .async { try await sharedValueAndArray() }
        ),
        (
            "shared-vs-copy", "Foo(i, dic) in two processes: a copied dict vs a shared one",
            .async { try await copiedVersusShared() }
        ),
        (
            "manager", "with Manager(): a dict and a list changed by a child through proxies",
            .async { try await managerDictAndList() }
        ),
        ("manager-foo", "Foo(i, dic) in two processes on a manager's dict", .async { try await managerFoo() }),
        (
            "distributed",
            "task_master/task_worker: queues served on a free TCP port (the tutorial's 5000) with authkey abc, a worker process",
            .async { try await distributedMasterWorker() }
        ),
        (
            "durable-queue", "the master/worker made durable: a producer and two worker processes on an SQLite queue",
            .onMainThread { try durableQueue() }
        ),
        (
            "subprocess", "subprocess call and communicate() (swift-subprocess)",
            .async { try await subprocessCommunicate() }
        ),
        ("pool", "Pool(4) with apply_async(long_time_task), close, join", .onMainThread { try poolApplyAsync() }),
        ("pool-callback", "apply_async with a callback (end_call)", .onMainThread { try poolCallback() }),
        (
            "pool-with", "with Pool(4): map, imap_unordered, get(timeout=1) raising a timeout",
            .async { try await poolContextManager() }
        ),
        ("loop-thread", "start a named thread running a loop, join it", .onMainThread { try loopThread() }),
        ("balance", "two threads change a balance, without and with a Lock", .onMainThread { try balance() }),
        ("thread-local", "ThreadLocal binds a student per thread (Alice/Bob)", .onMainThread { try threadLocal() }),
        (
            "twenty-threads", "twenty threads run worker(num) and print 'Thread n'",
            .onMainThread { try twentyThreads() }
        ),
        (
            "daemon-threads", "setDaemon(True): the program does not wait for them",
            .onMainThread { try daemonThreads() }
        ),
        ("rlock-counter", "ten threads count to 10 under an RLock", .onMainThread { try rlockCounter() }),
        (
            "rlock", "a Lock acquired twice by its holder blocks; an RLock does not",
            .onMainThread { try rlockReentry() }
        ),
        (
            "event", "ten threads print start, wait for an Event set after input('input:')",
            .onMainThread {
                try eventWaitsForInput()
            }
        ),
        (
            "condition", "two consumers wait on a Condition; the producer calls notifyAll",
            .onMainThread { try conditionNotifyAll() }
        ),
        (
            "bounded-queue", "queue.Queue(10) between 12 producer and 10 consumer threads (for 0.3 s)",
            .onMainThread { try boundedQueueProducersConsumers() }
        ),
        (
            "lowb-pool", "the \"lowb\" thread pool: a Queue(10) of Thread classes, 100 tasks",
            .onMainThread { try lowbThreadPool() }
        ),
        (
            "callback-pool", "the hand-written thread pool with callback(success, result)",
            .onMainThread { try callbackPool() }
        ),
        (
            "greenlet", "greenlet: explicit switch() between two coroutines (12, 56, 34, 78)",
            .async { try await greenletSwitch() }
        ),
        (
            "gevent", "gevent: spawn, sleep(0) and joinall on one thread, as Task.yield()",
            .async { try await geventYield() }
        ),
        (
            "gevent-io", "gevent with I/O: three pages downloaded concurrently on one thread (local server)",
            .async { try await geventDownloads() }
        ),
        (
            "database-job", "read `user` in chunks, add xb in Pool(5), append to user_copy: exactly once (SQLite)",
            .onMainThread { try databaseJob() }
        ),
        (
            "pool-progress", "a CPU-bound map with a progress bar and worker insights; a crash fails one item",
            .async { try await poolWithProgress() }
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

/// The tutorial's `balance` program: `change_it(n)` adds then subtracts `n`, 100,000 times in each of two
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
    let unlockedBalance = racy.load(ordering: .relaxed)
    print(
        unlockedBalance == 0
            ? "balance without a lock: 0 (this time no update was lost; run it again: it can end anywhere)"
            : "balance without a lock: \(unlockedBalance) (not 0: updates were lost)"
    )

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
    // lock = threading.Lock(); lock.acquire(); lock.acquire()  # 产生了死琐 (deadlock)
    let lock = Lock()
    lock.acquire()
    let again = lock.acquire(timeout: .milliseconds(100))
    print(
        "Lock acquired twice by the same thread: \(again ? "acquired" : "blocked (a deadlock; given up after 0.1 s)")"
    )
    try lock.release()
    // rLock = threading.RLock(); rLock.acquire(); rLock.acquire()  # 在同一线程内,程序不会堵塞
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

/// The tutorial's custom `ThreadPool`: `pool.run(action, args, callback)` where
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
