import Glibc
import Synchronization
import SystemCalls
import Threading

/// Runs one ``Job`` in a new process — Python's `multiprocessing.Process(target=..., args=...)`.
///
/// ```swift
/// let p = ChildProcess(name: "worker", job: RunProc(name: "test"))
/// try p.start()
/// try p.join()
/// print(p.exitCode!)            // 0
/// ```
///
/// The process is this executable started again (never a bare `fork`), entering worker mode before
/// `main`. Beyond Python, the job's result comes back: ``result(timeout:)`` or ``value``.
/// Exit codes follow Python: 0 on success, 1 if the job threw, the code given to `exit`, or minus the
/// signal that killed it.
///
/// - Important: Named `ChildProcess` so as not to clash with Foundation's `Process`.
public final class ChildProcess<J: Job>: @unchecked Sendable {  // `handle` is set once, under `lock`
    /// The job this process runs.
    public let job: J
    /// Python's `Process.name`.
    public let name: String
    /// Python's `Process.daemon`: terminated (not joined) when this program exits.
    public let isDaemon: Bool

    private let lock = TrackedMutex<ProcessHandle?>(nil)
    private let outcome = Future<J.Output>()
    private let stderr = ChildStderr()

    /// The runtime's crash report, whole, if the process crashed (its standard error from the report's
    /// first line on). It is kept here and in the error of ``result(timeout:)``, not written to this
    /// program's standard error; the process's other output to standard error is passed on line by line.
    public var crashReport: String? { stderr.crashReport }

    /// - Parameters:
    ///   - name: default `ChildProcess-N`.
    ///   - daemon: terminate the child when this program exits instead of waiting for it.
    ///   - job: the work and its arguments.
    public init(name: String? = nil, daemon: Bool = false, job: J) {
        self.job = job
        self.name = name ?? "ChildProcess-\(ChildProcessCounter.next())"
        isDaemon = daemon
    }

    /// The underlying process once started.
    public var handle: ProcessHandle? { lock.withLock { $0 } }

    /// Starts the process — Python's `Process.start()`.
    ///
    /// - Throws: ``MultiprocessingError/Code/unsupportedJob`` for a private or local job type,
    ///   ``MultiprocessingError/Code/encodingFailed``, ``MultiprocessingError/Code/spawnFailed``, or
    ///   ``MultiprocessingError/Code/invalidState`` on a second call, or
    ///   ``MultiprocessingError/Code/bootstrapRequired`` in a `main.swift` program that has not called
    ///   ``bootstrap()``.
    public func start() throws {
        let typeName = try JobIdentity.name(of: J.self)
        let (payload, fds) = try MessageCodec.encode(job)
        // One job, then shutdown: the worker exits with the job's code as soon as it has answered.
        let message = try MessageCodec.encode(ToWorker.run(id: 0, typeName: typeName, payload: payload)).0
        let shutdown = try MessageCodec.encode(ToWorker.shutdown).0
        try lock.withLock { (h: inout ProcessHandle?) throws in
            guard h == nil else { throw MultiprocessingError(.invalidState, "a process can only be started once") }
            // Before the spawn: a process out of descriptors fails here, with no child to undo.
            let reactor = try Reactor.shared
            let (w, errRead) = try Spawner.spawnCapturingStderr(.message)
            stderr.watch(errRead, on: reactor)
            let handle = ProcessHandle(pid: w.pid, pidfd: w.pidfd, name: name, daemon: isDaemon)
            h = handle
            do {
                try message.withUnsafeBytes { try w.channel.sendFrame($0, fds: fds) }
                try shutdown.withUnsafeBytes { try w.channel.sendFrame($0, fds: []) }
            } catch {
                // The child died before reading its job; its exit is reported through the result.
            }
            do {
                try ChildProcess.collect(reactor, w.channel, handle, outcome, stderr)
            } catch {
                // The kernel would not watch the channel (out of memory): nothing could read the answer.
                handle.kill()
                outcome.complete(.failure(error))
            }
        }
    }

    /// Reads the worker's answer on the reactor thread; if the worker dies first, fails the outcome with
    /// its exit status. Needs no cooperative-pool thread.
    private static func collect(
        _ reactor: Reactor,
        _ channel: Connection,
        _ handle: ProcessHandle,
        _ outcome: Future<J.Output>,
        _ stderr: ChildStderr
    ) throws(MultiprocessingError) {
        try reactor.watch(channel.fileDescriptor) {
            do {
                while let frame = try channel.receiveNow() {
                    if outcome.isDone { continue }  // nothing else is expected after the answer
                    switch try channel.decodeMessage(FromWorker.self, frame) {
                    case .ready: continue
                    case .result(_, let payload):
                        do {
                            outcome.complete(.success(try BinaryDecoder().decode(J.Output.self, from: payload)))
                        } catch {
                            outcome.complete(
                                .failure(MultiprocessingError.cannotDecode("the result", error))
                            )
                        }
                    case .failure(_, let wire):
                        outcome.complete(.failure(wire.rebuild()))
                    }
                }
                return true
            } catch {
                // End of the channel. After an answer this is the worker exiting normally: the channel was
                // kept open until now so that the worker, not a hang-up, decides how it exits. The
                // channel closes when the reactor drops this handler (after unregistering the
                // descriptor, so a recycled descriptor number is never touched).
                if !outcome.isDone { reportDeath(reactor, handle, outcome, stderr) }
                return false
            }
        }
    }

    /// The channel ended without an answer: wait (on the reactor) for the exit status, then fail.
    private static func reportDeath(
        _ reactor: Reactor,
        _ handle: ProcessHandle,
        _ outcome: Future<J.Output>,
        _ stderr: ChildStderr
    ) {
        let fail: @Sendable () -> Void = {
            let code =
                handle.exitCode.map { $0 < 0 ? "was killed by signal \(-$0)" : "exited with code \($0)" } ?? "ended"
            // Everything it wrote before dying is in the pipe: read it, then lead with the cause.
            stderr.drain()
            let report = stderr.crashReport
            let crash = report.map { CrashSummary(report: $0, executable: WorkerStart.executablePath) }
            var message = "process \(handle.pid) (\(handle.name)) \(code) without returning a result"
            if let reason = crash?.reason {
                message = "\(reason)\(crash?.frame.map { ", in \($0)" } ?? "") — \(message)"
            } else if let hint = WorkerStart.startedBeforeMainHint(exitCode: handle.exitCode) {
                message += ". \(hint)"
            }
            outcome.complete(.failure(MultiprocessingError(.processDied, message, crashReport: report)))
        }
        if handle.reapIfExited() {
            fail()
            return
        }
        do {
            try reactor.watch(handle.sentinel) {
                guard handle.reapIfExited() else { return true }
                fail()
                return false
            }
        } catch {
            // Cannot wait for the exit on the reactor (nor block its thread): a thread of its own waits.
            handle.kill()
            let waiter = OSThread(name: "mp-child-exit", daemon: true) {
                _ = try? handle.join(timeout: .seconds(5))
                fail()
            }
            if (try? waiter.start()) == nil { fail() }
        }
    }

    private func started() throws -> ProcessHandle {
        guard let h = handle else { throw MultiprocessingError(.invalidState, "the process has not been started") }
        return h
    }

    /// Python's `Process.pid`; `nil` before `start()`.
    public var pid: Int32? { handle?.pid }
    /// Python's `Process.exitcode`: `nil` until the process has ended.
    public var exitCode: Int32? { handle?.exitCode }
    /// Python's `Process.is_alive()`.
    public var isAlive: Bool { handle?.isAlive ?? false }
    /// Python's `Process.sentinel`: a descriptor readable once the process ends.
    public var sentinel: Int32? { handle?.sentinel }

    /// Waits for the process to end — Python's `Process.join(timeout)`.
    ///
    /// - Returns: `true` if it ended, `false` if the timeout expired first.
    @discardableResult
    public func join(timeout: Duration? = nil) throws -> Bool { try started().join(timeout: timeout) }

    /// Suspends the task until the process ends.
    public func join() async throws { try await started().join() }

    /// Python's `Process.terminate()` (SIGTERM).
    public func terminate() { handle?.terminate() }
    /// Python's `Process.kill()` (SIGKILL).
    public func kill() { handle?.kill() }

    /// The job's result, waiting for it — beyond Python.
    ///
    /// - Throws: the job's error (as itself if `Codable`, else a ``RemoteError``);
    ///   ``MultiprocessingError/Code/processDied`` if the process ended without a result;
    ///   ``MultiprocessingError/Code/timedOut``.
    public func result(timeout: Duration? = nil) throws -> J.Output {
        _ = try started()
        do {
            return try outcome.result(timeout: timeout)
        } catch let e as ThreadingError where e.code == .timedOut {
            throw MultiprocessingError(.timedOut, "no result within \(timeout!)")
        }
    }

    /// The job's result, awaited without blocking a thread.
    public var value: J.Output {
        get async throws {
            _ = try started()
            return try await outcome.value
        }
    }
}

enum ChildProcessCounter {
    private static let counter = Atomic<Int>(0)
    static func next() -> Int { counter.add(1, ordering: .relaxed).newValue }
}

/// A child's standard error, read on the reactor thread: passed on to this program's line by line until a
/// crash report begins, which is kept for the error instead (``StderrCapture``).
final class ChildStderr: Sendable {
    private struct State {
        var fd: Int32 = -1
        /// The reactor watches `fd`: only its handler closes it (after the reactor has let it go).
        var watched = false
        var capture = StderrCapture()
    }
    private let state = TrackedMutex(State())

    // Never watched, or its handler is gone (it held this object): nothing else can close it.
    deinit { state.withLock { if $0.fd >= 0 { Syscall.close($0.fd) } } }

    /// Reads `fd` (non-blocking, owned from now on) whenever it is readable, until its end.
    func watch(_ fd: Int32, on reactor: Reactor) {
        state.withLock {
            $0.fd = fd
            $0.watched = true
        }
        do {
            try reactor.watch(fd) { [self] in drain(fromHandler: true) }
        } catch {
            // Not watched (out of memory): whatever it holds is read when the child is reported dead.
            state.withLock { $0.watched = false }
        }
    }

    /// Reads what is there now; `false` at the pipe's end. The descriptor is closed at its end by the
    /// reactor's handler once the reactor has unregistered it (or here, if it was never watched).
    @discardableResult
    func drain(fromHandler: Bool = false) -> Bool {
        state.withLock { s in
            guard s.fd >= 0 else { return false }
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let got: Int?
                do {
                    got = try buf.withUnsafeMutableBytes { try Syscall.receive(s.fd, into: $0, socket: false) }
                } catch {
                    got = 0  // a read error: the pipe is unusable, as at its end
                }
                guard let n = got else { return true }
                if n > 0 {
                    Self.write(s.capture.take(buf[0..<n], forwarding: true))
                    continue
                }
                Self.write(s.capture.end())
                let fd = s.fd
                if fromHandler {
                    s.fd = -1
                    Reactor.afterCurrentEvent { Syscall.close(fd) }
                } else if !s.watched {
                    s.fd = -1
                    Syscall.close(fd)
                }
                return false
            }
        }
    }

    /// The crash report, whole (nil when there is none).
    var crashReport: String? { state.withLock { $0.capture.crashReport } }

    private static func write(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        bytes.withUnsafeBytes { SystemCall.writeDiagnostic(2, $0) }
    }
}
