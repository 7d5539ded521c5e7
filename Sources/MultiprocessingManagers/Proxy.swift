import Multiprocessing
import MultiprocessingNetwork
import Threading
import Tracing

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
    /// - Throws: ``PythonException`` raised by the object; ``ManagerError`` for a server failure
    ///   (``ManagerError/Code/remoteTraceback``, …), a method the object does not expose
    ///   (``ManagerError/Code/notExposed``) or one whose result is served as a new object
    ///   (``ManagerError/Code/proxyReturned``: use ``callProxy(_:_:_:timeout:)``); a connection error
    ///   (the server is gone) at once, never a hang.
    public func call(
        _ method: String,
        _ args: [PythonValue] = [],
        _ kwargs: [PythonPair] = [],
        timeout: Duration? = nil
    ) throws -> PythonValue {
        switch try callRaw(method, args, kwargs, timeout: timeout) {
        case .value(let v): return v
        case .proxy(let token):
            client.release(token)  // the server's reference: nobody takes it
            throw ManagerError.proxyReturned(method, token)
        }
    }

    /// Calls a method whose result the server serves as a new object — Python's `method_to_typeid`
    /// (`#PROXY` replies), such as a dict's `__iter__` — and returns a proxy to it.
    ///
    /// - Throws: as `call` does, and ``ManagerError/Code/valueReturned`` for a method that
    ///   returned a value.
    public func callProxy(
        _ method: String,
        _ args: [PythonValue] = [],
        _ kwargs: [PythonPair] = [],
        timeout: Duration? = nil
    ) throws -> Proxy {
        switch try callRaw(method, args, kwargs, timeout: timeout) {
        case .value(let v):
            throw ManagerError(.valueReturned, "\(method) returned a value, not a proxy: \(v.pythonDescription)")
        case .proxy(let token):
            // As CPython's client: the proxy takes its own reference, then the server's is released (also
            // when taking one failed: nobody else holds the object).
            defer { client.release(token) }
            return try Proxy(
                typeid: token.typeid,
                ident: token.ident,
                exposed: token.exposed,
                client: client,
                incref: true
            )
        }
    }

    private func callRaw(
        _ method: String,
        _ args: [PythonValue],
        _ kwargs: [PythonPair],
        timeout: Duration?
    ) throws -> CallReply {
        guard exposed.contains(method) else {
            throw ManagerError(
                .notExposed,
                "method \(method) is not exposed by \(typeid) (\(exposed.joined(separator: ", ")))"
            )
        }
        // Inside a span, with a tracer: the call is a client span of its own (the protocol is CPython's,
        // which carries no trace context to the server).
        let span = ManagerTracing.start(typeid: typeid, method: method, server: "\(client.address)")
        let limit = timeout ?? client.timeout
        do {
            let c = try client.channels.take(timeout: limit)
            do {
                let r = try Self.exchange(
                    c,
                    .tuple([.string(ident), .string(method), .tuple(args), .dict(kwargs)]),
                    timeout: limit
                )
                client.channels.giveBack(c)
                ManagerTracing.end(span)
                return r
            } catch let e as PythonException {
                client.channels.giveBack(c)  // a clean answer: the channel is fine
                throw e
            } catch {
                c.close()
                throw error
            }
        } catch {
            ManagerTracing.end(span, failure: error)
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
        // The caller's trace context and tracer (perhaps a task-local one), which the offloading thread
        // does not inherit.
        let context = InstrumentationContext.current
        let tracer = context == nil ? nil : PoolTracing.tracer
        return try await AsyncBridge.offload { [self] in
            guard let context, let tracer else { return try call(method, args, kwargs, timeout: timeout) }
            return try withTracer(tracer) {
                try InstrumentationContext.$current.withValue(context) {
                    try call(method, args, kwargs, timeout: timeout)
                }
            }
        }
    }
}
