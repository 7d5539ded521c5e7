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
    /// The child's job (it has no settings).
    public init() {}
    /// The `pid == 0` branch, in the child: prints its pid and its parent's, and returns its pid.
    public func run() -> Int32 {
        print("I am child process (\(getpid())) and my parent is \(getppid()).")
        return getpid()
    }
}

/// Runs the tutorial's `os.fork` program (the Python is on `ForkChild`): the parent prints its pid,
/// starts `ForkChild` in a child process, prints the child's pid as the `else` branch does, and waits for
/// it. `mp demo fork`.
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
    /// The name it prints (`test` in the tutorial).
    public let name: String
    /// `run_proc(name)`.
    public init(name: String) { self.name = name }
    /// Python's `run_proc(name)`, in the child: prints the name and the child's pid.
    public func run() {
        print("Run child process \(name) (\(getpid()))...")
    }
}

/// Runs the tutorial's `multiprocessing.Process` program:
/// ```python
/// print('Parent process %s.' % os.getpid())
/// p = Process(target=run_proc, args=('test',))
/// print('child process will start.')
/// p.start(); p.join()
/// print('child process end.')
/// ```
/// `ChildProcess(job:)` is `Process(target:args:)` and `join()` waits for the child; the program stops
/// (a failed precondition) unless the child exited with status 0. `mp demo process`.
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
    /// The queue it shares with the reader, Python's `q`.
    public let queue: ProcessQueue<String>
    /// Python's `write(q)`, in the child: puts `A`, `B` and `C`, pausing a random 0 to 0.2 s after each
    /// (the tutorial's 0 to 1 s); returns how many it put.
    /// - Throws: `ProcessQueue.put`'s errors (a closed queue, a value it cannot encode).
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
    /// The queue it shares with the writer, Python's `q`.
    public let queue: ProcessQueue<String>
    /// Python's `read(q)`, in the child: takes values and prints each, for ever, as Python's loop does;
    /// it never returns: the parent terminates it.
    /// - Throws: `ProcessQueue.get`'s errors (a value it cannot decode).
    public func run() throws -> Int {
        print("Process to read: \(getpid())")
        while true {
            let value = try queue.get()
            print("Get \(value) from queue.")
            fflush(nil)
        }
    }
}

/// Runs the tutorial's `Queue` program (the Python is on `QueueWriter` and `QueueReader`): a writer and a
/// reader process share a `ProcessQueue`, Python's `multiprocessing.Queue`. The parent waits for the
/// writer, lets the reader drain the queue, then terminates it, as `pr.terminate()` does in Python.
/// `mp demo queue`.
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
    /// The child's end of the pipe.
    public let connection: Connection
    /// In the child: waits up to 10 s for the parent's greeting, prints it, and answers.
    /// - Throws: `MultiprocessingError` `.timedOut` when no greeting comes within 10 s, `.endOfFile` when
    ///   the parent closed its end first.
    public func run() throws {
        let greeting: String = try connection.recv(timeout: .seconds(10))
        print("child \(getpid()) received: \(greeting)")
        try connection.send("hello back from \(getpid())")
    }
}

/// The `Pipe` that the tutorial's section on communication between processes ("Queue Pipes") names but
/// does not show: `makePipe()`, Python's `multiprocessing.Pipe()`, gives two connected ends; the parent
/// sends a greeting on its end, `PipeChild` answers on the other, and the parent prints the answer. The
/// parent closes its copy of the child's end once the child has started. `mp demo pipe`.
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
