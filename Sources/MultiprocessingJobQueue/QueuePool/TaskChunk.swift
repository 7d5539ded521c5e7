import Glibc
import Multiprocessing

/// One chunk of a ``QueuePool`` call, stored as a queue job: the function and its items' inputs. A queue
/// worker runs it in its pool like any job; each item's error is that item's outcome (the chunk itself
/// fails only when its worker process dies or it runs past its timeout, and the task pool then queues its
/// items one by one, so that only the item that did it fails).
struct TaskChunk<F: TaskFunction>: Job {
    let f: F
    let inputs: [F.Input]
    /// Runs in all of an item that throws (1: it is not run again), the wait before the second, and its
    /// growth: the `RetryPolicy` of the call when it retries errors.
    let attempts: Int
    let backoffMs: Int64
    let multiplier: Double

    func run() async throws -> TaskChunkReply<F.Output> {
        // A synchronous function runs in a plain loop: no suspension point per item.
        if let sync = f as? any SyncTaskFunction { return try runSync(sync) }
        var values: [F.Output] = []
        values.reserveCapacity(inputs.count)
        var failures: [TaskItemFailure] = []
        for (index, input) in inputs.enumerated() {
            var attempt = 1
            var pause = Double(backoffMs)
            while true {
                try Task.checkCancellation()
                do {
                    values.append(try await f(input))
                    break
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    if attempt >= attempts {
                        failures.append(TaskItemFailure(index: index, error: WireError(error, pid: getpid())))
                        break
                    }
                    attempt += 1
                    try await Task.sleep(for: .milliseconds(Int64(pause)))
                    pause *= multiplier
                }
            }
        }
        return TaskChunkReply(values: values, failures: failures)
    }
}

extension TaskChunk {
    /// ``run()`` for a ``SyncTaskFunction`` (`g` is `f`, opened): the items in a loop, retried after a
    /// blocking pause (cancellation cannot reach synchronous code, as in the process pool).
    private func runSync<G: SyncTaskFunction>(_ g: G) throws -> TaskChunkReply<F.Output> {
        precondition(G.self == F.self)
        let items = unsafeBitCast(inputs, to: [G.Input].self)  // G is F
        var values: [G.Output] = []
        values.reserveCapacity(items.count)
        var failures: [TaskItemFailure] = []
        for (index, input) in items.enumerated() {
            var attempt = 1
            var pause = Double(backoffMs)
            while true {
                do {
                    values.append(try g(input))
                    break
                } catch {
                    if attempt >= attempts {
                        failures.append(TaskItemFailure(index: index, error: WireError(error, pid: getpid())))
                        break
                    }
                    attempt += 1
                    usleep(UInt32(clamping: Int(pause * 1000)))
                    pause *= multiplier
                }
            }
        }
        return TaskChunkReply(values: unsafeBitCast(values, to: [F.Output].self), failures: failures)
    }
}

/// A chunk's outcome: the outputs of the items that succeeded, in order (an array of a fixed-width type
/// travels as its bytes), and the errors of those that failed, by their index in the chunk.
struct TaskChunkReply<Output: Codable & Sendable>: Codable, Sendable {
    let values: [Output]
    let failures: [TaskItemFailure]

    /// Each item's outcome, in order, for a chunk of `count` items; nil when the reply does not add up.
    func outcomes(count: Int) -> [Result<Output, any Error>]? {
        guard values.count + failures.count == count else { return nil }
        var out: [Result<Output, any Error>] = []
        out.reserveCapacity(count)
        var next = values.makeIterator()
        var failed = failures.makeIterator()
        var failure = failed.next()
        for i in 0..<count {
            if let f = failure, f.index == i {
                out.append(.failure(f.error.rebuild()))
                failure = failed.next()
            } else if let v = next.next() {
                out.append(.success(v))
            } else {
                return nil
            }
        }
        return failure == nil ? out : nil
    }
}

/// An item that failed in a chunk: its index there and its error, as the process pool sends errors (a
/// `Codable` error comes back as itself, any other as a `RemoteError`).
struct TaskItemFailure: Codable, Sendable {
    let index: Int
    let error: WireError
}
