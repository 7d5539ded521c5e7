internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import Threading

/// Python's `if __name__ == "__main__":` guard: in a worker started through it, becomes the worker and
/// never returns; in the program itself, returns at once.
///
/// Call it in `main.swift` after the constants and functions your jobs use and before the program's own
/// work. Once the program has called it, new workers (``WorkerEntry/automatic``, the default) run
/// `main.swift` down to this line, so what is declared above it exists in them:
///
/// ```swift
/// let multiplier = 20                 // exists in workers: declared above bootstrap()
/// struct Scale: SyncTaskFunction { func callAsFunction(_ x: Int) -> Int { x * multiplier } }
/// bootstrap()
/// let pool = try ProcessPool()        // the program's work
/// print(try pool.map(Scale(), [1, 2, 3]))
/// ```
///
/// A `main.swift` program must call it before it starts a process: until it has,
/// `ProcessPool(...)` and `ChildProcess.start()` throw ``MultiprocessingError/Code/bootstrapRequired``
/// rather than start workers that would read `main.swift`'s variables as zeroed memory. Programs with
/// `@main`, and test runners, need no call: their workers start before `main`.
public func bootstrap() {
    // In a worker too: the processes its jobs start enter the same way.
    WorkerStart.calledBootstrap.store(true, ordering: .relaxed)
    if mp_worker_deferred() != 0 { WorkerRuntime.run(fd: 3) }
}

@_cdecl("mp_worker_entry")
func mpWorkerEntry(_ fd: Int32) {
    WorkerRuntime.run(fd: fd)
}

/// The worker side: receive jobs on fd 3, run them, send results; exit when the parent goes away.
enum WorkerRuntime {
    nonisolated(unsafe) static var isWorker = false  // set once, before any other thread runs
    /// The exit code used if the parent goes away now: 71 while a job runs, else the code so far.
    static let exitOnHangup = Atomic<Int32>(0)

    static func run(fd: Int32) -> Never {
        isWorker = true
        // Ignore SIGINT: a Ctrl-C in the terminal reaches the whole process group, and the parent decides.
        signal(SIGINT, SIG_IGN)
        // Line-buffered output, so a worker's prints interleave sensibly with its parent's.
        mp_stdout_line_buffered()
        let channel = Connection(fileDescriptor: fd)
        // The shared-memory tracker outlives its parent on purpose: it cleans up after it.
        if getenv("SWIFT_MP_TRACKER") != nil { SegmentTracker.serve(channel) }
        let pid = getpid()
        startParentWatch(fd)
        do {
            try channel.send(FromWorker.ready(pid: pid))
        } catch {
            _exit(70)
        }
        var exitCode: Int32 = 0
        while true {
            let frame: [UInt8]
            do {
                frame = try channel.recvBytes()
            } catch {
                exit(exitCode)  // parent closed the channel: done
            }
            let message: ToWorker
            do {
                message = try channel.decodeMessage(ToWorker.self, frame)
            } catch {
                fail("malformed message from the parent: \(error)")
            }
            switch message {
            case .shutdown:
                exit(exitCode)
            case .pool(let setup):
                PoolWorker.leftover = channel.takeBufferedBytes()
                // The pool reads fd 3 itself; the connection that owns it must outlive it (released, it
                // would close the descriptor under the pool's feet).
                withExtendedLifetime(channel) { PoolWorker.run(fd: fd, setup: setup, pid: pid) }
            case .run(let id, let typeName, let payload):
                exitOnHangup.store(71, ordering: .relaxed)
                let reply = runJob(id: id, typeName: typeName, payload: payload, channel: channel, pid: pid)
                if case .failure = reply { exitCode = 1 }
                // Before answering: a parent that hangs up as soon as it has the answer gets this code.
                exitOnHangup.store(exitCode, ordering: .relaxed)
                defer { exitOnHangup.store(exitCode, ordering: .relaxed) }
                do {
                    try channel.send(reply)
                } catch {
                    let fallback = FromWorker.failure(
                        id: id,
                        WireError(
                            MultiprocessingError(.encodingFailed, "the job's result could not be sent: \(error)"),
                            pid: pid
                        )
                    )
                    try? channel.send(fallback)
                    exitCode = 1
                }
            }
        }
    }

    static func runJob(id: UInt64, typeName: String, payload: [UInt8], channel: Connection, pid: Int32) -> FromWorker {
        guard let type = JobResolver.resolve(typeName) else {
            return .failure(
                id: id,
                WireError(
                    MultiprocessingError(.unknownJob, "no Job type named \(typeName) in this executable"),
                    pid: pid
                )
            )
        }
        do {
            return .result(id: id, payload: try execute(type, payload: payload, channel: channel))
        } catch {
            return .failure(id: id, WireError(error, pid: pid))
        }
    }

    private static func execute<J: Job>(_ type: J.Type, payload: [UInt8], channel: Connection) throws -> [UInt8] {
        let job = try channel.decodeMessage(J.self, payload)
        let output: J.Output = try runBlocking { try await job.run() }
        do {
            return try BinaryEncoder().encode(output)
        } catch {
            throw MultiprocessingError(.encodingFailed, "the result of \(J.self) could not be encoded: \(error)")
        }
    }

    /// Runs async work to completion from this (non-async) worker thread, on this thread
    /// (``CallerRunsExecutor``): no hop to the cooperative pool and back.
    static func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        try CallerRunsExecutor.run { try await body() }.result.get()
    }

    /// A daemon thread that ends the process as soon as the parent's end of fd 3 goes away, even while
    /// a job is running (the parent-death signal does not cover every parent).
    private static func startParentWatch(_ fd: Int32) {
        let t = OSThread(name: "mp-parent-watch", daemon: true) {
            while true {
                let revents = (try? SystemCall.poll(fd, events: MP_POLLRDHUP, timeoutMs: -1)) ?? 0
                if revents & (MP_POLLRDHUP | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
                    _exit(WorkerRuntime.exitOnHangup.load(ordering: .relaxed))
                }
            }
        }
        try? t.start()
    }

    static func fail(_ message: String) -> Never {
        let line = "swift-multiprocessing worker \(getpid()): \(message)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        _exit(70)
    }
}
