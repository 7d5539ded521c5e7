import Glibc
import Multiprocessing
import MultiprocessingNetwork

/// Runs a ``ManagerServer`` in a process of its own (the job a ``Manager`` starts), on a Unix socket at
/// `path`; says when it listens.
struct ManagerServerJob: Job {
    let authkey: [UInt8]
    let path: String
    let report: Connection
    func run() throws -> NoOutput {
        let server = try ManagerServer(address: .unix(path: path), authkey: authkey)
        try server.start()
        try report.send(true)
        _ = server.wait()
        return NoOutput()
    }
}

/// Python's `multiprocessing.Manager()`: a manager server in a process of its own, and a client of it.
///
/// ```swift
/// let manager = try Manager.start()
/// defer { manager.shutdown() }
/// let d = try manager.client.dict()        // manager.dict()
/// ```
/// The server serves `dict`, `list`, `Queue`, `JoinableQueue` and `Namespace` on a Unix socket in `/tmp`
/// (as CPython's `Manager()`; a third faster per call than TCP loopback) with a random authkey. Proxies sent inside jobs reach it from other processes. For a server in this process (a
/// master that serves others, with types of its own), use ``ManagerServer`` directly.
public final class Manager: Sendable {
    /// The client to create objects with.
    public let client: ManagerClient
    let process: ChildProcess<ManagerServerJob>
    let path: String

    private init(client: ManagerClient, process: ChildProcess<ManagerServerJob>, path: String) {
        self.client = client
        self.process = process
        self.path = path
    }

    /// Starts the server process and connects to it.
    public static func start(timeout: Duration = .seconds(30)) throws -> Manager {
        var key = [UInt8](repeating: 0, count: 32)
        var rng = SystemRandomNumberGenerator()
        for i in key.indices { key[i] = UInt8.random(in: 0...255, using: &rng) }
        let (mine, theirs) = try makePipe()
        let path = "/tmp/mp-manager-\(Processes.currentPID)-\(UInt64.random(in: 0...UInt64.max, using: &rng)).sock"
        let p = ChildProcess(
            name: "SyncManager",
            daemon: true,
            job: ManagerServerJob(authkey: key, path: path, report: theirs)
        )
        try p.start()
        theirs.close()
        do {
            _ = try mine.recv(Bool.self, timeout: timeout)
            return Manager(client: try ManagerClient(address: .unix(path: path), authkey: key), process: p, path: path)
        } catch {
            p.kill()
            _ = try? p.join(timeout: .seconds(5))
            throw error
        }
    }

    /// Stops the server process (Python's `manager.shutdown()`); every proxy's later calls fail.
    public func shutdown(timeout: Duration = .seconds(5)) {
        try? client.shutdown()
        if (try? process.join(timeout: timeout)) != true {
            process.kill()
            _ = try? process.join(timeout: .seconds(5))
        }
        unlink(path)  // the server removes its socket file, unless it was killed
    }
}
