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
