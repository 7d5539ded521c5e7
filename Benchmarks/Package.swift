// swift-tools-version: 6.1
// Benchmarks live in their own package so they never enter the library's default build.
// Run them with `scripts/bench SUITE` from the repository root.
import PackageDescription

let package = Package(
    name: "swift-multiprocessing-benchmarks",
    // Linux only, as the package it depends on.
    // The PostgreSQL trait: the queue and etl suites run on PostgreSQL too (QUEUE_DB, ETL_DB).
    dependencies: [
        .package(name: "swift-multiprocessing", path: "..", traits: ["PostgreSQL"]),
        // An in-memory tracer for the observability suite's traced rows.
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
    ],
    targets: [
        // No Foundation here: the worker start-up of a pool-only program.
        .executableTarget(
            name: "workerstart",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        // The hot paths' instruction counts for CI's gate (scripts/instruction-counts): links only `Multiprocessing`.
        .executableTarget(
            name: "counts",
            dependencies: [.product(name: "Multiprocessing", package: "swift-multiprocessing")]
        ),
        // What metrics and traces cost a round trip, in instructions (scripts/instruction-counts --observe).
        .executableTarget(
            name: "observecounts",
            dependencies: [
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingPrometheus", package: "swift-multiprocessing"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ]
        ),
        .executableTarget(
            name: "bench",
            dependencies: [
                .product(name: "Threading", package: "swift-multiprocessing"),
                .product(name: "Multiprocessing", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingManagers", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingSQL", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingJobQueue", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingPostgres", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingNetwork", package: "swift-multiprocessing"),
                .product(name: "MultiprocessingPrometheus", package: "swift-multiprocessing"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ]
        )
    ]
)
