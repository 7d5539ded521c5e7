internal import CMultiprocessingShims
import Glibc
import Synchronization
import SystemCalls
import Threading

/// What a worker's crash report says, in one line: the runtime's fatal-error text and the first frame in
/// the program's own code (not the library's, the runtime's or the C library's).
struct CrashSummary: Sendable, Equatable {
    /// `Fatal error: Index out of range` (with the runtime's file and line when it gave them), or the
    /// backtracer's `*** Signal 11: …` line.
    var reason: String?
    /// The first frame in the program's code, e.g. `Faulty.callAsFunction(_:) + 52`.
    var frame: String?

    /// Reads `report` (the worker's standard error from its last report on). Frames the runtime could not
    /// name (`<unavailable> + offset` in `executable`) are named from the executable's symbol table.
    init(report: String, executable: String) {
        let lines = report.split(separator: "\n").map(String.init)
        if let fatal = lines.last(where: { $0.contains("Fatal error:") }),
            let at = fatal.firstRange(of: "Fatal error:")?.lowerBound
        {
            // `Swift/ContiguousArrayBuffer.swift:692: Fatal error: Index out of range`
            let text = fatal[at...]
            let place = fatal[..<at].trimmingSuffix(": ")
            reason = place.isEmpty ? String(text) : "\(text) (\(place))"
        } else if let signal = lines.last(where: { $0.contains("*** Signal ") }) {
            reason = signal.replacingFirst("*** ", with: "")
        }
        let image = executable.split(separator: "/").last.map(String.init) ?? executable
        // Swift's backtracer (`CrashReport.symbols`, `.fullBacktrace`): `3 [ra] 0x… in Faulty.callAsFunction(_:)
        // + 52 at /src/main.swift:12`.
        for line in lines {
            guard let at = line.firstRange(of: " in "), line.contains(" 0x"),
                line.drop(while: { $0 == " " }).first?.isNumber == true
            else { continue }
            let name = String(line[at.upperBound...])
            guard !Self.isLibraryFrame(name), !name.hasPrefix("<") else { continue }
            frame = name
            return
        }
        for line in lines {
            guard let f = Frame(line), f.image == image || f.image.hasSuffix("/" + image) else { continue }
            let name = f.symbol ?? ExecutableSymbols.shared(executable)?.name(at: f.offset).map { demangle($0) }
            guard let name, !Self.isLibraryFrame(name) else { continue }
            frame = name
            break
        }
    }

    /// The library's own frames and the language runtime's: never the place a user wants.
    static func isLibraryFrame(_ name: String) -> Bool {
        let prefixes = [
            "Multiprocessing.", "Threading.", "MultiprocessingNetwork.", "MultiprocessingManagers.", "Swift.",
            "_Concurrency.", "Testing.", "XCTest.", "reabstraction thunk", "partial apply", "closure #",
            "implicit closure", "thunk for", "merged ", "__", "swift_", "$s", "<unavailable>",
        ]
        return name == "main" || name.hasPrefix("main + ") || prefixes.contains { name.hasPrefix($0) }
            || name.contains(" in Multiprocessing.")
            || name.contains(" in Threading.")
    }

    /// One line of the runtime's `Current stack trace:`:
    /// `5    mp 0x0000560229839994 Faulty.callAsFunction(_:) + 52` or `… <unavailable> + 8173972`.
    struct Frame {
        let image: String
        let symbol: String?
        let offset: Int

        init?(_ line: String) {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count >= 6, Int(parts[0]) != nil, parts[2].hasPrefix("0x"),
                parts[parts.count - 2] == "+", let off = Int(parts[parts.count - 1])
            else { return nil }
            image = String(parts[1])
            let name = parts[3..<(parts.count - 2)].joined(separator: " ")
            if name == "<unavailable>" {
                symbol = nil
                offset = off
            } else {
                symbol = demangle(name) + " + \(off)"
                offset = -1
            }
        }
    }
}

extension String {
    fileprivate func trimmingSuffix(_ s: String) -> String { hasSuffix(s) ? String(dropLast(s.count)) : self }
    fileprivate func replacingFirst(_ a: String, with b: String) -> String {
        guard let r = firstRange(of: a) else { return self }
        return self[..<r.lowerBound] + b + self[r.upperBound...]
    }
}

extension Substring {
    fileprivate func trimmingSuffix(_ s: String) -> String { String(self).trimmingSuffix(s) }
}

@_silgen_name("swift_demangle")
private func _swiftDemangle(
    _ mangledName: UnsafePointer<CChar>?,
    _ mangledNameLength: UInt,
    _ outputBuffer: UnsafeMutablePointer<CChar>?,
    _ outputBufferSize: UnsafeMutablePointer<UInt>?,
    _ flags: UInt32
) -> UnsafeMutablePointer<CChar>?

/// A Swift symbol's readable name (other names unchanged).
package func demangle(_ name: String) -> String {
    guard name.hasPrefix("$s") || name.hasPrefix("_$s") else { return name }
    return name.withCString { p in
        guard let out = _swiftDemangle(p, UInt(strlen(p)), nil, nil, 0) else { return name }
        defer { free(out) }
        return String(cString: out)
    }
}

/// A type's readable name from its mangled name (`3app6SquareV` → `app.Square`), as a job queue stores
/// it; the mangled name itself when it cannot be read.
package func readableTypeName(mangled name: String) -> String {
    let readable = demangle("$s" + name + "D")
    return readable.hasPrefix("$s") ? name : readable
}

/// The function symbols of an ELF executable's static symbol table (`.symtab`), to name the frames the
/// runtime's crash report leaves `<unavailable>` (it sees only the dynamic table). Read once per
/// executable, at the first crash that needs it; a stripped executable has none.
final class ExecutableSymbols: Sendable {
    private let starts: [Int]
    private let ends: [Int]
    private let names: [String]

    private static let cache = TrackedMutex<[String: ExecutableSymbols?]>([:])

    static func shared(_ path: String) -> ExecutableSymbols? {
        if let known = cache.withLock({ $0[path] }) { return known }
        let loaded = ExecutableSymbols(path: path)
        cache.withLock { $0[path] = loaded }
        return loaded
    }

    /// The function whose code contains `offset` (an address relative to the image's load base).
    func name(at offset: Int) -> String? {
        var lo = 0
        var hi = starts.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if starts[mid] <= offset { lo = mid + 1 } else { hi = mid }
        }
        let i = lo - 1
        guard i >= 0, offset < ends[i] else { return nil }
        return names[i]
    }

    private init?(path: String) {
        guard
            let found = ELFSymbolTable.withTable(
                path,
                { table in
                    var entries: [(start: Int, end: Int, name: String)] = []
                    table.forEachFunction { start, end, name in entries.append((start, end, String(cString: name))) }
                    return entries
                }
            ), !found.isEmpty
        else { return nil }
        let entries = found.sorted { $0.start < $1.start }
        starts = entries.map(\.start)
        ends = entries.map(\.end)
        names = entries.map(\.name)
    }
}

/// The static symbol table (`.symtab`) of an ELF64 little-endian executable, mapped for one read.
struct ELFSymbolTable {
    private let file: UnsafeRawBufferPointer
    private let symbols: Range<Int>
    private let strings: Range<Int>

    /// Maps `path` and calls `body` with its symbol table; `nil` when the file cannot be read, is not
    /// ELF64 little-endian (x86-64 and arm64 Linux) or has no symbol table (it was stripped).
    static func withTable<R>(_ path: String, _ body: (ELFSymbolTable) -> R) -> R? {
        guard let fd = try? SystemCall.open(path, O_RDONLY) else { return nil }
        defer { SystemCall.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size > 64 else { return nil }
        let size = Int(st.st_size)
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else { return nil }
        defer { munmap(base, size) }
        guard let table = ELFSymbolTable(UnsafeRawBufferPointer(start: base, count: size)) else { return nil }
        return body(table)
    }

    private init?(_ file: UnsafeRawBufferPointer) {
        self.file = file
        let size = file.count
        func u16(_ o: Int) -> Int { Int(file.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
        func u32(_ o: Int) -> Int { Int(file.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
        func u64(_ o: Int) -> Int { Int(truncatingIfNeeded: file.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
        guard file[0] == 0x7f, file[1] == 0x45, file[2] == 0x4c, file[3] == 0x46, file[4] == 2, file[5] == 1 else {
            return nil
        }
        let shoff = u64(0x28)
        let shentsize = u16(0x3A)
        let shnum = u16(0x3C)
        guard shoff > 0, shentsize >= 64, shoff + shnum * shentsize <= size else { return nil }
        var symtab: (offset: Int, size: Int, link: Int)?
        for i in 0..<shnum {
            let h = shoff + i * shentsize
            if u32(h + 4) == 2 {  // SHT_SYMTAB
                symtab = (u64(h + 24), u64(h + 32), u32(h + 40))
                break
            }
        }
        guard let symtab, symtab.link < shnum else { return nil }
        let strHeader = shoff + symtab.link * shentsize
        let strOffset = u64(strHeader + 24)
        let strSize = u64(strHeader + 32)
        guard symtab.offset >= 0, symtab.size >= 0, strOffset >= 0, strSize >= 0,
            symtab.offset + symtab.size <= size, strOffset + strSize <= size
        else { return nil }
        symbols = symtab.offset..<(symtab.offset + symtab.size)
        strings = strOffset..<(strOffset + strSize)
    }

    /// Calls `body` with the start, end and NUL-terminated name of every function symbol.
    func forEachFunction(_ body: (Int, Int, UnsafePointer<CChar>) -> Void) {
        let file = self.file
        func u32(_ o: Int) -> Int { Int(file.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
        func u64(_ o: Int) -> Int { Int(truncatingIfNeeded: file.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
        let base = file.baseAddress!
        var o = symbols.lowerBound
        while o + 24 <= symbols.upperBound {
            let info = Int(file[o + 4])
            let value = u64(o + 8)
            let length = u64(o + 16)
            let nameAt = u32(o)
            if info & 0xf == 2, value > 0, length > 0, nameAt < strings.count {  // STT_FUNC
                body(
                    value,
                    value + length,
                    base.advanced(by: strings.lowerBound + nameAt).assumingMemoryBound(to: CChar.self)
                )
            }
            o += 24
        }
    }

    /// Whether some symbol's name contains `fragment` (a search of the string table, not of the code).
    func anyName(contains fragment: String) -> Bool {
        var fragment = fragment
        return fragment.withUTF8 { f in
            mp_contains_bytes(file.baseAddress! + strings.lowerBound, strings.count, f.baseAddress, f.count) != 0
        }
    }
}
