import Foundation
import MultiprocessingSQL
import MultiprocessingTestSupport
import Testing

@testable import MultiprocessingJobQueue

/// `mp queue`, as separate programs: a producer queues jobs, two `mp queue worker` processes (each with
/// its own pool) run them, SIGTERM stops them gracefully; every job is completed once.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct QueueCommandTests {
    /// Runs `mp queue ARGUMENTS --database URL` to its end: its exit status and output.
    func mpQueue(_ arguments: [String], database url: String) throws -> (Int32, String) {
        let p = try mp(["queue"] + arguments + ["--database", url])
        try p.run()
        let text = output(p)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }

    func mp(_ arguments: [String]) throws -> Foundation.Process {
        let p = Foundation.Process()
        p.executableURL = builtExecutable("mp")
        p.arguments = arguments
        p.standardOutput = Pipe()
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        return p
    }

    func output(_ p: Foundation.Process) -> String {
        let data = (p.standardOutput as! Pipe).fileHandleForReading.readDataToEndOfFile()
        return String(decoding: data, as: UTF8.self)
    }

    @Test(arguments: TestBackend.enabled) func twoWorkerProgramsShareOneQueue(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let url = db.url.text
            let enqueue = try mp(["queue", "enqueue", "--database", url, "--count", "200", "--pause-ms", "5"])
            try enqueue.run()
            enqueue.waitUntilExit()
            #expect(enqueue.terminationStatus == 0)
            #expect(output(enqueue).contains("queued 200 jobs"))
            // The second polls only (as behind PgBouncer); both take jobs.
            let workers = try [[], ["--poll-only", "--poll-ms", "10"]].map { extra in
                try mp(["queue", "worker", "--database", url, "--concurrency", "2"] + extra)
            }
            for w in workers { try w.run() }
            let queue = try JobQueue(DatabaseURL(url))
            try eventually("every job completed") { try queue.counts()[.completed] == 200 }
            // `mp queue status` lists both workers, as they announced themselves.
            try eventually("both workers announced themselves") { try queue.workers().count == 2 }
            let status = try mp(["queue", "status", "--database", url])
            try status.run()
            let statusText = output(status)
            status.waitUntilExit()
            #expect(statusText.contains("completed: 200"), "\(statusText)")
            #expect(statusText.components(separatedBy: "\nworker ").count == 3, "\(statusText)")
            for w in workers { w.terminate() }  // SIGTERM: finish, then exit
            var finished = 0
            for w in workers {
                let text = output(w)
                w.waitUntilExit()
                #expect(w.terminationStatus == 0, "\(text)")
                finished += Int(text.split(separator: " ").first ?? "") ?? 0
            }
            #expect(finished == 200)
            #expect(try queue.workers().isEmpty)  // each deleted its row as it stopped
            #expect(try queue.counts() == [.completed: 200])
            let workerNames = Set(try queue.jobs(in: .completed, limit: 500).compactMap(\.worker))
            #expect(workerNames.count == 2, "both programs took jobs: \(workerNames)")
        }
    }

    /// `mp queue limit` sets, shows and removes a queue's limit, refuses what no claim could keep, and
    /// `mp queue status` lists the limits.
    @Test(arguments: TestBackend.enabled) func limitsAreSetShownAndRemoved(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let url = db.url.text
            func run(_ arguments: [String]) throws -> (Int32, String) { try mpQueue(arguments, database: url) }
            func expectOutput(_ arguments: [String], _ expected: String) throws {
                let (status, text) = try run(arguments)
                #expect(status == 0 && text == expected, "mp queue \(arguments): \(status) \(text)")
            }
            try expectOutput(
                ["limit", "--queue", "mail", "--concurrency", "2", "--rate", "10/1s"],
                "limit mail: concurrency 2, rate 10/1s\n"
            )
            try expectOutput(["limit", "--queue", "mail"], "limit mail: concurrency 2, rate 10/1s\n")
            #expect(try run(["status"]).1.contains("limit mail: concurrency 2, rate 10/1s\n"))
            #expect(
                try JobQueue(DatabaseURL(url)).limits()["mail"]
                    == QueueLimit(concurrency: 2, rate: .init(10, per: .seconds(1)))
            )
            for bad in [
                ["--rate", "10/0s"], ["--rate", "10"], ["--rate", "x/1s"], ["--concurrency", "0"],
                ["--remove", "--concurrency", "1"],
            ] {
                #expect(try run(["limit", "--queue", "mail"] + bad).0 != 0, "\(bad)")
            }
            try expectOutput(["limit", "--queue", "mail", "--rate", "500/250ms"], "limit mail: rate 500/250ms\n")
            try expectOutput(["limit", "--queue", "mail", "--remove"], "limit mail: none\n")
            #expect(try JobQueue(DatabaseURL(url)).limits().isEmpty)
        }
    }

    /// `mp queue schedule` declares the demo's job on a cron expression in a zone or on an interval, lists
    /// and removes schedules; `mp queue status` lists them; bad timings and zones are refused.
    @Test(arguments: TestBackend.enabled) func schedulesAreDeclaredListedAndRemoved(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let url = db.url.text
            func run(_ arguments: [String]) throws -> (Int32, String) { try mpQueue(arguments, database: url) }
            let (status, text) = try run([
                "schedule", "--name", "square", "--cron", "30 2 * * *", "--zone", "posix:CET-1CEST,M3.5.0,M10.5.0/3",
            ])
            #expect(status == 0, "\(text)")
            #expect(
                text.hasPrefix("schedule square: cron 30 2 * * * posix:CET-1CEST,M3.5.0,M10.5.0/3, queue default"),
                "\(text)"
            )
            #expect(text.contains("missed: skip after 1m, next 20") && text.contains("last never"), "\(text)")
            #expect(try run(["schedule", "--name", "tick", "--every", "10s", "--missed", "catchup"]).0 == 0)
            let listed = try run(["schedule"]).1
            #expect(
                listed.contains("schedule square: cron") && listed.contains("schedule tick: every 10s"),
                "\(listed)"
            )
            #expect(listed.contains("missed: catch up"), "\(listed)")
            #expect(try run(["status"]).1.contains("schedule tick: every 10s"))
            let stored = try JobQueue(DatabaseURL(url)).schedules()
            #expect(stored.map(\.name) == ["square", "tick"] && stored.allSatisfy { $0.kind.contains("SquareTask") })
            for bad in [
                ["--name", "x", "--cron", "61 * * * *"], ["--name", "x", "--cron", "0 3 * * *", "--zone", "Nowhere/X"],
                ["--name", "x", "--every", "10"], ["--name", "x", "--every", "10s", "--cron", "* * * * *"],
                ["--cron", "* * * * *"], ["--name", "x", "--every", "1s", "--missed", "sometimes"],
            ] {
                #expect(try run(["schedule"] + bad).0 != 0, "\(bad)")
            }
            #expect(try run(["schedule", "--name", "tick", "--remove"]).1 == "removed tick\n")
            #expect(try JobQueue(DatabaseURL(url)).schedules().map(\.name) == ["square"])
        }
    }

    /// `mp queue enqueue --report` queues the demo's tasks as a group with a report after them; `mp queue
    /// show` shows what a job waits for and what waits for it, before and after a worker ran them.
    @Test(arguments: TestBackend.enabled) func groupsAreQueuedAndShown(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let url = db.url.text
            func run(_ arguments: [String]) throws -> (Int32, String) { try mpQueue(arguments, database: url) }
            let (status, text) = try run(["enqueue", "--count", "3", "--report"])
            #expect(status == 0, "\(text)")
            #expect(text == "queued 3 jobs (ids 1...3) and their report (id 4)\n", "\(text)")
            let waiting = try run(["show", "--id", "4"]).1
            #expect(waiting.contains("SquareReport in default, waiting, attempt 0 of 3"), "\(waiting)")
            #expect(
                waiting.contains("waits for: 1 (not ended, outcome only), 2 (not ended, outcome only), 3 ("),
                "\(waiting)"
            )
            #expect(try run(["status"]).1.contains("waiting: 1"))
            #expect(try run(["show", "--id", "99"]).0 != 0)
            let worker = try mp(["queue", "worker", "--database", url, "--concurrency", "1"])
            try worker.run()
            let queue = try JobQueue(DatabaseURL(url))
            try eventually("the tasks and the report completed") { try queue.counts()[.completed] == 4 }
            worker.terminate()
            worker.waitUntilExit()
            let done = try run(["show", "--id", "4"]).1
            #expect(
                done.contains("completed, attempt 1 of 3") && done.contains("waits for: 1 (completed, outcome only)"),
                "\(done)"
            )
            #expect(try run(["show", "--id", "2"]).1.contains("waited for by: 4"))
        }
    }
}
