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
