import Foundation
import Multiprocessing
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

/// The package of programs in `Examples/Programs`, written as users write them (a package that depends on
/// this one by path, each program a `main.swift`): built once, by `swift build`, then run one by one.
enum ExamplePrograms {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let package = root.appendingPathComponent("Examples/Programs")
    private static let built = Mutex<Result<URL, BuildFailure>?>(nil)

    struct BuildFailure: Error, CustomStringConvertible {
        let description: String
    }

    /// Builds the package (once per test run; `.ci/run` builds it before the suite, so this is then an
    /// up-to-date check) and returns its products' directory.
    static func products() throws -> URL {
        try built.withLock { cached in
            if let cached { return try cached.get() }
            let result: Result<URL, BuildFailure>
            let swift = URL(fileURLWithPath: "/usr/bin/env")
            let run = try runToEnd(swift, ["swift", "build", "--package-path", package.path])
            if run.status == 0 {
                let bin = try runToEnd(swift, ["swift", "build", "--package-path", package.path, "--show-bin-path"])
                result = .success(URL(fileURLWithPath: bin.output.trimmingCharacters(in: .whitespacesAndNewlines)))
            } else {
                result = .failure(BuildFailure(description: "swift build of Examples/Programs failed:\n\(run.output)"))
            }
            cached = result
            return try result.get()
        }
    }

    /// Runs one program of the package to its end: its exit status and everything it wrote.
    static func run(_ name: String, _ arguments: [String] = []) throws -> (status: Int32, output: String) {
        let exe = try products().appendingPathComponent(name)
        let r = try runToEnd(exe, arguments, environment: ["SWIFT_BACKTRACE": "enable=no"])
        return (r.status, r.output)
    }
}

/// Issue 25: a newcomer's `main.swift` that reads its own top-level variables from a job is right with
/// `bootstrap()` and refused loudly without it — never a silent `0` or `""`, never a bare crash.
@Suite(.serialized, .timeLimit(.minutes(20)))
struct NewcomerProgramTests {
    /// Each program of the issue, and what it prints once `bootstrap()` is in place.
    static let programs: [(name: String, right: String, wrong: [String])] = [
        ("pool-int-and-short-string", #"["item-3", "item-6", "item-9"]"#, [#"["0", "0", "0"]"#, #"["", "", ""]"#]),
        (
            "pool-long-string",
            #"["a string far too long to be stored inline in a String value #1", "#
                + #""a string far too long to be stored inline in a String value #2"]"#,
            [#"[" #1", " #2"]"#]
        ),
        ("pool-dictionary", "[3, 5, 7]", ["[-1, -1, -1]"]),
        ("child-process-string", "hello from the top level", []),
        ("apply-async-class", "callback: 40\n40", ["callback: 0"]),
    ]

    @Test(arguments: programs.map(\.name))
    func withoutBootstrapTheProgramIsRefusedAndSaysWhereTheCallGoes(_ name: String) async throws {
        let program = Self.programs.first { $0.name == name }!
        let (status, output) = try await background { try ExamplePrograms.run(name) }.value
        #expect(status != 0, "\(output)")
        #expect(output.contains("MultiprocessingError.bootstrapRequired"), "\(output)")
        #expect(output.contains("Add the line `bootstrap()` to main.swift after the declarations"), "\(output)")
        #expect(!output.contains("Signal 11"), "\(output)")
        for wrong in program.wrong { #expect(!output.contains(wrong), "\(output)") }
    }

    @Test(arguments: programs.map(\.name))
    func withBootstrapTheProgramPrintsTheRightAnswer(_ name: String) async throws {
        let program = Self.programs.first { $0.name == name }!
        let (status, output) = try await background { try ExamplePrograms.run(name, ["--bootstrap"]) }.value
        #expect(status == 0, "\(output)")
        #expect(output.trimmingCharacters(in: .whitespacesAndNewlines) == program.right)
    }
}
