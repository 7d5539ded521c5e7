internal import CMultiprocessingShims
import CoreMetrics
import Glibc
public import Logging
import Multiprocessing
public import MultiprocessingNetwork
import Synchronization
public import Threading

/// A manager server speaking CPython's managers protocol — the server side of Python's
/// `multiprocessing.managers.BaseManager` / `SyncManager`.
///
/// CPython clients (`BaseManager.connect()`, `SyncManager`) use it unchanged: each client connection is
/// authenticated on a thread of its own (a client that connects and stays silent never holds up
/// another), then served as CPython's server does — one-shot requests (`create`, `incref`, `decref`,
/// `get_methods`, `dummy`, `shutdown`, …) and long-lived method channels (`accept_connection`). Objects are
/// reference-counted as CPython's: one is freed when the last proxy lets go.
///
/// Built-in typeids, as `SyncManager`'s: `dict`, `list`, `Queue`, `JoinableQueue`, `Namespace`, `Lock`,
/// `RLock`, `Semaphore`, `BoundedSemaphore`, `Condition`, `Event`, `Barrier`, `Value`, `Array`. Register
/// more with ``register(_:_:)``. Unlike CPython's server, a client connection that ends while holding a
/// served lock or semaphore releases it.
public final class ManagerServer: @unchecked Sendable {  // mutable state behind `state`
    /// Makes the object for a typeid (Python's `callable` given to `register`), from the `create` request's
    /// positional and keyword arguments; for a method in an object's `methodToTypeid`, the method's result
    /// is its one argument. It runs on the thread serving the client's request; throw a ``PythonException``
    /// to raise it in the client (any other error reaches it as a traceback).
    public typealias Factory = @Sendable (_ args: [PythonValue], _ kwargs: [PythonPair]) throws -> any ManagedObject

    private struct Entry {
        let typeid: String
        let object: any ManagedObject
        var refs: Int
    }

    private struct State {
        var factories: [String: Factory] = [:]
        var objects: [String: Entry] = [:]
        /// Idents look like CPython's (hex addresses) and start at a random point: a proxy of a previous
        /// server on the same address (one that restarted) must not name, and `decref`, an object of this one.
        var next = UInt64.random(in: 0x7f00_0000_0000...0x7fff_0000_0000) & ~0xf
        /// Authenticated client connections. A connection leaves this map (under the lock) before its
        /// thread closes it: a connection found here is open, so shutdown may half-close it safely.
        var connections: [ObjectIdentifier: Connection] = [:]
        /// Connections still in the authkey handshake (cut at once when shutdown begins).
        var handshaking: [ObjectIdentifier: Connection] = [:]
        /// Threads serving a client (authenticating or authenticated); shutdown ends when none is left.
        var serving = 0
        /// Whether `finish` has run (it runs once).
        var finished = false
    }

    /// Set on the threads that serve clients: a ``shutdown(timeout:)`` called there (by a served object)
    /// cannot wait for its own thread.
    private static let onClientThread = ThreadLocal<Bool>(default: { false })

    private let listener: Listener
    private let state = TrackedMutex(State())
    private let logger: Logger
    private let requests: Counter
    private let failures: Counter
    private let rejected: Counter
    private let objectsGauge: Gauge
    private let callTimer: CoreMetrics.Timer
    private let stopped = Threading.Event()
    private let blocked = ServedCall.BlockedCalls()
    private let shuttingDown = Atomic<Bool>(false)
    /// Whether the accept loop is refusing connections for lack of descriptors (logged once per episode).
    private let exhausted = Atomic<Bool>(false)

    /// The address clients connect to.
    public var address: Address { listener.address }

    /// A server on `address` (default: a free TCP port on 127.0.0.1) requiring `authkey`.
    ///
    /// - Parameter logger: where the server says what happens (clients rejected, malformed requests,
    ///   start and shutdown). Default: nothing is logged, as with a pool's default. It reports swift-metrics counters `mp_manager_requests_total`,
    ///   `mp_manager_failed_requests_total`, `mp_manager_rejected_clients_total`, the gauge
    ///   `mp_manager_objects` and the timer `mp_manager_call_duration` (to whatever metrics backend the
    ///   program bootstrapped; the library bootstraps neither logging nor metrics).
    /// - Parameter address: where to listen (TCP port 0: a free port; see ``address``).
    /// - Parameter authkey: the key clients must prove they have.
    /// - Parameter keepAlive: how the server notices a client whose machine or network vanished (its
    ///   connection, and whatever it held, is released within `KeepAlive.bound`); a client process that
    ///   dies is noticed at once.
    public init(
        address: Address = .tcp(host: "127.0.0.1", port: 0),
        authkey: [UInt8],
        keepAlive: KeepAlive? = .standard,
        logger: Logger = Logger(label: "swift-multiprocessing.manager", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
        listener = try Listener(address: address, authkey: authkey, keepAlive: keepAlive)
        self.logger = logger
        // One series per server, by its address.
        let dims = [("server", "\(listener.address)")]
        requests = Counter(label: "mp_manager_requests_total", dimensions: dims)
        failures = Counter(label: "mp_manager_failed_requests_total", dimensions: dims)
        rejected = Counter(label: "mp_manager_rejected_clients_total", dimensions: dims)
        objectsGauge = Gauge(label: "mp_manager_objects", dimensions: dims)
        callTimer = CoreMetrics.Timer(label: "mp_manager_call_duration", dimensions: dims)
        register("dict") { args, kwargs in try DictObject(args, kwargs) }
        register("list") { args, _ in try ListObject(args) }
        register("Queue") { args, kwargs in QueueObject(args, kwargs) }
        register("JoinableQueue") { args, kwargs in QueueObject(args, kwargs) }
        register("Namespace") { _, kwargs in NamespaceObject(kwargs) }
        register("Lock") { _, _ in AcquirerObject(.lock(Lock())) }
        register("RLock") { _, _ in AcquirerObject(.rlock(RLock())) }
        register("Semaphore") { args, kwargs in
            AcquirerObject(
                .semaphore(Threading.Semaphore(max(0, (try argument(args, kwargs, 0, "value", 1)).intValue ?? 1)))
            )
        }
        register("BoundedSemaphore") { args, kwargs in
            AcquirerObject(
                .semaphore(BoundedSemaphore(max(0, (try argument(args, kwargs, 0, "value", 1)).intValue ?? 1)))
            )
        }
        register("Condition") { _, _ in ConditionObject() }
        register("Event") { _, _ in EventObject() }
        register("Barrier") { args, kwargs in try BarrierObject(args, kwargs) }
        register("Value") { args, kwargs in try ValueObject(args, kwargs) }
        register("Array") { args, kwargs in try ArrayObject(args, kwargs) }
        register("Iterator") { args, _ in IteratorObject(args.first ?? .list([])) }
    }

    /// Serves `typeid`: each `create` makes an object with `factory` (Python's `register(typeid, callable)`).
    public func register(_ typeid: String, _ factory: @escaping Factory) {
        state.withLock { $0.factories[typeid] = factory }
    }

    /// Serves `typeid` with one shared object: every `create` returns it (the tutorial's master/worker
    /// queues, which Python registers as `callable=lambda: queue`).
    public func register(_ typeid: String, shared object: any ManagedObject) {
        register(typeid) { _, _ in object }
    }

    /// Serves `typeid` as one shared FIFO queue and returns it, for this process to use directly — the
    /// master's `QueueManager.register('get_task_queue', callable=lambda: task_queue)`.
    public func registerQueue(_ typeid: String, maxsize: Int = 0) -> BlockingQueue<PythonValue> {
        let q = QueueObject([.int(Int64(maxsize))], [])
        register(typeid, shared: q)
        return q.queue
    }

    /// Client connections open now (authenticated ones).
    public var clientCount: Int { state.withLock { $0.connections.count } }

    /// Objects alive now (Python's `number_of_objects`).
    public var objectCount: Int { state.withLock { $0.objects.count } }

    /// Calls waiting now on a served object: a queue's `get` or `put`, a lock's `acquire`, an event's or
    /// a condition's `wait`, a barrier's: each call that could not complete at once, until it does, times
    /// out or gives up.
    public var blockedCallCount: Int { blocked.count }

    /// Starts accepting clients on a thread of its own.
    public func start() throws {
        let t = OSThread(name: "mp-manager-accept", daemon: true) { [self] in acceptLoop() }
        try t.start()
        logger.info("manager server listening", metadata: ["address": "\(address)"])
    }

    /// Shuts the server down gracefully (Python's `manager.shutdown()`, which CPython's server does
    /// abruptly), and waits until it has.
    ///
    /// At once: no new client is accepted, and each connected client's reading side is closed. Then every
    /// request already read is carried out and its reply sent (the last `put` of a worker gets its
    /// answer); a call waiting on the server (a `get` on an empty queue, an `acquire`) gives up within
    /// 250 ms without taking anything, and its client sees the connection end. When every client thread
    /// has finished, every object is freed and ``wait(timeout:)`` returns. A client that connects or sends
    /// a request after this began sees the connection end (CPython: `EOFError` or `ConnectionRefusedError`);
    /// a proxy's `decref` then fails quietly on the client's side, as CPython's does.
    ///
    /// - Parameter timeout: the longest wait for replies to go out (a client that stops reading cannot
    ///   hold the server up for longer: its connection is then cut).
    /// - Returns: whether every reply went out within `timeout`.
    @discardableResult
    public func shutdown(timeout: Duration = .seconds(10)) -> Bool {
        beginShutdown()
        // On a client's thread (a served object shutting its server down): waiting would wait for itself.
        if Self.onClientThread.value { return stopped.isSet }
        if stopped.wait(timeout: timeout) { return true }
        // Replies a client does not read: cut their connections so that their threads end.
        state.withLock { s in for c in s.connections.values { c.shutdownSocket(reading: true, writing: true) } }
        logger.warning("manager server shutdown: clients did not take their replies in time; disconnected")
        _ = stopped.wait(timeout: .seconds(1))
        return false
    }

    /// Starts shutting down without waiting (a client's `shutdown` request, or ``shutdown(timeout:)``).
    private func beginShutdown() {
        guard shuttingDown.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        listener.close()
        let done = state.withLock { s -> Bool in
            // A thread blocked reading its next request wakes with end of file; one handling a request
            // finishes it, sends its reply, then finds the end. A client still in the handshake is cut:
            // it has sent no request.
            for c in s.connections.values { c.shutdownSocket(reading: true, writing: false) }
            for c in s.handshaking.values { c.shutdownSocket(reading: true, writing: true) }
            return s.serving == 0
        }
        logger.info("manager server shutting down", metadata: ["address": "\(address)"])
        if done { finish() }
    }

    /// The last client thread has ended after shutdown began: frees every object and reports the end.
    private func finish() {
        let objects = state.withLock { s -> [String: Entry]? in
            guard !s.finished else { return nil }
            s.finished = true
            defer { s.objects = [:] }
            return s.objects
        }
        guard let objects else { return }
        _ = consume objects  // released here, outside the lock
        objectsGauge.record(0)
        logger.info("manager server shut down", metadata: ["address": "\(address)"])
        stopped.set()
    }

    /// Waits until the server has shut down (a client's `shutdown` request, or ``shutdown(timeout:)``) and
    /// every reply owed has gone out.
    public func wait(timeout: Duration? = nil) -> Bool { stopped.wait(timeout: timeout) }

    private func acceptLoop() {
        var pause = Duration.milliseconds(1)
        while !shuttingDown.load(ordering: .relaxed) {
            let accepted: AcceptedConnection
            do {
                accepted = try listener.acceptConnection(timeout: .seconds(1))
            } catch let e as MultiprocessingError where e.code == .timedOut {
                continue
            } catch let e as MultiprocessingError where e.code == .resourceExhausted {
                // Out of descriptors: the listener closed the waiting connection (its client learns at once)
                // and stays open; accepting resumes when descriptors are freed.
                rejected.increment()
                if !exhausted.exchange(true, ordering: .relaxed) {
                    logger.error(
                        "out of resources: refusing new clients until some are freed",
                        metadata: ["address": "\(address)", "error": "\(e)"]
                    )
                }
                let refused = (e.errnoCode == EMFILE || e.errnoCode == ENFILE) && listener.refusesWhenExhausted
                if !refused {
                    // The waiting connection could not be closed (out of memory, or no reserve descriptor):
                    // pause instead of spinning on it.
                    _ = stopped.wait(timeout: pause)
                    pause = min(pause * 2, .milliseconds(200))
                }
                continue
            } catch {
                return  // closed
            }
            pause = .milliseconds(1)
            if exhausted.exchange(false, ordering: .relaxed) {
                logger.notice("accepting clients again", metadata: ["address": "\(address)"])
            }
            let admitted = state.withLock { s -> Bool in
                guard !shuttingDown.load(ordering: .relaxed) else { return false }
                s.serving += 1
                return true
            }
            guard admitted else {
                accepted.connection.close()
                return
            }
            let t = OSThread(name: "mp-manager-client", daemon: true) { [self] in serveClient(accepted) }
            do {
                try t.start()
            } catch {
                // Out of threads: this client is refused at once rather than left in the handshake.
                rejected.increment()
                logger.error("cannot start a thread for a client; refused", metadata: ["error": "\(error)"])
                accepted.connection.close()
                clientThreadEnded()
            }
        }
    }

    /// Bookkeeping when a client's thread ends (or never started).
    private func clientThreadEnded() {
        let last = state.withLock { s -> Bool in
            s.serving -= 1
            return s.serving == 0 && shuttingDown.load(ordering: .relaxed)
        }
        if last { finish() }
    }

    private func serveClient(_ accepted: AcceptedConnection) {
        let c = accepted.connection
        let key = ObjectIdentifier(c)
        Self.onClientThread.value = true
        defer { clientThreadEnded() }
        defer {
            // What this connection holds (a proxied lock, semaphore permits) is released, on this thread.
            let objects = state.withLock { s -> [any ManagedObject] in
                s.connections.removeValue(forKey: key)
                return s.objects.values.map(\.object)
            }
            for case let o as any ReleasesOnDisconnect in objects { o.connectionEnded() }
            c.close()
        }
        let handshaking = state.withLock { s -> Bool in
            guard !shuttingDown.load(ordering: .relaxed) else { return false }
            s.handshaking[key] = c
            return true
        }
        guard handshaking else { return }
        defer { state.withLock { _ = $0.handshaking.removeValue(forKey: key) } }
        do {
            _ = try listener.authenticate(accepted)
        } catch {
            rejected.increment()
            logger.warning(
                "client rejected",
                metadata: ["peer": "\(accepted.peer.map { "\($0)" } ?? "?")", "error": "\(error)"]
            )
            return
        }
        let registered = state.withLock { s -> Bool in
            s.handshaking[key] = nil
            guard !shuttingDown.load(ordering: .relaxed) else { return false }
            s.connections[key] = c
            return true
        }
        guard registered else { return }
        var channel = false
        var tcp = true
        // Replies to pipelined requests wait here while the next request is already buffered, and go out
        // together in one write before the thread would block on the socket.
        var replies: [[UInt8]] = []
        /// Sends the replies held back; false when the connection failed.
        func flush() -> Bool {
            guard !replies.isEmpty else { return true }
            defer { replies.removeAll(keepingCapacity: true) }
            return (try? c.sendMessages(replies, timeout: nil)) != nil
        }
        defer { _ = flush() }  // whatever is held goes out, however the loop ends
        while true {
            if replies.count >= 64 || !c.hasBufferedMessage {
                guard flush() else { return }
                // Shutting down: requests already read are answered; nothing more is read.
                if shuttingDown.load(ordering: .relaxed) { return }
            }
            // A CPython client's next request waits for our ACK (Nagle); not a TCP socket: stop trying.
            if tcp && replies.isEmpty && mp_quick_ack(c.fileDescriptor) != 0 { tcp = false }
            let frame: [UInt8]
            do {
                frame = try c.recvBytes()
            } catch let e as MultiprocessingError where e.code == .endOfFile || e.code == .closed {
                return  // the client closed: the normal end
            } catch {
                // A reset, or a peer that stopped answering keep-alive probes (a machine gone).
                logger.notice(
                    "client lost",
                    metadata: ["peer": "\(accepted.peer.map { "\($0)" } ?? "?")", "error": "\(error)"]
                )
                return
            }
            // From here the request is carried out and answered, even if shutdown begins meanwhile.
            let reply: PythonValue
            do {
                let (ident, method, args, kwargs) = try Self.parseRequest(frame)
                if channel {
                    guard let r = callMethod(ident, method, args, kwargs, on: c) else {
                        // A blocking call gave up: its client is gone, or the server is shutting down.
                        logger.debug("call abandoned", metadata: ["peer": "\(accepted.peer.map { "\($0)" } ?? "?")"])
                        return
                    }
                    reply = r
                } else {
                    guard case .none = ident else {
                        throw ManagerError(.protocolViolation, "a method call before accept_connection")
                    }
                    let (r, becomesChannel, stop) = serverMethod(method, args, kwargs)
                    reply = r
                    if becomesChannel {
                        channel = true
                        // Our client sets TCP_NODELAY and never waits on our ACKs: no quick-ACK call per request.
                        if args.first == .string(ChannelPool.clientName) { tcp = false }
                    }
                    if stop {
                        if let bytes = try? PickleWriter().write(reply) { replies.append(bytes) }
                        _ = flush()
                        beginShutdown()
                        return
                    }
                }
            } catch {
                failures.increment()
                logger.warning(
                    "malformed request",
                    metadata: ["peer": "\(accepted.peer.map { "\($0)" } ?? "?")", "error": "\(error)"]
                )
                let cause = (error as? ManagerError)?.message ?? "\(error)"
                reply = .tuple(["#TRACEBACK", .string("Traceback (most recent call last):\n  manager: \(cause)\n")])
            }
            guard let bytes = try? PickleWriter().write(reply) else { return }
            // Held until the top of the loop, which sends it unless the next request is already here.
            replies.append(bytes)
        }
    }

    /// A request as CPython's clients send it: `(ident, method, args, kwds)`, read without running code.
    package static func parseRequest(
        _ frame: [UInt8]
    ) throws -> (ident: PythonValue, method: String, args: [PythonValue], kwargs: [PythonPair]) {
        let request = try PickleReader().read(frame)
        guard case .tuple(let parts) = request, parts.count == 4, case .string(let method) = parts[1],
            case .tuple(let args) = parts[2], case .dict(let kwargs) = parts[3]
        else {
            throw ManagerError(.protocolViolation, "a request that is not (ident, method, args, kwds)")
        }
        return (parts[0], method, args, kwargs)
    }

    private static func ok(_ v: PythonValue) -> PythonValue { .tuple(["#RETURN", v]) }

    /// Keeps `object` under a new ident with one reference (the creator's).
    private func store(_ typeid: String, _ object: any ManagedObject) throws -> (String, any ManagedObject) {
        let (ident, count) = state.withLock { s -> (String, Int) in
            s.next += 1
            let id = String(s.next, radix: 16)
            s.objects[id] = Entry(typeid: typeid, object: object, refs: 1)
            return (id, s.objects.count)
        }
        objectsGauge.record(count)
        return (ident, object)
    }

    /// CPython's `Token(typeid, address, id)` as it pickles it (`__newobj__`, then its state).
    static func token(typeid: String, address: Address, ident: String) -> PythonValue {
        let addr: PythonValue =
            switch address {
            case .tcp(let host, let port): .tuple([.string(host), .int(Int64(port))])
            case .unix(let path): .string(path)
            }
        return .object(
            PythonObject(
                callable: .global(module: "multiprocessing.managers", name: "Token"),
                args: [],
                viaNew: true,
                state: .tuple([.string(typeid), addr, .string(ident)])
            )
        )
    }

    /// Our answer to `dummy` (CPython's `connect()` ignores it): tells our client that this server goes
    /// on serving one-shot requests on the same connection, so `create`, `incref` and `decref` need no
    /// new connection and handshake each. CPython's clients close after one request, as before.
    static let keepOpenMarker = "swift-multiprocessing: one-shot connections stay open"

    /// A one-shot request: the reply, whether the connection becomes a method channel, whether to stop.
    private func serverMethod(
        _ method: String,
        _ args: [PythonValue],
        _ kwargs: [PythonPair]
    ) -> (
        PythonValue, Bool, Bool
    ) {
        func identArg() -> String? { args.first?.stringValue }
        switch method {
        case "dummy":
            return (Self.ok(.string(Self.keepOpenMarker)), false, false)
        case "accept_connection":
            return (Self.ok(.none), true, false)
        case "shutdown":
            return (Self.ok(.none), false, true)
        case "number_of_objects":
            return (Self.ok(.int(Int64(objectCount))), false, false)
        case "create":
            guard case .string(let typeid)? = args.first else {
                return (.tuple(["#TRACEBACK", "create needs a typeid"]), false, false)
            }
            guard let factory = state.withLock({ $0.factories[typeid] }) else {
                return (.tuple(["#ERROR", PythonException("KeyError", [.string(typeid)]).value]), false, false)
            }
            do {
                let (ident, object) = try store(typeid, try factory(Array(args.dropFirst()), kwargs))
                let exposed = PythonValue.tuple(object.exposed.map { .string($0) })
                // The client builds the Token itself from the ident (CPython's `_create`).
                return (Self.ok(.tuple([.string(ident), exposed])), false, false)
            } catch let e as PythonException {
                return (.tuple(["#ERROR", e.value]), false, false)
            } catch {
                return (.tuple(["#TRACEBACK", .string("\(error)")]), false, false)
            }
        case "incref", "decref":
            guard let ident = identArg() else {
                return (.tuple(["#TRACEBACK", .string("no ident in \(args)")]), false, false)
            }
            let (known, count) = state.withLock { s -> (Bool, Int) in
                guard var e = s.objects[ident] else { return (false, s.objects.count) }
                e.refs += method == "incref" ? 1 : -1
                if e.refs <= 0 { s.objects[ident] = nil } else { s.objects[ident] = e }
                return (true, s.objects.count)
            }
            objectsGauge.record(count)
            if !known && method == "incref" {
                return (.tuple(["#ERROR", PythonException("KeyError", [.string(ident)]).value]), false, false)
            }
            return (Self.ok(.none), false, false)  // a decref of an unknown ident is ignored, as CPython's
        case "get_methods":
            guard case .object(let t)? = args.first, case .tuple(let fields)? = t.state, fields.count == 3,
                let ident = fields[2].stringValue,
                let object = state.withLock({ $0.objects[ident]?.object })
            else { return (.tuple(["#TRACEBACK", "unknown token"]), false, false) }
            return (Self.ok(.tuple(object.exposed.map { .string($0) })), false, false)
        default:
            return (.tuple(["#TRACEBACK", .string("no server method \(method)")]), false, false)
        }
    }

    private func callMethod(
        _ identValue: PythonValue,
        _ method: String,
        _ args: [PythonValue],
        _ kwargs: [PythonPair],
        on connection: Connection
    ) -> PythonValue? {
        guard let ident = identValue.stringValue, let object = state.withLock({ $0.objects[ident]?.object }) else {
            return .tuple(["#TRACEBACK", .string("Traceback (most recent call last):\nKeyError: \(identValue)\n")])
        }
        guard object.exposed.contains(method) else {
            return .tuple([
                "#ERROR",
                PythonException("AttributeError", [.string("method '\(method)' of \(ident) is not exposed")]).value,
            ])
        }
        requests.increment()
        let start = ContinuousClock.now
        defer { callTimer.recordNanoseconds((ContinuousClock.now - start).wholeNanoseconds) }
        let fd = connection.fileDescriptor
        // Checked only while the call waits: a call that waits when shutdown begins gives up (having
        // taken nothing); one that completes is answered.
        let abandoned: @Sendable () -> Bool = { [weak self] in
            self?.shuttingDown.load(ordering: .relaxed) ?? true || mp_peer_gone(fd) == 1
        }
        do {
            let r = try ServedCall.with(abandoned: abandoned, blocked: blocked) {
                try object.call(method, args, kwargs)
            }
            guard let typeid = object.methodToTypeid[method] else { return Self.ok(r) }
            // Served as a new object; the caller gets a proxy (it takes its reference, then releases ours).
            guard let factory = state.withLock({ $0.factories[typeid] }) else {
                return .tuple(["#TRACEBACK", .string("no typeid \(typeid) for the result of \(method)")])
            }
            let (rident, robject) = try store(typeid, try factory([r], []))
            let exposed = PythonValue.tuple(robject.exposed.map { .string($0) })
            return .tuple(["#PROXY", .tuple([exposed, Self.token(typeid: typeid, address: address, ident: rident)])])
        } catch is ServedCall.Abandoned {
            return nil
        } catch let e as PythonException {
            return .tuple(["#ERROR", e.value])
        } catch {
            failures.increment()
            return .tuple(["#TRACEBACK", .string("Traceback (most recent call last):\n\(error)\n")])
        }
    }
}
