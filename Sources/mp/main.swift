import ArgumentParser
import Glibc
import Multiprocessing
import MultiprocessingManagers
import MultiprocessingSQL
import SeedExamples

// mp — the swift-multiprocessing command-line tool.
//
// Python's `if __name__ == "__main__":` habit: a no-op here unless a worker was started with
// `WorkerStart.entry = .bootstrap` (then this process becomes that worker and never returns).
bootstrap()
Processes.lineBufferStandardOutput()

struct MP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mp",
        abstract: "swift-multiprocessing: the tutorial's programs, and its distributed master and worker.",
        subcommands: [Demo.self, List.self, Master.self, Worker.self, ETL.self],
        defaultSubcommand: Demo.self
    )
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the seed notes' programs, one after another (all, or those named; see `mp list`)."
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
    @Option(help: "The address to bind (master; empty: every interface) or to connect to (worker).")
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
    @Option(help: "When the master goes away, try to reconnect (with backoff) for this many seconds (0: stop).")
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
    @Option(help: "copy (rows as they are) or xb (the notes' column: 'M' when len(pwd) == 3, else 'F').")
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

// Top-level code (so that `bootstrap()` runs first), without `await`: it stays on the main thread.
MP.main()
