/// What a ``QueuePool`` knows of its jobs, and what to do when one ends: events in, actions out, no I/O
/// (the pool's ``QueuePoolCore`` reads the database and performs the actions; tests drive this with a
/// fake clock).
///
/// Every job a call queued is outstanding here, with the items it carries, until its end is read. An end
/// read before the call has registered the job (a worker can finish a job before `enqueue` has returned
/// its id to the caller) waits among the unclaimed ends, which are forgotten after ``unclaimedLimit``. The
/// ends of a call that was cancelled are dropped.
struct QueuePoolState {
    /// A call of the pool (a `map`, an `imapUnordered`, a `submit`).
    typealias Call = Int

    /// How a job ended, as the row says.
    enum End: Equatable {
        /// Its result: the encoded `TaskChunkReply` of its items.
        case completed([UInt8])
        /// Discarded after its attempts (its worker died, or it ran past its timeout, each time): the
        /// error history.
        case discarded(String)
        /// Cancelled (by the call, or by an operator): the reason, if any.
        case cancelled(String)
    }

    /// What the pool does.
    enum Action: Equatable {
        /// The items `base..<base + count` of `call` have their outcomes in `result`.
        case deliver(call: Call, base: Int, count: Int, result: [UInt8])
        /// A job of several items failed as a whole: queue its items again, one job each, so that only the
        /// item that killed its worker (or hung) fails.
        case split(call: Call, base: Int, count: Int)
        /// A job of one item was lost with its worker (its lease ran out on its last attempt): queue it
        /// again, as the pool's promise says (a worker machine that dies loses nothing); `history` is why.
        case requeue(call: Call, base: Int, history: String)
        /// The items `base..<base + count` of `call` failed: `discarded` (the error history) or cancelled.
        case fail(call: Call, base: Int, count: Int, end: End)
    }

    struct Outstanding: Equatable {
        let call: Call
        let base: Int
        let count: Int
    }

    /// Jobs queued and not yet ended, by id.
    private(set) var outstanding: [Int64: Outstanding] = [:]
    /// Ends read before their job was registered, with when they were read (ms).
    private(set) var unclaimed: [Int64: (end: End, at: Int64)] = [:]
    /// Jobs of cancelled calls, with when they were cancelled (ms): their ends are read (their rows
    /// deleted) and dropped.
    private(set) var dropped: [Int64: Int64] = [:]
    /// How long an unclaimed end is kept (ms): its job was queued by a call that failed before it could
    /// register it (a lost connection after the commit), or by another pool with the same tag.
    let unclaimedLimit: Int64

    init(unclaimedLimit: Int64 = 600_000) { self.unclaimedLimit = unclaimedLimit }

    /// Whether any job is outstanding, or cancelled and not yet ended (the pool reads ends only then).
    var isWaiting: Bool { !outstanding.isEmpty || !dropped.isEmpty }

    /// The items of `call` from `base` on, `count` of them, are in job `id`. Returns the actions for an
    /// end already read.
    mutating func registered(_ id: Int64, call: Call, base: Int, count: Int) -> [Action] {
        let o = Outstanding(call: call, base: base, count: count)
        if let early = unclaimed.removeValue(forKey: id) { return actions(o, early.end) }
        outstanding[id] = o
        return []
    }

    /// Job `id` ended (its row was read and deleted at `now`, in ms).
    mutating func ended(_ id: Int64, _ end: End, now: Int64) -> [Action] {
        if dropped.removeValue(forKey: id) != nil { return [] }
        guard let o = outstanding.removeValue(forKey: id) else {
            unclaimed[id] = (end, now)
            return []
        }
        return actions(o, end)
    }

    private func actions(_ o: Outstanding, _ end: End) -> [Action] {
        switch end {
        case .completed(let bytes): [.deliver(call: o.call, base: o.base, count: o.count, result: bytes)]
        case .discarded where o.count > 1: [.split(call: o.call, base: o.base, count: o.count)]
        case .discarded(let history) where Self.leaseRanOut(history):
            [.requeue(call: o.call, base: o.base, history: history)]
        case .discarded, .cancelled: [.fail(call: o.call, base: o.base, count: o.count, end: end)]
        }
    }

    /// Whether a discarded job's last attempt ended because its lease ran out (the rescue's line): its
    /// worker died, hung or lost the database, which says nothing of the item.
    static func leaseRanOut(_ history: String) -> Bool {
        history.split(separator: "\n").last?.hasSuffix("lease expired (the worker stopped renewing it)") ?? false
    }

    /// Jobs queued for a call that was cancelled meanwhile: their ends are read (their rows deleted) and
    /// dropped.
    mutating func drop(_ ids: [Int64], now: Int64) {
        for id in ids where unclaimed.removeValue(forKey: id) == nil { dropped[id] = now }
    }

    /// `call` is cancelled at `now` (ms): returns its outstanding jobs (for the pool to cancel in the
    /// database); their ends will be dropped.
    mutating func cancel(_ call: Call, now: Int64) -> [Int64] {
        let ids = outstanding.filter { $0.value.call == call }.map(\.key).sorted()
        for id in ids {
            outstanding[id] = nil
            dropped[id] = now
        }
        return ids
    }

    /// Forgets unclaimed ends, and cancelled jobs whose ends never came (their rows deleted by someone
    /// else), older than ``unclaimedLimit``.
    mutating func expire(now: Int64) {
        unclaimed = unclaimed.filter { now - $0.value.at < unclaimedLimit }
        dropped = dropped.filter { now - $0.value < unclaimedLimit }
    }
}
