import Multiprocessing
public import MultiprocessingNetwork
import Threading

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
            let r = try Proxy.exchange(c, .tuple([.none, "dummy", .tuple([]), .dict([])]), timeout: timeout).value
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
                    let r = try Proxy.exchange(c, request, timeout: timeout).value
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
        return try Proxy.exchange(c, request, timeout: timeout).value
    }

    /// Creates an object of `typeid` on the server (Python's `manager.dict()`, `manager.Queue()`,
    /// `manager.get_task_queue()` …) and returns a proxy to it.
    public func create(_ typeid: String, _ args: [PythonValue] = [], _ kwargs: [PythonPair] = []) throws -> Proxy {
        let r = try oneShot("create", [.string(typeid)] + args, kwargs)
        guard let parts = r.items, parts.count == 2, let ident = parts[0].stringValue, let exposed = parts[1].items
        else { throw ManagerError(.protocolViolation, "create answered \(r.pythonDescription)") }
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

    /// Releases the reference the server holds for a `#PROXY` result, quietly (as CPython's client: a
    /// server already gone is no error).
    func release(_ token: ServedToken) {
        _ = try? oneShot("decref", [.string(token.ident)])
    }

    /// Objects alive on the server.
    public func objectCount() throws -> Int {
        guard let n = try oneShot("number_of_objects", []).intValue else {
            throw ManagerError(.protocolViolation, "number_of_objects answered no int")
        }
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
