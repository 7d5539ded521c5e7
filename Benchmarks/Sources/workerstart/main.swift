// Worker start-to-ready of a program that imports only `Multiprocessing` (no Foundation of its own), as a
// pool-only program would: spawn a `ChildProcess` until its first message. Prints a RESULT line like
// `bench`. Run: `Benchmarks/.build/release/workerstart` after `swift build -c release --package-path Benchmarks`.
import Glibc
import Multiprocessing

// WORKERSTART_ENTRY picks how workers enter: `bootstrap` (default: the workers run this file down to
// `bootstrap()`, as a main.swift program must) or `before-main` (from the load-time constructor).
let entry = getenv("WORKERSTART_ENTRY").map { String(cString: $0) } ?? "bootstrap"
if entry == "before-main" { WorkerStart.entry = .beforeMain } else { bootstrap() }

struct Ready: Job {
    let connection: Connection
    func run() throws -> Int {
        try connection.send("ready")
        return 0
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

// What the check for a main.swift program costs, once per program: reading the symbol table.
let s0 = now()
let topLevel = WorkerStart.programHasTopLevelCode
let checkMilliseconds = (now() - s0) * 1e3

var times: [Double] = []
for i in 0..<51 {
    let (mine, theirs) = try makePipe()
    let t0 = now()
    let p = ChildProcess(job: Ready(connection: theirs))
    try p.start()
    _ = try mine.recv(String.self, timeout: .seconds(10))
    if i > 0 { times.append((now() - t0) * 1e3) }  // the first is a warm-up
    try p.join(timeout: .seconds(10))
    theirs.close()
}
times.sort()
let loadsFoundation =
    (try? String(decoding: readAll("/proc/self/maps"), as: UTF8.self).contains("libFoundation")) ?? false
print("RESULT worker_ready_pool_only_swift \(f2(times[times.count / 2])) ms")
print(
    "INFO entry=\(entry) min=\(f2(times.first!)) max=\(f2(times.last!)) n=\(times.count) foundation_loaded=\(loadsFoundation)"
)
print("INFO main_swift_check=\(f2(checkMilliseconds)) ms top_level_code=\(topLevel)")

func readAll(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buf, buf.count)
        if n <= 0 { return out }
        out += buf[0..<n]
    }
}

func f2(_ x: Double) -> String { "\((x * 100).rounded() / 100)" }
