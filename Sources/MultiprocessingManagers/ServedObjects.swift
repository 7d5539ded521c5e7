import Synchronization
import Threading

// The objects a manager serves by default, with the methods Python's proxies call (DictProxy, ListProxy,
// the AutoProxy of queue.Queue, NamespaceProxy). Keys compare as Python's do: 1, 1.0 and True are one key
// (and (1,) and (1.0,)); the dict keeps the key first inserted, as Python's.

/// A dict key with Python's equality: numbers compare by value across bool, int and float (a float with
/// an integral value equals the int), element by element inside tuples and frozensets; everything else
/// by exact value.
struct PythonKey: Hashable {
    let value: PythonValue

    init(_ value: PythonValue) { self.value = Self.canonical(value) }

    static func canonical(_ v: PythonValue) -> PythonValue {
        switch v {
        case .bool(let b): return .int(b ? 1 : 0)
        case .float(let d):
            if d.rounded() == d, let i = Int64(exactly: d) { return .int(i) }
            return v
        case .tuple(let items): return .tuple(items.map(canonical))
        case .frozenset(let items): return .frozenset(items.map(canonical).sorted { $0.hashValue < $1.hashValue })
        default: return v
        }
    }
}

private func keyError(_ k: PythonValue) -> PythonException { PythonException("KeyError", [k]) }

private func index(_ v: PythonValue, count: Int) throws -> Int {
    guard let i = v.intValue else { throw PythonException("TypeError", ["list indices must be integers"]) }
    let j = i < 0 ? i + count : i
    guard j >= 0, j < count else { throw PythonException("IndexError", ["list index out of range"]) }
    return j
}

/// An insertion-ordered dict with a hash index (a served dict of thousands of keys must not be searched
/// key by key on every call).
struct OrderedPythonDict {
    private(set) var entries: [PythonPair?] = []
    private var index: [PythonKey: Int] = [:]
    private(set) var count = 0

    init(_ pairs: [PythonPair] = []) { for p in pairs { self[p.key] = p.value } }

    subscript(key: PythonValue) -> PythonValue? {
        get { index[PythonKey(key)].flatMap { entries[$0]?.value } }
        set {
            let original = key
            let key = PythonKey(key)
            if let i = index[key] {
                if let v = newValue {
                    entries[i]!.value = v
                } else {
                    entries[i] = nil
                    index[key] = nil
                    count -= 1
                    if entries.count > 32 && count < entries.count / 2 { compact() }
                }
            } else if let v = newValue {
                index[key] = entries.count
                entries.append(PythonPair(original, v))  // the key as first inserted, as Python keeps it
                count += 1
            }
        }
    }

    var pairs: [PythonPair] { entries.compactMap { $0 } }

    mutating func removeAll() { self = OrderedPythonDict() }

    mutating func popLast() -> PythonPair? {
        guard let last = entries.last(where: { $0 != nil }) ?? nil else { return nil }
        self[last.key] = nil
        return last
    }

    private mutating func compact() { self = OrderedPythonDict(pairs) }
}

/// Python's `dict`, served.
final class DictObject: ServedInline, @unchecked Sendable {  // the dict is behind `lock`
    private let lock = TrackedMutex(OrderedPythonDict())
    /// As CPython's `DictProxy`: iterating a served dict gives a proxy to an iterator over its keys.
    let methodToTypeid = ["__iter__": "Iterator"]

    let exposed = [
        "__contains__", "__delitem__", "__getitem__", "__iter__", "__len__", "__setitem__", "clear", "copy", "get",
        "items", "keys", "pop", "popitem", "setdefault", "update", "values", "__repr__", "__str__",
    ]

    init(_ args: [PythonValue], _ kwargs: [PythonPair]) throws {
        var d = OrderedPythonDict()
        if case .dict(let pairs)? = args.first { for p in pairs { d[p.key] = p.value } }
        for kv in kwargs { d[kv.key] = kv.value }
        lock.withLock { $0 = d }
    }

    static func set(_ d: inout [PythonPair], _ k: PythonValue, _ v: PythonValue) {
        if let i = d.firstIndex(where: { $0.key == k }) { d[i].value = v } else { d.append(PythonPair(k, v)) }
    }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        try lock.withLock { d throws -> PythonValue in
            func key() throws -> PythonValue {
                let k = try argument(args, kwargs, 0, "key")
                try checkHashable(k)
                return k
            }
            switch method {
            case "__getitem__":
                let k = try key()
                guard let v = d[k] else { throw keyError(k) }
                return v
            case "get":
                return d[try key()] ?? (args.count > 1 ? args[1] : .none)
            case "__setitem__":
                d[try key()] = try argument(args, kwargs, 1, "value")
                return .none
            case "__delitem__":
                let k = try key()
                guard d[k] != nil else { throw keyError(k) }
                d[k] = nil
                return .none
            case "__contains__": return .bool(d[try key()] != nil)
            case "__len__": return .int(Int64(d.count))
            case "clear":
                d.removeAll()
                return .none
            case "copy": return .dict(d.pairs)
            case "items": return .list(d.pairs.map { .tuple([$0.key, $0.value]) })
            case "keys", "__iter__": return .list(d.pairs.map(\.key))
            case "values": return .list(d.pairs.map(\.value))
            case "pop":
                let k = try key()
                if let v = d[k] {
                    d[k] = nil
                    return v
                }
                if args.count > 1 { return args[1] }
                throw keyError(k)
            case "popitem":
                guard let last = d.popLast() else {
                    throw PythonException("KeyError", ["popitem(): dictionary is empty"])
                }
                return .tuple([last.key, last.value])
            case "setdefault":
                let k = try key()
                if let v = d[k] { return v }
                let v = args.count > 1 ? args[1] : .none
                d[k] = v
                return v
            case "update":
                if case .dict(let other)? = args.first { for kv in other { d[kv.key] = kv.value } }
                if let pairs = args.first?.items {
                    for p in pairs {
                        guard let kv = p.items, kv.count == 2 else {
                            throw PythonException("ValueError", ["dictionary update sequence element has wrong length"])
                        }
                        d[kv[0]] = kv[1]
                    }
                }
                for kv in kwargs { d[kv.key] = kv.value }
                return .none
            case "__repr__", "__str__": return .string(PythonValue.dict(d.pairs).pythonDescription)
            default: throw PythonException("AttributeError", [.string("dict has no method \(method)")])
            }
        }
    }
}

/// Python's `list`, served.
final class ListObject: ServedInline, @unchecked Sendable {  // `items` behind `lock`
    private let lock = TrackedMutex<[PythonValue]>([])

    let exposed = [
        "__add__", "__contains__", "__delitem__", "__getitem__", "__len__", "__mul__", "__reversed__", "__rmul__",
        "__setitem__", "append", "count", "extend", "index", "insert", "pop", "remove", "reverse", "sort",
        "__imul__", "__iadd__", "__repr__", "__str__",
    ]

    init(_ args: [PythonValue]) throws {
        if let first = args.first {
            guard let items = first.items ?? Self.iterable(first) else {
                throw PythonException("TypeError", ["list() argument must be an iterable"])
            }
            lock.withLock { $0 = items }
        }
    }

    /// Sets and `range` objects as item lists (a range is bounded: at most 10 million items).
    static func iterable(_ v: PythonValue) -> [PythonValue]? {
        switch v {
        case .set(let s), .frozenset(let s): return s
        case .object(let o) where o.type.map({ $0 == ("builtins", "range") }) == true:
            let n = o.args.compactMap(\.intValue)
            guard n.count == o.args.count, (1...3).contains(n.count) else { return nil }
            let (start, stop, step) = n.count == 1 ? (0, n[0], 1) : (n[0], n[1], n.count == 3 ? n[2] : 1)
            guard step != 0 else { return nil }
            let r = stride(from: start, to: stop, by: step)
            guard r.underestimatedCount <= 10_000_000 else { return nil }
            return r.map { .int(Int64($0)) }
        default: return nil
        }
    }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        try lock.withLock { l throws -> PythonValue in
            switch method {
            case "__getitem__":
                let i = try argument(args, kwargs, 0, "index")
                if let r = try Self.slice(i, count: l.count) { return .list(r.map { l[$0] }) }
                return l[try index(i, count: l.count)]
            case "__setitem__":
                l[try index(try argument(args, kwargs, 0, "index"), count: l.count)] = try argument(
                    args,
                    kwargs,
                    1,
                    "value"
                )
                return .none
            case "__delitem__":
                l.remove(at: try index(try argument(args, kwargs, 0, "index"), count: l.count))
                return .none
            case "__len__": return .int(Int64(l.count))
            case "__contains__": return .bool(l.contains(try argument(args, kwargs, 0, "value")))
            case "append":
                l.append(try argument(args, kwargs, 0, "object"))
                return .none
            case "extend", "__iadd__":
                let x = try argument(args, kwargs, 0, "iterable")
                guard let items = x.items ?? Self.iterable(x) else {
                    throw PythonException("TypeError", ["not iterable"])
                }
                l += items
                return method == "__iadd__" ? .list(l) : .none
            case "insert":
                let i = try argument(args, kwargs, 0, "index").intValue ?? 0
                let at = max(0, min(l.count, i < 0 ? i + l.count : i))
                l.insert(try argument(args, kwargs, 1, "object"), at: at)
                return .none
            case "pop":
                guard !l.isEmpty else { throw PythonException("IndexError", ["pop from empty list"]) }
                if args.isEmpty { return l.removeLast() }
                return l.remove(at: try index(args[0], count: l.count))
            case "remove":
                let x = try argument(args, kwargs, 0, "value")
                guard let i = l.firstIndex(of: x) else {
                    throw PythonException("ValueError", ["list.remove(x): x not in list"])
                }
                l.remove(at: i)
                return .none
            case "index":
                let x = try argument(args, kwargs, 0, "value")
                guard let i = l.firstIndex(of: x) else {
                    throw PythonException("ValueError", [.string("\(x.pythonDescription) is not in list")])
                }
                return .int(Int64(i))
            case "count":
                let x = try argument(args, kwargs, 0, "value")
                return .int(Int64(l.filter { $0 == x }.count))
            case "reverse":
                l.reverse()
                return .none
            case "__reversed__": return .list(l.reversed())
            case "sort":
                try Self.sort(&l)
                return .none
            case "__add__":
                guard let other = try argument(args, kwargs, 0, "other").items else {
                    throw PythonException("TypeError", ["can only concatenate list"])
                }
                return .list(l + other)
            case "__mul__", "__rmul__", "__imul__":
                guard let n = try argument(args, kwargs, 0, "n").intValue, n <= 10_000_000 / max(1, l.count) else {
                    throw PythonException("TypeError", ["can't multiply sequence by that"])
                }
                let r = Array(repeating: l, count: max(0, n)).flatMap { $0 }
                if method == "__imul__" { l = r }
                return .list(r)
            case "__repr__", "__str__": return .string(PythonValue.list(l).pythonDescription)
            default: throw PythonException("AttributeError", [.string("list has no method \(method)")])
            }
        }
    }

    /// The indices a `slice(start, stop, step)` selects, as Python's `slice.indices`; nil if `v` is not a slice.
    static func slice(_ v: PythonValue, count n: Int) throws -> [Int]? {
        guard case .object(let o) = v, o.type.map({ $0 == ("builtins", "slice") }) == true, o.args.count == 3 else {
            return nil
        }
        func int(_ x: PythonValue) throws -> Int? {
            if case .none = x { return nil }
            guard let i = x.intValue else {
                throw PythonException("TypeError", ["slice indices must be integers or None"])
            }
            return i
        }
        let step = try int(o.args[2]) ?? 1
        guard step != 0 else { throw PythonException("ValueError", ["slice step cannot be zero"]) }
        func clamp(_ x: Int?, _ def: Int) -> Int {
            guard var x else { return def }
            if x < 0 { x += n }
            return step > 0 ? min(max(x, 0), n) : min(max(x, -1), n - 1)
        }
        let start = clamp(try int(o.args[0]), step > 0 ? 0 : n - 1)
        let stop = clamp(try int(o.args[1]), step > 0 ? n : -1)
        return Array(stride(from: start, to: stop, by: step))
    }

    /// Sorts ints, floats and strs as Python does (mixing a str with a number is a TypeError).
    static func sort(_ l: inout [PythonValue]) throws {
        if l.allSatisfy({ $0.doubleValue != nil }) {
            l.sort { $0.doubleValue! < $1.doubleValue! }
        } else if l.allSatisfy({ $0.stringValue != nil }) {
            l.sort { $0.stringValue!.unicodeScalars.lexicographicallyPrecedes($1.stringValue!.unicodeScalars) }
        } else {
            throw PythonException("TypeError", ["'<' not supported between these types"])
        }
    }
}

/// Python's `queue.Queue` (and `JoinableQueue`), served.
final class QueueObject: ServedInline, @unchecked Sendable {  // the queue is thread-safe
    let queue: BlockingQueue<PythonValue>
    let exposed: [String]

    /// (Python's `Queue` and `JoinableQueue` are one type here: both expose `join` and `task_done`, as
    /// CPython's `queue.Queue` does.)
    init(_ args: [PythonValue], _ kwargs: [PythonPair]) {
        let maxsize = (try? argument(args, kwargs, 0, "maxsize", 0))?.intValue ?? 0
        queue = BlockingQueue(maxsize: max(0, maxsize))
        exposed = ["empty", "full", "get", "get_nowait", "join", "put", "put_nowait", "qsize", "task_done"]
    }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        do {
            switch method {
            case "put":
                let block = try argument(args, kwargs, 1, "block", true) != .bool(false)
                let item = try argument(args, kwargs, 0, "item")
                let timeout = try timeoutArgument(try argument(args, kwargs, 2, "timeout", PythonValue.none))
                guard block else {
                    try queue.put(item, blocking: false)
                    return .none
                }
                let done: Bool? = try ServedCall.wait(timeout) { limit in
                    do {
                        try queue.put(item, blocking: true, timeout: limit)
                        return true
                    } catch let e as ThreadingError where e.code == .full {
                        return nil
                    }
                }
                if done == nil { throw PythonException.queueFull }
                return .none
            case "put_nowait":
                try queue.put(try argument(args, kwargs, 0, "item"), blocking: false)
                return .none
            case "get":
                let block = try argument(args, kwargs, 0, "block", true) != .bool(false)
                let timeout = try timeoutArgument(try argument(args, kwargs, 1, "timeout", PythonValue.none))
                guard block else { return try queue.get(blocking: false) }
                let item: PythonValue? = try ServedCall.wait(timeout) { limit in
                    do {
                        return try queue.get(blocking: true, timeout: limit)
                    } catch let e as ThreadingError where e.code == .empty {
                        return nil
                    }
                }
                guard let item else { throw PythonException.queueEmpty }
                return item
            case "get_nowait": return try queue.get(blocking: false)
            case "qsize": return .int(Int64(queue.count))
            case "empty": return .bool(queue.isEmpty)
            case "full": return .bool(queue.maxsize > 0 && queue.count >= queue.maxsize)
            case "task_done":
                try queue.taskDone()
                return .none
            case "join":
                _ = try ServedCall.wait(nil) { queue.join(timeout: $0) ? true : nil }
                return .none
            default: throw PythonException("AttributeError", [.string("Queue has no method \(method)")])
            }
        } catch let e as ThreadingError where e.code == .empty {
            throw PythonException.queueEmpty
        } catch let e as ThreadingError where e.code == .full {
            throw PythonException.queueFull
        } catch let e as ThreadingError {
            throw PythonException("ValueError", [.string(e.message)])
        }
    }
}

/// An iterator served on its own (Python's `IteratorProxy`): what a dict's `__iter__` returns. Iterates a
/// snapshot of the items taken when it was made.
final class IteratorObject: ServedInline, @unchecked Sendable {  // `rest` behind `lock`
    private let lock: TrackedMutex<ArraySlice<PythonValue>>
    let exposed = ["__next__", "send", "throw", "close"]

    init(_ source: PythonValue) {
        let items: [PythonValue] =
            switch source {
            case .list(let a), .tuple(let a), .set(let a), .frozenset(let a): a
            case .dict(let pairs): pairs.map(\.key)
            default: [source]
            }
        lock = TrackedMutex(items[...])
    }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        try lock.withLock { rest throws -> PythonValue in
            switch method {
            case "__next__", "send":
                guard let v = rest.popFirst() else { throw PythonException("StopIteration", []) }
                return v
            case "close":
                rest = []
                return .none
            case "throw":
                rest = []
                throw PythonException("RuntimeError", ["the iterator was thrown into"])
            default: throw PythonException("AttributeError", [.string(method)])
            }
        }
    }
}

/// Python's `multiprocessing.managers.Namespace`, served.
final class NamespaceObject: ServedInline, @unchecked Sendable {  // `attrs` behind `lock`
    private let lock = TrackedMutex<[PythonPair]>([])
    let exposed = ["__getattribute__", "__setattr__", "__delattr__"]

    init(_ kwargs: [PythonPair]) { lock.withLock { $0 = kwargs } }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        let name = try argument(args, kwargs, 0, "name")
        return try lock.withLock { a throws -> PythonValue in
            switch method {
            case "__getattribute__":
                guard let v = a.first(where: { $0.key == name })?.value else {
                    throw PythonException("AttributeError", [.string("'Namespace' object has no attribute \(name)")])
                }
                return v
            case "__setattr__":
                DictObject.set(&a, name, try argument(args, kwargs, 1, "value"))
                return .none
            case "__delattr__":
                guard let i = a.firstIndex(where: { $0.key == name }) else {
                    throw PythonException("AttributeError", [name])
                }
                a.remove(at: i)
                return .none
            default: throw PythonException("AttributeError", [.string(method)])
            }
        }
    }
}
