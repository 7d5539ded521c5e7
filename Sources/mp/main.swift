import Glibc
import Multiprocessing
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
        """
    )
    exit(2)
}

switch command {
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
