import Synchronization
import Threading

/// A unit of work that can run in another process — what Python expresses as `target=f, args=(...)`.
///
/// A job is a `Codable` value (its stored properties are the arguments) with a `run()`; its `Output`
/// comes back to the caller. `run` may be synchronous or `async`, and may throw: errors that are
/// `Codable` come back as themselves, others as a ``RemoteError``.
///
/// ```swift
/// struct Square: Job {
///     let x: Int
///     func run() -> Int { x * x }
/// }
/// let p = ChildProcess(job: Square(x: 7))
/// try p.start()
/// print(try p.result())   // 49, computed in another process
/// ```
///
/// A job that returns nothing — Python's most common `Process` target — is written as it reads:
///
/// ```swift
/// struct Producer: Job {
///     let count: Int
///     func run() throws { for i in 0..<count { print("produced", i) } }
/// }
/// ```
///
/// (its `Output` is ``NoOutput``).
///
/// The worker finds the type by its mangled name in the same executable, with no registration: public
/// and internal types work (nested and generic too), `private`, `fileprivate` and local types do not
/// and are rejected when submitted.
public protocol Job: Codable, Sendable {
    /// What `run()` returns to the caller; ``NoOutput`` for a job that returns nothing.
    associatedtype Output: Codable & Sendable = NoOutput
    /// The work, for a job with a result.
    func run() async throws -> Output
    /// The work, for a job that returns nothing. Implement one of the two `run()`s: each has a default
    /// that calls the other.
    func run() async throws
}

extension Job {
    /// Runs the job and drops its result.
    public func run() async throws {
        // Reached from the default below for the same type: the type implements neither `run()`, and
        // the two defaults would call each other for ever.
        if Output.self == NoOutput.self, JobDefaults.enteredDefault == ObjectIdentifier(Self.self) {
            throw MultiprocessingError(
                .unsupportedJob,
                "\(Self.self) implements neither `func run() -> Output` nor `func run()`: a Job implements one of them"
            )
        }
        let _: Output = try await run()
    }
}

extension Job where Output == NoOutput {
    /// Runs a job that returns nothing.
    public func run() async throws -> NoOutput {
        // A type that implements `run()` never reaches the other default, so the mark cannot be misread
        // by a job that runs other jobs.
        try await JobDefaults.$enteredDefault.withValue(ObjectIdentifier(Self.self)) {
            let _: Void = try await run()
        }
        return NoOutput()
    }
}

/// Tells the two default `run()`s of ``Job`` apart from a type's own.
enum JobDefaults {
    /// The job type whose `run() -> NoOutput` default is running in this task.
    @TaskLocal static var enteredDefault: ObjectIdentifier?
}

/// The `Output` of a job that returns nothing (`Void` is not `Codable`).
public struct NoOutput: Codable, Sendable, Hashable {
    /// The empty result.
    public init() {}
}

/// An error thrown in another process whose type could not be sent back as itself (it is not `Codable`,
/// or the receiving side cannot resolve it).
public struct RemoteError: Error, Codable, CustomStringConvertible, Sendable {
    /// The fully qualified name of the original error type.
    public let typeName: String
    /// The original error's description.
    public let message: String
    /// The process that threw it.
    public let pid: Int32

    /// The error's type, the process it came from, and its message.
    public var description: String { "\(typeName) in process \(pid): \(message)" }
}

package enum JobIdentity {
    private static let known = TrackedMutex<[ObjectIdentifier: String]>([:])

    /// The name a worker resolves `J` by, or an error saying why `J` cannot travel. Checked once per type.
    package static func name<J>(of type: J.Type) throws -> String {
        if let hit = known.withLock({ $0[ObjectIdentifier(type)] }) { return hit }
        let name = try check(type)
        known.withLock { $0[ObjectIdentifier(type)] = name }
        return name
    }

    private static func check<J>(_ type: J.Type) throws -> String {
        let readable = String(reflecting: type)
        guard let name = _mangledTypeName(type), !readable.contains("(unknown context at"),
            !readable.contains("(private"), !readable.contains("(fileprivate")
        else {
            throw MultiprocessingError(
                .unsupportedJob,
                "\(readable) cannot run in another process: private, fileprivate and local types cannot be found "
                    + "by name there. Declare it at file scope (or nested in a type) as internal or public."
            )
        }
        guard let back = _typeByName(name), back == type else {
            throw MultiprocessingError(
                .unsupportedJob,
                "\(readable) cannot be found by its mangled name \(name); declare it as internal or public"
            )
        }
        return name
    }
}

/// Resolves names to job types in a worker, caching hits and misses.
package enum JobResolver {
    nonisolated(unsafe) private static var cache: [String: (any Job.Type)?] = [:]  // worker main thread only

    package static func resolve(_ name: String) -> (any Job.Type)? {
        if let hit = cache[name] { return hit }
        let t = _typeByName(name) as? any Job.Type
        cache[name] = t
        return t
    }
}
