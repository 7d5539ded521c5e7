/// A served queue whose items are one `Codable` type (each item travels as a Python value: an `Int` as an
/// int, a struct as a dict, so CPython peers read them too).
public struct TypedQueueProxy<Element: Codable>: Sendable {
    /// The untyped proxy.
    public let queue: QueueProxy
    /// Wraps `queue`.
    public init(_ queue: QueueProxy) { self.queue = queue }
    /// `q.put(item)`.
    public func put(_ item: Element) throws { try queue.put(try PythonValueEncoder().encode(item)) }
    /// `q.get(timeout=…)`: throws ``PythonException/queueEmpty`` when nothing came within `timeout`, and a
    /// decoding error for an item that is not an `Element`. Without a timeout it waits until an item
    /// comes, as Python's `q.get()` does.
    public func get(timeout: Duration? = nil) throws -> Element {
        try PythonValueDecoder().decode(Element.self, from: try queue.get(timeout: timeout))
    }
    /// `q.qsize()`.
    public var count: Int { get throws { try queue.count } }
}
