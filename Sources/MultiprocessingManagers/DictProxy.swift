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
