/// What the pool does on Ctrl-C (SIGINT) in this process. Workers always ignore SIGINT.
public enum InterruptBehavior: Sendable {
    /// Tear every pool down (pending and running tasks fail with ``PoolError/Code/interrupted``, workers
    /// are stopped and reaped), then end the program as SIGINT would. A second Ctrl-C kills at once.
    case tearDownAndExit
    /// Tear every pool down and let the program carry on; a second Ctrl-C kills at once.
    case tearDown
    /// Install nothing; SIGINT keeps whatever disposition the program gave it.
    case ignore
}
