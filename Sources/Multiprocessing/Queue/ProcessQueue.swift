import Synchronization
import Threading

/// A queue shared by processes — Python's `multiprocessing.Queue` and `JoinableQueue`.
///
/// Items are `Codable` values. Pass the queue to other processes inside a ``Job`` (its shared memory
/// travels with the job); every process then puts and gets on the same queue.
///
/// ```swift
/// let q = try ProcessQueue<String>()
/// let writer = ChildProcess(job: Writer(queue: q))      // struct Writer: Job { let queue: ProcessQueue<String> ... }
/// try writer.start()
/// print(try q.get(timeout: .seconds(5)))
/// ```
///
/// Differences from CPython, all deliberate:
/// - a `put` that has returned is in shared memory: it is delivered even if the putting process exits
///   at once (CPython's feeder thread can lose it);
/// - a consumer killed in the middle of `get` does not corrupt the queue, and the item it was reading
///   stays queued (CPython's pipe can be left mid-message);
/// - there is no feeder thread, so `close()` has nothing to flush (and Python's `join_thread()` and
///   `cancel_join_thread()` have no counterpart);
/// - capacity is bounded by `capacity` bytes of shared memory (sparse: only pages used are allocated),
///   besides `maxsize` items; a `put` into a full queue blocks (or times out with `.full`);
/// - many consumers cost little more than one: a `put` wakes a sleeping consumer only when none is already
///   on its way, and a consumer that leaves items behind wakes the next (8 consumers lose no throughput
///   against 1; CPython's lose a third). A consumer killed between its wake-up and the queue's lock delays
///   the others by at most 50 ms, the longest a waiting `get` sleeps before it looks again.
/// `taskDone()`/`join()` (Python's `JoinableQueue`) are available on every queue.
public final class ProcessQueue<Element: Codable & Sendable>: Codable, @unchecked Sendable {  // state in `ring`
    let ring: SharedRing
    private let closed = Atomic<Bool>(false)

    /// The default shared-memory capacity: 64 MiB of address space, allocated as used.
    public static var defaultCapacity: Int { 64 << 20 }

    /// - Parameters:
    ///   - maxsize: the most items at once; `0` means no limit but `capacity` (Python's `maxsize`).
    ///   - capacity: bytes of shared memory for queued items (an item may use at most all of it).
    public init(maxsize: Int = 0, capacity: Int = ProcessQueue.defaultCapacity) throws {
        ring = try SharedRing(capacity: max(capacity, 4096), maxsize: maxsize)
    }

    /// Attaches to the queue a job carried here (the shared memory and its descriptors travel with the job).
    public required init(from decoder: any Decoder) throws {
        var c = try decoder.unkeyedContainer()
        _ = try c.decode(Int.self)  // descriptor index (the descriptor itself travels as SCM_RIGHTS)
        ring = try SharedRing(adopting: MessageCodec.takeDescriptor())
    }

    /// Encodes the queue for a job: its shared memory's descriptor travels with the message.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.unkeyedContainer()
        try c.encode(try MessageCodec.attach(ring.fd))
    }

    /// Python's `maxsize`; `0` for no item limit.
    public var maxsize: Int { ring.maxsize }

    // MARK: put

    /// Adds an item — Python's `Queue.put(obj, block, timeout)`.
    ///
    /// - Throws: ``MultiprocessingError/Code/full`` when there is no room (non-blocking, or after the
    ///   timeout); ``MultiprocessingError/Code/closed`` after ``close()``;
    ///   ``MultiprocessingError/Code/encodingFailed``.
    public func put(_ item: Element, blocking: Bool = true, timeout: Duration? = nil) throws {
        if closed.load(ordering: .relaxed) {
            throw MultiprocessingError(.closed, "the queue is closed in this process")
        }
        let bytes = try encodeItem(item)
        let ok = try bytes.withUnsafeBytes { try ring.put($0, blocking: blocking, deadline: Deadline.after(timeout)) }
        if !ok { throw MultiprocessingError(.full, "the queue is full") }
    }

    /// Python's `Queue.put_nowait(obj)`.
    public func putNowait(_ item: Element) throws { try put(item, blocking: false) }

    /// Adds an item, suspending the task (no thread of the cooperative pool waits) while the queue is full.
    public func put(_ item: Element) async throws {
        _ = try await AsyncBridge.run { deadline in
            do {
                try self.put(item, timeout: deadline)
                return true
            } catch let e as MultiprocessingError where e.code == .full && deadline != nil {
                return nil
            }
        }
    }

    private func encodeItem(_ item: Element) throws -> [UInt8] {
        do {
            return try BinaryEncoder().encode(item)
        } catch {
            throw MultiprocessingError(.encodingFailed, "cannot encode \(Element.self): \(error)")
        }
    }

    // MARK: get

    /// Removes and returns the oldest item — Python's `Queue.get(block, timeout)`.
    ///
    /// - Throws: ``MultiprocessingError/Code/empty`` when there is none (non-blocking, or after the
    ///   timeout); ``MultiprocessingError/Code/decodingFailed``.
    public func get(blocking: Bool = true, timeout: Duration? = nil) throws -> Element {
        guard let bytes = ring.get(blocking: blocking, deadline: Deadline.after(timeout)) else {
            throw MultiprocessingError(.empty, "the queue is empty")
        }
        do {
            return try BinaryDecoder().decode(Element.self, from: bytes)
        } catch {
            throw MultiprocessingError.cannotDecode("\(Element.self)", error)
        }
    }

    /// Python's `Queue.get_nowait()`.
    public func getNowait() throws -> Element { try get(blocking: false) }

    /// Removes and returns the oldest item, suspending the task while the queue is empty.
    ///
    /// - Throws: `CancellationError` (within ~50 ms of the cancellation), or a decoding error.
    public func get() async throws -> Element {
        try await AsyncBridge.run { deadline in
            do {
                return try self.get(timeout: deadline)
            } catch let e as MultiprocessingError where e.code == .empty && deadline != nil {
                return nil
            }
        }
    }

    // MARK: state

    /// The number of items now — Python's `Queue.qsize()`.
    public var count: Int { ring.count }
    /// Python's `Queue.empty()`.
    public var isEmpty: Bool { count == 0 }
    /// Python's `Queue.full()`.
    public var isFull: Bool { maxsize > 0 && count >= maxsize }

    /// No more puts from this process — Python's `Queue.close()`. Other processes are unaffected.
    public func close() { closed.store(true, ordering: .relaxed) }

    // MARK: joinable

    /// Marks one item as processed — Python's `JoinableQueue.task_done()`.
    ///
    /// - Throws: ``MultiprocessingError/Code/invalidState`` if called more times than items were put.
    public func taskDone() throws { try ring.taskDone() }

    /// Blocks until every item put has been marked done — Python's `JoinableQueue.join()`.
    ///
    /// - Returns: `false` if the timeout expired first.
    @discardableResult
    public func join(timeout: Duration? = nil) -> Bool { ring.join(deadline: Deadline.after(timeout)) }

    /// Items put and not yet marked done.
    public var unfinishedTasks: Int { ring.unfinished }
}

/// Python's `multiprocessing.JoinableQueue`: every ``ProcessQueue`` supports `taskDone()`/`join()`.
public typealias JoinableProcessQueue<Element: Codable & Sendable> = ProcessQueue<Element>

/// Python's `multiprocessing.SimpleQueue`: put, get, empty, close — no size limit, no task tracking.
public struct SimpleProcessQueue<Element: Codable & Sendable>: Codable, Sendable {
    private let queue: ProcessQueue<Element>

    /// Creates an unbounded queue of at most `capacity` bytes of items.
    public init(capacity: Int = ProcessQueue<Element>.defaultCapacity) throws {
        queue = try ProcessQueue(maxsize: 0, capacity: capacity)
    }

    /// Appends `item` — Python's `SimpleQueue.put`.
    public func put(_ item: Element) throws { try queue.put(item) }
    /// Removes the oldest item, waiting up to `timeout` — Python's `SimpleQueue.get`.
    public func get(timeout: Duration? = nil) throws -> Element { try queue.get(timeout: timeout) }
    /// Appends `item`, suspending the task (not a thread) while the queue is full.
    public func put(_ item: Element) async throws { try await queue.put(item) }
    /// Removes the oldest item, suspending the task (not a thread) until there is one.
    public func get() async throws -> Element { try await queue.get() }
    /// Whether the queue holds no item now — Python's `SimpleQueue.empty()`.
    public var isEmpty: Bool { queue.isEmpty }
    /// Closes this process's handle on the queue — Python's `SimpleQueue.close()`.
    public func close() { queue.close() }
}
