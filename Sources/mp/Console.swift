import Glibc
import Logging
import MultiprocessingConsole
import MultiprocessingSQL
import ServiceLifecycle
import Threading
import UnixSignals

/// Serves the console until SIGTERM or SIGINT (a graceful shutdown: requests in flight are answered).
func runConsole(
    database: DatabaseURL,
    host: String,
    port: Int,
    token: String?,
    tokenToRead: Bool,
    secureCookie: Bool,
    allowedHosts: [String]
) throws {
    var logger = Logger(label: "mp.console")
    logger.logLevel = .info
    let access = token == nil ? "read-only" : tokenToRead ? "token required" : "token required to act"
    let options = ConsoleOptions(
        host: host,
        port: port,
        token: token,
        tokenToRead: tokenToRead,
        secureCookie: secureCookie,
        allowedHosts: allowedHosts,
        logger: logger,
        onListening: { port in
            print("console at http://\(host):\(port)/ (\(access))")
            fflush(nil)
        }
    )
    let console = try QueueConsole(database, options: options)
    let done = Future<Void>()
    // The console runs on Swift's cooperative pool; this (main) thread waits for it.
    Task {
        do {
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: [.init(service: console)],
                    gracefulShutdownSignals: [.sigterm, .sigint],
                    logger: logger
                )
            )
            try await group.run()
            done.complete(.success(()))
        } catch {
            done.complete(.failure(error))
        }
    }
    try done.result()
}
