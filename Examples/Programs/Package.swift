// swift-tools-version: 6.1
// Programs as users write them: a package of their own that depends on the library by path, each
// program a `main.swift`. ExampleProgramTests (in `swift test`) builds this package and runs every one.
//
// The newcomer's first programs (pool-*, child-process-*, apply-async-*): without `bootstrap()` each must
// fail loudly; with it (`--bootstrap`), each must print the right answer.
import PackageDescription

let package = Package(
    name: "examples",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "swift-multiprocessing", path: "../..")],
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
    ]
)
