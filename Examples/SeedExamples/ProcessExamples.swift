// The tutorial's process programs, ported from Python's `os.fork`, `multiprocessing` and `subprocess`.

import Glibc
public import Multiprocessing
import Subprocess

// MARK: os.fork → a child process

/// ```python
/// print('Process (%s) start...' % os.getpid())
/// pid = os.fork()
/// if pid == 0:
///     print('I am child process (%s) and my parent is %s.' % (os.getpid(), os.getppid()))
/// else:
///     print('I (%s) just created a child process (%s).' % (os.getpid(), pid))
/// ```
/// Swift programs must not `fork()` without `exec` (threads and the runtime's locks make the child
/// hang), so the child is this program started again, running a job.
public struct ForkChild: Job {
    public init() {}
    public func run() -> Int32 {
        print("I am child process (\(getpid())) and my parent is \(getppid()).")
        return getpid()
    }
}

public func forkStyle() async throws {
    print("Process (\(getpid())) start...")
    let child = ChildProcess(job: ForkChild())
    try child.start()
    print("I (\(getpid())) just created a child process (\(child.pid!)).")
    try await child.join()
}

// MARK: multiprocessing.Process with join

/// `def run_proc(name): print('Run child process %s (%s)...' % (name, os.getpid()))`
public struct RunProc: Job {
    public let name: String
    public init(name: String) { self.name = name }
    public func run() {
        print("Run child process \(name) (\(getpid()))...")
    }
}

public func processWithJoin() async throws {
    print("Parent process \(getpid()).")
    let p = ChildProcess(job: RunProc(name: "test"))
    print("child process will start.")
    try p.start()
    try await p.join()
    precondition(p.exitCode == 0, "the child failed: exit code \(p.exitCode ?? -1)")
    print("child process end.")
}

// MARK: Queue: a writer and a reader process

/// `def write(q): for value in ['A', 'B', 'C']: q.put(value); time.sleep(random.random())`
public struct QueueWriter: Job {
    public let queue: ProcessQueue<String>
    public func run() throws -> Int {
        print("Process to write: \(getpid())")
        for value in ["A", "B", "C"] {
            print("Put \(value) to queue...")
            try queue.put(value)
            usleep(useconds_t.random(in: 0..<200_000))
        }
        return 3
    }
}

/// `def read(q): while True: value = q.get(True); print('Get %s from queue.' % value)`
public struct QueueReader: Job {
    public let queue: ProcessQueue<String>
    public func run() throws -> Int {
        print("Process to read: \(getpid())")
        while true {
            let value = try queue.get()
            print("Get \(value) from queue.")
            fflush(nil)
        }
    }
}

public func queueWriterReader() async throws {
    let q = try ProcessQueue<String>()
    let pw = ChildProcess(job: QueueWriter(queue: q))
    let pr = ChildProcess(job: QueueReader(queue: q))
    try pw.start()
    try pr.start()
    try await pw.join()  // wait for the writer
    // The reader loops forever: wait until it has drained the queue, then terminate it, as the notes do.
    while !q.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
    try await Task.sleep(for: .milliseconds(50))
    pr.terminate()
    try await pr.join()
    print("reader terminated (exit code \(pr.exitCode!))")
}

// MARK: Pipe

/// The child end of a pipe: receives a greeting, answers.
public struct PipeChild: Job {
    public let connection: Connection
    public func run() throws {
        let greeting: String = try connection.recv(timeout: .seconds(10))
        print("child \(getpid()) received: \(greeting)")
        try connection.send("hello back from \(getpid())")
    }
}

public func pipe() async throws {
    let (parentEnd, childEnd) = try makePipe()
    let p = ChildProcess(job: PipeChild(connection: childEnd))
    try p.start()
    childEnd.close()  // the child has its own copy
    try parentEnd.send("hello from \(getpid())")
    let answer: String = try await parentEnd.recv()
    print("parent received: \(answer)")
    try await p.join()
}

// MARK: subprocess

/// ```python
/// r = subprocess.call(['nslookup', 'www.python.org'])
/// p = subprocess.Popen(['nslookup'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
/// output, err = p.communicate(b'set q=mx\npython.org\nexit\n')
/// print(output.decode('utf-8')); print('Exit code:', p.returncode)
/// ```
/// With swiftlang/swift-subprocess. (No network here, so `uname` and `sort` stand in for `nslookup`.)
public func subprocessCommunicate() async throws {
    print("$ uname -s")
    let call = try await Subprocess.run(.name("uname"), arguments: ["-s"], output: .currentStandardOutput)
    print("Exit code: \(exitCode(call.terminationStatus))")

    print("$ sort   (communicate: input written, output and error collected)")
    let p = try await Subprocess.run(
        .name("sort"),
        input: .string("set q=mx\npython.org\nexit\n"),
        output: .string(limit: 1 << 20),
        error: .string(limit: 1 << 20)
    )
    print(p.standardOutput, terminator: "")
    print("Exit code: \(exitCode(p.terminationStatus))")
}

/// Python's `returncode`: the exit status, or minus the signal that ended the process.
func exitCode(_ status: TerminationStatus) -> Int32 {
    switch status {
    case .exited(let code): code
    case .signaled(let signal): -signal
    }
}
