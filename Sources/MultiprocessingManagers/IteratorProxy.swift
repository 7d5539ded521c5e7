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
