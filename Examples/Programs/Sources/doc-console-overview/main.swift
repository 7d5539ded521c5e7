import Glibc
import Logging
import MultiprocessingConsole
import MultiprocessingSQL
import ServiceLifecycle
import UnixSignals

// Built with `swift build --traits Console`; without the trait, run() throws ConsoleNotBuilt.
let token = getenv("MP_CONSOLE_TOKEN").map { String(cString: $0) }  // nil: read-only
let console = try QueueConsole(
    DatabaseURL("sqlite:jobs.db"),
    options: ConsoleOptions(host: "127.0.0.1", port: 8470, token: token)
)
// Beside the program's other services: SIGTERM answers the requests in flight, then stops it.
let group = ServiceGroup(
    configuration: ServiceGroupConfiguration(
        services: [.init(service: console)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: Logger(label: "console")
    )
)
try await group.run()
