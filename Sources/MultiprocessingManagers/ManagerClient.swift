import Glibc
import Multiprocessing
public import MultiprocessingNetwork
import Synchronization
import Threading

/// A failure reported by a manager server that is not a Python exception of the call (`#TRACEBACK`,
/// `#UNSERIALIZABLE`, or an answer that does not follow the protocol).
public struct ManagerError: Error, CustomStringConvertible, Sendable {
    /// What went wrong: the server's traceback text, or what the client found wrong (an answer outside the
    /// protocol, a method the object does not expose).
    public let message: String
    /// The message, after `manager: `.
    public var description: String { "manager: \(message)" }
    init(_ message: String) { self.message = message }
}

/// Talks to a manager server — ours or CPython's `BaseManager`/`SyncManager` — the client side of Python's
/// `BaseManager.connect()`: creates shared objects by typeid and returns ``Proxy``s to them.
public final class ManagerClient: Sendable {
    /// Where the server listens.
    public let address: Address
    let authkey: [UInt8]
    /// The longest any one request may take (a blocking `get` passes its own, longer, limit).
    public let timeout: Duration
    /// How the client's TCP connections notice a server that vanished.
    public let keepAlive: KeepAlive?
    let channels: ChannelPool
    /// The connection kept open for one-shot requests (our servers only; see `init`).
    private let control = TrackedMutex<Connection?>(nil)

    /// Connects to the server at `address` and checks that it answers (Python's `connect()`).
    ///
    /// - Parameters:
    ///   - address: the server's address.
    ///   - authkey: the server's key.
    ///   - timeout: for connecting, and the default for calls.
    ///   - keepAlive: how the client's TCP connections notice a server that vanished (a call blocked on a
    ///     dead machine fails within `KeepAlive.bound`).
    public init(
        address: Address,
        authkey: [UInt8],
        timeout: Duration = .seconds(30),
        keepAlive: KeepAlive? = .standard
    ) throws {
        self.address = address
        self.authkey = authkey
        self.timeout = timeout
        self.keepAlive = keepAlive
        channels = ChannelPool(address: address, authkey: authkey, keepAlive: keepAlive)
        let c = try connect(to: address, authkey: authkey, timeout: timeout, keepAlive: keepAlive)
        do {
            let r = try Proxy.exchange(c, .tuple([.none, "dummy", .tuple([]), .dict([])]), timeout: timeout)
            // Our server answers `dummy` (whose answer CPython's `connect()` ignores) with a marker: it
            // serves further requests on this connection, which then carries `create`, `incref`, `decref`
            // without a new connection and handshake each. A CPython server answers None and closes.
            if r == .string(ManagerServer.keepOpenMarker) { control.withLock { $0 = c } } else { c.close() }
        } catch {
            c.close()
            throw error
        }
    }

    deinit { control.withLock { $0 }?.close() }

    /// A one-shot request — on the kept-open connection when the server is ours and it is free,
    /// otherwise on a connection of its own, as CPython's client makes them.
    func oneShot(
        _ method: String,
        _ args: [PythonValue],
        _ kwargs: [PythonPair] = [],
        timeout: Duration? = nil
    ) throws -> PythonValue {
        let timeout = timeout ?? self.timeout
        let request = PythonValue.tuple([.none, .string(method), .tuple(args), .dict(kwargs)])
        if let c = control.withLock({ $0.take() }) {
            // Readable while idle means the server closed it (it shut down or restarted): drop it.
            if (try? c.poll(timeout: .zero)) == false {
                // After an answer (a Python exception is one too) the connection is kept for the next.
                func keep() { control.withLock { kept in if kept == nil { kept = c } else { c.close() } } }
                do {
                    let r = try Proxy.exchange(c, request, timeout: timeout)
                    keep()
                    return r
                } catch let e as PythonException {
                    keep()
                    throw e
                } catch {
                    c.close()
                    throw error
                }
            }
            c.close()
        }
        let c = try connect(to: address, authkey: authkey, timeout: timeout, keepAlive: keepAlive)
        defer { c.close() }
        return try Proxy.exchange(c, request, timeout: timeout)
    }

    /// Creates an object of `typeid` on the server (Python's `manager.dict()`, `manager.Queue()`,
    /// `manager.get_task_queue()` …) and returns a proxy to it.
    public func create(_ typeid: String, _ args: [PythonValue] = [], _ kwargs: [PythonPair] = []) throws -> Proxy {
        let r = try oneShot("create", [.string(typeid)] + args, kwargs)
        guard let parts = r.items, parts.count == 2, let ident = parts[0].stringValue, let exposed = parts[1].items
        else { throw ManagerError("create answered \(r.pythonDescription)") }
        // The proxy takes its own reference, then the one `create` made is released (as CPython's client).
        let proxy = try Proxy(
            typeid: typeid,
            ident: ident,
            exposed: exposed.compactMap(\.stringValue),
            client: self,
            incref: true
        )
        _ = try? oneShot("decref", [.string(ident)])
        return proxy
    }

    /// Objects alive on the server.
    public func objectCount() throws -> Int {
        guard let n = try oneShot("number_of_objects", []).intValue else { throw ManagerError("bad count") }
        return n
    }

    /// Asks the server to shut down (Python's `manager.shutdown()`).
    public func shutdown() throws { _ = try oneShot("shutdown", []) }

    // Convenience creators for SyncManager's typeids.

    /// A shared dict (Python's `manager.dict()`).
    public func dict(_ items: [PythonPair] = []) throws -> DictProxy { DictProxy(try create("dict", [.dict(items)])) }
    /// A shared list (Python's `manager.list(…)`).
    public func list(_ items: [PythonValue] = []) throws -> ListProxy { ListProxy(try create("list", [.list(items)])) }
    /// A shared FIFO queue (Python's `manager.Queue(maxsize)`).
    public func queue(maxsize: Int = 0) throws -> QueueProxy { QueueProxy(try create("Queue", [.int(Int64(maxsize))])) }
    /// A new served queue of `Element`s: `try client.queue(of: Int.self)`.
    public func queue<Element: Codable>(of type: Element.Type, maxsize: Int = 0) throws -> TypedQueueProxy<Element> {
        TypedQueueProxy(try queue(maxsize: maxsize))
    }
    /// A shared namespace (Python's `manager.Namespace()`).
    public func namespace() throws -> NamespaceProxy { NamespaceProxy(try create("Namespace")) }
}

/// Long-lived method channels (`accept_connection`) to one server, reused across calls and proxies: a
/// call takes an idle one or opens one, so concurrent calls (a blocking `get` among them) never wait for
/// each other.
final class ChannelPool: Sendable {
    let address: Address
    let authkey: [UInt8]
    let keepAlive: KeepAlive?
    private let idle = TrackedMutex<[Connection]>([])
    /// The name our channels give in `accept_connection` (CPython's client gives its thread's name).
    static let clientName = "SwiftClient"

    init(address: Address, authkey: [UInt8], keepAlive: KeepAlive?) {
        self.address = address
        self.authkey = authkey
        self.keepAlive = keepAlive
    }

    deinit { for c in idle.withLock({ $0 }) { c.close() } }

    func take(timeout: Duration) throws -> Connection {
        if let c = idle.withLock({ $0.popLast() }) { return c }
        let c = try connect(to: address, authkey: authkey, timeout: timeout, keepAlive: keepAlive)
        do {
            let r = try Proxy.exchange(
                c,
                .tuple([.none, "accept_connection", .tuple([.string(Self.clientName)]), .dict([])]),
                timeout: timeout
            )
            guard r == .none else { throw ManagerError("accept_connection answered \(r.pythonDescription)") }
        } catch {
            c.close()
            throw error
        }
        return c
    }

    func giveBack(_ c: Connection) {
        let keep = idle.withLock { list -> Bool in
            guard list.count < 8 else { return false }
            list.append(c)
            return true
        }
        if !keep { c.close() }
    }
}

/// A handle on an object a manager serves — Python's `BaseProxy`. Calls go to the server; the object
/// lives as long as some proxy to it does (the server counts references: creating, decoding or copying a
/// proxy adds one, its end removes one).
///
/// A proxy is `Codable`: send it inside a job to a `ChildProcess` or a pool task, and the receiver
/// calls the same object. It carries the server's address and authkey (the job travels on a private
/// channel to a process of this program; do not write it anywhere else).
public final class Proxy: Codable, @unchecked Sendable {  // immutable after init
    /// The typeid the object was created as on the server (`"dict"`, `"Queue"`, or a name registered with
    /// ``ManagerServer/register(_:_:)``).
    public let typeid: String
    /// The object's id on the server.
    public let ident: String
    /// The methods it may call.
    public let exposed: [String]
    let client: ManagerClient

    init(typeid: String, ident: String, exposed: [String], client: ManagerClient, incref: Bool) throws {
        self.typeid = typeid
        self.ident = ident
        self.exposed = exposed
        self.client = client
        if incref { _ = try client.oneShot("incref", [.string(ident)]) }
    }

    deinit {
        // Release the reference; a server already gone is no error (as CPython's finalizer). Dropped
        // inside a task, the request goes from a thread of its own: a slow server must not hold a thread
        // of the cooperative pool. Elsewhere it is made at once, so the count is exact when this returns.
        let (client, ident) = (self.client, self.ident)
        // Bounded: a server that cannot be reached (its machine is gone) must not hold the program's exit,
        // which waits for this thread, for the client's whole timeout.
        let release: @Sendable () -> Void = {
            _ = try? client.oneShot("decref", [.string(ident)], timeout: min(client.timeout, Proxy.releaseTimeout))
        }
        if withUnsafeCurrentTask(body: { $0 != nil }) {
            let t = OSThread(name: "mp-proxy-release", daemon: false, release)
            if (try? t.start()) == nil { release() }
        } else {
            release()
        }
    }

    /// The longest a dropped proxy tries to release its reference.
    static let releaseTimeout = Duration.seconds(2)

    private enum Key: String, CodingKey { case typeid, ident, exposed, host, port, path, authkey }

    /// Encodes the proxy for another process: its typeid, ident and exposed methods, and the server's address
    /// and authkey, with which the receiver connects (send it only to processes you trust).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(typeid, forKey: .typeid)
        try c.encode(ident, forKey: .ident)
        try c.encode(exposed, forKey: .exposed)
        switch client.address {
        case .tcp(let host, let port):
            try c.encode(host, forKey: .host)
            try c.encode(port, forKey: .port)
        case .unix(let path): try c.encode(path, forKey: .path)
        }
        try c.encode(client.authkey, forKey: .authkey)
    }

    /// Connects to the proxy's server from this process and takes a reference of its own.
    public convenience init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let address: Address =
            if let path = try c.decodeIfPresent(String.self, forKey: .path) {
                .unix(path: path)
            } else {
                .tcp(host: try c.decode(String.self, forKey: .host), port: try c.decode(UInt16.self, forKey: .port))
            }
        let client = try ManagerClient(address: address, authkey: try c.decode([UInt8].self, forKey: .authkey))
        try self.init(
            typeid: try c.decode(String.self, forKey: .typeid),
            ident: try c.decode(String.self, forKey: .ident),
            exposed: try c.decode([String].self, forKey: .exposed),
            client: client,
            incref: true
        )
    }

    /// Calls `method` on the object — Python's `proxy._callmethod(name, args, kwds)`.
    ///
    /// - Parameters:
    ///   - method: the method's name.
    ///   - args: positional arguments.
    ///   - kwargs: keyword arguments.
    ///   - timeout: the longest wait for the answer (default: the client's); a call that blocks on the
    ///     server (a queue's `get`) needs at least its own timeout.
    /// - Throws: ``PythonException`` raised by the object; ``ManagerError`` for a server failure;
    ///   a connection error (the server is gone) at once, never a hang.
    public func call(
        _ method: String,
        _ args: [PythonValue] = [],
        _ kwargs: [PythonPair] = [],
        timeout: Duration? = nil
    ) throws -> PythonValue {
        do {
            return try callRaw(method, args, kwargs, timeout: timeout)
        } catch let p as ProxyReturned {
            _ = try? client.oneShot("decref", [.string(p.ident)])  // the server's reference: nobody takes it
            throw ManagerError("\(method) returns a proxy (a \(p.typeid)); call it with callProxy")
        }
    }

    /// Calls a method whose result the server serves as a new object — Python's `method_to_typeid`
    /// (`#PROXY` replies), such as a dict's `__iter__` — and returns a proxy to it.
    public func callProxy(
        _ method: String,
        _ args: [PythonValue] = [],
        _ kwargs: [PythonPair] = [],
        timeout: Duration? = nil
    ) throws -> Proxy {
        do {
            let r = try callRaw(method, args, kwargs, timeout: timeout)
            throw ManagerError("\(method) returned a value, not a proxy: \(r.pythonDescription)")
        } catch let p as ProxyReturned {
            // As CPython's client: the proxy takes its own reference, then the server's is released.
            let proxy = try Proxy(typeid: p.typeid, ident: p.ident, exposed: p.exposed, client: client, incref: true)
            _ = try? client.oneShot("decref", [.string(p.ident)])
            return proxy
        }
    }

    private func callRaw(
        _ method: String,
        _ args: [PythonValue],
        _ kwargs: [PythonPair],
        timeout: Duration?
    ) throws -> PythonValue {
        guard exposed.contains(method) else {
            throw ManagerError("method \(method) is not exposed by \(typeid) (\(exposed.joined(separator: ", ")))")
        }
        let limit = timeout ?? client.timeout
        let c = try client.channels.take(timeout: limit)
        do {
            let r = try Self.exchange(
                c,
                .tuple([.string(ident), .string(method), .tuple(args), .dict(kwargs)]),
                timeout: limit
            )
            client.channels.giveBack(c)
            return r
        } catch  where error is PythonException || error is ProxyReturned {
            client.channels.giveBack(c)  // a clean answer (an exception, or a proxy): the channel is fine
            throw error
        } catch {
            c.close()
            throw error
        }
    }

    /// The async twin of ``call(_:_:_:timeout:)``: the exchange runs on the library's waiting threads
    /// (never on a thread of the cooperative pool). Cancelling the task drops a call that has not started;
    /// one already sent runs to its answer, within its timeout.
    public func call(
        _ method: String,
        _ args: [PythonValue] = [],
        _ kwargs: [PythonPair] = [],
        timeout: Duration? = nil
    ) async throws -> PythonValue {
        try await AsyncBridge.offload { [self] in try call(method, args, kwargs, timeout: timeout) }
    }

    /// Sends one request and reads its reply: the value of `#RETURN`, or the error.
    static func exchange(_ c: Connection, _ request: PythonValue, timeout: Duration) throws -> PythonValue {
        try c.sendBytes(try PickleWriter().write(request), timeout: timeout)
        return try reply(try PickleReader().read(try c.recvBytes(timeout: timeout))).get()
    }

    /// A reply's value, or the error it carries (a ``PythonException``, a ``ManagerError``).
    static func reply(_ reply: PythonValue) -> Result<PythonValue, any Error> {
        guard let parts = reply.items, parts.count == 2, case .string(let kind) = parts[0] else {
            return .failure(ManagerError("a reply that is not (kind, value): \(reply.pythonDescription)"))
        }
        switch kind {
        case "#RETURN": return .success(parts[1])
        case "#ERROR":
            if case .object(let o) = parts[1], let (module, name) = o.type {
                return .failure(
                    PythonException(module: module == "queue" && name == "Empty" ? "_queue" : module, name, o.args)
                )
            }
            return .failure(ManagerError("error \(parts[1].pythonDescription)"))
        case "#TRACEBACK", "#UNSERIALIZABLE": return .failure(ManagerError(parts[1].stringValue ?? "\(parts[1])"))
        case "#PROXY":
            // (exposed, Token): the token's state is (typeid, address, id).
            guard let parts = parts[1].items, parts.count == 2, let exposed = parts[0].items,
                case .object(let token) = parts[1], let fields = token.state?.items, fields.count == 3,
                let typeid = fields[0].stringValue, let ident = fields[2].stringValue
            else {
                return .failure(
                    ManagerError("a #PROXY reply that is not (exposed, Token): \(parts[1].pythonDescription)")
                )
            }
            return .failure(ProxyReturned(typeid: typeid, ident: ident, exposed: exposed.compactMap(\.stringValue)))
        default: return .failure(ManagerError("unknown reply kind \(kind)"))
        }
    }

    /// Pipelines calls on one channel: the requests go out in one write, then the replies are read in
    /// order. The server handles them one after another, exactly as if they were made one by one (CPython's
    /// server too: it reads the next request after answering the last), but the round trips — and with
    /// them most system calls and wake-ups — are shared. Each result is its call's value or error; when
    /// the connection fails, the calls answered before keep their results and the others carry the
    /// connection's error.
    ///
    /// At most 64 requests are in flight at a time, so neither side's socket buffer can fill while the
    /// other waits for it.
    static func pipeline(
        _ calls: [(proxy: Proxy, method: String, args: [PythonValue])],
        timeout: Duration
    ) throws -> [Result<PythonValue, any Error>] {
        guard let first = calls.first?.proxy else { return [] }
        for call in calls {
            guard call.proxy.exposed.contains(call.method) else {
                throw ManagerError("method \(call.method) is not exposed by \(call.proxy.typeid)")
            }
            guard call.proxy.client === first.client else {
                throw ManagerError("pipelined calls must go to proxies of one client")
            }
        }
        let c = try first.client.channels.take(timeout: timeout)
        var results: [Result<PythonValue, any Error>] = []
        results.reserveCapacity(calls.count)
        do {
            var start = 0
            while start < calls.count {
                let window = calls[start..<min(calls.count, start + 64)]
                let frames = try window.map { call in
                    try PickleWriter().write(
                        .tuple([.string(call.proxy.ident), .string(call.method), .tuple(call.args), .dict([])])
                    )
                }
                try c.sendMessages(frames, timeout: timeout)
                for _ in window { results.append(reply(try PickleReader().read(try c.recvBytes(timeout: timeout)))) }
                start += window.count
            }
        } catch {
            // The connection failed: the calls answered so far keep their results, the rest fail with it
            // (they may or may not have run).
            c.close()
            while results.count < calls.count { results.append(.failure(error)) }
            return results
        }
        first.client.channels.giveBack(c)
        return results
    }
}

/// A proxy to a served iterator — Python's `IteratorProxy` (what iterating a dict proxy gives).
public struct IteratorProxy: Codable, Sendable {
    /// The untyped proxy, for calls this type does not wrap.
    public let proxy: Proxy
    /// Wraps `proxy`, a proxy to a served iterator (what ``Proxy/callProxy(_:_:_:timeout:)`` returns for a
    /// dict's `__iter__`).
    public init(_ proxy: Proxy) { self.proxy = proxy }
    /// Decodes a proxy another process sent: connects to its server and takes a reference of its own (see
    /// ``Proxy/init(from:)``); throws when the server cannot be reached.
    public init(from decoder: any Decoder) throws { proxy = try Proxy(from: decoder) }
    /// Encodes the proxy, with its server's address and authkey, to send to another process.
    public func encode(to encoder: any Encoder) throws { try proxy.encode(to: encoder) }

    /// The next item (`next(it)`), or nil when the iterator is exhausted (`StopIteration`).
    public func next() throws -> PythonValue? {
        do {
            return try proxy.call("__next__")
        } catch let e as PythonException where e.name == "StopIteration" {
            return nil
        }
    }
}

/// A proxy to a served dict — Python's `DictProxy`.
public struct DictProxy: Codable, Sendable {
    /// The untyped proxy, for calls this type does not wrap (`d.items()`, `d.pop(k)`, …).
    public let proxy: Proxy
    /// Wraps `proxy`, a proxy to a served dict (``ManagerClient/create(_:_:_:)`` of a `dict` typeid).
    public init(_ proxy: Proxy) { self.proxy = proxy }

    /// `iter(d)`: a served iterator over the keys (one call per key, as in Python; ``keys()`` fetches
    /// them all in one).
    public func makeIterator() throws -> IteratorProxy { IteratorProxy(try proxy.callProxy("__iter__")) }
    /// `d.keys()`: every key, in one call.
    public func keys() throws -> [PythonValue] { try proxy.call("keys").items ?? [] }
    /// Decodes a proxy another process sent: connects to its server and takes a reference of its own (see
    /// ``Proxy/init(from:)``); throws when the server cannot be reached.
    public init(from decoder: any Decoder) throws { proxy = try Proxy(from: decoder) }
    /// Encodes the proxy, with its server's address and authkey, to send to another process.
    public func encode(to encoder: any Encoder) throws { try proxy.encode(to: encoder) }

    /// `d[key]`; throws `KeyError` when absent.
    public func get(_ key: PythonValue) throws -> PythonValue { try proxy.call("__getitem__", [key]) }
    /// `d[key]` as a Swift value: `let n: Int = try d.get("k")`. Keys and values are any `Codable` (a
    /// struct travels as a dict of its properties, an array as a list, `[UInt8]` as bytes).
    public func get<V: Decodable>(_ key: some Encodable, as type: V.Type = V.self) throws -> V {
        try PythonValueDecoder().decode(V.self, from: try get(try PythonValueEncoder().encode(key)))
    }
    /// `d[key]`, read: `try d["k"]`. (Swift has no throwing setter: write with ``set(_:_:)-(PythonValue,PythonValue)``.)
    public subscript(key: PythonValue) -> PythonValue { get throws { try get(key) } }
    /// `d[key] = value`.
    public func set(_ key: PythonValue, _ value: PythonValue) throws {
        _ = try proxy.call("__setitem__", [key, value])
    }
    /// `d[key] = value` for Swift values: `try d.set("p\(id)", id * 100)`.
    public func set(_ key: some Encodable, _ value: some Encodable) throws {
        try set(try PythonValueEncoder().encode(key), try PythonValueEncoder().encode(value))
    }
    /// `del d[key]`.
    public func remove(_ key: PythonValue) throws { _ = try proxy.call("__delitem__", [key]) }
    /// `len(d)`: `try d.count`.
    public var count: Int { get throws { try proxy.call("__len__").intValue ?? 0 } }
    /// `d.copy()`: the whole dict, as a value.
    public func copy() throws -> PythonValue { try proxy.call("copy") }
    /// `d.copy()` as a Swift dictionary: `let all: [String: Int] = try d.copy()`.
    public func copy<K: Decodable & Hashable, V: Decodable>(as type: [K: V].Type = [K: V].self) throws -> [K: V] {
        try PythonValueDecoder().decode([K: V].self, from: try copy())
    }
}

/// A proxy to a served list — Python's `ListProxy`.
public struct ListProxy: Codable, Sendable {
    /// The untyped proxy, for calls this type does not wrap (`l.extend(…)`, `l.pop()`, …).
    public let proxy: Proxy
    /// Wraps `proxy`, a proxy to a served list (``ManagerClient/create(_:_:_:)`` of a `list` typeid).
    public init(_ proxy: Proxy) { self.proxy = proxy }
    /// Decodes a proxy another process sent: connects to its server and takes a reference of its own (see
    /// ``Proxy/init(from:)``); throws when the server cannot be reached.
    public init(from decoder: any Decoder) throws { proxy = try Proxy(from: decoder) }
    /// Encodes the proxy, with its server's address and authkey, to send to another process.
    public func encode(to encoder: any Encoder) throws { try proxy.encode(to: encoder) }

    /// `l[i]`.
    public func get(_ i: Int) throws -> PythonValue { try proxy.call("__getitem__", [.int(Int64(i))]) }
    /// `l[i]` as a Swift value: `let x: Double = try l.get(0)`.
    public func get<V: Decodable>(_ i: Int, as type: V.Type = V.self) throws -> V {
        try PythonValueDecoder().decode(V.self, from: try get(i))
    }
    /// `l[i]`, read: `try l[0]`.
    public subscript(i: Int) -> PythonValue { get throws { try get(i) } }
    /// `l[i] = v`.
    public func set(_ i: Int, _ v: PythonValue) throws { _ = try proxy.call("__setitem__", [.int(Int64(i)), v]) }
    /// `l[i] = v` for a Swift value.
    public func set(_ i: Int, _ v: some Encodable) throws { try set(i, try PythonValueEncoder().encode(v)) }
    /// `l.append(v)`.
    public func append(_ v: PythonValue) throws { _ = try proxy.call("append", [v]) }
    /// `l.append(v)` for a Swift value.
    public func append(_ v: some Encodable) throws { try append(try PythonValueEncoder().encode(v)) }
    /// `l.reverse()`.
    public func reverse() throws { _ = try proxy.call("reverse") }
    /// `len(l)`: `try l.count`.
    public var count: Int { get throws { try proxy.call("__len__").intValue ?? 0 } }
    /// The whole list, as a value (Python's `l[:]`).
    public func copy() throws -> PythonValue {
        try proxy.call(
            "__getitem__",
            [.object(PythonObject(callable: .global(module: "builtins", name: "slice"), args: [.none, .none, .none]))]
        )
    }
}

/// A `#PROXY` reply: the result is served as a new object (with one reference held for us).
struct ProxyReturned: Error {
    let typeid: String
    let ident: String
    let exposed: [String]
}

/// The first call of a pipelined pair failed; the second may have taken an item, which travels here.
public struct PipelineError: Error, CustomStringConvertible, Sendable {
    /// Why the `put` failed: a ``PythonException`` the queue raised (``PythonException/queueFull``), a
    /// ``ManagerError``, or a connection error.
    public let error: any Error
    /// What the second call returned, if it succeeded.
    public let taken: PythonValue?
    /// Everything the gets behind the failed put took (``QueueProxy/put(contentsOf:thenGetUpTo:from:timeout:)``).
    public let takenAll: [PythonValue]
    /// The `put`'s error, and the item the next call took, if it took one.
    public var description: String { "\(error)" + (taken.map { " (the next call took \($0))" } ?? "") }
    /// A failed pipelined call and what the calls behind it took.
    ///
    /// - Parameters:
    ///   - error: why the `put` failed.
    ///   - taken: what the second call returned, if it succeeded.
    ///   - takenAll: everything the calls behind the failed one took; default: `taken`, if any.
    public init(error: any Error, taken: PythonValue?, takenAll: [PythonValue]? = nil) {
        self.error = error
        self.taken = taken
        self.takenAll = takenAll ?? (taken.map { [$0] } ?? [])
    }
}

/// A proxy to a served queue — Python's proxy of `queue.Queue`.
public struct QueueProxy: Codable, Sendable {
    /// The untyped proxy, for calls this type does not wrap (`q.empty()`, `q.task_done()`, …).
    public let proxy: Proxy
    /// Wraps `proxy`, a proxy to a served queue (``ManagerClient/create(_:_:_:)`` of a `Queue` typeid, or
    /// one a master registered, such as `get_task_queue`).
    public init(_ proxy: Proxy) { self.proxy = proxy }
    /// Decodes a proxy another process sent: connects to its server and takes a reference of its own (see
    /// ``Proxy/init(from:)``); throws when the server cannot be reached.
    public init(from decoder: any Decoder) throws { proxy = try Proxy(from: decoder) }
    /// Encodes the proxy, with its server's address and authkey, to send to another process.
    public func encode(to encoder: any Encoder) throws { try proxy.encode(to: encoder) }

    /// `q.put(item)`.
    public func put(_ item: PythonValue) throws { _ = try proxy.call("put", [item]) }
    /// `q.get(timeout=…)`: throws ``PythonException/queueEmpty`` when nothing came within `timeout`.
    public func get(timeout: Duration? = nil) throws -> PythonValue {
        try proxy.call("get", Self.getArguments(timeout), timeout: Self.replyLimit(timeout))
    }

    /// `q.put(item)` for each item, in order — the same requests as a loop of ``put(_:)-(PythonValue)`` (a Python
    /// server serves them), pipelined: up to 64 per round trip. Throws the first failure after every
    /// request was answered (the items before it, and the ones after it that succeeded, are in the queue).
    public func put(contentsOf items: some Sequence<PythonValue>, timeout: Duration? = nil) throws {
        let results = try Proxy.pipeline(items.map { (proxy, "put", [$0]) }, timeout: timeout ?? proxy.client.timeout)
        for case .failure(let e) in results { throw e }
    }

    /// Takes up to `maximum` items in one round trip: waits up to `timeout` for the first, as
    /// ``get(timeout:)``, then takes what is there at once (`get_nowait` requests pipelined behind it;
    /// a Python server serves them). Returns 1 to `maximum` items, in queue order; throws
    /// ``PythonException/queueEmpty`` only when none came.
    public func get(upTo maximum: Int, timeout: Duration? = nil) throws -> [PythonValue] {
        var calls = [(proxy: proxy, method: "get", args: Self.getArguments(timeout))]
        for _ in 1..<max(1, maximum) { calls.append((proxy, "get_nowait", [])) }
        var items: [PythonValue] = []
        var firstError: (any Error)?
        for r in try Proxy.pipeline(calls, timeout: Self.replyLimit(timeout)) {
            switch r {
            case .success(let v): items.append(v)
            case .failure(let e): if firstError == nil { firstError = e }
            }
        }
        if items.isEmpty, let firstError { throw firstError }
        return items
    }

    /// Puts `item` in this queue, then takes the next item from `next` (waiting up to `timeout`), in one
    /// round trip: a worker's "answer, then take the next task". The server runs the `put` first, as two
    /// calls would. Both proxies must come from one client.
    /// - Throws: ``PipelineError`` when the `put` failed (carrying the item the `get` took, if any, so
    ///   nothing is lost); otherwise the `put` is done and the error is the `get`'s
    ///   (``PythonException/queueEmpty`` on a time-out, a connection error).
    public func put(_ item: PythonValue, thenGetFrom next: QueueProxy, timeout: Duration? = nil) throws -> PythonValue {
        let r = try Proxy.pipeline(
            [(proxy, "put", [item]), (next.proxy, "get", Self.getArguments(timeout))],
            timeout: Self.replyLimit(timeout)
        )
        if case .failure(let e) = r[0] { throw PipelineError(error: e, taken: try? r[1].get()) }
        return try r[1].get()
    }

    /// Puts `items` in this queue, then takes up to `maximum` items from `next`, all in one round trip: a
    /// worker's "answer what I hold, then take my next batch" (prefetch). The server runs the puts first,
    /// in order, then a `get` that waits up to `timeout` and `get_nowait`s behind it, as separate calls
    /// would (a Python server serves it). Returns 1 to `maximum` items.
    /// - Throws: ``PipelineError`` when a `put` failed (carrying what the gets took, so nothing taken is
    ///   lost; the puts before it are done); otherwise every put is done and the error is the first
    ///   get's (``PythonException/queueEmpty`` when none came in time, a connection error).
    public func put(
        contentsOf items: [PythonValue],
        thenGetUpTo maximum: Int,
        from next: QueueProxy,
        timeout: Duration? = nil
    ) throws -> [PythonValue] {
        var calls = items.map { (proxy: proxy, method: "put", args: [$0]) }
        calls.append((next.proxy, "get", Self.getArguments(timeout)))
        for _ in 1..<max(1, maximum) { calls.append((next.proxy, "get_nowait", [])) }
        let r = try Proxy.pipeline(calls, timeout: Self.replyLimit(timeout))
        let taken = r[items.count...].compactMap { try? $0.get() }
        for case .failure(let e) in r[..<items.count] {
            throw PipelineError(error: e, taken: taken.first, takenAll: taken)
        }
        if taken.isEmpty, case .failure(let e) = r[items.count] { throw e }
        return taken
    }

    static func getArguments(_ timeout: Duration?) -> [PythonValue] {
        let seconds =
            timeout.map { PythonValue.float(Double($0.components.seconds) + Double($0.components.attoseconds) * 1e-18) }
            ?? .none
        return [true, seconds]
    }

    /// The server blocks up to the timeout: wait a little longer for its answer.
    static func replyLimit(_ timeout: Duration?) -> Duration {
        timeout.map { $0 + .seconds(10) } ?? .seconds(365 * 24 * 3600)
    }
    /// `q.qsize()`: `try q.count`.
    public var count: Int { get throws { try proxy.call("qsize").intValue ?? 0 } }

    /// `q.put(item)` for a Swift value.
    public func put(_ item: some Encodable) throws { try put(try PythonValueEncoder().encode(item)) }
    /// `q.get(timeout=…)` as a Swift value: `let task: Int = try q.get(timeout: .seconds(1))`. Without a
    /// timeout it waits until an item comes, as Python's `q.get()` does.
    public func get<V: Decodable>(as type: V.Type = V.self, timeout: Duration? = nil) throws -> V {
        try PythonValueDecoder().decode(V.self, from: try get(timeout: timeout))
    }
    /// This queue with items of one Swift type.
    public func typed<Element: Codable>(_ type: Element.Type) -> TypedQueueProxy<Element> { TypedQueueProxy(self) }
}

/// A served queue whose items are one `Codable` type (each item travels as a Python value: an `Int` as an
/// int, a struct as a dict, so CPython peers read them too).
public struct TypedQueueProxy<Element: Codable>: Sendable {
    /// The untyped proxy.
    public let queue: QueueProxy
    /// Wraps `queue`.
    public init(_ queue: QueueProxy) { self.queue = queue }
    /// `q.put(item)`.
    public func put(_ item: Element) throws { try queue.put(try PythonValueEncoder().encode(item)) }
    /// `q.get(timeout=…)`: throws ``PythonException/queueEmpty`` when nothing came within `timeout`, and a
    /// decoding error for an item that is not an `Element`. Without a timeout it waits until an item
    /// comes, as Python's `q.get()` does.
    public func get(timeout: Duration? = nil) throws -> Element {
        try PythonValueDecoder().decode(Element.self, from: try queue.get(timeout: timeout))
    }
    /// `q.qsize()`.
    public var count: Int { get throws { try queue.count } }
}

/// A proxy to a served namespace — Python's `NamespaceProxy`.
public struct NamespaceProxy: Codable, Sendable {
    /// The untyped proxy, for calls this type does not wrap.
    public let proxy: Proxy
    /// Wraps `proxy`, a proxy to a served namespace (``ManagerClient/create(_:_:_:)`` of a `Namespace`
    /// typeid).
    public init(_ proxy: Proxy) { self.proxy = proxy }
    /// Decodes a proxy another process sent: connects to its server and takes a reference of its own (see
    /// ``Proxy/init(from:)``); throws when the server cannot be reached.
    public init(from decoder: any Decoder) throws { proxy = try Proxy(from: decoder) }
    /// Encodes the proxy, with its server's address and authkey, to send to another process.
    public func encode(to encoder: any Encoder) throws { try proxy.encode(to: encoder) }

    /// `ns.name`.
    public func get(_ name: String) throws -> PythonValue { try proxy.call("__getattribute__", [.string(name)]) }
    /// `ns.name` as a Swift value.
    public func get<V: Decodable>(_ name: String, as type: V.Type = V.self) throws -> V {
        try PythonValueDecoder().decode(V.self, from: try get(name))
    }
    /// `ns.name = v`.
    public func set(_ name: String, _ v: PythonValue) throws { _ = try proxy.call("__setattr__", [.string(name), v]) }
    /// `ns.name = v` for a Swift value.
    public func set(_ name: String, _ v: some Encodable) throws { try set(name, try PythonValueEncoder().encode(v)) }
}

/// Runs a ``ManagerServer`` in a process of its own (the job a ``Manager`` starts), on a Unix socket at
/// `path`; says when it listens.
struct ManagerServerJob: Job {
    let authkey: [UInt8]
    let path: String
    let report: Connection
    func run() throws -> NoOutput {
        let server = try ManagerServer(address: .unix(path: path), authkey: authkey)
        try server.start()
        try report.send(true)
        _ = server.wait()
        return NoOutput()
    }
}

/// Python's `multiprocessing.Manager()`: a manager server in a process of its own, and a client of it.
///
/// ```swift
/// let manager = try Manager.start()
/// defer { manager.shutdown() }
/// let d = try manager.client.dict()        // manager.dict()
/// ```
/// The server serves `dict`, `list`, `Queue`, `JoinableQueue` and `Namespace` on a Unix socket in `/tmp`
/// (as CPython's `Manager()`; a third faster per call than TCP loopback) with a random authkey. Proxies sent inside jobs reach it from other processes. For a server in this process (a
/// master that serves others, with types of its own), use ``ManagerServer`` directly.
public final class Manager: Sendable {
    /// The client to create objects with.
    public let client: ManagerClient
    let process: ChildProcess<ManagerServerJob>
    let path: String

    private init(client: ManagerClient, process: ChildProcess<ManagerServerJob>, path: String) {
        self.client = client
        self.process = process
        self.path = path
    }

    /// Starts the server process and connects to it.
    public static func start(timeout: Duration = .seconds(30)) throws -> Manager {
        var key = [UInt8](repeating: 0, count: 32)
        var rng = SystemRandomNumberGenerator()
        for i in key.indices { key[i] = UInt8.random(in: 0...255, using: &rng) }
        let (mine, theirs) = try makePipe()
        let path = "/tmp/mp-manager-\(Processes.currentPID)-\(UInt64.random(in: 0...UInt64.max, using: &rng)).sock"
        let p = ChildProcess(
            name: "SyncManager",
            daemon: true,
            job: ManagerServerJob(authkey: key, path: path, report: theirs)
        )
        try p.start()
        theirs.close()
        do {
            _ = try mine.recv(Bool.self, timeout: timeout)
            return Manager(client: try ManagerClient(address: .unix(path: path), authkey: key), process: p, path: path)
        } catch {
            p.kill()
            _ = try? p.join(timeout: .seconds(5))
            throw error
        }
    }

    /// Stops the server process (Python's `manager.shutdown()`); every proxy's later calls fail.
    public func shutdown(timeout: Duration = .seconds(5)) {
        try? client.shutdown()
        if (try? process.join(timeout: timeout)) != true {
            process.kill()
            _ = try? process.join(timeout: .seconds(5))
        }
        unlink(path)  // the server removes its socket file, unless it was killed
    }
}
