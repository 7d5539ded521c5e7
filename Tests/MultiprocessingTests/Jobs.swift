import Glibc
import MultiprocessingTestSupport

@testable import Multiprocessing

// Jobs used by the tests. They live in the test module: workers find them by name in the test runner.

struct Square: Job {
    let x: Int
    func run() -> Int { x * x }
}

struct AsyncEcho: Job {
    let text: String
    func run() async throws -> String {
        try await Task.sleep(for: .milliseconds(5))
        return "\(text) from \(getpid())"
    }
}

struct CodableFailure: Error, Codable, Equatable {
    let reason: String
}

struct ThrowsCodable: Job {
    func run() throws -> Int { throw CodableFailure(reason: "bad input") }
}

struct PlainFailure: Error, CustomStringConvertible {
    var description: String { "plain failure" }
}

struct ThrowsPlain: Job {
    func run() throws -> Int { throw PlainFailure() }
}

/// Traps (index out of range), with its standard error — the crash report — sent to `stderrPath`, so
/// that the report stays out of the test log and the test can read it.
struct Trap: Job {
    let stderrPath: String
    func run() -> Int {
        let fd = open(stderrPath, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        if fd >= 0 { dup2(fd, 2) }
        let xs: [Int] = []
        return xs[Int(getpid()) % 3 + 5]  // index out of range: a trap
    }
}

struct ExitWith: Job {
    let code: Int32
    func run() -> Int { exit(code) }
}

struct Sleep: Job {
    let milliseconds: Int
    func run() -> Int {
        usleep(useconds_t(milliseconds * 1000))
        return milliseconds
    }
}

struct Pid: Job {
    func run() -> Int32 { getpid() }
}

/// Starts a long-sleeping grandchild, writes its pid to `path`, then sleeps: the test SIGKILLs this
/// intermediate process and checks that the grandchild goes away too.
struct Intermediate: Job {
    let path: String
    func run() throws -> Int {
        let grandchild = ChildProcess(job: Sleep(milliseconds: 60_000))
        try grandchild.start()
        let line = "\(grandchild.pid!)\n"
        let f = fopen(path + ".tmp", "w")
        fputs(line, f)
        fclose(f)
        rename(path + ".tmp", path)
        usleep(60_000_000)  // until the test SIGKILLs it
        return 0
    }
}

/// A result that cannot be encoded.
struct Unencodable: Encodable, Decodable, Sendable {
    init() {}
    init(from decoder: any Decoder) throws { throw CodableFailure(reason: "never decoded") }
    func encode(to encoder: any Encoder) throws { throw CodableFailure(reason: "cannot encode this") }
}

struct ReturnsUnencodable: Job {
    func run() -> Unencodable { Unencodable() }
}

/// Puts `count` items tagged with `producer` and returns; the process exits right after.
struct Producer: Job {
    let queue: ProcessQueue<Int>
    let producer: Int
    let count: Int
    func run() throws -> Int {
        for i in 0..<count { try queue.put(producer * 1_000_000 + i) }
        return count
    }
}

/// The seed notes' writer: puts A, B, C.
struct Writer: Job {
    let queue: ProcessQueue<String>
    func run() throws -> Int {
        for v in ["A", "B", "C"] { try queue.put(v) }
        return 3
    }
}

/// Gets items forever (until killed), slowly.
struct SlowConsumer: Job {
    let queue: ProcessQueue<Int>
    func run() throws -> Int {
        var n = 0
        while true {
            _ = try queue.get(timeout: .seconds(30))
            n += 1
            usleep(1_000)
        }
    }
}

/// Dies while holding the queue's lock (fault injection).
struct DieHoldingQueueLock: Job {
    let queue: ProcessQueue<Int>
    func run() -> Int {
        queue.ring.withLockForTesting {
            queue.ring.corruptCountForTesting(12_345)  // as if it died half-way through an update
            _exit(9)
        }
        return 0
    }
}

/// Marks `count` items done after getting them.
struct TaskDoneConsumer: Job {
    let queue: ProcessQueue<Int>
    let count: Int
    func run() throws -> Int {
        for _ in 0..<count {
            _ = try queue.get(timeout: .seconds(30))
            try queue.taskDone()
        }
        return count
    }
}

/// Receives numbers on a connection handed over inside the job and answers with their doubles.
struct Doubler: Job {
    let connection: Connection
    func run() throws -> Int {
        var n = 0
        while let x = try? connection.recv(Int.self, timeout: .seconds(10)), x >= 0 {
            try connection.send(2 * x)
            n += 1
        }
        return n
    }
}

/// Reports what descriptor `fd` refers to in the worker ("" if it is not open).
struct DescribeFd: Job {
    let fd: Int32
    func run() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(fd)", &buf, 255)
        return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    }
}

/// Starts a daemon grandchild, writes its pid to `path`, and returns: the worker's exit must terminate it.
struct DaemonParent: Job {
    let path: String
    func run() throws -> Int {
        let grandchild = ChildProcess(daemon: true, job: Sleep(milliseconds: 60_000))
        try grandchild.start()
        let f = fopen(path + ".tmp", "w")
        fputs("\(grandchild.pid!)\n", f)
        fclose(f)
        rename(path + ".tmp", path)
        return 0
    }
}

/// Gets items until it sees a negative one; returns everything it got.
struct Collector: Job {
    let queue: ProcessQueue<Int>
    func run() throws -> [Int] {
        var got: [Int] = []
        while true {
            let x = try queue.get(timeout: .seconds(30))
            if x < 0 { return got }
            got.append(x)
        }
    }
}

/// A job that implements neither `run()` (issue 25: this used to compile and recurse for ever).
struct NoRunJob: Job {}
