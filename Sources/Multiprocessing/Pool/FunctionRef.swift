/// A function or job type as the workers know it: defined once per worker, then referred to by id.
struct FunctionRef: Sendable {
    let id: UInt32
    let kind: PoolWire.FunctionKind
    let name: String
    let payload: [UInt8]
}

struct FunctionKey: Hashable {
    let kind: UInt8
    let name: String
    let payload: [UInt8]
}
