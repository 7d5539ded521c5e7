/// Reads pickles of protocols 2 to 5 into ``PythonValue``s, without running code.
public struct PickleReader: Sendable {
    /// The bounds a pickle must stay within.
    public var limits: PickleLimits
    /// The globals a pickle may name.
    public var allowList: PickleAllowList

    /// A reader with `limits` (default: ``PickleLimits``' defaults) and `allowList` (default:
    /// ``PickleAllowList/managers``, what CPython's managers protocol needs).
    public init(limits: PickleLimits = PickleLimits(), allowList: PickleAllowList = .managers) {
        self.limits = limits
        self.allowList = allowList
    }

    /// Reads one pickle (Python's `pickle.loads`) without running code: a class or function becomes a
    /// ``PythonValue/global(module:name:)``, a call to one a ``PythonValue/object(_:)``. Bytes after the
    /// pickle's `STOP` are ignored.
    ///
    /// - Throws: ``PickleError`` for a truncated or malformed pickle, a protocol other than 2 to 5, an opcode
    ///   it does not read, a global the allow-list does not admit, or a pickle past ``PickleReader/limits``.
    public func read(_ bytes: [UInt8]) throws(PickleError) -> PythonValue {
        let r: Result<PythonValue, PickleError> = bytes.withUnsafeBytes { p in
            var m = Machine(bytes: p, limits: limits, allowList: allowList)
            do throws(PickleError) { return .success(try m.run()) } catch { return .failure(error) }
        }
        return try r.get()
    }

    /// Reads one pickle in place from memory the caller owns (valid for the call only), as the `[UInt8]`
    /// form does.
    public func read(_ bytes: UnsafeRawBufferPointer) throws(PickleError) -> PythonValue {
        var m = Machine(bytes: bytes, limits: limits, allowList: allowList)
        return try m.run()
    }
}

/// How a value nests (`depth`: a scalar 0, a list of scalars 1) and how many values it is made of (`size`,
/// each counted as often as it appears).
private struct Shape {
    var depth: Int
    var size: Int
    static let scalar = Shape(depth: 0, size: 1)
    static let nothing = Shape(depth: 0, size: 0)
    /// Two values side by side.
    func merged(_ o: Shape) -> Shape { Shape(depth: max(depth, o.depth), size: Self.sum(size, o.size)) }
    /// A container or call holding values of this shape.
    var wrapped: Shape { Shape(depth: depth + 1, size: Self.sum(size, 1)) }
    /// A sum that saturates (a limit of `Int.max` must not make a doubling value trap).
    static func sum(_ a: Int, _ b: Int) -> Int {
        let (r, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : r
    }
}

private struct Machine {
    let bytes: UnsafeRawBufferPointer
    let limits: PickleLimits
    let allowList: PickleAllowList
    var pos = 0
    var stack: [PythonValue] = []
    /// For each stack position, the shape of its value.
    var shapes: [Shape] = []
    /// Stack positions where MARKs were pushed.
    var marks: [Int] = []
    /// Memo entries whose value has left the stack.
    var memo: [PythonValue?] = []
    /// The shape of each entry of `memo`.
    var memoShape: [Shape] = []
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
        shapes.reserveCapacity(16)
        slotMemo.reserveCapacity(16)
        marks.reserveCapacity(4)
        memo.reserveCapacity(16)
        memoShape.reserveCapacity(16)
        memoSlot.reserveCapacity(16)
        memoNext.reserveCapacity(16)
    }

    func fail(_ code: PickleError.Code, _ m: String) -> PickleError { PickleError(code, m, at: pos) }

    mutating func byte() throws(PickleError) -> UInt8 {
        guard pos < bytes.count else { throw fail(.truncated, "truncated pickle") }
        defer { pos += 1 }
        return bytes[pos]
    }

    mutating func take(_ n: Int) throws(PickleError) -> UnsafeRawBufferPointer {
        guard n >= 0, n <= bytes.count - pos else { throw fail(.truncated, "truncated pickle (\(n) bytes announced)") }
        defer { pos += n }
        return UnsafeRawBufferPointer(rebasing: bytes[pos..<(pos + n)])
    }

    mutating func uint<T: FixedWidthInteger>(_: T.Type) throws(PickleError) -> T {
        let p = try take(MemoryLayout<T>.size)
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    mutating func length<T: FixedWidthInteger>(_: T.Type) throws(PickleError) -> Int {
        let n = try uint(T.self)
        guard let i = Int(exactly: n), i >= 0 else { throw fail(.malformed, "length \(n) out of range") }
        return i
    }

    mutating func text(_ n: Int) throws(PickleError) -> String {
        let p = try take(n)
        guard let s = String(validating: p, as: UTF8.self) else { throw fail(.malformed, "invalid UTF-8 in a str") }
        return s
    }

    /// Refuses a shape past the limits.
    @inline(__always)
    func check(_ shape: Shape) throws(PickleError) {
        guard shape.depth <= limits.maxDepth else {
            throw fail(.tooDeep, "pickle nested deeper than \(limits.maxDepth)")
        }
        guard shape.size <= limits.maxValues else {
            throw fail(.tooLarge, "pickle of more than \(limits.maxValues) values")
        }
    }

    /// Pushes `v`, of `shape` (refused past the limits).
    mutating func push(_ v: PythonValue, shape: Shape = .scalar) throws(PickleError) {
        guard stack.count < limits.maxStack else { throw fail(.tooLarge, "pickle stack over \(limits.maxStack) items") }
        try check(shape)
        stack.append(v)
        shapes.append(shape)
        slotMemo.append(-1)
    }

    /// Pushes a container or call holding values of shape `inner`.
    mutating func push(_ v: PythonValue, holding inner: Shape) throws(PickleError) {
        try push(v, shape: inner.wrapped)
    }

    mutating func pop() throws(PickleError) -> PythonValue { try popWithShape().value }

    mutating func popWithShape() throws(PickleError) -> (value: PythonValue, shape: Shape) {
        guard !stack.isEmpty else { throw fail(.malformed, "pickle stack underflow") }
        if let m = marks.last, m > stack.count - 1 { throw fail(.malformed, "pickle pops past a mark") }
        forget(slot: stack.count - 1)
        slotMemo.removeLast()
        return (stack.removeLast(), shapes.removeLast())
    }

    /// Pops everything above the last mark, with their shapes merged.
    mutating func popToMark() throws(PickleError) -> (items: [PythonValue], shape: Shape) {
        guard let m = marks.popLast() else { throw fail(.malformed, "no mark on the pickle stack") }
        guard m <= stack.count else { throw fail(.malformed, "pickle mark above the stack") }
        for i in m..<stack.count { forget(slot: i) }
        let items = Array(stack[m...])
        var shape = Shape.nothing
        for i in m..<shapes.count { shape = shape.merged(shapes[i]) }
        stack.removeSubrange(m...)
        shapes.removeSubrange(m...)
        slotMemo.removeSubrange(m...)
        return (items, shape)
    }

    /// The value at stack position `slot` leaves the stack: the memo entries naming it take its value.
    mutating func forget(slot: Int) {
        var r = slotMemo[slot]
        while r >= 0 {
            memo[r] = stack[slot]
            memoShape[r] = shapes[slot]
            memoSlot[r] = -1
            r = memoNext[r]
        }
    }

    /// Takes the top of the stack out for changing it in place (no copy), then puts it back; `adding` is
    /// the shape of the values put into it.
    mutating func withTop(
        adding inner: Shape,
        _ body: (inout PythonValue) throws(PickleError) -> Void
    ) throws(PickleError) {
        guard !stack.isEmpty else { throw fail(.malformed, "pickle stack underflow") }
        let top = shapes[shapes.count - 1]
        let grown = Shape(depth: max(top.depth, inner.depth + 1), size: Shape.sum(top.size, inner.size))
        try check(grown)
        shapes[shapes.count - 1] = grown
        var v = stack[stack.count - 1]
        stack[stack.count - 1] = .none
        defer { stack[stack.count - 1] = v }
        try body(&v)
    }

    mutating func memoize(_ index: Int) throws(PickleError) {
        guard !stack.isEmpty else { throw fail(.malformed, "memoize with an empty stack") }
        guard index < limits.maxMemo else { throw fail(.tooLarge, "pickle memo index \(index) over \(limits.maxMemo)") }
        while index >= memo.count {  // MEMOIZE grows by one; BINPUT may skip (bounded by maxMemo above)
            memo.append(nil)
            memoShape.append(.scalar)
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

    /// The value memoized at `index`, and its shape.
    mutating func memoGet(_ index: Int) throws(PickleError) -> (value: PythonValue, shape: Shape) {
        guard index < memo.count else { throw fail(.malformed, "pickle memo \(index) is empty") }
        let slot = memoSlot[index]
        if slot >= 0 {
            // A container whose items are being pushed (a MARK right above it) would contain itself:
            // values cannot hold cycles, so this is refused rather than silently cut.
            if marks.contains(slot + 1) {
                switch stack[slot] {
                case .list, .dict, .set:
                    throw fail(.unsupported, "a recursive structure (a container that contains itself)")
                default: break
                }
            }
            return (stack[slot], shapes[slot])
        }
        guard let v = memo[index] else { throw fail(.malformed, "pickle memo \(index) is empty") }
        return (v, memoShape[index])
    }

    mutating func global(_ module: String, _ name: String) throws(PickleError) -> PythonValue {
        guard allowList.allows(module, name) else {
            throw fail(
                .forbiddenGlobal,
                "global \(module).\(name) is not allowed (only a fixed list of classes may be named)"
            )
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
                guard (2...5).contains(v) else { throw fail(.unsupported, "pickle protocol \(v) (2 to 5 are read)") }
            case 0x95:  // FRAME: a hint
                _ = try uint(UInt64.self)
            case 0x2e:  // STOP
                guard stack.count == 1, marks.isEmpty else {
                    throw fail(
                        .malformed,
                        "pickle ended with \(stack.count) values and \(marks.count) marks on the stack"
                    )
                }
                return stack[0]
            case 0x28:  // MARK
                guard marks.count < limits.maxDepth else {
                    throw fail(.tooDeep, "pickle nested deeper than \(limits.maxDepth)")
                }
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
                guard n >= 0 else { throw fail(.malformed, "negative LONG4 length") }
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
                let a = try popWithShape()
                try push(.tuple([a.value]), holding: a.shape)
            case 0x86:
                let b = try popWithShape()
                let a = try popWithShape()
                try push(.tuple([a.value, b.value]), holding: a.shape.merged(b.shape))
            case 0x87:
                let c = try popWithShape()
                let b = try popWithShape()
                let a = try popWithShape()
                try push(.tuple([a.value, b.value, c.value]), holding: a.shape.merged(b.shape).merged(c.shape))
            case 0x74:
                let (items, shape) = try popToMark()
                try push(.tuple(items), holding: shape)
            case 0x5d: try push(.list([]))
            case 0x61:  // APPEND
                let (x, shape) = try popWithShape()
                let at = pos
                try withTop(adding: shape) { (v: inout PythonValue) throws(PickleError) in
                    guard case .list(var l) = v else { throw PickleError(.malformed, "APPEND to a non-list", at: at) }
                    v = .none
                    l.append(x)
                    v = .list(l)
                }
            case 0x65:  // APPENDS
                let (xs, shape) = try popToMark()
                let at = pos
                try withTop(adding: shape) { (v: inout PythonValue) throws(PickleError) in
                    guard case .list(var l) = v else { throw PickleError(.malformed, "APPENDS to a non-list", at: at) }
                    v = .none
                    l.append(contentsOf: xs)
                    v = .list(l)
                }
            case 0x7d: try push(.dict([]))
            case 0x73:  // SETITEM
                let (value, vd) = try popWithShape()
                let (k, kd) = try popWithShape()
                let at = pos
                try withTop(adding: kd.merged(vd)) { (v: inout PythonValue) throws(PickleError) in
                    guard case .dict(var d) = v else { throw PickleError(.malformed, "SETITEM on a non-dict", at: at) }
                    v = .none
                    Self.set(&d, k, value)
                    v = .dict(d)
                }
            case 0x75:  // SETITEMS
                let (kv, shape) = try popToMark()
                guard kv.count % 2 == 0 else { throw fail(.malformed, "SETITEMS with an odd number of items") }
                let at = pos
                try withTop(adding: shape) { (v: inout PythonValue) throws(PickleError) in
                    guard case .dict(var d) = v else { throw PickleError(.malformed, "SETITEMS on a non-dict", at: at) }
                    v = .none
                    for i in stride(from: 0, to: kv.count, by: 2) { Self.set(&d, kv[i], kv[i + 1]) }
                    v = .dict(d)
                }
            case 0x8f: try push(.set([]))
            case 0x90:  // ADDITEMS
                let (xs, shape) = try popToMark()
                let at = pos
                try withTop(adding: shape) { (v: inout PythonValue) throws(PickleError) in
                    guard case .set(var s) = v else { throw PickleError(.malformed, "ADDITEMS to a non-set", at: at) }
                    v = .none
                    for x in xs where !s.contains(x) { s.append(x) }
                    v = .set(s)
                }
            case 0x91:
                let (items, shape) = try popToMark()
                try push(.frozenset(items), holding: shape)
            case 0x94: try memoize(memo.count)
            case 0x71: try memoize(Int(try byte()))
            case 0x72: try memoize(try length(UInt32.self))
            case 0x68:
                let (v, shape) = try memoGet(Int(try byte()))
                try push(v, shape: shape)
            case 0x6a:
                let (v, shape) = try memoGet(try length(UInt32.self))
                try push(v, shape: shape)
            case 0x93:  // STACK_GLOBAL
                guard case .string(let name) = try pop(), case .string(let module) = try pop() else {
                    throw fail(.malformed, "STACK_GLOBAL needs two str")
                }
                try push(try global(module, name))
            case 0x63:  // GLOBAL module\nname\n
                let module = try line()
                let name = try line()
                try push(try global(module, name))
            case 0x52:  // REDUCE
                let (argsValue, shape) = try popWithShape()
                guard case .tuple(let args) = argsValue else {
                    throw fail(.malformed, "REDUCE arguments are not a tuple")
                }
                let callable = try pop()
                try checkCallable(callable)
                // `set([...])` and `list([...])` become the container itself; other calls hold the tuple.
                let v = try call(callable, args, viaNew: false)
                if case .object = v { try push(v, holding: shape) } else { try push(v, shape: shape) }
            case 0x81:  // NEWOBJ
                let (argsValue, shape) = try popWithShape()
                guard case .tuple(let args) = argsValue else {
                    throw fail(.malformed, "NEWOBJ arguments are not a tuple")
                }
                let cls = try pop()
                try checkCallable(cls)
                try push(try call(cls, args, viaNew: true), holding: shape)
            case 0x92:  // NEWOBJ_EX
                let (kwargs, kd) = try popWithShape()
                let (argsValue, ad) = try popWithShape()
                guard case .tuple(let args) = argsValue else {
                    throw fail(.malformed, "NEWOBJ_EX arguments are not a tuple")
                }
                let cls = try pop()
                try checkCallable(cls)
                var o = PythonObject(callable: cls, args: args, viaNew: true)
                if case .dict(let kw) = kwargs, !kw.isEmpty { o.state = .dict(kw) }
                try push(.object(o), holding: kd.merged(ad))
            case 0x62:  // BUILD
                let (state, shape) = try popWithShape()
                let at = pos
                try withTop(adding: shape) { (v: inout PythonValue) throws(PickleError) in
                    guard case .object(var o) = v else {
                        throw PickleError(.malformed, "BUILD on a value that is not an object", at: at)
                    }
                    o.state = state
                    v = .object(o)
                }
            default:
                throw fail(.unsupported, "unsupported pickle opcode 0x\(String(op, radix: 16))")
            }
        }
    }

    func checkCallable(_ v: PythonValue) throws(PickleError) {
        guard case .global = v else { throw fail(.malformed, "a call of something that is not an allowed global") }
    }

    mutating func line() throws(PickleError) -> String {
        var out: [UInt8] = []
        while true {
            let b = try byte()
            if b == UInt8(ascii: "\n") { break }
            out.append(b)
            if out.count > 256 { throw fail(.tooLarge, "GLOBAL name over 256 bytes") }
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
