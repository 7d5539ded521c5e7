import ArgumentParser
import Glibc
import Logging
import Multiprocessing
import MultiprocessingJobQueue
import MultiprocessingManagers
import MultiprocessingNetwork
import MultiprocessingPrometheus
import MultiprocessingSQL
import SeedExamples

// mp — the swift-multiprocessing command-line tool.
//
// Every job of this program lives in another file (those globals are initialised on first use, in any
// process), so its workers start before `main` and need no `bootstrap()`: they come from the fork server
// (a program that calls `bootstrap()` gets spawned workers, which run main.swift down to that call).
WorkerStart.entry = .beforeMain
Processes.lineBufferStandardOutput()

struct MP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mp",
        abstract: "swift-multiprocessing: the tutorial's programs, and its distributed master and worker.",
        // The library's version (the README's `from: "0.1.0"`).
        version: "swift-multiprocessing 0.1.0",
        // No default subcommand: `mp bogus` is argument-parser's own error, not a demo program's name.
        subcommands: [Demo.self, List.self, Master.self, Worker.self, ETL.self, QueueCommand.self, ConsoleCommand.self]
    )
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the tutorial's programs, one after another (all, or those named; see `mp list`)."
    )

    @Argument(help: "Programs to run (default: all).")
    var names: [String] = []

    func validate() throws {
        let unknown = Set(names).subtracting(SeedExamples.all.map(\.name))
        if !unknown.isEmpty {
            throw ValidationError("unknown program(s): \(unknown.sorted().joined(separator: ", ")); see `mp list`")
        }
    }

    /// Runs on the main thread (the top-level code below has no `await`), as Python runs a script's
    /// top-level code: there `OSThread.current` is `MainThread`. Async programs run as tasks meanwhile.
    func run() throws {
        let wanted = Set(names)
        for e in SeedExamples.all where wanted.isEmpty || wanted.contains(e.name) {
            print("\n=== \(e.name): \(e.summary) ===")
            do {
                try e.run.run()
            } catch {
                print("error: \(error)")
                throw ExitCode(1)
            }
        }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the demo's programs.")

    func run() {
        for e in SeedExamples.all {
            print("\(e.name + String(repeating: " ", count: max(1, 15 - e.name.count))) \(e.summary)")
        }
    }
}

/// The options `mp master` and `mp worker` share (names scripts rely on).
struct Endpoint: ParsableArguments {
    @Option(
        help: "The address the master binds (default: every interface) or the worker connects to (default: 127.0.0.1)."
    )
    var host: String?
    @Option(help: "The TCP port.")
    var port: UInt16 = 5000
    @Option(help: "The shared key (UTF-8).")
    var authkey: String = "abc"
    @Option(help: "How many tasks.")
    var tasks: Int = 10
}

struct Master: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The tutorial's task_master: serve a task and a result queue, put N tasks, check N results.",
        discussion: "Exits 0 only if every result came back right. Interoperates with task_worker.py."
    )

    @OptionGroup var endpoint: Endpoint

    func run() throws {
        let ok = try TaskMasterWorker.master(
            host: endpoint.host ?? "",
            port: endpoint.port,
            authkey: Array(endpoint.authkey.utf8),
            tasks: endpoint.tasks
        )
        if !ok { throw ExitCode(1) }
    }
}

struct Worker: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The tutorial's task_worker: take tasks from a master, answer 'n * n = n²'.",
        discussion: "Interoperates with task_master.py."
    )

    @OptionGroup var endpoint: Endpoint
    @Option(
        help:
            "When the master is not there yet or goes away, try to connect (with backoff) for this many seconds (0: stop)."
    )
    var reconnectFor: Int = 0
    @Option(
        help: """
            Tasks to take per round trip. 1 (the default) holds one task at a time, as Python's worker; n is \
            faster for short tasks, but a worker that dies loses up to n tasks.
            """
    )
    var prefetch: Int = 1

    func validate() throws {
        guard prefetch >= 1 else { throw ValidationError("--prefetch must be at least 1") }
    }

    func run() throws {
        _ = try TaskMasterWorker.worker(
            host: endpoint.host ?? "127.0.0.1",
            port: endpoint.port,
            authkey: Array(endpoint.authkey.utf8),
            tasks: endpoint.tasks,
            prefetch: prefetch,
            reconnectFor: .seconds(max(0, reconnectFor))
        )
    }
}

struct ETL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "etl",
        abstract: "Copy a table between databases in chunks, through a transform, on a process pool: exactly once.",
        discussion: """
            Databases are URLs: sqlite:PATH. A run that is stopped (Ctrl-C, a crash, a kill) and started again \
            with the same arguments finishes the copy with every row written once: the sink records each \
            chunk in the same transaction as its rows (tables mp_pipeline_runs and mp_pipeline_chunks).

            Example: mp etl --from sqlite:db1.sqlite --table user --to sqlite:copy.sqlite --into user_copy --transform xb
            """
    )

    @Option(help: "The source database URL.")
    var from: String
    @Option(help: "The source table.")
    var table: String
    @Option(help: "The source's unique key column (integer or text, indexed).")
    var key: String = "id"
    @Option(help: "The sink database URL (default: the source).")
    var to: String?
    @Option(help: "The sink table (created from the first chunk's columns if missing; default: TABLE_copy).")
    var into: String?
    @Option(help: "copy (rows as they are) or xb (the tutorial's column: 'M' when len(pwd) == 3, else 'F').")
    var transform: String = "copy"
    @Option(help: "Source rows per chunk.")
    var chunkSize: Int = 10_000
    @Option(help: "Worker processes (default: the CPUs).")
    var workers: Int?
    @Option(help: "The copy's name, for resuming (default: derived from the tables).")
    var name: String?
    @Flag(help: "No progress bar.")
    var quiet = false

    func validate() throws {
        guard ["copy", "xb"].contains(transform) else { throw ValidationError("--transform is copy or xb") }
        guard chunkSize > 0 else { throw ValidationError("--chunk-size must be positive") }
        _ = try DatabaseURL(from)
        if let to { _ = try DatabaseURL(to) }
    }

    func run() throws {
        let source = try DatabaseURL(from)
        let sink = try to.map { try DatabaseURL($0) } ?? source
        let pool = try ProcessPool(workers: workers)
        defer { pool.terminate() }
        let report: PipelineReport
        switch transform {
        case "xb": report = try copy(AddSexColumn(), source, sink, pool)
        default: report = try copy(CopyRows(), source, sink, pool)
        }
        print(report)
    }

    func copy<T: RowTransform>(
        _ t: T,
        _ source: DatabaseURL,
        _ sink: DatabaseURL,
        _ pool: ProcessPool
    ) throws
        -> PipelineReport
    {
        let p = TablePipeline(
            from: .table(table, key: key, in: source),
            to: sink,
            table: into ?? table + "_copy",
            transform: t,
            name: name,
            chunkSize: chunkSize
        )
        return try p.run(on: pool, progress: quiet ? nil : .bar)
    }
}

struct QueueCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue",
        abstract: "A durable job queue in a database: run workers, queue the demo's jobs, show counts.",
        discussion: """
            Databases are URLs: sqlite:PATH. A worker runs the jobs this program defines (the demo's \
            SquareTask); your own program runs your jobs with QueueWorker.
            """,
        subcommands: [
            QueueWorkerCommand.self, QueueEnqueue.self, QueueMapCommand.self, QueueStatus.self, QueueShow.self,
            QueueLimitCommand.self, QueueScheduleCommand.self,
        ]
    )
}

struct QueueWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Claim and run jobs on a local process pool until SIGTERM or Ctrl-C.",
        discussion:
            "The first signal finishes the jobs held (then hands back the rest); a second hands them back at once."
    )

    @Option(help: "The queue's database URL.")
    var database: String
    @Option(name: .customLong("queue"), help: "A queue to serve (repeatable; default: default).")
    var queues: [String] = []
    @Option(help: "Jobs run at once (default: the CPUs).")
    var concurrency: Int?
    @Option(help: "Seconds a claimed job's lease lasts (renewed while it runs).")
    var lease: Int = 30
    @Option(help: "Milliseconds between polls for due jobs.")
    var pollMs: Int = 50
    @Flag(
        help:
            "Poll only: do not LISTEN for queued jobs (PostgreSQL behind a pooler in transaction mode, such as PgBouncer)."
    )
    var pollOnly = false
    @Option(
        help:
            "Serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port, printed). Off unless given."
    )
    var metricsPort: Int?
    @Option(help: "The address the metrics endpoint listens on (with --metrics-port).")
    var metricsHost: String = "127.0.0.1"

    func validate() throws {
        if let p = metricsPort, !(0...65535).contains(p) {
            throw ValidationError("--metrics-port must be between 0 and 65535")
        }
    }

    func run() throws {
        let url = try DatabaseURL(database)
        var logger = Logger(label: "mp.queue")
        logger.logLevel = .info
        // Before the pool and the worker: their metrics are made when they are.
        var endpoint: MetricsEndpoint?
        if let metricsPort {
            endpoint = try MetricsEndpoint.bootstrap(
                address: .tcp(host: metricsHost, port: UInt16(metricsPort)),
                logger: logger
            )
            print("metrics at http://\(endpoint!.address)/metrics")
            fflush(nil)
        }
        defer { endpoint?.close() }
        let pool = try ProcessPool(workers: concurrency, options: ProcessPoolOptions(interrupt: .ignore))
        defer { pool.terminate() }
        let worker = try QueueWorker(
            url,
            pool: pool,
            options: QueueWorkerOptions(
                queues: queues.isEmpty ? ["default"] : queues,
                lease: .seconds(max(1, lease)),
                pollInterval: .milliseconds(max(1, pollMs)),
                notifications: !pollOnly,
                logger: logger
            )
        )
        QueueWorker.stopOnSignals(worker)
        let n = try worker.run()
        print("\(n) jobs finished")
    }
}

struct QueueEnqueue: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enqueue",
        abstract: "Queue the demo's jobs: SquareTask(n) for n in 1...COUNT."
    )

    @Option(help: "The queue's database URL.")
    var database: String
    @Option(help: "How many jobs.")
    var count: Int = 10
    @Option(help: "The queue.")
    var queue: String = "default"
    @Flag(help: "Wait for the results and print them.")
    var wait = false
    @Option(help: "Milliseconds each job pauses before answering.")
    var pauseMs: Int = 0
    @Flag(help: "Queue them as a group, with a report that runs once they have all ended.")
    var report = false

    func run() throws {
        let q = try JobQueue(DatabaseURL(database))
        let jobs = (1...max(1, count)).map { SquareTask(n: $0, pauseMs: max(0, pauseMs)) }
        let options = JobOptions(queue: queue)
        let handles: [JobHandle<SquareTask>]
        var reportHandle: JobHandle<SquareReport>?
        if report {
            let group = try q.group(jobs, options: options, then: SquareReport(), callbackOptions: options)
            (handles, reportHandle) = (group.members, group.callback)
        } else {
            handles = try q.enqueue(jobs, options: options)
        }
        print(
            "queued \(handles.count) jobs (ids \(handles.first!.id)...\(handles.last!.id))"
                + (reportHandle.map { " and their report (id \($0.id))" } ?? "")
        )
        if wait {
            for h in handles { print(try h.result(timeout: .seconds(3600))) }
            if let reportHandle { print(try reportHandle.result(timeout: .seconds(3600))) }
        }
    }
}

struct QueueMapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map",
        abstract: "The pool's map on the queue's workers: x*x for x in 0..<COUNT, through a QueuePool.",
        discussion: "Prints each result as it comes, then how many there were; the queue's workers run the chunks."
    )

    @Option(help: "The queue's database URL.")
    var database: String
    @Option(help: "How many items.")
    var count: Int = 10
    @Option(help: "Items per job (default: four jobs per worker process the workers announced).")
    var chunksize: Int?
    @Option(help: "The queue.")
    var queue: String = "default"
    @Option(help: "Milliseconds each item pauses before answering.")
    var pauseMs: Int = 0
    @Option(help: "Seconds to wait for all the results.")
    var timeout: Int = 3600

    func run() throws {
        let pool = try QueuePool(DatabaseURL(database), options: QueuePoolOptions(queue: queue))
        defer { pool.close() }
        let inputs = Array(0..<max(0, count))
        let results = try pool.imapUnordered(SquareAfterPause(pauseMs: max(0, pauseMs)), inputs, chunksize: chunksize)
        var n = 0
        let deadline = ContinuousClock.now + .seconds(max(1, timeout))
        while let v = try results.next(timeout: max(.zero, deadline - .now)) {
            print(v)
            n += 1
        }
        print("\(n) results")
    }
}

struct QueueShow: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "One job: its state, attempts, the jobs it waits for and those that wait for it, its errors."
    )

    @Option(help: "The queue's database URL.")
    var database: String
    @Option(help: "The job's id.")
    var id: Int64

    func run() throws {
        let q = try JobQueue(DatabaseURL(database))
        guard let d = try q.details(id) else { throw ValidationError("no job \(id)") }
        print(
            "job \(id): \(d.info.typeName) in \(d.info.queue), \(d.info.state.rawValue), attempt \(d.info.attempt) of \(d.info.maxAttempts)"
        )
        if !d.waitsFor.isEmpty {
            let list = d.waitsFor.map { w in
                "\(w.job) (\(w.ended?.rawValue ?? "not ended")\(w.required ? "" : ", outcome only"))"
            }
            print("waits for: " + list.joined(separator: ", "))
        }
        if !d.waitedForBy.isEmpty { print("waited for by: " + d.waitedForBy.map(String.init).joined(separator: ", ")) }
        for e in d.info.errors { print(e) }
    }
}

struct QueueStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Jobs per state, and the workers serving the queue."
    )

    @Option(help: "The queue's database URL.")
    var database: String

    func run() throws {
        let q = try JobQueue(DatabaseURL(database))
        let counts = try q.counts()
        for s in JobState.allCases { print("\(s.rawValue): \(counts[s] ?? 0)") }
        for (queue, limit) in try q.limits().sorted(by: { $0.key < $1.key }) {
            print("limit \(queue): \(limit)")
        }
        for s in try q.schedules() { print(QueueScheduleCommand.line(s)) }
        // The workers serving it, as each last announced itself (the console's workers page, in lines).
        let now = QueueTime.now
        for w in try q.workers() {
            let seen = Double(now.since(w.lastSeen).components.seconds)
            let busy = w.processes.filter(\.busy).count
            let status = !w.isLive(at: now) ? " (lost)" : w.stopping ? " (stopping)" : ""
            print(
                "worker \(w.name)\(status): queues \(w.queues.joined(separator: ",")), seen \(Int(seen)) s ago, "
                    + "\(w.held) jobs held, \(w.finished) finished, pool \(busy)/\(w.processes.count) busy"
            )
        }
    }
}

struct QueueLimitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limit",
        abstract:
            "Sets or removes a queue's limits across all its workers: jobs running at once, jobs started per period.",
        discussion: """
            mp queue limit --database sqlite:q.db --queue mail --concurrency 2 --rate 10/1s sets both; \
            --remove removes them. Periods: ms, s, m, h. Without a limit option, prints the queue's limit.
            """
    )

    @Option(help: "The queue's database URL.")
    var database: String
    @Option(help: "The queue whose limit this sets.")
    var queue: String = "default"
    @Option(help: "At most this many of the queue's jobs running at once, across all workers.")
    var concurrency: Int?
    @Option(help: "At most COUNT/PERIOD jobs started in any period, such as 10/1s or 100/1m.")
    var rate: String?
    @Flag(help: "Remove the queue's limit.")
    var remove = false

    func validate() throws {
        if remove && (concurrency != nil || rate != nil) {
            throw ValidationError("--remove takes no --concurrency or --rate")
        }
        if let rate, Self.parseRate(rate) == nil {
            throw ValidationError("--rate is COUNT/PERIOD, such as 10/1s, 500/250ms or 100/1m (got \(rate))")
        }
    }

    /// `10/1s` as a rate; `nil` if it is not one.
    static func parseRate(_ text: String) -> QueueLimit.Rate? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let count = Int(parts[0]), count > 0 else { return nil }
        let period = parts[1]
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (unit, ms) in units where period.hasSuffix(unit) {
            guard let n = Int64(period.dropLast(unit.count)), n > 0, n <= Int64.max / ms else { return nil }
            return QueueLimit.Rate(count, per: .milliseconds(n * ms))
        }
        return nil
    }

    func run() throws {
        let q = try JobQueue(DatabaseURL(database))
        if remove {
            try q.setLimit(nil, for: queue)
            print("limit \(queue): none")
        } else if concurrency != nil || rate != nil {
            let limit = QueueLimit(concurrency: concurrency, rate: rate.flatMap(Self.parseRate))
            try q.setLimit(limit, for: queue)
            print("limit \(queue): \(limit)")
        } else {
            print("limit \(queue): \(try q.limits()[queue]?.description ?? "none")")
        }
    }
}

struct QueueScheduleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule",
        abstract: "Declares, lists or removes periodic jobs (the demo's SquareTask; programs declare their own).",
        discussion: """
            mp queue schedule --database sqlite:q.db --name square --cron '*/5 * * * *' --zone Europe/Paris \
            queues SquareTask(n: 7) every five minutes; --every 10s every ten seconds; --remove removes it. \
            Without --cron, --every or --remove, lists the schedules. Workers serving the queue queue the jobs.
            """
    )

    @Option(help: "The queue's database URL.")
    var database: String
    @Option(help: "The schedule's name.")
    var name: String?
    @Option(help: "A cron expression: five fields (minute hour day month weekday) or @hourly, @daily, ...")
    var cron: String?
    @Option(help: "The time zone the cron expression is read in: UTC, Europe/Paris, posix:CET-1CEST,M3.5.0,M10.5.0/3.")
    var zone: String = "UTC"
    @Option(help: "A fixed interval instead of cron, such as 10s, 5m or 1h.")
    var every: String?
    @Option(help: "Occurrences missed while no worker ran: skip (more than a minute late), once, or catchup.")
    var missed: String = "skip"
    @Option(help: "The queue the jobs go to.")
    var queue: String = "default"
    @Option(help: "The n of SquareTask(n:).")
    var n: Int = 7
    @Flag(help: "Remove the schedule.")
    var remove = false

    func validate() throws {
        if [cron != nil, every != nil, remove].filter({ $0 }).count > 1 {
            throw ValidationError("give one of --cron, --every and --remove")
        }
        if (cron != nil || every != nil || remove) && name == nil { throw ValidationError("--name is needed") }
        if let every, QueueLimitCommand.parseRate("1/" + every) == nil {
            throw ValidationError("--every is a number and a unit, such as 500ms, 10s, 5m or 1h (got \(every))")
        }
        if !["skip", "once", "catchup"].contains(missed) {
            throw ValidationError("--missed is skip, once or catchup (got \(missed))")
        }
    }

    /// One schedule as `mp queue status` and the listing print it.
    static func line(_ s: ScheduleInfo) -> String {
        "schedule \(s.name): \(s.timing), queue \(s.queue), missed: \(s.missed), next \(s.next?.description ?? "never"), "
            + "last \(s.last?.description ?? "never")"
    }

    func run() throws {
        let q = try JobQueue(DatabaseURL(database))
        if remove, let name {
            print(try q.unschedule(name) ? "removed \(name)" : "no schedule \(name)")
            return
        }
        guard let name, cron != nil || every != nil else {
            for s in try q.schedules() { print(Self.line(s)) }
            return
        }
        let when: JobSchedule
        if let cron {
            when = try .cron(cron, in: .named(zone))
        } else {
            when = try .every(QueueLimitCommand.parseRate("1/" + every!)!.period)
        }
        let policy: MissedRuns = missed == "once" ? .once : missed == "catchup" ? .catchUp : .skip
        try q.schedule(name, SquareTask(n: n, pauseMs: 0), when, missed: policy, options: JobOptions(queue: queue))
        for s in try q.schedules() where s.name == name { print(Self.line(s)) }
    }
}

struct ConsoleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "The job queue's web console: queues, jobs, workers and their pools; retry, cancel, discard.",
        discussion: """
            Read-only unless --token (or MP_CONSOLE_TOKEN) is given: then the token, entered once on the \
            sign-in page or sent as a bearer token, lets a visitor act on jobs. Needs an mp built with the \
            Console trait: swift build --traits Console.
            """
    )

    @Option(help: "The queue's database URL.")
    var database: String
    @Option(help: "The port to listen on (0: a free one, printed).")
    var port: Int = 8470
    @Option(help: "The address to listen on.")
    var host: String = "127.0.0.1"
    @Option(
        help: "The token that lets a visitor act on jobs (prefer MP_CONSOLE_TOKEN: a command line is visible to ps)."
    )
    var token: String?
    @Flag(help: "The token is needed to read the pages too.")
    var tokenToRead = false
    @Flag(help: "Mark the session cookie Secure (the console is served behind HTTPS, such as a TLS proxy).")
    var secureCookie = false
    @Option(
        name: .customLong("allowed-host"),
        help:
            "A host name the console answers for (repeatable; default: loopback names when --host is loopback, else any)."
    )
    var allowedHosts: [String] = []

    func validate() throws {
        if !(0...65535).contains(port) { throw ValidationError("--port must be between 0 and 65535") }
        if tokenToRead && resolvedToken == nil {
            throw ValidationError("--token-to-read needs a token (--token or MP_CONSOLE_TOKEN)")
        }
    }

    var resolvedToken: String? {
        if let token, !token.isEmpty { return token }
        return getenv("MP_CONSOLE_TOKEN").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
    }

    func run() throws {
        try runConsole(
            database: DatabaseURL(database),
            host: host,
            port: port,
            token: resolvedToken,
            tokenToRead: tokenToRead,
            secureCookie: secureCookie,
            allowedHosts: allowedHosts
        )
    }
}

// Top-level code (so that `bootstrap()` runs first), without `await`: it stays on the main thread.
MP.main()
