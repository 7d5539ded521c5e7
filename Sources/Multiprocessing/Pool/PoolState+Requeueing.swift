// Items settled with an error, and items sent again: requeued after a worker's death, split into
// single items, or retried after a backoff.
extension PoolState {
    mutating func settleItem(_ unit: Unit, _ i: Int, _ error: any Error) {
        failed += 1
        done += 1
        actions.append(.fail(unit.call, index: unit.base + i, error))
    }

    mutating func settleRange(_ unit: Unit, _ range: Range<Int>, _ error: any Error) {
        for i in range { settleItem(unit, i, error) }
    }

    /// Collects items `range` (relative) of `unit` to be sent again.
    mutating func requeue(_ unit: Unit, _ range: Range<Int>, kills: Int) {
        guard !range.isEmpty else { return }
        if unit.callCancelled {
            settleRange(unit, range, CancellationError())
            return
        }
        guard deliversResults else {
            settleRange(unit, range, terminalError)
            return
        }
        if let again = part(unit, range, attempt: unit.attempt, kills: kills) { requeued.append(again) }
    }

    /// Items `range` (relative) of `unit` as a new unit with the next id; `nil` after failing those items
    /// if they cannot be encoded again.
    private mutating func part(_ unit: Unit, _ range: Range<Int>, attempt: Int, kills: Int) -> Unit? {
        do {
            defer { nextUnit += 1 }
            return try unit.part(range, id: nextUnit, attempt: attempt, kills: kills)
        } catch {
            settleRange(unit, range, error)
            return nil
        }
    }

    /// Items `range` (relative) of `unit`, each as a unit of its own (an item that cannot be re-encoded
    /// fails).
    mutating func singletons(_ unit: Unit, _ range: Range<Int>) -> [Unit] {
        var out: [Unit] = []
        for j in range {
            if let u = part(unit, j..<(j + 1), attempt: unit.attempt, kills: unit.kills) { out.append(u) }
        }
        return out
    }

    mutating func scheduleRetry(_ unit: Unit, index i: Int, crashed: Bool) {
        guard let again = part(unit, i..<(i + 1), attempt: unit.attempt + 1, kills: unit.kills + (crashed ? 1 : 0))
        else { return }
        delayed.append((now + unit.call.options.retry.delay(beforeAttempt: unit.attempt + 1), again))
        retried += 1
        supervisorDue = true
    }
}
