/// Why a pickle could not be read or written.
public struct PickleError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    /// The byte offset in the pickle where reading stopped, if reading.
    public let offset: Int?
    public var description: String { offset.map { "pickle: \(message) (at byte \($0))" } ?? "pickle: \(message)" }
    init(_ message: String, at offset: Int? = nil) {
        self.message = message
        self.offset = offset
    }
}

/// Limits that keep a hostile pickle from taking the reader's memory or stack.
public struct PickleLimits: Sendable {
    /// Deepest nesting of values, however it is built: a container or call holding a container or call
    /// counts one level more than the deepest value it holds (`MARK`s, `APPEND`, `SETITEM`, `TUPLE1`,
    /// `REDUCE`, memo references, all alike), and at most this many `MARK`s are open at once. Values
    /// are released and compared recursively, so this bound also keeps those far inside any thread's
    /// stack (CPython refuses to pickle past about 1,000 levels; the default is 200).
    public var maxDepth: Int
    /// Most entries in the memo.
    public var maxMemo: Int
    /// Most items on the stack (containers in construction included).
    public var maxStack: Int

    public init(maxDepth: Int = 200, maxMemo: Int = 1 << 20, maxStack: Int = 1 << 20) {
        self.maxDepth = maxDepth
        self.maxMemo = maxMemo
        self.maxStack = maxStack
    }
}

/// The globals a pickle may name: decoding refuses any other (`os.system`, `builtins.eval`, …) with a
/// clear error, so reading a pickle never gives a peer a way to run code.
public struct PickleAllowList: Sendable {
    public var globals: Set<String>

    public init(_ globals: Set<String>) { self.globals = globals }

    public func allows(_ module: String, _ name: String) -> Bool { globals.contains(module + "." + name) }

    /// What CPython's managers protocol needs: `Token`, `RemoteError`, the queue exceptions, `bytearray`,
    /// `set`/`frozenset` (older protocols build them with REDUCE), `list` (dict views, which CPython's
    /// managers pickle as `list(items)`), `collections.OrderedDict`, and the built-in exceptions.
    public static let managers = PickleAllowList(
        Set(
            [
                "multiprocessing.managers.Token", "multiprocessing.managers.RemoteError",
                "_queue.Empty", "queue.Empty", "queue.Full", "builtins.bytearray", "builtins.set",
                "builtins.frozenset", "collections.OrderedDict", "copyreg._reconstructor", "builtins.object",
                "builtins.complex", "builtins.range", "builtins.slice", "builtins.list",
            ] + builtinExceptions.map { "builtins." + $0 }
        )
    )

    static let builtinExceptions = [
        "BaseException", "Exception", "ArithmeticError", "AssertionError", "AttributeError", "BrokenPipeError",
        "BufferError", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "EOFError",
        "FileExistsError", "FileNotFoundError", "FloatingPointError", "IndexError", "InterruptedError",
        "KeyError", "LookupError", "MemoryError", "NameError", "NotImplementedError", "OSError",
        "OverflowError", "PermissionError", "ProcessLookupError", "RecursionError", "ReferenceError",
        "RuntimeError", "StopIteration", "SystemError", "TimeoutError", "TypeError", "UnicodeDecodeError",
        "UnicodeEncodeError", "UnicodeError", "ValueError", "ZeroDivisionError", "KeyboardInterrupt",
    ]
}

/// Reads pickles of protocols 2 to 5 into ``PythonValue``s, without running code.
public struct PickleReader: Sendable {
    public var limits: PickleLimits
    public var allowList: PickleAllowList

    public init(limits: PickleLimits = PickleLimits(), allowList: PickleAllowList = .managers) {
        self.limits = limits
        self.allowList = allowList
    }

    public func read(_ bytes: [UInt8]) throws(PickleError) -> PythonValue {
        let r: Result<PythonValue, PickleError> = bytes.withUnsafeBytes { p in
            var m = Machine(bytes: p, limits: limits, allowList: allowList)
            do throws(PickleError) { return .success(try m.run()) } catch { return .failure(error) }
        }
        return try r.get()
    }

    public func read(_ bytes: UnsafeRawBufferPointer) throws(PickleError) -> PythonValue {
        var m = Machine(bytes: bytes, limits: limits, allowList: allowList)
        return try m.run()
    }
}

private struct Machine {
    let bytes: UnsafeRawBufferPointer
    let limits: PickleLimits
    let allowList: PickleAllowList
    var pos = 0
    var stack: [PythonValue] = []
    /// For each stack position, how deeply its value nests (a scalar: 0; a list of scalars: 1).
    var depths: [Int] = []
    /// Stack positions where MARKs were pushed.
    var marks: [Int] = []
    /// Memo entries whose value has left the stack.
    var memo: [PythonValue?] = []
    /// How deeply each entry of `memo` nests.
    var memoDepth: [Int] = []
    /// For each memo entry, the stack position of its value while it is still on the stack (-1: in
    /// `memo`), and the next entry naming the same position (-1: none). While a container is on the stack
    /// and being filled, its memo entries follow it without copying it: they are resolved from the stack,
    /// and written to `memo` when it leaves the stack.
    var memoSlot: [Int] = []
    var memoNext: [Int] = []
    /// For each stack position, the first memo entry naming it (-1: none).
    var slotMemo: [Int] = []

    init(bytes: UnsafeRawBufferPointer, limits: PickleLimits, allowList: PickleAllowList) {
        self.bytes = bytes
        self.limits = limits
        self.allowList = allowList
        // A manager message has a dozen values and memo entries: one allocation each, not one per growth.
        stack.reserveCapacity(16)
        depths.reserveCapacity(16)
        slotMemo.reserveCapacity(16)
        marks.reserveCapacity(4)
        memo.reserveCapacity(16)
        memoDepth.reserveCapacity(16)
        memoSlot.reserveCapacity(16)
        memoNext.reserveCapacity(16)
    }

    func fail(_ m: String) -> PickleError { PickleError(m, at: pos) }

    mutating func byte() throws(PickleError) -> UInt8 {
        guard pos < bytes.count else { throw fail("truncated pickle") }
        defer { pos += 1 }
        return bytes[pos]
    }

    mutating func take(_ n: Int) throws(PickleError) -> UnsafeRawBufferPointer {
        guard n >= 0, n <= bytes.count - pos else { throw fail("truncated pickle (\(n) bytes announced)") }
        defer { pos += n }
        return UnsafeRawBufferPointer(rebasing: bytes[pos..<(pos + n)])
    }

    mutating func uint<T: FixedWidthInteger>(_: T.Type) throws(PickleError) -> T {
        let p = try take(MemoryLayout<T>.size)
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    mutating func length<T: FixedWidthInteger>(_: T.Type) throws(PickleError) -> Int {
        let n = try uint(T.self)
        guard let i = Int(exactly: n), i >= 0 else { throw fail("length \(n) out of range") }
        return i
    }

    mutating func text(_ n: Int) throws(PickleError) -> String {
        let p = try take(n)
        guard let s = String(validating: p, as: UTF8.self) else { throw fail("invalid UTF-8 in a str") }
        return s
    }

    /// Pushes `v`, which nests `depth` deep (refused past the limit).
    mutating func push(_ v: PythonValue, depth: Int = 0) throws(PickleError) {
        guard stack.count < limits.maxStack else { throw fail("pickle stack over \(limits.maxStack) items") }
        guard depth <= limits.maxDepth else { throw fail("pickle nested deeper than \(limits.maxDepth)") }
        stack.append(v)
        depths.append(depth)
        slotMemo.append(-1)
    }

    /// Pushes a container or call holding values of which the deepest nests `inner` deep.
    mutating func push(_ v: PythonValue, holding inner: Int) throws(PickleError) {
        try push(v, depth: inner + 1)
    }

    mutating func pop() throws(PickleError) -> PythonValue { try popWithDepth().value }

    mutating func popWithDepth() throws(PickleError) -> (value: PythonValue, depth: Int) {
        guard !stack.isEmpty else { throw fail("pickle stack underflow") }
        if let m = marks.last, m > stack.count - 1 { throw fail("pickle pops past a mark") }
        forget(slot: stack.count - 1)
        slotMemo.removeLast()
        return (stack.removeLast(), depths.removeLast())
    }

    /// Pops everything above the last mark, with the depth of the deepest.
    mutating func popToMark() throws(PickleError) -> (items: [PythonValue], depth: Int) {
        guard let m = marks.popLast() else { throw fail("no mark on the pickle stack") }
        guard m <= stack.count else { throw fail("pickle mark above the stack") }
        for i in m..<stack.count { forget(slot: i) }
        let items = Array(stack[m...])
        let depth = depths[m...].max() ?? 0
        stack.removeSubrange(m...)
        depths.removeSubrange(m...)
        slotMemo.removeSubrange(m...)
        return (items, depth)
    }

    /// The value at stack position `slot` leaves the stack: the memo entries naming it take its value.
    mutating func forget(slot: Int) {
        var r = slotMemo[slot]
        while r >= 0 {
            memo[r] = stack[slot]
            memoDepth[r] = depths[slot]
            memoSlot[r] = -1
            r = memoNext[r]
        }
    }

    /// Takes the top of the stack out for changing it in place (no copy), then puts it back; `adding`
    /// is the depth of the deepest value put into it.
    mutating func withTop(
        adding inner: Int = -1,
        _ body: (inout PythonValue) throws(PickleError) -> Void
    ) throws(PickleError) {
        guard !stack.isEmpty else { throw fail("pickle stack underflow") }
        if inner >= depths[depths.count - 1] {
            guard inner < limits.maxDepth else { throw fail("pickle nested deeper than \(limits.maxDepth)") }
            depths[depths.count - 1] = inner + 1
        }
        var v = stack[stack.count - 1]
        stack[stack.count - 1] = .none
        defer { stack[stack.count - 1] = v }
        try body(&v)
    }

    mutating func memoize(_ index: Int) throws(PickleError) {
        guard !stack.isEmpty else { throw fail("memoize with an empty stack") }
        guard index < limits.maxMemo else { throw fail("pickle memo index \(index) over \(limits.maxMemo)") }
        while index >= memo.count {  // MEMOIZE grows by one; BINPUT may skip (bounded by maxMemo above)
            memo.append(nil)
            memoDepth.append(0)
            memoSlot.append(-1)
            memoNext.append(-1)
        }
        let slot = stack.count - 1
        // An index memoized again (BINPUT twice, as fuzzed input does) leaves the list of the slot it
        // named: linked twice, the lists would loop and `forget` would never end.
        let old = memoSlot[index]
        if old >= 0 {
            if slotMemo[old] == index {
                slotMemo[old] = memoNext[index]
            } else {
                var p = slotMemo[old]
                while p >= 0 && memoNext[p] != index { p = memoNext[p] }
                if p >= 0 { memoNext[p] = memoNext[index] }
            }
        }
        memo[index] = nil
        memoSlot[index] = slot
        memoNext[index] = slotMemo[slot]
        slotMemo[slot] = index
    }

    /// The value memoized at `index`, and how deeply it nests.
    mutating func memoGet(_ index: Int) throws(PickleError) -> (value: PythonValue, depth: Int) {
        guard index < memo.count else { throw fail("pickle memo \(index) is empty") }
        let slot = memoSlot[index]
        if slot >= 0 {
            // A container whose items are being pushed (a MARK right above it) would contain itself:
            // values cannot hold cycles, so this is refused rather than silently cut.
            if marks.contains(slot + 1) {
                switch stack[slot] {
                case .list, .dict, .set: throw fail("a recursive structure (a container that contains itself)")
                default: break
                }
            }
            return (stack[slot], depths[slot])
        }
        guard let v = memo[index] else { throw fail("pickle memo \(index) is empty") }
        return (v, memoDepth[index])
    }

    mutating func global(_ module: String, _ name: String) throws(PickleError) -> PythonValue {
        guard allowList.allows(module, name) else {
            throw fail("global \(module).\(name) is not allowed (only a fixed list of classes may be named)")
        }
        return .global(module: module, name: name)
    }

    /// `callable(*args)`: a few built-ins become values; anything else is recorded.
    func call(_ callable: PythonValue, _ args: [PythonValue], viaNew: Bool) throws(PickleError) -> PythonValue {
        if case .global("builtins", let name) = callable, !viaNew {
            switch (name, args.first) {
            case ("bytearray", .bytes(let b)?) where args.count == 1: return .bytearray(b)
            case ("bytearray", nil): return .bytearray([])
            case ("set", .list(let l)?) where args.count == 1: return .set(l)
            case ("set", nil): return .set([])
            case ("frozenset", .list(let l)?) where args.count == 1: return .frozenset(l)
            case ("frozenset", nil): return .frozenset([])
            // CPython's managers send dict views (`d.keys()`, `values()`, `items()`) as `list(items)`.
            case ("list", .list(let l)?) where args.count == 1: return .list(l)
            case ("list", nil): return .list([])
            default: break
            }
        }
        return .object(PythonObject(callable: callable, args: args, viaNew: viaNew))
    }

    mutating func run() throws(PickleError) -> PythonValue {
        while true {
            let op = try byte()
            switch op {
            case 0x80:  // PROTO
                let v = try byte()
                guard (2...5).contains(v) else { throw fail("pickle protocol \(v) (2 to 5 are read)") }
            case 0x95:  // FRAME: a hint
                _ = try uint(UInt64.self)
            case 0x2e:  // STOP
                guard stack.count == 1, marks.isEmpty else {
                    throw fail("pickle ended with \(stack.count) values and \(marks.count) marks on the stack")
                }
                return stack[0]
            case 0x28:  // MARK
                guard marks.count < limits.maxDepth else { throw fail("pickle nested deeper than \(limits.maxDepth)") }
                marks.append(stack.count)
            case 0x4e: try push(.none)
            case 0x88: try push(.bool(true))
            case 0x89: try push(.bool(false))
            case 0x4b: try push(.int(Int64(try byte())))
            case 0x4d: try push(.int(Int64(try uint(UInt16.self))))
            case 0x4a: try push(.int(Int64(Int32(bitPattern: try uint(UInt32.self)))))
            case 0x8a: try push(Self.long(try take(Int(try byte()))))
            case 0x8b:
                let n = Int(Int32(bitPattern: try uint(UInt32.self)))
                guard n >= 0 else { throw fail("negative LONG4 length") }
                try push(Self.long(try take(n)))
            case 0x47:
                let raw = try take(8)
                try push(.float(Double(bitPattern: UInt64(bigEndian: raw.loadUnaligned(as: UInt64.self)))))
            case 0x8c: try push(.string(try text(Int(try byte()))))
            case 0x58: try push(.string(try text(try length(UInt32.self))))
            case 0x8d: try push(.string(try text(try length(UInt64.self))))
            case 0x43: try push(.bytes(Array(try take(Int(try byte())))))
            case 0x42: try push(.bytes(Array(try take(try length(UInt32.self)))))
            case 0x8e: try push(.bytes(Array(try take(try length(UInt64.self)))))
            case 0x96: try push(.bytearray(Array(try take(try length(UInt64.self)))))
            case 0x29: try push(.tuple([]))
            case 0x85:
                let a = try popWithDepth()
                try push(.tuple([a.value]), holding: a.depth)
            case 0x86:
                let b = try popWithDepth()
                let a = try popWithDepth()
                try push(.tuple([a.value, b.value]), holding: max(a.depth, b.depth))
            case 0x87:
                let c = try popWithDepth()
                let b = try popWithDepth()
                let a = try popWithDepth()
                try push(.tuple([a.value, b.value, c.value]), holding: max(a.depth, b.depth, c.depth))
            case 0x74:
                let (items, depth) = try popToMark()
                try push(.tuple(items), holding: depth)
            case 0x5d: try push(.list([]))
            case 0x61:  // APPEND
                let (x, depth) = try popWithDepth()
                let at = pos
                try withTop(adding: depth) { (v: inout PythonValue) throws(PickleError) in
                    guard case .list(var l) = v else { throw PickleError("APPEND to a non-list", at: at) }
                    v = .none
                    l.append(x)
                    v = .list(l)
                }
            case 0x65:  // APPENDS
                let (xs, depth) = try popToMark()
                let at = pos
                try withTop(adding: depth) { (v: inout PythonValue) throws(PickleError) in
                    guard case .list(var l) = v else { throw PickleError("APPENDS to a non-list", at: at) }
                    v = .none
                    l.append(contentsOf: xs)
                    v = .list(l)
                }
            case 0x7d: try push(.dict([]))
            case 0x73:  // SETITEM
                let (value, vd) = try popWithDepth()
                let (k, kd) = try popWithDepth()
                let at = pos
                try withTop(adding: max(kd, vd)) { (v: inout PythonValue) throws(PickleError) in
                    guard case .dict(var d) = v else { throw PickleError("SETITEM on a non-dict", at: at) }
                    v = .none
                    Self.set(&d, k, value)
                    v = .dict(d)
                }
            case 0x75:  // SETITEMS
                let (kv, depth) = try popToMark()
                guard kv.count % 2 == 0 else { throw fail("SETITEMS with an odd number of items") }
                let at = pos
                try withTop(adding: depth) { (v: inout PythonValue) throws(PickleError) in
                    guard case .dict(var d) = v else { throw PickleError("SETITEMS on a non-dict", at: at) }
                    v = .none
                    for i in stride(from: 0, to: kv.count, by: 2) { Self.set(&d, kv[i], kv[i + 1]) }
                    v = .dict(d)
                }
            case 0x8f: try push(.set([]))
            case 0x90:  // ADDITEMS
                let (xs, depth) = try popToMark()
                let at = pos
                try withTop(adding: depth) { (v: inout PythonValue) throws(PickleError) in
                    guard case .set(var s) = v else { throw PickleError("ADDITEMS to a non-set", at: at) }
                    v = .none
                    for x in xs where !s.contains(x) { s.append(x) }
                    v = .set(s)
                }
            case 0x91:
                let (items, depth) = try popToMark()
                try push(.frozenset(items), holding: depth)
            case 0x94: try memoize(memo.count)
            case 0x71: try memoize(Int(try byte()))
            case 0x72: try memoize(try length(UInt32.self))
            case 0x68:
                let (v, depth) = try memoGet(Int(try byte()))
                try push(v, depth: depth)
            case 0x6a:
                let (v, depth) = try memoGet(try length(UInt32.self))
                try push(v, depth: depth)
            case 0x93:  // STACK_GLOBAL
                guard case .string(let name) = try pop(), case .string(let module) = try pop() else {
                    throw fail("STACK_GLOBAL needs two str")
                }
                try push(try global(module, name))
            case 0x63:  // GLOBAL module\nname\n
                let module = try line()
                let name = try line()
                try push(try global(module, name))
            case 0x52:  // REDUCE
                let (argsValue, depth) = try popWithDepth()
                guard case .tuple(let args) = argsValue else { throw fail("REDUCE arguments are not a tuple") }
                let callable = try pop()
                try checkCallable(callable)
                // `set([...])` and `list([...])` become the container itself; other calls hold the tuple.
                let v = try call(callable, args, viaNew: false)
                if case .object = v { try push(v, holding: depth) } else { try push(v, depth: depth) }
            case 0x81:  // NEWOBJ
                let (argsValue, depth) = try popWithDepth()
                guard case .tuple(let args) = argsValue else { throw fail("NEWOBJ arguments are not a tuple") }
                let cls = try pop()
                try checkCallable(cls)
                try push(try call(cls, args, viaNew: true), holding: depth)
            case 0x92:  // NEWOBJ_EX
                let (kwargs, kd) = try popWithDepth()
                let (argsValue, ad) = try popWithDepth()
                guard case .tuple(let args) = argsValue else { throw fail("NEWOBJ_EX arguments are not a tuple") }
                let cls = try pop()
                try checkCallable(cls)
                var o = PythonObject(callable: cls, args: args, viaNew: true)
                if case .dict(let kw) = kwargs, !kw.isEmpty { o.state = .dict(kw) }
                try push(.object(o), holding: max(kd, ad))
            case 0x62:  // BUILD
                let (state, depth) = try popWithDepth()
                let at = pos
                try withTop(adding: depth) { (v: inout PythonValue) throws(PickleError) in
                    guard case .object(var o) = v else {
                        throw PickleError("BUILD on a value that is not an object", at: at)
                    }
                    o.state = state
                    v = .object(o)
                }
            default:
                throw fail("unsupported pickle opcode 0x\(String(op, radix: 16))")
            }
        }
    }

    func checkCallable(_ v: PythonValue) throws(PickleError) {
        guard case .global = v else { throw fail("a call of something that is not an allowed global") }
    }

    mutating func line() throws(PickleError) -> String {
        var out: [UInt8] = []
        while true {
            let b = try byte()
            if b == UInt8(ascii: "\n") { break }
            out.append(b)
            if out.count > 256 { throw fail("GLOBAL name over 256 bytes") }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func set(_ d: inout [PythonPair], _ k: PythonValue, _ v: PythonValue) {
        if let i = d.firstIndex(where: { $0.key == k }) { d[i].value = v } else { d.append(PythonPair(k, v)) }
    }

    /// A two's-complement little-endian int: `.int` when it fits 64 bits, else `.bigInt` (minimal bytes).
    static func long(_ p: UnsafeRawBufferPointer) -> PythonValue {
        if p.isEmpty { return .int(0) }
        if p.count <= 8 {
            var v: UInt64 = 0
            for (i, b) in p.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
            if p.count < 8 && p[p.count - 1] & 0x80 != 0 { v |= ~0 << (8 * UInt64(p.count)) }  // sign-extend
            return .int(Int64(bitPattern: v))
        }
        return BigInts.normalized(Array(p))
    }
}

enum BigInts {
    /// `.int` if the two's-complement bytes fit 64 bits, else `.bigInt` with minimal bytes.
    static func normalized(_ bytes: [UInt8]) -> PythonValue {
        var b = bytes
        // Drop redundant sign bytes.
        while b.count > 1 {
            let last = b[b.count - 1]
            let prevHigh = b[b.count - 2] & 0x80
            if (last == 0 && prevHigh == 0) || (last == 0xff && prevHigh != 0) { b.removeLast() } else { break }
        }
        if b.count <= 8 {
            var v: UInt64 = 0
            for (i, x) in b.enumerated() { v |= UInt64(x) << (8 * UInt64(i)) }
            if b.count < 8 && b[b.count - 1] & 0x80 != 0 { v |= ~0 << (8 * UInt64(b.count)) }
            return .int(Int64(bitPattern: v))
        }
        return .bigInt(b)
    }
}
