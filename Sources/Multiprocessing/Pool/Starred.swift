/// Two arguments travelling together (the element of a starmap).
public struct ArgumentPair<First: Codable & Sendable, Second: Codable & Sendable>: Codable, Sendable {
    /// The first argument.
    public var first: First
    /// The second argument.
    public var second: Second
    /// Pairs two arguments.
    public init(_ first: First, _ second: Second) {
        self.first = first
        self.second = second
    }
}

/// Adapts a ``TaskFunction2`` to a ``TaskFunction`` over ``ArgumentPair``s.
public struct Starred<F: TaskFunction2>: TaskFunction {
    /// The two-argument function.
    public let function: F
    /// Adapts `function`.
    public init(_ function: F) { self.function = function }
    /// Calls the function with the pair's two arguments.
    public func callAsFunction(_ input: ArgumentPair<F.First, F.Second>) async throws -> F.Output {
        try await function(input.first, input.second)
    }
}
