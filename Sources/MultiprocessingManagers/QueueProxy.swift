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
