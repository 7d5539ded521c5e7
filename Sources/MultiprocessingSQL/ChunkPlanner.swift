import Threading

/// Plans the chunks of a run, lazily (the pool reads it on a thread of its own as chunks finish): walks
/// the source's key from the start, skipping chunks written before, and cuts a new chunk every
/// `chunkSize` keys — or earlier, at the start of a chunk written before, so that no key is in two
/// chunks.
final class ChunkPlanner: Sequence, @unchecked Sendable {  // iterated once, by one thread
    let source: PipelineSource
    let chunkSize: Int
    let timeout: Duration
    let doneByLower: [String: DoneChunk]
    private let state = TrackedMutex<(error: (any Error)?, skipped: Int)>((nil, 0))

    init(source: PipelineSource, chunkSize: Int, done: [String: DoneChunk], timeout: Duration) {
        self.source = source
        self.chunkSize = chunkSize
        self.doneByLower = done
        self.timeout = timeout
    }

    /// Why planning stopped early, if it did.
    var error: (any Error)? { state.withLock { $0.error } }
    /// Chunks skipped because an earlier run wrote them.
    var skipped: Int { state.withLock { $0.skipped } }

    func makeIterator() -> Iterator { Iterator(planner: self) }

    final class Iterator: IteratorProtocol {
        let planner: ChunkPlanner
        var connection: (any SQLConnection)?
        var cursor: SQLValue?  // the exclusive lower bound of the next chunk; nil: the start
        var finished = false
        /// Lower bounds of chunks written before and not yet passed.
        var pending: Set<String>

        init(planner: ChunkPlanner) {
            self.planner = planner
            pending = Set(planner.doneByLower.keys)
        }

        deinit { connection?.close() }

        func next() -> ChunkRange? {
            guard !finished else { return nil }
            do {
                if let c = try plan() { return c }
            } catch {
                planner.state.withLock { $0.error = $0.error ?? error }
            }
            finished = true
            connection?.close()
            connection = nil
            return nil
        }

        private func plan() throws -> ChunkRange? {
            let s = planner.source
            if connection == nil { connection = try Database.connect(s.url, timeout: planner.timeout) }
            guard let c = connection else { return nil }
            let d = c.dialect
            let k = d.quote(s.key)
            // Chunks written before that start here: skip them.
            while let done = planner.doneByLower[cursor.map(ChunkRange.encode) ?? ""] {
                pending.remove(done.range.id)
                planner.state.withLock { $0.skipped += 1 }
                guard let upper = done.range.upper else { return nil }
                cursor = upper
            }
            var parameters: [SQLValue] = []
            var condition = ""
            if let cursor {
                condition = "WHERE \(k) > \(d.parameter(1))"
                parameters.append(cursor)
            }
            var upper = try c.scalar(
                "SELECT \(k) FROM \(s.from) \(condition) ORDER BY \(k) LIMIT 1 OFFSET \(planner.chunkSize - 1)",
                parameters
            )
            if upper == .null { upper = nil }
            if let u = upper, PipelineBookkeeping.intPart(u) == .null, PipelineBookkeeping.textPart(u) == .null {
                throw SQLError(.conversion, "the key \(s.key) must be an integer or text column, not \(u)")
            }
            if upper == nil {
                // The last chunk ends at the last key now: rows appended later are a later run's.
                upper = try c.scalar("SELECT max(\(k)) FROM \(s.from) \(condition)", parameters)
                guard let u = upper, u != .null else { return nil }
            }
            // A chunk written before that starts inside this one cuts it short.
            if !pending.isEmpty, let inside = try firstPendingLower(c, after: cursor, upTo: upper) {
                upper = inside
            }
            let chunk = ChunkRange(lower: cursor, upper: upper)
            cursor = upper
            return chunk
        }

        /// The smallest lower bound of a chunk written before that lies in `(after, upTo)`, in the source's
        /// own order (asked of the source, which alone knows its collation).
        private func firstPendingLower(_ c: any SQLConnection, after: SQLValue?, upTo: SQLValue?) throws -> SQLValue? {
            let s = planner.source
            let d = c.dialect
            let k = d.quote(s.key)
            let bounds = pending.compactMap { planner.doneByLower[$0]?.range.lower }
            var best: SQLValue?
            for batch in stride(from: 0, to: bounds.count, by: 500).map({
                Array(bounds[$0..<Swift.min(bounds.count, $0 + 500)])
            }) {
                var parameters: [SQLValue] = []
                var conditions: [String] = []
                if let after {
                    parameters.append(after)
                    conditions.append("\(k) > \(d.parameter(parameters.count))")
                }
                if let upTo {
                    parameters.append(upTo)
                    conditions.append("\(k) < \(d.parameter(parameters.count))")
                }
                let list = batch.map { v -> String in
                    parameters.append(v)
                    return d.parameter(parameters.count)
                }
                conditions.append("\(k) IN (\(list.joined(separator: ", ")))")
                let found = try c.scalar(
                    "SELECT min(\(k)) FROM \(s.from) WHERE \(conditions.joined(separator: " AND "))",
                    parameters
                )
                if let found, found != .null {
                    if let b = best {
                        let smaller = try c.scalar(
                            "SELECT CASE WHEN \(d.parameter(1)) < \(d.parameter(2)) THEN 1 ELSE 0 END",
                            [found, b]
                        )
                        if smaller?.intValue == 1 { best = found }
                    } else {
                        best = found
                    }
                }
            }
            return best
        }
    }
}
