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

    func run() async throws -> [TaskItemOutcome<F.Output>] {
        var out: [TaskItemOutcome<F.Output>] = []
        out.reserveCapacity(inputs.count)
        for input in inputs {
            var attempt = 1
            var pause = Double(backoffMs)
            while true {
                try Task.checkCancellation()
                do {
                    out.append(.value(try await f(input)))
                    break
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    if attempt >= attempts {
                        out.append(.error(WireError(error, pid: getpid())))
                        break
                    }
                    attempt += 1
                    try await Task.sleep(for: .milliseconds(Int64(pause)))
                    pause *= multiplier
                }
            }
        }
        return out
    }
}

/// A ``QueuePool`` job that is a `Job` of the caller's (from `submit` and `applyAsync`): its outcome is
/// the job's output or its error, as for a chunk's item.
struct TaskJob<J: Job>: Job {
    let job: J

    func run() async throws -> [TaskItemOutcome<J.Output>] {
        do {
            return [.value(try await job.run())]
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            return [.error(WireError(error, pid: getpid()))]
        }
    }
}

/// One item's outcome in a task pool job's result: its output, or its error as the process pool sends
/// errors (a `Codable` error comes back as itself, any other as a `RemoteError`).
enum TaskItemOutcome<Output: Codable & Sendable>: Codable, Sendable {
    case value(Output)
    case error(WireError)

    var result: Result<Output, any Error> {
        switch self {
        case .value(let v): .success(v)
        case .error(let e): .failure(e.rebuild())
        }
    }
}
