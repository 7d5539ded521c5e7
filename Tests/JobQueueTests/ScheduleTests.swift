import Glibc
import Multiprocessing
import MultiprocessingSQL
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingJobQueue

/// Appends a line to `log` each time it runs (a job retried would show twice).
struct Tick: Job {
    var log: String
    func run() throws -> Int {
        appendLine(log, "ran")
        return 0
    }
}

/// Milliseconds since the epoch of a UTC date and time.
private func utc(_ y: Int, _ mo: Int, _ d: Int, _ h: Int = 0, _ mi: Int = 0) -> Int64 {
    (Civil.days(year: y, month: mo, day: d) * 86400 + Int64(h * 3600 + mi * 60)) * 1000
}

/// The occurrences of `s` after `from`, up to and including `through`.
private func occurrences(_ s: JobSchedule, after from: Int64, through: Int64) -> [Int64] {
    var out: [Int64] = []
    var t = from
    while let n = s.next(after: t), n <= through {
        out.append(n)
        t = n
    }
    return out
}

/// Periodic jobs (issue 30 item 1): cron and intervals, time zones and their daylight-saving changes, the
/// missed-occurrence policies with a fake clock, and workers that queue each occurrence once.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ScheduleTests {
    // MARK: timing, no database

    @Test func cronFieldsAliasesAndErrors() throws {
        let s = try JobSchedule.cron("*/15 9-17 * * mon-fri")
        // Friday 2026-12-04 16:50 UTC: next 17:00, then 17:15 …, then Monday 09:00.
        #expect(s.next(after: utc(2026, 12, 4, 16, 50)) == utc(2026, 12, 4, 17, 0))
        #expect(s.next(after: utc(2026, 12, 4, 17, 45)) == utc(2026, 12, 7, 9, 0))
        #expect(try JobSchedule.cron("@daily").next(after: utc(2026, 12, 4, 16, 50)) == utc(2026, 12, 5))
        #expect(try JobSchedule.cron("@hourly").next(after: utc(2026, 12, 4, 16, 0)) == utc(2026, 12, 4, 17))
        #expect(try JobSchedule.cron("0 0 29 2 *").next(after: utc(2026, 1, 1)) == utc(2028, 2, 29))
        // Both day fields restricted: either matches (the 1st, or any Sunday).
        let either = try JobSchedule.cron("0 12 1 * sun")
        #expect(either.next(after: utc(2026, 11, 30, 13)) == utc(2026, 12, 1, 12))
        #expect(either.next(after: utc(2026, 12, 1, 13)) == utc(2026, 12, 6, 12))
        // 7 is Sunday too; 5/20 is 5, 25, 45.
        #expect(try JobSchedule.cron("0 0 * * 7").next(after: utc(2026, 12, 1)) == utc(2026, 12, 6))
        #expect(
            occurrences(try .cron("5/20 0 * * *"), after: utc(2026, 12, 1), through: utc(2026, 12, 1, 1)) == [
                utc(2026, 12, 1, 0, 5), utc(2026, 12, 1, 0, 25), utc(2026, 12, 1, 0, 45),
            ]
        )
        for bad in [
            "* * * *", "60 * * * *", "* 24 * * *", "5-1 * * * *", "*/0 * * * *", "@reboot", "0 0 30 2 *", "x * * * *",
        ] {
            #expect(throws: JobQueueError.self, "\(bad)") { try JobSchedule.cron(bad) }
        }
        #expect(throws: JobQueueError.self) { try JobSchedule.every(.milliseconds(10)) }
        let every = try JobSchedule.every(.seconds(10))
        #expect(every.next(after: utc(2026, 12, 1) + 3) == utc(2026, 12, 1) + 10_000)
        #expect(every.description == "every 10s")
    }

    /// Europe's rule as a POSIX `TZ` string: the test zone, the same on every machine. Spring (the last
    /// Sunday of March, 02:00 → 03:00): 02:30 does not exist and runs at the first moment after the gap;
    /// a schedule every half hour runs once for the whole gap. Autumn (the last Sunday of October, 03:00 →
    /// 02:00): 02:30 happens twice and a fixed-hour schedule runs once; a schedule whose hour is `*` runs
    /// in real time through both.
    @Test func daylightSavingChangesInATestZone() throws {
        let zone = try ScheduleTimeZone.posix("CET-1CEST,M3.5.0,M10.5.0/3")
        try checkEuropeanChanges(zone)
        #expect(zone.offset(at: utc(2026, 1, 15) / 1000) == 3600)
        #expect(zone.offset(at: utc(2026, 7, 15) / 1000) == 7200)
        #expect(try ScheduleTimeZone.named(zone.description) == zone)
    }

    /// The same changes read from the machine's time-zone database (a TZif file), when it has one.
    @Test(.enabled(if: access("/usr/share/zoneinfo/Europe/Paris", R_OK) == 0, "no tzdata on this machine"))
    func daylightSavingChangesFromTheTimeZoneDatabase() throws {
        let paris = try ScheduleTimeZone.named("Europe/Paris")
        try checkEuropeanChanges(paris)
        #expect(paris.offset(at: utc(1900, 1, 1) / 1000) == 561)  // Paris mean time
        #expect(paris.offset(at: utc(2100, 7, 1) / 1000) == 7200)  // past the transitions: the footer's rule
        #expect(throws: JobQueueError.self) { try ScheduleTimeZone.named("Nowhere/Atlantis") }
        #expect(throws: JobQueueError.self) { try ScheduleTimeZone.named("../../etc/passwd") }
    }

    private func checkEuropeanChanges(_ zone: ScheduleTimeZone) throws {
        let daily = try JobSchedule.cron("30 2 * * *", in: zone)
        // Spring, 2026-03-29: 02:30 CET → the gap ends at 01:00 UTC (03:00 CEST).
        #expect(daily.next(after: utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1, 0))
        #expect(daily.next(after: utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 30, 0, 30))
        // Autumn, 2026-10-25: 02:30 CEST (00:30 UTC) only, not 02:30 CET (01:30 UTC).
        #expect(daily.next(after: utc(2026, 10, 24, 12)) == utc(2026, 10, 25, 0, 30))
        #expect(daily.next(after: utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30))
        let halfHourly = try JobSchedule.cron("*/30 * * * *", in: zone)
        #expect(
            occurrences(halfHourly, after: utc(2026, 3, 29, 0, 0), through: utc(2026, 3, 29, 2, 0)) == [
                utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 0),
            ]
        )
        #expect(
            occurrences(halfHourly, after: utc(2026, 10, 24, 23, 30), through: utc(2026, 10, 25, 2, 0)) == [
                utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 0), utc(2026, 10, 25, 1, 30),
                utc(2026, 10, 25, 2, 0),
            ]
        )
    }

    @Test func missedOccurrencesFollowThePolicy() throws {
        let s = try JobSchedule.every(.seconds(1))
        let due = utc(2026, 12, 1)
        let now = due + 90_500  // 90.5 s late: 91 occurrences passed
        let skip = MissedRuns.skip.plan(s, due: due, now: now)
        #expect(skip.runs == Array(stride(from: due + 31_000, through: due + 90_000, by: 1000)))  // the last minute
        #expect(skip.next == due + 91_000)
        #expect(MissedRuns.skip(after: .zero).plan(s, due: due, now: now).runs == [])
        let once = MissedRuns.once.plan(s, due: due, now: now)
        #expect(once.runs == [due] && once.next == due + 91_000)
        let all = MissedRuns.catchUp.plan(s, due: due, now: now)
        #expect(all.runs.count == 91 && all.runs.first == due && all.next == due + 91_000)
        let capped = MissedRuns.catchUp.plan(s, due: due, now: now, limit: 10)
        #expect(capped.runs.count == 10 && capped.next == due + 10_000)  // the rest at the next turn
        // On time: one occurrence, whatever the policy.
        for p in [MissedRuns.skip, .once, .catchUp] {
            #expect(p.plan(s, due: due, now: due + 20).runs == [due], "\(p)")
        }
        #expect(try MissedRuns(stored: MissedRuns.skip(after: .seconds(5)).stored) == .skip(after: .seconds(5)))
    }

    // MARK: the database

    /// Four connections run the schedules at each of 40 fake moments, all at once: every occurrence is
    /// queued exactly once.
    @Test(arguments: TestBackend.enabled) func racingWorkersQueueEachOccurrenceOnce(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            try queue.schedule("tick", Tick(log: db.scratch + ".log"), try .every(.seconds(1)), missed: .catchUp)
            let first = try #require(try queue.schedules().first?.next?.millisecondsSinceEpoch)
            let barrier = Barrier(parties: 4)
            let queued = TrackedMutex(0)
            try runThreads(4) { _ in
                let c = try db.connect()
                defer { c.close() }
                for k in 0..<40 {
                    _ = try barrier.wait(timeout: .seconds(60))
                    let n = try ScheduleRunner.run(queues: ["default"], now: { first + Int64(k) * 1000 + 500 }, on: c)
                    queued.withLock { $0 += n.queued }
                }
            }
            let c = try db.connect()
            defer { c.close() }
            let runAts = try c.query("SELECT run_at FROM mp_jobs ORDER BY run_at").compactMap { $0.values[0].intValue }
            #expect(runAts == (0..<40).map { first + Int64($0) * 1000 })
            #expect(queued.withLock { $0 } == 40)
            #expect(try queue.schedules().first?.next?.millisecondsSinceEpoch == first + 40_000)
        }
    }

    /// Declaring a schedule again keeps its next occurrence unless its timing changed; a unique key skips
    /// an occurrence while the previous job is still queued; unscheduling keeps the jobs queued.
    @Test(arguments: TestBackend.enabled) func declaringAgainUniqueKeysAndRemoval(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let tick = Tick(log: db.scratch + ".log")
            let options = JobOptions(queue: "q", uniqueKey: "tick")
            try queue.schedule("tick", tick, try .every(.seconds(60)), missed: .catchUp, options: options)
            let next = try #require(try queue.schedules().first?.next)
            try queue.schedule("tick", tick, try .every(.seconds(60)), missed: .catchUp, options: options)
            #expect(try queue.schedules().first?.next == next)
            let c = try db.connect()
            defer { c.close() }
            // Three occurrences due at once: the first is queued, the others find its key taken.
            let ran = try ScheduleRunner.run(queues: ["q"], now: { next.millisecondsSinceEpoch + 120_000 }, on: c)
            #expect(ran.queued == 1)
            #expect(try queue.counts(queue: "q") == [.available: 1])
            #expect(try ScheduleRunner.run(queues: ["other"], on: c).queued == 0)  // another queue's worker
            try queue.schedule("tick", tick, try .cron("0 3 * * *", in: .named("UTC")), options: options)
            let info = try #require(try queue.schedules().first)
            #expect(info.timing == "cron 0 3 * * * UTC" && info.missed == "skip after 1m")
            #expect(info.next != next && info.last?.millisecondsSinceEpoch == next.millisecondsSinceEpoch + 120_000)
            #expect(try queue.unschedule("tick"))
            #expect(try !queue.unschedule("tick"))
            #expect(try queue.schedules().isEmpty && queue.counts(queue: "q") == [.available: 1])
            #expect(throws: JobQueueError.self) { try queue.schedule("", tick, try .every(.seconds(1))) }
        }
    }

    /// A schedule stored with a zone this machine does not have is left to other workers: the others still
    /// run, and it is reported.
    @Test(arguments: TestBackend.enabled) func anUnreadableScheduleIsLeftAlone(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            try queue.schedule("a", Tick(log: db.scratch + ".log"), try .every(.seconds(1)), missed: .catchUp)
            try queue.schedule("b", Tick(log: db.scratch + ".log"), try .every(.seconds(1)), missed: .catchUp)
            let c = try db.connect()
            defer { c.close() }
            _ = try c.execute(
                "UPDATE mp_schedules SET spec = 'cron:0 3 * * *', zone = 'Nowhere/Atlantis' WHERE name = 'b'"
            )
            let now = QueueSchema.nowMs() + 1500
            let ran = try ScheduleRunner.run(queues: ["default"], now: { now }, on: c)
            #expect(ran.queued >= 1)
            #expect(ran.unreadable.keys.sorted() == ["b"])
            // The unreadable one, still due, does not bring the worker back at once: the next is a's.
            #expect(try #require(ran.nextDue) > now)
        }
    }

    /// A schedule whose jobs the database refuses (a trigger of the user's) fails alone: the schedules
    /// after it are queued, and it is reported; a schedule left with no next time comes back when it is
    /// declared again.
    @Test(arguments: TestBackend.enabled) func aFailingScheduleHoldsUpNoOther(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let log = db.scratch + ".log"
            try queue.schedule("a", Tick(log: log), try .every(.seconds(1)), options: JobOptions(queue: "refused"))
            try queue.schedule("b", Tick(log: log), try .every(.seconds(2)))
            let c = try db.connect()
            defer { c.close() }
            try refuseRows(of: "mp_jobs", where: "NEW.queue = 'refused'", message: "not this queue", c)
            let now = QueueSchema.nowMs() + 2500
            let ran = try ScheduleRunner.run(queues: ["refused", "default"], now: { now }, on: c)
            #expect(ran.failed.keys.sorted() == ["a"] && ran.queued >= 1 && ran.queues == ["default"])
            #expect(try queue.counts(queue: "default")[.available] ?? 0 >= 1)
            // No next time left (as for a cron expression with no date in five years): declaring it again
            // gives it one.
            _ = try c.execute("UPDATE mp_schedules SET next_at = NULL WHERE name = 'b'")
            try queue.schedule("b", Tick(log: log), try .every(.seconds(2)))
            #expect(try queue.schedules().first { $0.name == "b" }?.next != nil)
        }
    }

    // MARK: worker processes

    /// Three worker processes run the scheduler of one every-second job: over ten seconds, ten runs (±1),
    /// no occurrence queued twice, every job run once.
    @Test(arguments: TestBackend.enabled) func threeWorkersRunAnEverySecondJob(_ backend: TestBackend) throws {
        try withScratchDatabase(backend) { db in
            let queue = try JobQueue(db.url)
            let log = db.scratch + ".log"
            try queue.schedule("tick", Tick(log: log), try .every(.seconds(1)))
            let workers = (0..<3).map { _ in
                ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 10_000, concurrency: 1))
            }
            for w in workers { try w.start() }
            defer { for w in workers { w.kill() } }
            let c = try db.connect()
            defer { c.close() }
            try eventually(within: .seconds(120), "twelve occurrences queued") {
                try c.scalar("SELECT count(*) FROM mp_jobs")?.intValue ?? 0 >= 12
            }
            for w in workers { w.terminate() }
            _ = try workers.map { try $0.result(timeout: .seconds(60)) }
            let runAts = try c.query("SELECT run_at FROM mp_jobs ORDER BY run_at").compactMap { $0.values[0].intValue }
            #expect(Set(runAts).count == runAts.count, "an occurrence queued twice: \(runAts)")
            let inTenSeconds = runAts.filter { $0 < runAts[0] + 10_000 }.count
            #expect((9...11).contains(inTenSeconds), "\(inTenSeconds) runs in ten seconds: \(runAts)")
            let completed = try queue.counts()[.completed] ?? 0
            #expect(readLines(log).count == completed)
        }
    }

    /// On PostgreSQL, a worker is killed inside the transaction that queues an occurrence (a trigger holds
    /// its insert on a lock the test owns): the occurrence is not lost — another worker queues it, once.
    @Test(
        .enabled(
            if: TestBackend.enabled.contains(.postgresql),
            "needs PostgreSQL (a trigger holds the worker inside its transaction; SQLite has none that waits)"
        )
    )
    func aWorkerKilledInsideTheSchedulersTransactionLosesNoOccurrence() throws {
        try withScratchDatabase(.postgresql) { db in
            let queue = try JobQueue(db.url)
            let c = try db.connect()
            defer { c.close() }
            try holdInsideTransactions(on: "mp_jobs", "INSERT", key: 4242, c)
            let log = db.scratch + ".log"
            try queue.schedule("tick", Tick(log: log), try .every(.seconds(1)), missed: .catchUp)
            let a = ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 10_000, concurrency: 1))
            try a.start()
            defer { a.kill() }
            try waitUntilHeldInsideATransaction(c)
            // What it holds: the occurrence its uncommitted update moved on from.
            let held = try #require(try c.scalar("SELECT next_at FROM mp_schedules")?.intValue)
            a.kill()
            _ = try a.join(timeout: .seconds(30))
            _ = try c.execute("SELECT pg_advisory_unlock(4242)")
            let b = ChildProcess(job: WorkerProcess(database: db.url, leaseMs: 10_000, concurrency: 1))
            try b.start()
            defer { b.kill() }
            try eventually(within: .seconds(120), "the held occurrence and two more queued") {
                try c.scalar("SELECT count(*) FROM mp_jobs WHERE run_at >= \(held)")?.intValue ?? 0 >= 3
            }
            b.terminate()
            _ = try b.result(timeout: .seconds(60))
            let runAts = try c.query("SELECT run_at FROM mp_jobs ORDER BY run_at").compactMap { $0.values[0].intValue }
            #expect(runAts.contains(held), "the occurrence the killed worker held: \(held), queued: \(runAts)")
            #expect(Set(runAts).count == runAts.count, "an occurrence queued twice: \(runAts)")
            // Catch-up: no second missing from the first occurrence on.
            #expect(runAts == Array(stride(from: runAts[0], through: runAts.last!, by: 1000)))
        }
    }
}
