import ArgumentParser
import Glibc
import Multiprocessing
import MultiprocessingManagers
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
        subcommands: [Demo.self, List.self, Master.self, Worker.self],
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

// Top-level code (so that `bootstrap()` runs first), without `await`: it stays on the main thread.
MP.main()
