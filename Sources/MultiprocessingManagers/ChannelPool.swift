import Multiprocessing
import MultiprocessingNetwork
import Threading

/// Long-lived method channels (`accept_connection`) to one server, reused across calls and proxies: a
/// call takes an idle one or opens one, so concurrent calls (a blocking `get` among them) never wait for
/// each other.
final class ChannelPool: Sendable {
    let address: Address
    let authkey: [UInt8]
    let keepAlive: KeepAlive?
    private let idle = TrackedMutex<[Connection]>([])
    /// The name our channels give in `accept_connection` (CPython's client gives its thread's name).
    static let clientName = "SwiftClient"

    init(address: Address, authkey: [UInt8], keepAlive: KeepAlive?) {
        self.address = address
        self.authkey = authkey
        self.keepAlive = keepAlive
    }

    deinit { for c in idle.withLock({ $0 }) { c.close() } }

    func take(timeout: Duration) throws -> Connection {
        if let c = idle.withLock({ $0.popLast() }) { return c }
        let c = try connect(to: address, authkey: authkey, timeout: timeout, keepAlive: keepAlive)
        do {
            let r = try Proxy.exchange(
                c,
                .tuple([.none, "accept_connection", .tuple([.string(Self.clientName)]), .dict([])]),
                timeout: timeout
            ).value
            guard r == .none else {
                throw ManagerError(.protocolViolation, "accept_connection answered \(r.pythonDescription)")
            }
        } catch {
            c.close()
            throw error
        }
        return c
    }

    func giveBack(_ c: Connection) {
        let keep = idle.withLock { list -> Bool in
            guard list.count < 8 else { return false }
            list.append(c)
            return true
        }
        if !keep { c.close() }
    }
}
