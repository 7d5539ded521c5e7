internal import CMultiprocessingShims
import Synchronization
import Threading

// Synchronisation objects a manager serves, as SyncManager's: Lock, RLock, Semaphore, BoundedSemaphore,
// Condition, Event, Barrier, Value and Array. Each client connection is served on a thread of its own,
// so "the caller" is that thread. Unlike CPython's server, ours remembers what each connection holds and
// releases it when the connection ends: a client that dies holding a proxied lock does not block the
// others for ever.

/// A served object that holds something for a caller and must let go when the caller's connection ends.
protocol ReleasesOnDisconnect: AnyObject {
    /// The connection served on the calling thread ended: release what it holds (called on that thread).
    func connectionEnded()
}

/// Python's `acquire(blocking=True, timeout=-1)` arguments.
private func acquireArguments(_ args: [PythonValue], _ kwargs: [PythonPair]) throws -> (Bool, Duration?) {
    let blocking = try argument(args, kwargs, 0, "blocking", true) != .bool(false)
    let t = try argument(args, kwargs, 1, "timeout", PythonValue.int(-1))
    if let d = t.doubleValue, d < 0 { return (blocking, nil) }
    return (blocking, try timeoutArgument(t))
}

/// Counts, per serving thread, what that thread's connection holds.
final class Holdings: Sendable {
    private let held = TrackedMutex<[UInt64: Int]>([:])

    func add(_ n: Int = 1) { held.withLock { $0[mp_pthread_self(), default: 0] += n } }
    func remove(_ n: Int = 1) {
        held.withLock { h in
            let me = mp_pthread_self()
            if let c = h[me] { h[me] = c - n > 0 ? c - n : nil }
        }
    }
    /// What the calling thread holds, forgotten.
    func takeMine() -> Int { held.withLock { $0.removeValue(forKey: mp_pthread_self()) ?? 0 } }
}

/// `threading.Lock` / `RLock` / `Semaphore` / `BoundedSemaphore`, served (Python's `AcquirerProxy`).
// The primitives are thread-safe; `kind` is immutable.
final class AcquirerObject: ManagedObject, ReleasesOnDisconnect, @unchecked Sendable {
    enum Kind {
        case lock(Lock)
        case rlock(RLock)
        case semaphore(Threading.Semaphore)
    }
    let kind: Kind
    let holdings = Holdings()
    let exposed = ["acquire", "release", "__enter__", "__exit__"]

    init(_ kind: Kind) { self.kind = kind }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        switch method {
        case "acquire", "__enter__":
            let (blocking, timeout) = method == "acquire" ? try acquireArguments(args, kwargs) : (true, nil)
            let ok: Bool
            switch kind {
            case .lock(let l):
                ok = try ServedCall.acquire(blocking: blocking, timeout: timeout) {
                    l.acquire(blocking: $0 != nil, timeout: $0)
                }
            case .rlock(let l):
                ok = try ServedCall.acquire(blocking: blocking, timeout: timeout) {
                    l.acquire(blocking: $0 != nil, timeout: $0)
                }
            case .semaphore(let s):
                ok = try ServedCall.acquire(blocking: blocking, timeout: timeout) {
                    s.acquire(blocking: $0 != nil, timeout: $0)
                }
            }
            if ok { holdings.add() }
            return .bool(ok)
        case "release", "__exit__":
            do {
                switch kind {
                case .lock(let l): try l.release()
                case .rlock(let l): try l.release()
                case .semaphore(let s): try s.release()
                }
            } catch {
                throw PythonException(
                    method == "release" && isSemaphore ? "ValueError" : "RuntimeError",
                    [.string("\(error)")]
                )
            }
            holdings.remove()
            return method == "__exit__" ? .bool(false) : .none
        default: throw PythonException("AttributeError", [.string(method)])
        }
    }

    private var isSemaphore: Bool { if case .semaphore = kind { true } else { false } }

    func connectionEnded() {
        for _ in 0..<holdings.takeMine() {
            switch kind {
            case .lock(let l): try? l.release()
            case .rlock(let l): try? l.release()
            case .semaphore(let s): try? s.release()
            }
        }
    }
}

/// `threading.Condition`, served (Python's `ConditionProxy`).
final class ConditionObject: ManagedObject, ReleasesOnDisconnect, @unchecked Sendable {  // thread-safe parts
    let lock = RLock()
    let condition: Threading.Condition
    let holdings = Holdings()
    let exposed = ["acquire", "release", "wait", "notify", "notify_all", "__enter__", "__exit__"]

    init() { condition = Threading.Condition(lock) }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        do {
            switch method {
            case "acquire", "__enter__":
                let (blocking, timeout) = method == "acquire" ? try acquireArguments(args, kwargs) : (true, nil)
                let ok = condition.acquire(blocking: blocking, timeout: timeout)
                if ok { holdings.add() }
                return .bool(ok)
            case "release", "__exit__":
                try condition.release()
                holdings.remove()
                return method == "__exit__" ? .bool(false) : .none
            case "wait":
                return .bool(
                    try condition.wait(
                        timeout: try timeoutArgument(try argument(args, kwargs, 0, "timeout", PythonValue.none))
                    )
                )
            case "notify":
                try condition.notify(try argument(args, kwargs, 0, "n", 1).intValue ?? 1)
                return .none
            case "notify_all":
                try condition.notifyAll()
                return .none
            default: throw PythonException("AttributeError", [.string(method)])
            }
        } catch let e as ThreadingError {
            throw PythonException("RuntimeError", [.string(e.message)])
        }
    }

    func connectionEnded() { for _ in 0..<holdings.takeMine() { try? condition.release() } }
}

/// `threading.Event`, served (Python's `EventProxy`).
final class EventObject: ManagedObject, @unchecked Sendable {  // Event is thread-safe
    let event = Threading.Event()
    let exposed = ["is_set", "set", "clear", "wait"]

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        switch method {
        case "is_set": return .bool(event.isSet)
        case "set":
            event.set()
            return .none
        case "clear":
            event.clear()
            return .none
        case "wait":
            let timeout = try timeoutArgument(try argument(args, kwargs, 0, "timeout", PythonValue.none))
            return .bool(try ServedCall.wait(timeout) { event.wait(timeout: $0) ? true : nil } ?? false)
        default: throw PythonException("AttributeError", [.string(method)])
        }
    }
}

/// `threading.Barrier`, served (Python's `BarrierProxy`).
final class BarrierObject: ManagedObject, @unchecked Sendable {  // Barrier is thread-safe
    let barrier: Threading.Barrier
    let exposed = ["__getattribute__", "wait", "abort", "reset"]

    init(_ args: [PythonValue], _ kwargs: [PythonPair]) throws {
        guard let parties = try argument(args, kwargs, 0, "parties").intValue, parties > 0 else {
            throw PythonException("ValueError", ["parties must be > 0"])
        }
        let t = try argument(args, kwargs, 2, "timeout", PythonValue.none)
        barrier = Threading.Barrier(parties: parties, timeout: try timeoutArgument(t))
    }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        switch method {
        case "wait":
            do {
                return .int(
                    Int64(
                        try barrier.wait(
                            timeout: try timeoutArgument(try argument(args, kwargs, 0, "timeout", PythonValue.none))
                        )
                    )
                )
            } catch {
                throw PythonException(module: "threading", "BrokenBarrierError")
            }
        case "abort":
            barrier.abort()
            return .none
        case "reset":
            barrier.reset()
            return .none
        case "__getattribute__":
            switch try argument(args, kwargs, 0, "name").stringValue ?? "" {
            case "broken": return .bool(barrier.isBroken)
            case "n_waiting": return .int(Int64(barrier.waitingCount))
            case "parties": return .int(Int64(barrier.parties))
            case let other: throw PythonException("AttributeError", [.string(other)])
            }
        default: throw PythonException("AttributeError", [.string(method)])
        }
    }
}

/// `managers.Value(typecode, value)`, served (Python's `ValueProxy`: `get`, `set`, and `.value`).
final class ValueObject: ManagedObject, @unchecked Sendable {  // `value` behind `lock`
    let typecode: PythonValue
    private let lock = TrackedMutex(PythonValue.none)
    let exposed = ["get", "set"]

    init(_ args: [PythonValue], _ kwargs: [PythonPair]) throws {
        typecode = try argument(args, kwargs, 0, "typecode")
        let v = try argument(args, kwargs, 1, "value")
        lock.withLock { $0 = v }
    }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        switch method {
        case "get": return lock.withLock { $0 }
        case "set":
            let v = try argument(args, kwargs, 0, "value")
            lock.withLock { $0 = v }
            return .none
        default: throw PythonException("AttributeError", [.string(method)])
        }
    }
}

/// `managers.Array(typecode, sequence)`, served (Python's `ArrayProxy`: `len`, indexing).
final class ArrayObject: ManagedObject, @unchecked Sendable {  // items behind `list`'s lock
    let list: ListObject
    let exposed = ["__len__", "__getitem__", "__setitem__"]

    init(_ args: [PythonValue], _ kwargs: [PythonPair]) throws {
        list = try ListObject([try argument(args, kwargs, 1, "sequence")])
    }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        try list.call(method, args, kwargs)
    }
}
