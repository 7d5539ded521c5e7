// swift-tools-version: 6.1
// Programs as users write them: a package of their own that depends on the library by path, each
// program a `main.swift`. ExampleProgramTests (in `swift test`) builds this package and runs every one.
//
// The newcomer's first programs (pool-*, child-process-*, apply-async-*): without `bootstrap()` each must
// fail loudly; with it (`--bootstrap`), each must print the right answer.
import PackageDescription

let package = Package(
    name: "examples",
    // Linux only, as the package it depends on.
    dependencies: [
        .package(name: "swift-multiprocessing", path: "../.."),
        // What a server that runs the library's services in its ServiceGroup names itself.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "pool-int-and-short-string",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "pool-long-string",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "pool-dictionary",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "child-process-string",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "apply-async-class",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "readme-child-process",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "readme-pool",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "readme-threads",
            dependencies: [.product(name: "Threading", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-jobqueue-overview",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingJobQueue", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
                .product(name: "Threading", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-jobqueue-limits",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingJobQueue", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-jobqueue-pool",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingJobQueue", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
                .product(name: "Threading", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-jobqueue-chains",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingJobQueue", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
                .product(name: "Threading", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-jobqueue-schedules",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingJobQueue", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
                .product(name: "Threading", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-services-overview",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingJobQueue", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingManagers", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingServices", package: "swift-multiprocessing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Compiled only (it serves until SIGTERM): ConsoleTests and mp console run the console.
        .executableTarget(
            name: "doc-console-overview",
            dependencies: [
                .product(name: "MultiprocessingConsole", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "doc-prometheus-overview",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingNetwork", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingPrometheus", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-managers-started",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingManagers", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-mp-overview",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-mp-pools-progress",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-mp-shared-state",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-mp-start-methods",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-mp-started-child",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-mp-started-pool",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-mp-started-queue",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-network-overview",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingNetwork", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-network-started",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingNetwork", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-sql-overview",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-postgres-overview",
            dependencies: [
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingPostgres", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingJobQueue", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "doc-threading-coroutines",
            dependencies: [.product(name: "Threading", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-threading-overview",
            dependencies: [.product(name: "Threading", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-threading-started-pool",
            dependencies: [.product(name: "Threading", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "doc-threading-started-queue",
            dependencies: [.product(name: "Threading", package: "swift-multiprocessing")]
        ),
        .executableTarget(
            name: "distributed-words",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingManagers", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "queue-drain",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingJobQueue", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
            ]
        ),
        .executableTarget(
            name: "readme-tour",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingNetwork", package: "swift-multiprocessing"),
                .product(name: "Threading", package: "swift-multiprocessing"),
            ]
        ),
    ]
)
