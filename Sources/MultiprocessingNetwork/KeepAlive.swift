internal import CMultiprocessingShims

/// How a TCP connection finds out that its peer is gone when nothing says so: a machine that lost power
/// or its network, a cable pulled, a peer frozen behind a firewall. (A peer process that dies is noticed
/// at once: its kernel closes the connection.)
///
/// After ``idle`` of silence the kernel sends a keep-alive probe every ``interval``; after ``probes``
/// unanswered ones the connection fails with `ETIMEDOUT`, which every blocked call on it reports at
/// once. Data written and not acknowledged for ``bound`` fails the connection too (`TCP_USER_TIMEOUT`),
/// so a peer that vanishes in the middle of a call is noticed within the same bound.
///
/// The default, ``standard``, notices a dead peer within 11 seconds (5 s + 3 × 2 s), both ways: a master
/// loses a dead worker's connection and a worker's blocked call to a dead master fails. Probes are
/// empty TCP segments, answered by the peer's kernel: an idle but healthy peer costs nothing.
public struct KeepAlive: Sendable, Hashable {
    /// Silence before the first probe.
    public var idle: Duration
    /// Between probes.
    public var interval: Duration
    /// Unanswered probes that end the connection.
    public var probes: Int

    /// Settings of your own: the first probe after `idle` of silence, then one every `interval`, and the
    /// connection fails after `probes` unanswered ones. The kernel counts whole seconds, so each duration
    /// is applied rounded down to whole seconds (at least 1), and `probes` is at least 1.
    public init(idle: Duration, interval: Duration, probes: Int) {
        self.idle = idle
        self.interval = interval
        self.probes = probes
    }

    /// 5 s idle, a probe every 2 s, 3 probes: a dead peer is noticed within 11 s.
    public static let standard = KeepAlive(idle: .seconds(5), interval: .seconds(2), probes: 3)

    /// The longest a dead peer goes unnoticed: ``idle`` + ``probes`` × ``interval``.
    public var bound: Duration { idle + interval * probes }

    /// Applies the settings to a TCP socket (whole seconds, at least 1; the kernel's unit).
    func apply(to fd: Int32) {
        func seconds(_ d: Duration) -> Int32 { Int32(clamping: max(1, d.components.seconds)) }
        let ms = bound.components.seconds * 1000 + bound.components.attoseconds / 1_000_000_000_000_000
        _ = mp_set_keepalive(
            fd,
            seconds(idle),
            seconds(interval),
            Int32(clamping: max(1, probes)),
            UInt32(clamping: ms)
        )
    }
}
