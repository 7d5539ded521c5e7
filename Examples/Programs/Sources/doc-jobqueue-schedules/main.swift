import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingSQL
import Threading

struct Report: Job {
    let name: String
    func run() -> String { "\(name) report sent" }
}
bootstrap()

let url = try DatabaseURL("sqlite:reports.db")
let queue = try JobQueue(url)
// 02:30 every night in Paris (`.named("Europe/Paris")` reads the machine's tz database; a POSIX rule
// needs none): the 02:30 skipped in March runs at 03:00, the one repeated in October runs once.
let paris = try ScheduleTimeZone.posix("CET-1CEST,M3.5.0,M10.5.0/3")
try queue.schedule("nightly", Report(name: "nightly"), .cron("30 2 * * *", in: paris))
// Every second; occurrences missed while no worker ran are skipped (the default).
try queue.schedule("pulse", Report(name: "pulse"), .every(.seconds(1)), missed: .skip)
for s in try queue.schedules() { print(s.name, s.timing) }   // nightly cron 30 2 * * * posix:…, pulse every 1s

// Any number of workers serving the queue: each occurrence is queued once.
let worker = try QueueWorker(url, pool: try ProcessPool(workers: 2))
let running = OSThread { _ = try? worker.run() }
try running.start()
while try queue.counts()[.completed, default: 0] == 0 { _ = Event().wait(timeout: .milliseconds(50)) }
worker.stop()
try running.join()
try queue.unschedule("pulse")
print(try queue.jobs(in: .completed).count >= 1)             // true: a pulse ran
