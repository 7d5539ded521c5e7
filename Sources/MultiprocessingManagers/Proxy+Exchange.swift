import Multiprocessing

/// The wire: one request and its reply, or many pipelined on one channel.
extension Proxy {
    /// Sends one request and reads its reply: a result (`#RETURN`'s value, or `#PROXY`'s new object), or
    /// the error the reply carries.
    static func exchange(_ c: Connection, _ request: PythonValue, timeout: Duration) throws -> CallReply {
        try c.sendBytes(try PickleWriter().write(request), timeout: timeout)
        return try CallReply.parse(try PickleReader().read(try c.recvBytes(timeout: timeout))).get()
    }

    /// Pipelines calls on one channel: the requests go out in one write, then the replies are read in
    /// order. The server handles them one after another, exactly as if they were made one by one (CPython's
    /// server too: it reads the next request after answering the last), but the round trips — and with
    /// them most system calls and wake-ups — are shared. Each result is its call's value or error; when
    /// the connection fails, the calls answered before keep their results and the others carry the
    /// connection's error. A call answered with a new object (`#PROXY`) fails with
    /// ``ManagerError/Code/proxyReturned``, the object's reference released, as ``call(_:_:_:timeout:)``.
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
                throw ManagerError(.notExposed, "method \(call.method) is not exposed by \(call.proxy.typeid)")
            }
            guard call.proxy.client === first.client else {
                throw ManagerError(.misuse, "pipelined calls must go to proxies of one client")
            }
        }
        let client = first.client
        let c = try client.channels.take(timeout: timeout)
        var results: [Result<PythonValue, any Error>] = []
        results.reserveCapacity(calls.count)
        // Objects served as results nobody asked a proxy for: released once the channel is free.
        var unclaimed: [ServedToken] = []
        defer { for token in unclaimed { client.release(token) } }
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
                for call in window {
                    switch CallReply.parse(try PickleReader().read(try c.recvBytes(timeout: timeout))) {
                    case .success(.value(let v)): results.append(.success(v))
                    case .success(.proxy(let token)):
                        unclaimed.append(token)
                        results.append(.failure(ManagerError.proxyReturned(call.method, token)))
                    case .failure(let e): results.append(.failure(e))
                    }
                }
                start += window.count
            }
        } catch {
            // The connection failed: the calls answered so far keep their results, the rest fail with it
            // (they may or may not have run).
            c.close()
            while results.count < calls.count { results.append(.failure(error)) }
            return results
        }
        client.channels.giveBack(c)
        return results
    }
}
