import Glibc
import Synchronization
import Threading

// The tutorial's smaller threading programs (its 进程线程 chapter, §2–§7, and the "lowb" pool).
// Their `time.sleep(1)` is a `tick` here (100 ms by default; 20 or 50 ms where ten sleeps run in turn) so
// that the demo stays short.

/// ```python
/// def worker(num):
///     time.sleep(1)
///     print("Thread %d" % num)
/// for i in range(20):
///     t = threading.Thread(target=worker, args=(i,), name="t.%d" % i)
///     t.start()
/// ```
/// The lines come in any order, as in Python (the threads wake together).
public func twentyThreads(tick: Duration = .milliseconds(100)) throws {
    @Sendable func worker(_ num: Int) {
        sleep(for: tick)
        print("Thread \(num)")
    }
    let threads = (0..<20).map { i in OSThread(name: "t.\(i)") { worker(i) } }
    for t in threads { try t.start() }
    // Python's program ends when its last non-daemon thread does; here the next program waits for that.
    for t in threads { try t.join() }
}

/// ```python
/// def f1(a1, a2):
///     time.sleep(10)
///     f0()
/// t = threading.Thread(target=f1, args=(123, 111,)); t.setDaemon(True); t.start()   # three times
/// ```
/// "setDaemon=True 不等待": the program does not wait for daemon threads. Python's prints nothing; so that
/// the demo shows something, this says what it started and that it goes on without waiting.
public func daemonThreads(sleeping: Duration = .seconds(10)) throws {
    let clock = ContinuousClock()
    let start = clock.now
    for _ in 0..<3 {
        let t = OSThread(daemon: true) {
            sleep(for: sleeping)  // f1(123, 111); f0() does nothing
        }
        try t.start()
    }
    let waited = clock.now - start
    print(
        "3 daemon threads started, each sleeping \(sleeping); not waited for (main went on after \(waited < .seconds(1) ? "less than a second" : "\(waited)"))"
    )
}

/// ```python
/// globals_num = 0
/// lock = threading.RLock()
/// def Func():
///     lock.acquire(); global globals_num; globals_num += 1; time.sleep(1); print(globals_num); lock.release()
/// for i in range(10): threading.Thread(target=Func).start()
/// ```
/// Prints 1 to 10 in order: each thread holds the lock across its sleep and print.
public func rlockCounter(tick: Duration = .milliseconds(20)) throws {
    final class Counter: @unchecked Sendable { var value = 0 }  // guarded by `lock`
    let globalsNum = Counter()
    let lock = RLock()
    @Sendable func function() throws {
        lock.acquire()  // 获得锁
        globalsNum.value += 1
        sleep(for: tick)
        print(globalsNum.value)
        try lock.release()  // 释放锁
    }
    let threads = (0..<10).map { _ in OSThread { try function() } }
    for t in threads { try t.start() }
    for t in threads { try t.join() }
}

/// ```python
/// def do(event):
///     print('start'); event.wait(); print('execute')
/// event_obj = threading.Event()
/// for i in range(10): threading.Thread(target=do, args=(event_obj,)).start()
/// event_obj.clear()
/// inp = input('input:')
/// if inp == 'true': event_obj.set()
/// ```
/// Reads standard input when it is a terminal; otherwise proceeds as if `true` was typed, and says so.
/// Any other answer leaves the threads waiting in Python (the program never ends); here they are told
/// to stop instead.
public func eventWaitsForInput(answer: String? = nil) throws {
    let event = Event()
    let started = Semaphore(0)
    let stop = Atomic<Bool>(false)
    @Sendable func doIt() throws {
        print("start")
        try started.release()
        event.wait()
        print(stop.load(ordering: .relaxed) ? "stopped" : "execute")
    }
    let threads = (0..<10).map { _ in OSThread { try doIt() } }
    for t in threads { try t.start() }
    for _ in threads { started.acquire() }  // every 'start' before the prompt, as the notes show
    event.clear()
    let input: String
    if let answer {
        input = answer
        print("input:\(answer)")
    } else if isatty(0) == 1 {
        print("input:", terminator: "")
        input = readLine() ?? ""
    } else {
        input = "true"
        print("input:true   (standard input is not a terminal: proceeding as if 'true' was typed)")
    }
    if input != "true" {
        print("'\(input)' is not 'true': Python's threads would wait for ever; these are told to stop")
        stop.store(true, ordering: .relaxed)
    }
    event.set()
    for t in threads { try t.join() }
}

/// ```python
/// def consumer(cond):
///     with cond: print("consumer before wait"); cond.wait(); print("consumer after wait")
/// def producer(cond):
///     with cond: print("producer before notifyAll"); cond.notifyAll(); print("producer after notifyAll")
/// c1, c2 = Thread(name="c1", ...), Thread(name="c2", ...); p = Thread(name="p", ...)
/// c1.start(); time.sleep(2); c2.start(); time.sleep(2); p.start()
/// ```
/// Python relies on the two-second sleeps for the order; here the main thread starts the next thread
/// once the previous consumer is really waiting (it can take the condition's lock only then), so the
/// order is the same on a loaded machine.
public func conditionNotifyAll() throws {
    let condition = Condition(RLock())
    let aboutToWait = Semaphore(0)
    @Sendable func consumer() throws {
        try condition.withLock {
            print("consumer before wait")
            try aboutToWait.release()
            _ = try condition.wait()
            print("consumer after wait")
        }
    }
    @Sendable func producer() throws {
        try condition.withLock {
            print("producer before notifyAll")
            try condition.notifyAll()
            print("producer after notifyAll")
        }
    }
    let c1 = OSThread(name: "c1") { try consumer() }
    let c2 = OSThread(name: "c2") { try consumer() }
    let p = OSThread(name: "p") { try producer() }
    for c in [c1, c2] {
        try c.start()
        aboutToWait.acquire()
        condition.withLock {}  // free only once the consumer waits (wait releases the lock)
    }
    try p.start()
    for t in [c1, c2, p] { try t.join() }
}

/// ```python
/// message = Queue.Queue(10)
/// def producer(i):
///     while True: message.put(i)
/// def consumer(i):
///     while True: msg = message.get()
/// for i in range(12): threading.Thread(target=producer, args=(i,)).start()
/// for i in range(10): threading.Thread(target=consumer, args=(i,)).start()
/// ```
/// Python's runs for ever; this runs for `duration`, then stops every thread and reports what passed.
public func boundedQueueProducersConsumers(duration: Duration = .milliseconds(300)) throws {
    let message = BlockingQueue<Int>(maxsize: 10)
    let stop = Atomic<Bool>(false)
    let passed = Atomic<Int>(0)
    let largest = Atomic<Int>(0)
    let producers = (0..<12).map { i in
        OSThread(name: "producer-\(i)") {
            while !stop.load(ordering: .relaxed) {
                do {
                    try message.put(i, timeout: .milliseconds(20))
                    _ = largest.max(message.count, ordering: .relaxed)
                } catch {}  // full for 20 ms: look at the stop flag, then try again
            }
        }
    }
    let consumers = (0..<10).map { i in
        OSThread(name: "consumer-\(i)") {
            while !stop.load(ordering: .relaxed) {
                if (try? message.get(timeout: .milliseconds(20))) != nil { passed.add(1, ordering: .relaxed) }
            }
        }
    }
    for t in producers + consumers { try t.start() }
    sleep(for: duration)
    stop.store(true, ordering: .relaxed)
    for t in producers + consumers { try t.join() }
    print(
        "12 producers, 10 consumers, queue.Queue(10), for \(duration): \(passed.load(ordering: .relaxed)) messages passed"
    )
    print("the queue never held more than 10: \(largest.load(ordering: .relaxed) <= 10)")
}

/// The tutorial's "lowb" (crude) thread pool: a `Queue(10)` holding the `Thread` class ten times. Taking
/// one from the queue is the right to start a thread; the thread puts it back when it ends, so at most
/// ten run at once.
///
/// ```python
/// class ThreadPool(object):
///     def __init__(self, max_unm=20):
///         self.queue = queue.Queue(max_unm)
///         for i in range(max_unm): self.queue.put(threading.Thread)
///     def get_thread(self): return self.queue.get()
///     def add_thread(self): self.queue.put(threading.Thread)
/// def func(pool, a1):
///     time.sleep(1); print(a1); pool.add_thread()
/// p = ThreadPool(10)
/// for i in range(100):
///     thread = p.get_thread(); t = thread(target=func, args=(p, i)); t.start()
/// ```
/// Prints 0 to 99, ten at a time (in any order within each ten).
public func lowbThreadPool(tasks: Int = 100, tick: Duration = .milliseconds(50)) throws {
    typealias ThreadClass = @Sendable (@escaping @Sendable () throws -> Void) -> OSThread
    final class ThreadPool: Sendable {
        let queue: BlockingQueue<ThreadClass>
        static let threadClass: ThreadClass = { OSThread($0) }
        init(maxNum: Int = 20) throws {
            queue = BlockingQueue(maxsize: maxNum)
            for _ in 0..<maxNum { try queue.put(ThreadPool.threadClass) }
        }
        func getThread() throws -> ThreadClass { try queue.get() }
        func addThread() throws { try queue.put(ThreadPool.threadClass) }
    }
    let running = Atomic<Int>(0)
    let most = Atomic<Int>(0)
    @Sendable func function(_ pool: ThreadPool, _ a1: Int) throws {
        _ = most.max(running.add(1, ordering: .relaxed).newValue, ordering: .relaxed)
        sleep(for: tick)
        print(a1)
        running.subtract(1, ordering: .relaxed)
        try pool.addThread()
    }
    let p = try ThreadPool(maxNum: 10)
    var started: [OSThread] = []
    for i in 0..<tasks {
        let thread = try p.getThread()
        let t = thread { try function(p, i) }
        try t.start()
        started.append(t)
    }
    for t in started { try t.join() }
    print("at most \(most.load(ordering: .relaxed)) threads ran at once")
}

/// `time.sleep` for a plain thread.
func sleep(for d: Duration) {
    let (s, atto) = d.components
    var left = timespec(tv_sec: Int(s), tv_nsec: Int(atto / 1_000_000_000))
    var rest = timespec()
    while nanosleep(&left, &rest) != 0 && errno == EINTR { left = rest }
}
