/// Why the pool stopped a worker.
enum StopReason: Sendable {
    case timeout(unit: UInt64)
    case softTimeout(unit: UInt64)
    case cancelled(unit: UInt64)
    case terminate(PoolError)
    /// The worker sent something the parent cannot accept: it is killed, and the unit it was on is charged.
    case protocolViolation(PoolError)
}
