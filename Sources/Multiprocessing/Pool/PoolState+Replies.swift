import DequeModule

// Replies from workers: results and failures accounted for and routed, and chunks sent again item by
// item when a worker cannot decode them.
extension PoolState {
    /// A reply from worker `id`: accounts for it and says where its payload goes (nil: nowhere, the unit
    /// was settled already). Throws if the reply contradicts what the worker was sent (the worker then
    /// broke the protocol).
    mutating func received(
        _ reply: Reply,
        from id: WorkerID,
        now: Instant
    ) throws(MultiprocessingError) -> (
        Delivery?, [Action]
    ) {
        self.now = Swift.max(self.now, now)  // read before the lock, with the whole read's replies
        guard let w = index(of: id) else { return (nil, []) }
        let (unitId, start, count, busyNanos, isFailure): (UInt64, Int, Int, UInt64, Bool) =
            switch reply {
            case .output(let u, let s, let c, let b): (u, s, c, b, false)
            case .failure(let u, let i, let b): (u, i, 1, b, true)
            }
        workers[w].busy += .nanoseconds(Int64(clamping: busyNanos))
        // Not in flight: cancelled and settled already.
        guard let k = workers[w].inflight.firstIndex(where: { $0.id == unitId }) else { return (nil, []) }
        let (reported, total) = (workers[w].inflight[k].reported, workers[w].inflight[k].count)
        guard start == reported, count > 0, start + count <= total else {
            throw MultiprocessingError(
                .malformedMessage,
                "reply for items \(start)..<\(start + count) of a task at \(reported)/\(total)"
            )
        }
        workers[w].inflight[k].busyNanos &+= busyNanos
        workers[w].inflight[k].reported += count
        let unit = workers[w].inflight[k]
        var delivery: Delivery?  // nil: the item is retried
        if isFailure {
            let policy = unit.call.options.retry
            if policy.causes.contains(.error) && unit.attempt < policy.attempts && !unit.callCancelled {
                scheduleRetry(unit, index: start, crashed: false)
            } else {
                failed += 1
                done += 1
                delivery = .failure(
                    unit.call,
                    index: unit.base + start,
                    softTimedOut: unit.softIndex == start,
                    attempts: unit.attempt
                )
            }
        } else {
            done += count
            if busyNanos > 0 {
                let per = Double(busyNanos) / Double(count)
                itemNanos = itemNanos == 0 ? per : itemNanos * 0.8 + per * 0.2
            }
            delivery = .output(unit.call, index: unit.base + start, count: count)
        }
        if unit.reported == unit.count {
            workers[w].inflight.remove(at: k)
            workers[w].tasksDone += 1
            let took = Double(unit.busyNanos)
            unitNanos = unitNanos == 0 ? took : unitNanos * 0.8 + took * 0.2
            unitFinished(w)
        }
        return (delivery, finish())
    }

    /// The worker could not decode a chunk as a whole: its items go again one by one, so an item that
    /// cannot be decoded fails alone. A worker asks this only of a chunk of several items it has not
    /// answered: any other request would send the same unit round for ever, and breaks the protocol.
    mutating func resendAlone(
        _ unitId: UInt64,
        from id: WorkerID,
        now: Instant
    ) throws(MultiprocessingError)
        -> [Action]
    {
        self.now = Swift.max(self.now, now)  // read before the lock, with the whole read's replies
        guard let w = index(of: id), let k = workers[w].inflight.firstIndex(where: { $0.id == unitId }) else {
            return []
        }
        let unit = workers[w].inflight[k]
        guard unit.reported == 0, unit.count > 1 else {
            throw MultiprocessingError(.malformedMessage, "a request to resend a unit of one item")
        }
        workers[w].inflight.remove(at: k)
        pending.prepend(contentsOf: singletons(unit, 0..<unit.count))
        unitFinished(w)
        return finish()
    }
}
