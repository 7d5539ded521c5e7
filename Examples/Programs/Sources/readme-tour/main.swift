import Multiprocessing
import MultiprocessingNetwork
import Threading

struct Echo: Job {                         // answers, on the pipe end it was given, what it reads there
    let connection: Connection
    func run() throws { try connection.send(try connection.recv([String].self, timeout: .seconds(5))) }
}
func expensive() -> Int { (1...1_000).reduce(0, +) }
func action(_ i: Int) throws -> Int { i * 10 }

bootstrap()                                // main.swift: workers stop here

// Lock with a timeout (Python: lock.acquire(timeout=0.1))
let lock = Lock()
if lock.acquire(timeout: .milliseconds(100)) { defer { try? lock.release() }; print("locked") }

// Condition: wait for a predicate
let cond = Condition(Lock())
let ready = true
print(try cond.withLock { try cond.wait(for: { ready }, timeout: .seconds(5)) })   // true

// Event, from a thread or from a task
let started = Event()
Task { try await started.wait(); print("a task saw it") }   // suspends the task, never a thread
started.set()
print(started.wait(timeout: .seconds(1)))  // blocking: true

// Barrier with an action
let barrier = Barrier(parties: 1) { print("all arrived") }
try barrier.wait(timeout: .seconds(5))

// ThreadLocal: the tutorial's local_school
let localSchool = ThreadLocal<String?>()
localSchool.value = "Alice"                // only this thread sees it

// Futures
let pool = ThreadPool(maxWorkers: 4)
let f = try pool.submit { expensive() }
print(try f.result(timeout: .seconds(2)))  // 500500
let futures = try (1...3).map { i in try pool.submit { i * i } }
let completions = Futures.asCompleted(futures, timeout: .seconds(5))
while let done = try completions.next() { print(try done.result()) }   // 1, 4, 9 in any order

// The tutorial's callback pool
for i in 0..<3 { try pool.run({ try action(i) }, callback: { success, result in print(success, result) }) }
pool.shutdown()

// Pipe: ends travel to a child inside its job
let (mine, theirs) = try makePipe()
let child = ChildProcess(job: Echo(connection: theirs))
try child.start()
try mine.send(["any", "Codable"]); let reply: [String] = try mine.recv(timeout: .seconds(5))
print(reply)                               // ["any", "Codable"]
try child.join(timeout: .seconds(5))

// Queue shared by processes (pass it inside jobs)
let q = try ProcessQueue<String>(maxsize: 100)
try q.put("A"); let item = try q.get(timeout: .seconds(1)); try q.taskDone()
print(item)                                // A

// Talk to Python: a CPython `Client(('127.0.0.1', port), authkey=b'abc')` can connect to this
let listener = try Listener(address: .tcp(host: "127.0.0.1", port: 0), authkey: Array("abc".utf8))
let client = OSThread {                     // here, a Swift client on a thread
    try connect(to: listener.address, authkey: Array("abc".utf8)).sendBytes(Array("hello".utf8))
}
try client.start()
let conn = try listener.accept(timeout: .seconds(30))
let bytes = try conn.recvBytes(timeout: .seconds(5))   // Python: conn.send_bytes(b'...')
print(bytes.count)                         // 5
try client.join()
