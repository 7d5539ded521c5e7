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
/// CPython clients (`BaseManager.connect()`, `SyncManager`) use it unchanged: one-shot requests
/// (`create`, `incref`, `decref`, `get_methods`, `dummy`, `shutdown`, …) and long-lived method channels
/// (`accept_connection`). Objects are reference-counted as CPython's: one is freed when the last proxy
/// lets go.
///
/// Unlike CPython's server (a thread per connection), one event-loop thread serves every connection —
/// the authkey handshake (a client that connects and stays silent holds up nobody), requests, replies —
/// and a call that must wait (a `get` on an empty queue, an `acquire`, a `wait`, a call of a registered
/// object that may block: ``ManagedObject/mayBlock(_:)``) runs on a thread of a pool that follows the
/// calls waiting now, not the clients connected. Locks and conditions are owned by connections.
///
/// Built-in typeids, as `SyncManager`'s: `dict`, `list`, `Queue`, `JoinableQueue`, `Namespace`, `Lock`,
/// `RLock`, `Semaphore`, `BoundedSemaphore`, `Condition`, `Event`, `Barrier`, `Value`, `Array`. Register
/// more with ``register(_:_:)``. Unlike CPython's server, a client connection that ends while holding a
/// served lock or semaphore releases it.
public final class ManagerServer: @unchecked Sendable {  // mutable state behind `state`
    /// Makes the object for a typeid (Python's `callable` given to `register`), from the `create` request's
    /// positional and keyword arguments; for a method in an object's `methodToTypeid`, the method's result
    /// is its one argument. It runs on the server's event loop, so it must return promptly; throw a
    /// ``PythonException`` to raise it in the client (any other error reaches it as a traceback).
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
        /// The event loop, once ``start()`` made it.
        var loop: ManagerLoop?
        /// Whether `finish` has run (it runs once).
        var finished = false
    }

    /// Set on the loop's thread and the call threads: a ``shutdown(timeout:)`` called there (by a served
    /// object) cannot wait for itself.
    private static let onClientThread = ThreadLocal<Bool>(default: { false })

    private let listener: Listener
    private let authkey: [UInt8]
    private let state = TrackedMutex(State())
    private let logger: Logger
    private let requests: Counter
    private let failures: Counter
    private let rejected: Counter
    private let objectsGauge: Gauge
    private let callTimer: CoreMetrics.Timer
    private let stopped = Threading.Event()
    private let blocked = ServedCall.BlockedCalls()
    private let threads: ServedThreads
    private let shuttingDown = Atomic<Bool>(false)
    private let clients = Atomic<Int>(0)

    /// The address clients connect to.
    public var address: Address { listener.address }

    /// A server on `address` (default: a free TCP port on 127.0.0.1) requiring `authkey`.
    ///
    /// - Parameter logger: where the server says what happens (clients rejected, malformed requests,
    ///   start and shutdown). Default: nothing is logged, as with a pool's default. It reports swift-metrics counters `mp_manager_requests_total`,
    ///   `mp_manager_failed_requests_total`, `mp_manager_rejected_clients_total`, the gauges
    ///   `mp_manager_objects` and `mp_manager_call_threads`, and the timer `mp_manager_call_duration_seconds` (to
    ///   whatever metrics backend the program bootstrapped; the library bootstraps neither logging nor
    ///   metrics).
    /// - Parameter address: where to listen (TCP port 0: a free port; see ``address``).
    /// - Parameter authkey: the key clients must prove they have.
    /// - Parameter keepAlive: how the server notices a client whose machine or network vanished (its
    ///   connection, and whatever it held, is released within `KeepAlive.bound`); a client process that
    ///   dies is noticed at once.
    /// - Parameter maxCallThreads: the most calls that wait at once, each on a thread (a `get` on an empty
    ///   queue, an `acquire`, a `wait`, a call of an object that may block); further ones wait for one of
    ///   them to finish. Calls that complete at once need no thread. Keep it above the number of clients
    ///   that may wait on each other at once (a `Barrier`'s parties).
    /// - Parameter handshakeTimeout: the longest a client may take to prove the key after it connects; one
    ///   that has not by then is disconnected (it holds a descriptor and a little memory until then).
    public init(
        address: Address = .tcp(host: "127.0.0.1", port: 0),
        authkey: [UInt8],
        keepAlive: KeepAlive? = .standard,
        maxCallThreads: Int = 512,
        handshakeTimeout: Duration = .seconds(10),
        logger: Logger = Logger(label: "swift-multiprocessing.manager", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
        listener = try Listener(
            address: address,
            authkey: authkey,
            handshakeTimeout: handshakeTimeout,
            keepAlive: keepAlive
        )
        self.authkey = authkey
        self.logger = logger
        // One series per server, by its address.
        let dims = [("server", "\(listener.address)")]
        requests = Counter(label: "mp_manager_requests_total", dimensions: dims)
        failures = Counter(label: "mp_manager_failed_requests_total", dimensions: dims)
        rejected = Counter(label: "mp_manager_rejected_clients_total", dimensions: dims)
        objectsGauge = Gauge(label: "mp_manager_objects", dimensions: dims)
        let threadsGauge = Gauge(label: "mp_manager_call_threads", dimensions: dims)
        callTimer = CoreMetrics.Timer(label: "mp_manager_call_duration_seconds", dimensions: dims)
        threads = ServedThreads(limit: maxCallThreads) { threadsGauge.record($0) }
        register("dict") { args, kwargs in try DictObject(args, kwargs) }
        register("list") { args, _ in try ListObject(args) }
        register("Queue") { args, kwargs in QueueObject(args, kwargs) }
        register("JoinableQueue") { args, kwargs in QueueObject(args, kwargs) }
        register("Namespace") { _, kwargs in NamespaceObject(kwargs) }
        register("Lock") { _, _ in AcquirerObject(.lock(ConnectionLock(reentrant: false))) }
        register("RLock") { _, _ in AcquirerObject(.lock(ConnectionLock(reentrant: true))) }
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
    public var clientCount: Int { clients.load(ordering: .relaxed) }

    /// Objects alive now (Python's `number_of_objects`).
    public var objectCount: Int { state.withLock { $0.objects.count } }

    /// Calls waiting now on a served object: a queue's `get` or `put`, a lock's `acquire`, an event's or
    /// a condition's `wait`, a barrier's: each call that could not complete at once, until it does, times
    /// out or gives up.
    public var blockedCallCount: Int { blocked.count }

    /// Threads the server runs now for calls that wait (they end after a few idle seconds); the event
    /// loop's own thread is not counted.
    public var callThreadCount: Int { threads.count }

    /// Starts serving clients, on an event-loop thread of its own.
    public func start() throws {
        guard state.withLock({ $0.loop == nil }), !shuttingDown.load(ordering: .relaxed) else {
            throw ManagerError(.misuse, "the server was started or shut down already")
        }
        let loop = try ManagerLoop(server: self, listener: listener, authkey: authkey, logger: logger)
        state.withLock { $0.loop = loop }
        let t = OSThread(name: "mp-manager", daemon: true) { [self] in
            Self.onClientThread.value = true
            withExtendedLifetime(self) { loop.run() }  // the loop's server lives as long as the loop
        }
        do {
            try t.start()
        } catch {
            state.withLock { $0.loop = nil }
            loop.abandon()
            throw error
        }
        logger.info("manager server listening", metadata: ["address": "\(address)"])
    }

    /// Shuts the server down gracefully (Python's `manager.shutdown()`, which CPython's server does
    /// abruptly), and waits until it has.
    ///
    /// At once: no new client is accepted, and nothing more is read from connected clients. Then every
    /// request already read is carried out and its reply sent (the last `put` of a worker gets its
    /// answer); a call waiting on the server (a `get` on an empty queue, an `acquire`) gives up within
    /// 250 ms without taking anything, and its client sees the connection end. When every connection has
    /// closed, every object is freed and ``wait(timeout:)`` returns. A client that connects or sends a
    /// request after this began sees the connection end (CPython: `EOFError` or `ConnectionRefusedError`);
    /// a proxy's `decref` then fails quietly on the client's side, as CPython's does.
    ///
    /// - Parameter timeout: the longest wait for replies to go out (a client that stops reading cannot
    ///   hold the server up for longer: its connection is then cut).
    /// - Returns: whether every reply went out within `timeout`.
    @discardableResult
    public func shutdown(timeout: Duration = .seconds(10)) -> Bool {
        beginShutdown()
        // On the loop or a call's thread (a served object shutting its server down): waiting would wait
        // for itself.
        if Self.onClientThread.value { return stopped.isSet }
        if stopped.wait(timeout: timeout) { return true }
        // Replies a client does not read: cut their connections.
        state.withLock { $0.loop }?.requestCut()
        logger.warning("manager server shutdown: clients did not take their replies in time; disconnected")
        _ = stopped.wait(timeout: .seconds(1))
        return false
    }

    /// Whether ``start()`` has run.
    package var isStarted: Bool { state.withLock { $0.loop != nil } }

    /// Cuts every connection now, replies not yet taken included (a shutdown whose clients do not read).
    package func cutConnections() { state.withLock { $0.loop }?.requestCut() }

    /// Starts shutting down without waiting (a client's `shutdown` request, or ``shutdown(timeout:)``).
    private func beginShutdown() {
        guard shuttingDown.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        logger.info("manager server shutting down", metadata: ["address": "\(address)"])
        if let loop = state.withLock({ $0.loop }) {
            loop.requestStop()  // the loop closes the listener and ends once every connection has closed
        } else {
            listener.close()
            finish()
        }
    }

    /// The loop has ended (every connection closed after shutdown began).
    func loopEnded() { finish() }

    /// Frees every object and reports the end.
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

    // MARK: Called by the loop

    func rejectedOne() { rejected.increment() }
    func failedOne() { failures.increment() }
    func clientConnected() { clients.add(1, ordering: .relaxed) }

    /// A client's `shutdown` request (on the loop), or a service group's graceful shutdown: as
    /// ``shutdown(timeout:)`` without the wait.
    package func requestShutdown() { beginShutdown() }

    /// A client connection ended: what it holds (a proxied lock, semaphore permits) is released.
    func clientDisconnected(_ id: UInt64, holding: Bool) {
        clients.subtract(1, ordering: .relaxed)
        guard holding else { return }
        let objects = state.withLock { s in s.objects.values.map(\.object) }
        for case let o as any ReleasesOnDisconnect in objects { o.connectionEnded(id) }
    }

    /// What became of a request.
    enum Outcome {
        /// Answered: the reply's pickle.
        case reply([UInt8])
        /// `accept_connection` answered: the connection is a method channel from now on (`ours`: our own
        /// client, which needs no quick ACKs).
        case channel([UInt8], ours: Bool)
        /// `shutdown` answered: the server stops.
        case stop([UInt8])
        /// Running on a call thread: the reply comes through ``ManagerLoop/post(_:)``.
        case offloaded
        /// No answer can be given (it cannot be encoded): the connection is dropped.
        case drop
    }

    /// One request of an authenticated connection, on the event loop.
    func handle(_ frame: [UInt8], session s: ManagerLoop.Session, loop: ManagerLoop) -> Outcome {
        let reply: PythonValue
        do {
            let (ident, method, args, kwargs) = try Self.parseRequest(frame)
            if case .channel = s.phase { return call(ident, method, args, kwargs, session: s, loop: loop) }
            guard case .none = ident else {
                throw ManagerError(.protocolViolation, "a method call before accept_connection")
            }
            let (r, becomesChannel, stop) = serverMethod(method, args, kwargs)
            guard let bytes = try? PickleWriter().write(r) else { return .drop }
            if stop { return .stop(bytes) }
            if becomesChannel { return .channel(bytes, ours: args.first == .string(ChannelPool.clientName)) }
            return .reply(bytes)
        } catch {
            failures.increment()
            logger.warning("malformed request", metadata: ["peer": "\(s.peerDescription)", "error": "\(error)"])
            let cause = (error as? ManagerError)?.message ?? "\(error)"
            reply = .tuple(["#TRACEBACK", .string("Traceback (most recent call last):\n  manager: \(cause)\n")])
        }
        guard let bytes = try? PickleWriter().write(reply) else { return .drop }
        return .reply(bytes)
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

    /// A method call on a channel: run on the loop when it completes at once, else on a call thread.
    private func call(
        _ identValue: PythonValue,
        _ method: String,
        _ args: [PythonValue],
        _ kwargs: [PythonPair],
        session s: ManagerLoop.Session,
        loop: ManagerLoop
    ) -> Outcome {
        func answer(_ v: PythonValue) -> Outcome { (try? PickleWriter().write(v)).map(Outcome.reply) ?? .drop }
        guard let ident = identValue.stringValue, let object = state.withLock({ $0.objects[ident]?.object }) else {
            return answer(
                .tuple(["#TRACEBACK", .string("Traceback (most recent call last):\nKeyError: \(identValue)\n")])
            )
        }
        guard object.exposed.contains(method) else {
            return answer(
                .tuple([
                    "#ERROR",
                    PythonException("AttributeError", [.string("method '\(method)' of \(ident) is not exposed")]).value,
                ])
            )
        }
        requests.increment()
        let start = ContinuousClock.now
        let fd = s.fd
        let id = s.id
        // Checked only while the call waits: a call that waits when shutdown begins gives up (having
        // taken nothing); one that completes is answered.
        let abandoned: @Sendable () -> Bool = { [weak self] in
            self?.shuttingDown.load(ordering: .relaxed) ?? true || mp_peer_gone(fd) == 1
        }
        if !object.mayBlock(method) {
            do {
                let reply = try ServedCall.with(abandoned: abandoned, blocked: blocked, connection: id, onLoop: true) {
                    () throws(ServedCall.WouldBlock) -> [UInt8]? in try invoke(object, method, args, kwargs)
                }
                callTimer.recordNanoseconds((ContinuousClock.now - start).wholeNanoseconds)
                return reply.map(Outcome.reply) ?? .drop
            } catch {
                // It must wait: on a thread, below (it took nothing).
            }
        }
        do {
            try threads.submit { [self] in
                Self.onClientThread.value = true
                // A call that waited for a thread: its client may be gone meanwhile (a `get` must not take
                // an item for it). The server stopping is not checked here: a request read before is carried out.
                if mp_peer_gone(fd) == 1 {
                    loop.post(ManagerLoop.Completion(session: s, reply: nil))
                    return
                }
                let reply = ServedCall.with(abandoned: abandoned, blocked: blocked, connection: id, onLoop: false) {
                    try? invoke(object, method, args, kwargs)
                }
                callTimer.recordNanoseconds((ContinuousClock.now - start).wholeNanoseconds)
                loop.post(ManagerLoop.Completion(session: s, reply: reply))
            }
        } catch {
            failures.increment()
            logger.error("cannot start a thread for a call", metadata: ["error": "\(error)"])
            return answer(
                .tuple([
                    "#TRACEBACK",
                    .string("Traceback (most recent call last):\n  manager: no thread for this call: \(error)\n"),
                ])
            )
        }
        return .offloaded
    }

    /// Runs a call and encodes its answer; `nil` when it gave up (its client is gone, the server stops)
    /// or the answer cannot be encoded — the connection then ends without one.
    private func invoke(
        _ object: any ManagedObject,
        _ method: String,
        _ args: [PythonValue],
        _ kwargs: [PythonPair]
    ) throws(ServedCall.WouldBlock) -> [UInt8]? {
        let reply: PythonValue
        do {
            let r = try object.call(method, args, kwargs)
            if let typeid = object.methodToTypeid[method] {
                // Served as a new object; the caller gets a proxy (it takes its reference, then releases ours).
                if let factory = state.withLock({ $0.factories[typeid] }) {
                    let (rident, robject) = try store(typeid, try factory([r], []))
                    let exposed = PythonValue.tuple(robject.exposed.map { .string($0) })
                    reply = .tuple([
                        "#PROXY", .tuple([exposed, Self.token(typeid: typeid, address: address, ident: rident)]),
                    ])
                } else {
                    reply = .tuple(["#TRACEBACK", .string("no typeid \(typeid) for the result of \(method)")])
                }
            } else {
                reply = Self.ok(r)
            }
        } catch let e as ServedCall.WouldBlock {
            throw e
        } catch is ServedCall.Abandoned {
            return nil
        } catch let e as PythonException {
            reply = .tuple(["#ERROR", e.value])
        } catch {
            failures.increment()
            reply = .tuple(["#TRACEBACK", .string("Traceback (most recent call last):\n\(error)\n")])
        }
        return try? PickleWriter().write(reply)
    }
}
