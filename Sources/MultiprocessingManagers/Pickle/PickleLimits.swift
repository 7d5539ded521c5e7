/// Limits that keep a hostile pickle from taking the reader's memory or stack.
public struct PickleLimits: Sendable {
    /// Deepest nesting of values, however it is built: a container or call holding a container or call
    /// counts one level more than the deepest value it holds (`MARK`s, `APPEND`, `SETITEM`, `TUPLE1`,
    /// `REDUCE`, memo references, all alike), and at most this many `MARK`s are open at once. Values
    /// are released and compared recursively, so this bound also keeps those far inside any thread's
    /// stack (CPython refuses to pickle past about 1,000 levels; the default is 200).
    public var maxDepth: Int
    /// Most values, counting a value as often as it appears: a memo reference repeats a whole value
    /// without its bytes, so 200 levels of pairs of the same value make 2²⁰⁰ values in a few hundred
    /// bytes, which comparing or writing back would never finish.
    public var maxValues: Int
    /// Most entries in the memo.
    public var maxMemo: Int
    /// Most items on the stack (containers in construction included).
    public var maxStack: Int

    /// Limits: nesting (`maxDepth`), values in all (`maxValues`), memo entries and stack items.
    public init(maxDepth: Int = 200, maxValues: Int = 1 << 22, maxMemo: Int = 1 << 20, maxStack: Int = 1 << 20) {
        self.maxDepth = maxDepth
        self.maxValues = maxValues
        self.maxMemo = maxMemo
        self.maxStack = maxStack
    }
}
