import Glibc
import Multiprocessing
import MultiprocessingManagers
import SeedExamples

// mp — the swift-multiprocessing command-line tool.
//   mp demo [NAME ...]   run the seed notes' programs (all, or the ones named)
//   mp list              list them
// Python's `if __name__ == "__main__":` habit: a no-op here unless a worker was started with
// `WorkerStart.entry = .bootstrap` (then this process becomes that worker and never returns).
bootstrap()
Processes.lineBufferStandardOutput()
let args = Array(CommandLine.arguments.dropFirst())
let command = args.first ?? "demo"

func usage() -> Never {
    print(
        """
        usage: mp demo [NAME ...]   run the seed notes' programs (all, or those named)
               mp list              list the programs
               mp master [--host H] [--port P] [--authkey K] [--tasks N]
                                    the distributed master (defaults: all interfaces, 5000, abc, 10);
                                    exits 0 only if every result came back right
               mp worker [--host H] [--port P] [--authkey K] [--tasks N]
                                    a worker of it (defaults: 127.0.0.1, 5000, abc, 10)
        """
    )
    exit(2)
}

/// `--name value` options of `mp master` / `mp worker`.
func options(_ defaults: [String: String]) -> [String: String] {
    var o = defaults
    var rest = args.dropFirst()
    while let flag = rest.popFirst() {
        guard flag.hasPrefix("--"), let key = Optional(String(flag.dropFirst(2))), o[key] != nil else {
            print("unknown option \(flag)")
            usage()
        }
        guard let value = rest.popFirst() else {
            print("\(flag) needs a value")
            usage()
        }
        o[key] = value
    }
    return o
}

func number<T: FixedWidthInteger>(_ o: [String: String], _ key: String) -> T {
    guard let v = o[key].flatMap({ T($0) }) else {
        print("--\(key) must be a number")
        usage()
    }
    return v
}

switch command {
case "master":
    let o = options(["host": "", "port": "5000", "authkey": "abc", "tasks": "10"])
    do {
        let ok = try TaskMasterWorker.master(
            host: o["host"]!,
            port: number(o, "port"),
            authkey: Array(o["authkey"]!.utf8),
            tasks: number(o, "tasks")
        )
        exit(ok ? 0 : 1)
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "worker":
    let o = options(["host": "127.0.0.1", "port": "5000", "authkey": "abc", "tasks": "10"])
    do {
        _ = try TaskMasterWorker.worker(
            host: o["host"]!,
            port: number(o, "port"),
            authkey: Array(o["authkey"]!.utf8),
            tasks: number(o, "tasks")
        )
    } catch {
        print("error: \(error)")
        exit(1)
    }
case "list":
    for e in SeedExamples.all {
        print("\(e.name + String(repeating: " ", count: max(1, 15 - e.name.count))) \(e.summary)")
    }
case "demo":
    let wanted = Set(args.dropFirst())
    let unknown = wanted.subtracting(SeedExamples.all.map(\.name))
    if !unknown.isEmpty {
        print("unknown program(s): \(unknown.sorted().joined(separator: ", "))")
        usage()
    }
    for e in SeedExamples.all where wanted.isEmpty || wanted.contains(e.name) {
        print("\n=== \(e.name): \(e.summary) ===")
        do {
            try await e.run()
        } catch {
            print("error: \(error)")
            exit(1)
        }
    }
default:
    usage()
}
