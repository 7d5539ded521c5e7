// libFuzzer's entry point, for `scripts/fuzz TARGET SECONDS` (built with -sanitize=fuzzer,address and
// MP_FUZZ=1, which adds this target to the package; a normal build never sees it: it has no `main`).
import Glibc
import MultiprocessingFuzzTargets

/// The target chosen by `MP_FUZZ_TARGET`, looked up once.
nonisolated(unsafe) private var target: (([UInt8]) -> Void)? = nil

/// libFuzzer's callback: one input to the chosen target.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    if target == nil {
        let name = getenv("MP_FUZZ_TARGET").map { String(cString: $0) } ?? ""
        guard let t = FuzzTargets.all[name] else {
            print("MP_FUZZ_TARGET must be one of: \(FuzzTargets.all.keys.sorted().joined(separator: ", "))")
            exit(2)
        }
        target = t
    }
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    target!(bytes)
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

/// The program's entry: SwiftPM names an executable target's `main` `mp_fuzz_main`; it hands over to
/// libFuzzer's driver.
@_cdecl("mp_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var arguments = argv
    return runDriver(&count, &arguments) { data, size in fuzzOne(data, size) }
}
