import Synchronization
import Threading

// Synchronisation objects a manager serves, as SyncManager's: Lock, RLock, Semaphore, BoundedSemaphore,
// Condition, Event, Barrier, Value and Array. "The caller" is the client connection a call serves
// (``ServedCall/connection``), not a thread: the server serves connections on one event loop and runs the
// calls that wait on a pool of threads. Unlike CPython's server, ours remembers what each connection
// holds and releases it when the connection ends: a client that dies holding a proxied lock does not
// block the others for ever.

/// A served object that holds something for a caller and must let go when the caller's connection ends.
protocol ReleasesOnDisconnect: AnyObject {
    /// The connection `id` ended: release what it holds.
    func connectionEnded(_ id: UInt64)
}

/// A built-in object whose every wait goes through ``ServedCall/wait(_:_:)``: the server runs its calls on
/// the event loop, and only a call that finds it must wait moves to a thread.
protocol ServedInline: ManagedObject {}

extension ServedInline {
    /// Never on its own account: a call that must wait says so by throwing ``ServedCall/WouldBlock``.
    func mayBlock(_ method: String) -> Bool { false }
}

/// Python's `acquire(blocking=True, timeout=-1)` arguments.
private func acquireArguments(_ args: [PythonValue], _ kwargs: [PythonPair]) throws -> (Bool, Duration?) {
    let blocking = try argument(args, kwargs, 0, "blocking", true) != .bool(false)
    let t = try argument(args, kwargs, 1, "timeout", PythonValue.int(-1))
    if let d = t.doubleValue, d < 0 { return (blocking, nil) }
    return (blocking, try timeoutArgument(t))
}

/// Counts, per connection, the permits it holds (a semaphore's).
final class Holdings: Sendable {
    private let held = TrackedMutex<[UInt64: Int]>([:])

    func add(_ n: Int = 1) { held.withLock { $0[ServedCall.connection, default: 0] += n } }
    /// A permit given back. By its holder, or — a semaphore used as a signal, one connection releasing
    /// what another acquired — on another holder's account, so that the counts never add up to more than
    /// the permits out (a disconnect must not give back permits nobody holds).
    func remove() {
        held.withLock { h in
            let me = ServedCall.connection
            guard let who = h[me] != nil ? me : h.keys.first, let c = h[who] else { return }
            h[who] = c > 1 ? c - 1 : nil
        }
    }
    /// What connection `id` holds, forgotten.
    func take(_ id: UInt64) -> Int { held.withLock { $0.removeValue(forKey: id) ?? 0 } }
}

/// `threading.Lock` / `RLock` / `Semaphore` / `BoundedSemaphore`, served (Python's `AcquirerProxy`).
// The primitives are thread-safe; `kind` is immutable.
final class AcquirerObject: ServedInline, ReleasesOnDisconnect, @unchecked Sendable {
    enum Kind {
        /// `Lock` (not reentrant) or `RLock` (reentrant), owned by a connection.
        case lock(ConnectionLock)
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
            switch kind {
            case .lock(let l):
                let me = ServedCall.connection
                return .bool(
                    try ServedCall.acquire(blocking: blocking, timeout: timeout) { l.acquire(me, limit: $0 ?? .zero) }
                )
            case .semaphore(let s):
                let ok = try ServedCall.acquire(blocking: blocking, timeout: timeout) {
                    s.acquire(blocking: $0 != nil, timeout: $0)
                }
                if ok { holdings.add() }
                return .bool(ok)
            }
        case "release", "__exit__":
            do {
                switch kind {
                case .lock(let l): try l.release(ServedCall.connection)
                case .semaphore(let s):
                    try s.release()
                    holdings.remove()
                }
            } catch {
                throw PythonException(
                    method == "release" && isSemaphore ? "ValueError" : "RuntimeError",
                    [.string("\(error)")]
                )
            }
            return method == "__exit__" ? .bool(false) : .none
        default: throw PythonException("AttributeError", [.string(method)])
        }
    }

    private var isSemaphore: Bool { if case .semaphore = kind { true } else { false } }

    func connectionEnded(_ id: UInt64) {
        switch kind {
        case .lock(let l): l.releaseAll(id)
        case .semaphore(let s): for _ in 0..<holdings.take(id) { try? s.release() }
        }
    }
}

/// `threading.Condition`, served (Python's `ConditionProxy`), over an `RLock` owned by a connection.
final class ConditionObject: ServedInline, ReleasesOnDisconnect, @unchecked Sendable {  // the lock is thread-safe
    let lock = ConnectionLock(reentrant: true)
    let exposed = ["acquire", "release", "wait", "notify", "notify_all", "__enter__", "__exit__"]

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        let me = ServedCall.connection
        do {
            switch method {
            case "acquire", "__enter__":
                let (blocking, timeout) = method == "acquire" ? try acquireArguments(args, kwargs) : (true, nil)
                return .bool(
                    try ServedCall.acquire(blocking: blocking, timeout: timeout) {
                        lock.acquire(me, limit: $0 ?? .zero)
                    }
                )
            case "release", "__exit__":
                try lock.release(me)
                return method == "__exit__" ? .bool(false) : .none
            case "wait":
                let timeout = try timeoutArgument(try argument(args, kwargs, 0, "timeout", PythonValue.none))
                return .bool(try wait(me, timeout))
            case "notify":
                try lock.notify(me, try argument(args, kwargs, 0, "n", 1).intValue ?? 1)
                return .none
            case "notify_all":
                try lock.notify(me, Int.max)
                return .none
            default: throw PythonException("AttributeError", [.string(method)])
            }
        } catch let e as ThreadingError {
            throw PythonException("RuntimeError", [.string(e.message)])
        }
    }

    /// Python's `Condition.wait(timeout)`: frees the lock, waits to be notified, takes the lock back.
    /// Never on the event loop: a wait is a wait (the server moves it to a thread before it starts).
    private func wait(_ me: UInt64, _ timeout: Duration?) throws -> Bool {
        guard lock.isOwned(by: me) else { throw ThreadingError(.notOwner, "cannot wait on un-acquired lock") }
        // On the loop: ask for a thread before touching anything.
        if ServedCall.onLoop { throw ServedCall.WouldBlock() }
        let (waiter, depth) = try lock.beginWait(me)
        var notified = false
        do {
            notified = try ServedCall.wait(timeout) { lock.awaitNotify(waiter, limit: $0) ? true : nil } ?? false
        } catch {
            _ = lock.abandonWait(waiter)
            throw error  // abandoned: the connection ends, and holds nothing now
        }
        if !notified { notified = lock.abandonWait(waiter) }
        // Python takes the lock back however long that takes; a client gone meanwhile gives up here.
        _ = try ServedCall.wait(nil) { lock.restore(me, depth: depth, limit: $0) ? true : nil }
        return notified
    }

    func connectionEnded(_ id: UInt64) { lock.releaseAll(id) }
}

/// `threading.Event`, served (Python's `EventProxy`).
final class EventObject: ServedInline, @unchecked Sendable {  // Event is thread-safe
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
final class ValueObject: ServedInline, @unchecked Sendable {  // `value` behind `lock`
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
final class ArrayObject: ServedInline, @unchecked Sendable {  // items behind `list`'s lock
    let list: ListObject
    let exposed = ["__len__", "__getitem__", "__setitem__"]

    init(_ args: [PythonValue], _ kwargs: [PythonPair]) throws {
        list = try ListObject([try argument(args, kwargs, 1, "sequence")])
    }

    func call(_ method: String, _ args: [PythonValue], _ kwargs: [PythonPair]) throws -> PythonValue {
        try list.call(method, args, kwargs)
    }
}
