import Foundation
import Multiprocessing
import MultiprocessingNetwork
import MultiprocessingTestSupport

@testable import MultiprocessingManagers

/// Serves its server's counters to clients (`blocked_calls`: ``ManagerServer/blockedCallCount``,
/// `clients`: ``ManagerServer/clientCount``), so that a test can see, through the protocol, what a server
/// in another process is doing: that a client's call is waiting on it.
final class ServerCounters: ManagedObject, @unchecked Sendable {  // `server` is set once, before it serves
    weak var server: ManagerServer?
    var exposed: [String] { ["blocked_calls", "clients"] }
    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        guard let server else { throw PythonException("RuntimeError", ["the server is gone"]) }
        switch method {
        case "blocked_calls": return .int(Int64(server.blockedCallCount))
        case "clients": return .int(Int64(server.clientCount))
        default: throw PythonException("AttributeError", [.string(method)])
        }
    }
}

/// The server of ``ObservedManager``: ``Manager``'s, plus its ``ServerCounters`` served as `ServerCounters`.
struct ObservedManagerServerJob: Job {
    let authkey: [UInt8]
    let path: String
    let report: Connection
    func run() throws -> NoOutput {
        let server = try ManagerServer(address: .unix(path: path), authkey: authkey)
        let counters = ServerCounters()
        counters.server = server
        server.register("ServerCounters", shared: counters)
        try server.start()
        try report.send(true)
        _ = server.wait()
        return NoOutput()
    }
}

/// ``Manager`` (a manager server in a process of its own, and a client of it) whose server also serves
/// its counters: ``blockedCalls()`` tells when a call is waiting on it.
final class ObservedManager: Sendable {
    let client: ManagerClient
    let process: ChildProcess<ObservedManagerServerJob>
    let path: String
    let counters: Proxy

    private init(client: ManagerClient, process: ChildProcess<ObservedManagerServerJob>, path: String) throws {
        self.client = client
        self.process = process
        self.path = path
        counters = try client.create("ServerCounters")
    }

    /// Starts the server process and connects to it.
    static func start() throws -> ObservedManager {
        let key = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let (mine, theirs) = try makePipe()
        let path = "/tmp/mp-observed-manager-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).sock"
        let p = ChildProcess(daemon: true, job: ObservedManagerServerJob(authkey: key, path: path, report: theirs))
        try p.start()
        theirs.close()
        do {
            _ = try mine.recv(Bool.self, timeout: .seconds(30))
            let client = try ManagerClient(address: .unix(path: path), authkey: key)
            return try ObservedManager(client: client, process: p, path: path)
        } catch {
            p.kill()
            _ = try? p.join(timeout: .seconds(5))
            unlink(path)
            throw error
        }
    }

    /// Calls waiting on the server now.
    func blockedCalls() throws -> Int { try counters.call("blocked_calls").intValue ?? -1 }

    /// ``blockedCalls()`` from a task.
    func blockedCalls() async throws -> Int { try await counters.call("blocked_calls").intValue ?? -1 }

    /// Stops the server process (killed if it does not stop within 5 s) and removes its socket.
    func shutdown() {
        try? client.shutdown()
        if (try? process.join(timeout: .seconds(5))) != true {
            process.kill()
            _ = try? process.join(timeout: .seconds(5))
        }
        unlink(path)
    }
}
