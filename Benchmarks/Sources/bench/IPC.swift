import Glibc
import Multiprocessing
import Threading

// Workloads mirror shared/bench/python/ipc_queue.py, ipc_pipe.py and process_start.py (see their headers).
private let N = 200_000
private let M_QUEUE = 2_000
private let M_PIPE = 1_000
private let R = 20_000
private let MIB = 1 << 20

struct QueueSumConsumer: Job {
    let queue: ProcessQueue<Int>
    let side: Connection
    func run() throws -> Int {
        try side.send("ready")
        var sum = 0
        while true {
            let x = try queue.get()
            if x < 0 { break }
            sum &+= x
        }
        try side.send(sum)
        return 0
    }
}

struct QueueBytesConsumer: Job {
    let queue: ProcessQueue<[UInt8]>
    let side: Connection
    let count: Int
    func run() throws -> Int {
        try side.send("ready")
        var total = 0
        for _ in 0..<count { total += try queue.get().count }
        try side.send(total)
        return 0
    }
}

struct PingPongChild: Job {
    let connection: Connection
    func run() throws -> Int {
        try connection.send("ready")
        while true {
            let x = try connection.recv(Int.self)
            if x < 0 { return 0 }
            try connection.send(x)
        }
    }
}

struct BytesChild: Job {
    let input: Connection
    let report: Connection
    let count: Int
    func run() throws -> Int {
        try report.send("ready")
        var total = 0
        for _ in 0..<count { total += try input.recvBytes().count }
        try report.send(total)
        return 0
    }
}

struct Noop: Job {
    func run() -> Int { 0 }
}

func runIPCSuite(_ only: Set<String>) throws {
    func want(_ name: String) -> Bool { only.isEmpty || only.contains(name) }

    if want("queue_small") {
        report(
            "queue_small_swift",
            try (0..<REPS).map { _ in
                let q = try ProcessQueue<Int>()
                let (mine, theirs) = try makePipe()
                let child = ChildProcess(job: QueueSumConsumer(queue: q, side: theirs))
                try child.start()
                theirs.close()
                _ = try mine.recv(String.self)
                let t0 = now()
                for i in 0..<N { try q.put(i) }
                try q.put(-1)
                let sum = try mine.recv(Int.self)
                let t1 = now()
                precondition(sum == N * (N - 1) / 2)
                try child.join()
                return Double(N) / (t1 - t0)
            },
            "msgs/s",
            digits: 0
        )
    }
    if want("queue_fanout") {
        // One producer, K consumer processes (Benchmarks/python/queue_fanout.py does the same in CPython).
        for k in [1, 8] {
            report(
                "queue_fanout_k\(k)_swift",
                try (0..<REPS).map { _ in
                    let q = try ProcessQueue<Int>()
                    var mine: [Connection] = []
                    var children: [ChildProcess<QueueSumConsumer>] = []
                    for _ in 0..<k {
                        let (m, theirs) = try makePipe()
                        let child = ChildProcess(job: QueueSumConsumer(queue: q, side: theirs))
                        try child.start()
                        theirs.close()
                        mine.append(m)
                        children.append(child)
                    }
                    for m in mine { _ = try m.recv(String.self) }
                    let t0 = now()
                    for i in 0..<N { try q.put(i) }
                    for _ in 0..<k { try q.put(-1) }
                    var sum = 0
                    for m in mine { sum &+= try m.recv(Int.self) }
                    let t1 = now()
                    precondition(sum == N * (N - 1) / 2)
                    for c in children { try c.join() }
                    return Double(N) / (t1 - t0)
                },
                "items/s",
                digits: 0
            )
        }
    }
    if want("queue_1mib") {
        let payload = [UInt8](repeating: 0x61, count: MIB)
        report(
            "queue_1mib_swift",
            try (0..<3).map { _ in
                let q = try ProcessQueue<[UInt8]>()
                let (mine, theirs) = try makePipe()
                let child = ChildProcess(job: QueueBytesConsumer(queue: q, side: theirs, count: M_QUEUE))
                try child.start()
                theirs.close()
                _ = try mine.recv(String.self)
                let t0 = now()
                for _ in 0..<M_QUEUE { try q.put(payload) }
                let total = try mine.recv(Int.self)
                let t1 = now()
                precondition(total == M_QUEUE * MIB)
                try child.join()
                return Double(M_QUEUE * MIB) / (t1 - t0) / 1e6
            },
            "MB/s",
            digits: 0
        )
    }
    if want("pipe_pingpong") {
        report(
            "pipe_pingpong_swift",
            try (0..<REPS).map { _ in
                let (a, b) = try makePipe()
                let child = ChildProcess(job: PingPongChild(connection: b))
                try child.start()
                b.close()
                _ = try a.recv(String.self)
                let t0 = now()
                for i in 0..<R {
                    try a.send(i)
                    let back = try a.recv(Int.self)
                    precondition(back == i)
                }
                let t1 = now()
                try a.send(-1)
                try child.join()
                return (t1 - t0) / Double(R) * 1e6
            },
            "us/roundtrip",
            digits: 2
        )
    }
    if want("pipe_bytes") {
        let payload = [UInt8](repeating: 0x61, count: MIB)
        for duplex in [true, false] {
            report(
                duplex ? "pipe_bytes_duplex_swift" : "pipe_bytes_simplex_swift",
                try (0..<REPS).map { _ in
                    let (r, w) = try makePipe(duplex: duplex)
                    let (mine, theirs) = try makePipe()
                    let reader = r  // the child receives on `r`, the parent sends on `w`
                    let child = ChildProcess(job: BytesChild(input: reader, report: theirs, count: M_PIPE))
                    try child.start()
                    reader.close()
                    theirs.close()
                    _ = try mine.recv(String.self)
                    let t0 = now()
                    for _ in 0..<M_PIPE { try w.sendBytes(payload) }
                    let total = try mine.recv(Int.self)
                    let t1 = now()
                    precondition(total == M_PIPE * MIB)
                    try child.join()
                    return Double(M_PIPE * MIB) / (t1 - t0) / 1e6
                },
                "MB/s",
                digits: 0
            )
        }
    }
    if want("process_start") {
        // Each start method in turn (the fork server is the default; spawn re-executes the program).
        let method = WorkerStart.method
        defer { WorkerStart.method = method }
        for (m, name) in [(StartMethod.forkServer, "forkserver"), (.spawn, "spawn")] {
            WorkerStart.method = m
            // Warm-up (it also starts the fork server), then 50 sequential start+join, as process_start.py.
            let warm = ChildProcess(job: Noop())
            try warm.start()
            try warm.join()
            var times: [Double] = []
            for _ in 0..<50 {
                let t0 = now()
                let p = ChildProcess(job: Noop())
                try p.start()
                try p.join()
                times.append((now() - t0) * 1e3)
                precondition(p.exitCode == 0)
            }
            report("process_start_\(name)_swift", times, "ms", digits: 2)
            // Start-to-ready: until the worker's first message (it has entered worker mode).
            var ready: [Double] = []
            for _ in 0..<50 {
                let (mine, theirs) = try makePipe()
                let t0 = now()
                let p = ChildProcess(job: PingPongChild(connection: theirs))
                try p.start()
                _ = try mine.recv(String.self)
                ready.append((now() - t0) * 1e3)
                try mine.send(-1)
                try p.join()
                theirs.close()
            }
            report(m == .forkServer ? "worker_ready_swift" : "worker_ready_spawn_swift", ready, "ms", digits: 2)
        }
        if let reason = WorkerStart.forkServerUnavailableReason { print("INFO fork server not used: \(reason)") }
    }
}
