/// A pool that runs one call over many items as a stream of results: ``ProcessPool`` (units of items
/// sent to worker processes) and ``InProcessPool`` (chunks run on threads). Each implements
/// ``stream(_:_:count:chunksize:maxInFlight:ordered:options:)``, where the two genuinely differ (how
/// items are chunked, submitted and cancelled); `map`, `mapResults`, `imap` and `imapUnordered` are
/// written once, below, and each pool's public methods call them.
protocol StreamingPool: TaskPool {
    /// Submits `f` over `inputs` and returns the results as they come.
    ///
    /// - Parameters:
    ///   - count: how many inputs there are, when known (`nil`: unknown).
    ///   - chunksize: items per chunk (`nil`: chosen by the pool).
    ///   - maxInFlight: how many items may be submitted and not yet read (`nil`: no limit; the input is
    ///     then read whole before this returns).
    ///   - ordered: results in input order (`imap`) or in the order they finish (`imapUnordered`).
    func stream<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        count: Int?,
        chunksize: Int?,
        maxInFlight: Int?,
        ordered: Bool,
        options: TaskOptions
    ) throws -> PoolResults<F.Output>
}

extension StreamingPool {
    /// `map`: every result in input order, blocking the calling thread; throws the first failure.
    func eagerMap<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int?,
        options: TaskOptions,
        timeout: Duration?
    ) throws -> [F.Output] {
        let items = Array(inputs)
        return try stream(
            f,
            items,
            count: items.count,
            chunksize: chunksize,
            maxInFlight: nil,
            ordered: true,
            options: options
        )
        .collect(timeout: timeout, placingResults: true)
    }

    /// `mapResults`: every item's outcome in input order, failures included.
    func eagerMapResults<F: TaskFunction>(
        _ f: F,
        _ inputs: some Sequence<F.Input>,
        chunksize: Int?,
        options: TaskOptions,
        timeout: Duration?
    ) throws -> [Result<F.Output, any Error>] {
        let items = Array(inputs)
        return try stream(
            f,
            items,
            count: items.count,
            chunksize: chunksize,
            maxInFlight: nil,
            ordered: true,
            options: options
        )
        .collectResults(timeout: timeout)
    }

    /// `imap` (`ordered`) and `imapUnordered`: lazy results, the input read at most `maxInFlight` items
    /// (default 8192) ahead of the consumer.
    func lazyMap<F: TaskFunction, S: Sequence<F.Input> & Sendable>(
        _ f: F,
        _ inputs: S,
        chunksize: Int?,
        maxInFlight: Int?,
        ordered: Bool,
        options: TaskOptions
    ) throws -> PoolResults<F.Output> {
        let known = inputs.underestimatedCount
        return try stream(
            f,
            inputs,
            count: known > 0 ? known : nil,
            chunksize: chunksize,
            maxInFlight: maxInFlight ?? 8192,
            ordered: ordered,
            options: options
        )
    }
}

extension ProcessPool: StreamingPool {}
extension InProcessPool: StreamingPool {}
