import Foundation
import Glibc
import MultiprocessingJobQueue
import MultiprocessingManagers
import MultiprocessingNetwork
import MultiprocessingSQL
import MultiprocessingTestSupport
import Testing

/// The library's services in a real `ServiceGroup`, in a program of its own (`mp-test-helper
/// service-group`): a process pool, a manager server and a queue worker. SIGTERM mid-run drains them in
/// the group's order: the worker finishes or hands back every job it holds, the manager answers and
/// closes, the pool's workers exit, and the program exits 0.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ServiceGroupTests {
    @Test func sigtermDrainsAQueueWorkerAManagerServerAndAPool() throws {
        guard let helper = testHelperExecutable() else { return }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mp-services-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = "sqlite:\(dir.path)/jobs.db"
        let jobs = 40

        let process = Foundation.Process()
        process.executableURL = helper
        process.arguments = ["service-group", url, "\(jobs)", "150"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        defer {
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        let first = out.fileHandleForReading.availableLine()
        let port = try #require(UInt16(first.dropFirst("port ".count)), "the helper said: \(first)")

        // The manager server serves while the queue worker runs.
        let client = try ManagerClient(address: .tcp(host: "127.0.0.1", port: port), authkey: Array("abc".utf8))
        let shared = try client.dict()
        try shared.set(PythonValue.string("answer"), PythonValue.int(42))
        #expect(try shared.get(PythonValue.string("answer")) == PythonValue.int(42))

        // Mid-run: some jobs done, some running, most still queued.
        let queue = try JobQueue(DatabaseURL(url))
        try eventually("a job completed while others run") {
            let counts = try queue.counts()
            return (counts[.completed] ?? 0) >= 1 && (counts[.running] ?? 0) >= 1
        }
        // Graceful means the jobs running now finish (rather than go back to the queue).
        let runningAtSigterm = try queue.jobs(in: .running, limit: jobs).map(\.id)
        kill(process.processIdentifier, SIGTERM)
        #expect(exited.wait(timeout: .now() + 120) == .success, "the program did not end after SIGTERM")
        process.waitUntilExit()
        let rest = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationReason == .exit)
        #expect(process.terminationStatus == 0, "\(rest)")
        #expect(rest.contains("group ended: ok; pool workers left: 0"), "\(rest)")

        // Nothing lost: every job is completed or back in the queue, none is held by the stopped worker,
        // none failed, and a job handed back has not used an attempt.
        let counts = try queue.counts()
        let completed = counts[.completed] ?? 0
        let available = counts[.available] ?? 0
        #expect(counts[.running] ?? 0 == 0)
        #expect(completed + available == jobs, "\(counts)")
        #expect(completed < jobs, "SIGTERM came after the last job: nothing was drained")
        for job in try queue.jobs(in: .available, limit: jobs) { #expect(job.attempt == 0, "job \(job.id)") }
        let completedIDs = Set(try queue.jobs(in: .completed, limit: jobs).map(\.id))
        #expect(!runningAtSigterm.isEmpty)
        for id in runningAtSigterm {
            #expect(completedIDs.contains(id), "job \(id), running at SIGTERM, was not finished")
        }
    }
}
