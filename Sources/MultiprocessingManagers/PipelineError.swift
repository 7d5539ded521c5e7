/// The first call of a pipelined pair failed; the second may have taken an item, which travels here.
public struct PipelineError: Error, CustomStringConvertible, Sendable {
    /// Why the `put` failed: a ``PythonException`` the queue raised (``PythonException/queueFull``), a
    /// ``ManagerError``, or a connection error.
    public let error: any Error
    /// What the second call returned, if it succeeded.
    public let taken: PythonValue?
    /// Everything the gets behind the failed put took (``QueueProxy/put(contentsOf:thenGetUpTo:from:timeout:)``).
    public let takenAll: [PythonValue]
    /// The `put`'s error, and the item the next call took, if it took one.
    public var description: String { "\(error)" + (taken.map { " (the next call took \($0))" } ?? "") }
    /// A failed pipelined call and what the calls behind it took.
    ///
    /// - Parameters:
    ///   - error: why the `put` failed.
    ///   - taken: what the second call returned, if it succeeded.
    ///   - takenAll: everything the calls behind the failed one took; default: `taken`, if any.
    public init(error: any Error, taken: PythonValue?, takenAll: [PythonValue]? = nil) {
        self.error = error
        self.taken = taken
        self.takenAll = takenAll ?? (taken.map { [$0] } ?? [])
    }
}
