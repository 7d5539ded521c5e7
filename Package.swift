// swift-tools-version: 6.1
import PackageDescription

// Linux only (x86-64 and arm64): the library is built on Linux's system calls (futex, pidfd, eventfd,
// epoll, memfd, prctl, /proc). No other platform is declared; CMultiprocessingShims stops any other build
// with an error that says so. CONTRIBUTING.md ("Porting") lists what a Darwin port would replace.
let package = Package(
    name: "swift-multiprocessing",
    products: [
        .library(name: "Threading", targets: ["Threading"]),
        .library(name: "Multiprocessing", targets: ["Multiprocessing"]),
        .library(name: "MultiprocessingNetwork", targets: ["MultiprocessingNetwork"]),
        .library(name: "MultiprocessingManagers", targets: ["MultiprocessingManagers"]),
        .library(name: "MultiprocessingSQL", targets: ["MultiprocessingSQL"]),
        .library(name: "MultiprocessingJobQueue", targets: ["MultiprocessingJobQueue"]),
        .library(name: "MultiprocessingPostgres", targets: ["MultiprocessingPostgres"]),
        .library(name: "MultiprocessingServices", targets: ["MultiprocessingServices"]),
        .library(name: "MultiprocessingPrometheus", targets: ["MultiprocessingPrometheus"]),
        .library(name: "MultiprocessingConsole", targets: ["MultiprocessingConsole"]),
        .executable(name: "mp", targets: ["mp"]),
    ],
    // PostgreSQL brings SwiftNIO (a 3-minute cold build), so it is off unless asked for:
    // `swift build --traits PostgreSQL` (.ci/run tests it that way too).
    traits: [
        .trait(
            name: "PostgreSQL",
            description: "PostgreSQL through vapor/postgres-nio for the pipeline and the job queue"
        ),
        // The web console brings Hummingbird and SwiftNIO: `swift build --traits Console` (`mp console`).
        .trait(
            name: "Console",
            description: "The job queue's web console (`mp console`, MultiprocessingConsole) on Hummingbird"
        ),
    ],
    dependencies: [
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.0"),
        // TLS for PostgreSQL (postgres-nio's own dependency, named here for its NIOSSLContext).
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.25.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.0.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.0"),
        // `Errno`, the ecosystem's typed errno (swift-subprocess's dependency too; no Foundation).
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.4.0"),
        // `Service` and `ServiceGroup`, for MultiprocessingServices (swift-log and swift-async-algorithms).
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        // The Prometheus metrics backend, for MultiprocessingPrometheus (swift-metrics and swift-atomics).
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        // Spans across processes: the tracing API only (the program picks the tracer, e.g. swift-otel).
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        // The web console's HTTP server (the Console trait only; its default traits, swift-configuration and
        // full Foundation, are not needed).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0", traits: []),
        // `HTTPField.Name`, for the console's headers (Hummingbird's own dependency).
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        // `swift package generate-documentation` (the DocC catalogs of every library target).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
    ],
    targets: [
        // C: what Swift cannot import from Glibc (futex, gettid, prctl, ...), every symbol prefixed `mp_`.
        .target(name: "CMultiprocessingShims"),
        // The one path to the kernel: a retry loop with one errno policy (EINTR retried, EAGAIN as
        // would-block, EBADF/EFAULT trapped, resets as end of file), typed `Errno`, guarded closes.
        .target(
            name: "SystemCalls",
            dependencies: ["CMultiprocessingShims", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // In-process threads: Python's `threading`, `queue` and `concurrent.futures.ThreadPoolExecutor`.
        .target(
            name: "Threading",
            dependencies: [
                "CMultiprocessingShims",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        // Processes: workers by re-exec, typed jobs, Process, Pipe/Connection, queues, pools. No Foundation:
        // a pool-only program and its workers load neither Foundation nor ICU.
        .target(
            name: "Multiprocessing",
            dependencies: [
                "CMultiprocessingShims",
                "SystemCalls",
                "Threading",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "DequeModule", package: "swift-collections"),
                // Logs, metrics and traces of pools (none loads Foundation).
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        // Sockets between machines and with CPython: Listener/connect and the authkey handshake. The only
        // target that links swift-crypto (HMAC-MD5/SHA-256), which brings Foundation.
        .target(
            name: "MultiprocessingNetwork",
            dependencies: [
                "CMultiprocessingShims",
                "SystemCalls",
                .product(name: "SystemPackage", package: "swift-system"),
                "Threading",
                "Multiprocessing",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // CPython's managers: the pickle codec (no code is ever run by decoding), and (coming) the manager
        // server and proxies on MultiprocessingNetwork.
        .target(
            name: "MultiprocessingManagers",
            dependencies: [
                "CMultiprocessingShims", "Threading", "Multiprocessing", "MultiprocessingNetwork", "SystemCalls",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        // C: SQLite's API, loaded with dlopen from the system's libsqlite3.so.0 (no -dev package to build).
        .target(name: "CMultiprocessingSQLite"),
        // C: MariaDB's client API (Connector/C 3, which serves MySQL servers too), loaded with dlopen from
        // libmariadb.so.3 at the first MySQL connection (no -dev package to build; a program that opens none
        // never loads it).
        .target(name: "CMultiprocessingMariaDB"),
        // Databases: one blocking connection protocol (SQLite built in), rows to and from Codable, URLs;
        // the table pipeline (the tutorial's chunked database job) on the process pool.
        .target(
            name: "MultiprocessingSQL",
            dependencies: [
                "CMultiprocessingSQLite", "CMultiprocessingMariaDB", "Multiprocessing", "Threading",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        // PostgreSQL for MultiprocessingSQL (an empty module unless the PostgreSQL trait is on).
        .target(
            name: "MultiprocessingPostgres",
            dependencies: [
                "MultiprocessingSQL", "Multiprocessing", "Threading", "SystemCalls",
                .product(name: "PostgresNIO", package: "postgres-nio", condition: .when(traits: ["PostgreSQL"])),
                // SCRAM-SHA-256 and MD5 for the reading session's own authentication.
                .product(name: "Crypto", package: "swift-crypto", condition: .when(traits: ["PostgreSQL"])),
                .product(name: "NIOSSL", package: "swift-nio-ssl", condition: .when(traits: ["PostgreSQL"])),
            ]
        ),
        // A durable job queue on a database (SQLite by default): enqueue Jobs, workers run them on a
        // ProcessPool with leases, heartbeats, retries and stored results.
        .target(
            name: "MultiprocessingJobQueue",
            dependencies: [
                "Multiprocessing", "MultiprocessingSQL", "Threading",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        // The pool, the queue worker and the manager server as swift-service-lifecycle services, for a
        // server's `ServiceGroup` (graceful shutdown on SIGTERM). A target of its own: programs that do not
        // use it link neither ServiceLifecycle nor swift-async-algorithms.
        .target(
            name: "MultiprocessingServices",
            dependencies: [
                "Multiprocessing", "MultiprocessingJobQueue", "MultiprocessingManagers", "Threading",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The library's metrics for Prometheus: swift-prometheus as the metrics backend and an HTTP endpoint
        // that serves its registry (`mp queue worker --metrics-port`). No NIO: a thread and a socket.
        .target(
            name: "MultiprocessingPrometheus",
            dependencies: [
                "CMultiprocessingShims", "SystemCalls", "Threading", "Multiprocessing", "MultiprocessingNetwork",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The job queue's web console: queues, jobs, workers and their pools; retry, cancel, discard. Without
        // the Console trait its server is not built (QueueConsole.run() throws ConsoleNotBuilt).
        .target(
            name: "MultiprocessingConsole",
            dependencies: [
                "MultiprocessingJobQueue", "MultiprocessingSQL", "Multiprocessing", "Threading",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird", condition: .when(traits: ["Console"])),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "HTTPTypes", package: "swift-http-types", condition: .when(traits: ["Console"])),
                // The session cookie's and the forms' HMAC.
                .product(name: "Crypto", package: "swift-crypto", condition: .when(traits: ["Console"])),
            ]
        ),
        // The tutorial's programs, ported; `mp demo` runs them.
        .target(
            name: "SeedExamples",
            dependencies: [
                "Threading", "Multiprocessing", "MultiprocessingNetwork", "MultiprocessingManagers",
                "MultiprocessingSQL",
                "MultiprocessingJobQueue",
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            path: "Examples/SeedExamples"
        ),
        .executableTarget(
            name: "mp",
            dependencies: [
                "Threading", "Multiprocessing", "MultiprocessingManagers", "MultiprocessingSQL",
                "MultiprocessingJobQueue",
                // postgres:// URLs in `mp etl` and `mp queue` when built with the trait (empty otherwise).
                "MultiprocessingPostgres",
                // `mp queue worker --metrics-port`.
                "MultiprocessingPrometheus",
                // `mp console` when built with the Console trait (empty otherwise).
                "MultiprocessingConsole",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                "SeedExamples",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Programs the tests run as processes of their own; not a product, never shipped.
        .executableTarget(
            name: "mp-test-helper",
            dependencies: [
                "Multiprocessing", "MultiprocessingNetwork", "MultiprocessingManagers", "MultiprocessingSQL", "SystemCalls",
                "MultiprocessingJobQueue", "MultiprocessingServices",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/TestHelper"
        ),
        // The decoders of a peer's bytes as fuzz targets (scripts/fuzz, and FuzzTests' seeded runs).
        .target(
            name: "MultiprocessingFuzzTargets",
            dependencies: ["Multiprocessing", "MultiprocessingManagers", "MultiprocessingPostgres"],
            path: "Tests/FuzzTargets"
        ),
        // Helpers shared by the test targets; not a product.
        .target(
            name: "MultiprocessingTestSupport",
            dependencies: [
                "Threading", "Multiprocessing", "MultiprocessingSQL",
                // Links the PostgreSQL driver into the tests when the trait is on (empty otherwise).
                "MultiprocessingPostgres",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/MultiprocessingTestSupport"
        ),
        .testTarget(name: "ThreadingTests", dependencies: ["Threading", "MultiprocessingTestSupport"]),
        .testTarget(
            name: "SystemCallsTests",
            dependencies: [
                "SystemCalls", "Threading", "CMultiprocessingShims", "MultiprocessingTestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .testTarget(
            name: "ManagersTests",
            dependencies: [
                "MultiprocessingManagers", "MultiprocessingTestSupport", "MultiprocessingFuzzTargets",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "JobQueueTests",
            dependencies: [
                "MultiprocessingJobQueue", "MultiprocessingSQL", "Multiprocessing", "Threading",
                "MultiprocessingTestSupport",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ]
        ),
        .testTarget(
            name: "ServicesTests",
            dependencies: [
                "MultiprocessingServices", "MultiprocessingJobQueue", "MultiprocessingManagers", "MultiprocessingSQL",
                "MultiprocessingNetwork", "Multiprocessing", "Threading", "MultiprocessingTestSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The console's tests: its pages in headless Chromium, against SQLite and PostgreSQL (they skip, and
        // say why, without the Console trait or without Chromium).
        .testTarget(
            name: "ConsoleTests",
            dependencies: [
                "MultiprocessingConsole", "MultiprocessingJobQueue", "MultiprocessingSQL", "Multiprocessing",
                "MultiprocessingTestSupport", "Threading",
            ]
        ),
        .testTarget(
            name: "PrometheusTests",
            dependencies: [
                "MultiprocessingPrometheus", "MultiprocessingNetwork", "MultiprocessingJobQueue", "MultiprocessingSQL",
                "Multiprocessing", "MultiprocessingTestSupport", "Threading", "SystemCalls",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .testTarget(
            name: "PostgresTests",
            dependencies: [
                "MultiprocessingPostgres", "MultiprocessingSQL", "Multiprocessing", "MultiprocessingTestSupport",
                "Threading",
            ]
        ),
        .testTarget(
            name: "SQLTests",
            dependencies: [
                "MultiprocessingSQL", "Multiprocessing", "MultiprocessingTestSupport", "Threading",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "MultiprocessingTests",
            dependencies: [
                "Multiprocessing", "MultiprocessingNetwork", "Threading", "MultiprocessingTestSupport", "SystemCalls",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ]
        ),
    ]
)

// libFuzzer's executable, only for `scripts/fuzz` (MP_FUZZ=1, built with -sanitize=fuzzer): its entry
// hands over to libFuzzer's driver, which an ordinary build does not link, so such a build must not see it.
if Context.environment["MP_FUZZ"] == "1" {
    package.targets.append(
        .executableTarget(
            name: "mp-fuzz",
            dependencies: ["MultiprocessingFuzzTargets"],
            path: "Tests/Fuzz",
            exclude: ["Corpus"],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    )
}

for target in package.targets where target.type != .system {
    guard !target.name.hasPrefix("CMultiprocessing") else { continue }
    var settings = target.swiftSettings ?? []
    settings += [
        .enableUpcomingFeature("ExistentialAny"),
        .enableUpcomingFeature("MemberImportVisibility"),
        .enableUpcomingFeature("InternalImportsByDefault"),
    ]
    target.swiftSettings = settings
}
