internal import CMultiprocessingShims
import Glibc

// Layout of the segment behind a shared value or array: a 64-byte header (the lock's 32 bytes, then the
// element count and stride, checked when a receiver decodes it), then the elements.
private let headerSize = 64

/// The header's description of the elements, so a receiver that decodes the memory as another type is
/// told instead of reading garbage.
private func checkLayout<T>(_ segment: SharedSegment, _: T.Type, count: Int? = nil) throws -> Int {
    let words = (segment.baseAddress + 32).assumingMemoryBound(to: Int64.self)
    let n = Int(words[0])
    let stride = Int(words[1])
    guard stride == MemoryLayout<T>.stride else {
        throw MultiprocessingError(
            .decodingFailed,
            "shared memory holds elements of \(stride) bytes, decoded as \(T.self) (\(MemoryLayout<T>.stride) bytes)"
        )
    }
    guard n >= 0, headerSize + n * stride <= segment.size else {
        throw MultiprocessingError(
            .decodingFailed,
            "shared memory header claims \(n) elements in \(segment.size) bytes"
        )
    }
    if let count, count != n {
        throw MultiprocessingError(.decodingFailed, "shared memory holds \(n) elements, not \(count)")
    }
    return n
}

func lockTimedOut(_ timeout: Duration?) -> MultiprocessingError {
    MultiprocessingError(.timedOut, "the lock was not acquired within \(timeout.map { "\($0)" } ?? "its timeout")")
}

private func makeSegment<T>(_: T.Type, count: Int) throws -> SharedSegment {
    guard count >= 0 else { throw MultiprocessingError(.invalidState, "a negative element count \(count)") }
    let segment = try SharedSegment(size: headerSize + max(1, count) * MemoryLayout<T>.stride)
    let words = (segment.baseAddress + 32).assumingMemoryBound(to: Int64.self)
    words[0] = Int64(count)
    words[1] = Int64(MemoryLayout<T>.stride)
    return segment
}

/// One value of a fixed-layout type in memory shared between processes, with a lock — Python's
/// `multiprocessing.Value`.
///
/// Reading or writing ``value`` takes the lock for that one access, as Python's does; to make a
/// read-modify-write such as `+= 1` atomic, do it inside ``withLock(timeout:ownerDied:_:)`` (Python's
/// `with v.get_lock(): v.value += 1`) — or, for integers, use the lock-free ``add(_:)``. The lock is a
/// ``ProcessRLock`` (re-entrant, as Python's default), so `lock.withLock { v.value += 1 }` works too.
///
/// Send it to other processes inside jobs: they see the same memory. Python's typecodes map to Swift
/// types: `'c'` `UInt8`, `'b'` `Int8`, `'B'` `UInt8`, `'h'` `Int16`, `'H'` `UInt16`, `'i'` `Int32`,
/// `'I'` `UInt32`, `'l'` `Int`, `'L'` `UInt`, `'q'` `Int64`, `'Q'` `UInt64`, `'f'` `Float`, `'d'` `Double`;
/// any `BitwiseCopyable` struct of those works as well (Python's ctypes `Structure`).
public final class SharedValue<T: BitwiseCopyable>: Codable, @unchecked Sendable {  // memory guarded by `lock`
    let segment: SharedSegment
    /// The lock that comes with the value — Python's `get_lock()`.
    public let lock: ProcessRLock
    let pointer: UnsafeMutablePointer<T>

    /// A new shared value holding `initial`.
    public init(_ initial: T) throws {
        segment = try makeSegment(T.self, count: 1)
        lock = ProcessRLock(place: SharedPlace(segment: segment, offset: 0))
        pointer = (segment.baseAddress + headerSize).assumingMemoryBound(to: T.self)
        pointer.initialize(to: initial)
    }

    /// Attaches to a shared value encoded in another process (or this one): the same memory and lock, not
    /// copies. Throws ``MultiprocessingError/Code/decodingFailed`` if the sender no longer holds it or its
    /// memory does not hold one `T`.
    public init(from decoder: any Decoder) throws {
        segment = try SharedSegment(from: decoder)
        _ = try checkLayout(segment, T.self, count: 1)
        lock = ProcessRLock(place: SharedPlace(segment: segment, offset: 0))
        pointer = (segment.baseAddress + headerSize).assumingMemoryBound(to: T.self)
    }

    /// Encodes a reference to the value's shared memory (see ``SharedSegment``), to send it inside a job;
    /// the sender must keep the value until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws { try segment.encode(to: encoder) }

    /// Python's `get_lock()`.
    public func getLock() -> ProcessRLock { lock }

    /// The value, read or written under the lock.
    public var value: T {
        get {
            lock.acquire()
            defer { try? lock.release() }
            return pointer.pointee
        }
        set {
            lock.acquire()
            defer { try? lock.release() }
            pointer.pointee = newValue
        }
    }

    /// Runs `body` on the value holding the lock, so a read-modify-write is atomic. Throws
    /// ``MultiprocessingError/Code/timedOut`` if the lock is not acquired within `timeout`. If a process
    /// died holding the lock, `ownerDied` may repair the value first.
    public func withLock<R>(
        timeout: Duration? = nil,
        ownerDied: ((inout T) throws -> Void)? = nil,
        _ body: (inout T) throws -> R
    ) throws -> R {
        let outcome = lock.acquire(timeout: timeout)
        guard outcome.isHeld else { throw lockTimedOut(timeout) }
        defer { try? lock.release() }
        if outcome == .acquiredFromDeadOwner, let ownerDied { try ownerDied(&pointer.pointee) }
        return try body(&pointer.pointee)
    }
}

/// One value of a fixed-layout type in memory shared between processes, without a lock — Python's
/// `multiprocessing.sharedctypes.RawValue`. Accesses are plain loads and stores (a value larger than a
/// machine word may be read half-written); integers have atomic operations (``add(_:)``,
/// ``compareExchange(expected:desired:)``).
public final class RawSharedValue<T: BitwiseCopyable>: Codable, @unchecked Sendable {  // unsynchronised by design
    let segment: SharedSegment
    let pointer: UnsafeMutablePointer<T>

    /// A new shared value holding `initial`.
    public init(_ initial: T) throws {
        segment = try makeSegment(T.self, count: 1)
        pointer = (segment.baseAddress + headerSize).assumingMemoryBound(to: T.self)
        pointer.initialize(to: initial)
    }

    /// Attaches to a raw shared value encoded in another process (or this one): the same memory, not a copy. Throws
    /// ``MultiprocessingError/Code/decodingFailed`` if the sender no longer holds it or its memory
    /// does not hold one `T`.
    public init(from decoder: any Decoder) throws {
        segment = try SharedSegment(from: decoder)
        _ = try checkLayout(segment, T.self, count: 1)
        pointer = (segment.baseAddress + headerSize).assumingMemoryBound(to: T.self)
    }

    /// Encodes a reference to the value's shared memory (see ``SharedSegment``), to send it inside a job;
    /// the sender must keep the value until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws { try segment.encode(to: encoder) }

    /// The value (a plain load or store).
    public var value: T {
        get { pointer.pointee }
        set { pointer.pointee = newValue }
    }
}

/// Integer types with atomic operations on shared memory (4- and 8-byte integers).
public protocol SharedAtomicInteger: FixedWidthInteger & BitwiseCopyable {}
extension Int: SharedAtomicInteger {}
extension UInt: SharedAtomicInteger {}
extension Int64: SharedAtomicInteger {}
extension UInt64: SharedAtomicInteger {}
extension Int32: SharedAtomicInteger {}
extension UInt32: SharedAtomicInteger {}

/// Atomic operations on an integer at `p` (sequentially consistent, across processes).
enum SharedAtomics {
    @inline(__always)
    static func add<T: SharedAtomicInteger>(_ p: UnsafeMutablePointer<T>, _ delta: T) -> T {
        if MemoryLayout<T>.size == 8 {
            let old = mp_atomic_fetch_add_u64(
                UnsafeMutableRawPointer(p).assumingMemoryBound(to: UInt64.self),
                UInt64(truncatingIfNeeded: delta)
            )
            return T(truncatingIfNeeded: old)
        }
        let old = mp_atomic_fetch_add_u32(
            UnsafeMutableRawPointer(p).assumingMemoryBound(to: UInt32.self),
            UInt32(truncatingIfNeeded: delta)
        )
        return T(truncatingIfNeeded: old)
    }

    @inline(__always)
    static func compareExchange<T: SharedAtomicInteger>(
        _ p: UnsafeMutablePointer<T>,
        _ expected: T,
        _ desired: T
    )
        -> (exchanged: Bool, original: T)
    {
        let raw = UnsafeMutableRawPointer(p)
        if MemoryLayout<T>.size == 8 {
            let w = raw.assumingMemoryBound(to: UInt64.self)
            let e = UInt64(truncatingIfNeeded: expected)
            if mp_atomic_cas_u64(w, e, UInt64(truncatingIfNeeded: desired)) { return (true, expected) }
            return (false, T(truncatingIfNeeded: mp_atomic_load_u64(w)))
        }
        let w = raw.assumingMemoryBound(to: UInt32.self)
        let e = UInt32(truncatingIfNeeded: expected)
        if mp_atomic_cas_u32(w, e, UInt32(truncatingIfNeeded: desired)) { return (true, expected) }
        return (false, T(truncatingIfNeeded: mp_atomic_load_u32(w)))
    }

    @inline(__always)
    static func load<T: SharedAtomicInteger>(_ p: UnsafeMutablePointer<T>) -> T {
        let raw = UnsafeMutableRawPointer(p)
        if MemoryLayout<T>.size == 8 {
            return T(truncatingIfNeeded: mp_atomic_load_u64(raw.assumingMemoryBound(to: UInt64.self)))
        }
        return T(truncatingIfNeeded: mp_atomic_load_u32(raw.assumingMemoryBound(to: UInt32.self)))
    }

    @inline(__always)
    static func store<T: SharedAtomicInteger>(_ p: UnsafeMutablePointer<T>, _ v: T) {
        let raw = UnsafeMutableRawPointer(p)
        if MemoryLayout<T>.size == 8 {
            _ = mp_atomic_exchange_u64(raw.assumingMemoryBound(to: UInt64.self), UInt64(truncatingIfNeeded: v))
        } else {
            _ = mp_atomic_exchange_u32(raw.assumingMemoryBound(to: UInt32.self), UInt32(truncatingIfNeeded: v))
        }
    }
}

extension SharedValue where T: SharedAtomicInteger {
    /// Adds `delta` atomically, without the lock (wrapping on overflow); returns the value before.
    @discardableResult
    public func add(_ delta: T) -> T { SharedAtomics.add(pointer, delta) }

    /// Replaces the value with `desired` if it is `expected`, atomically; returns whether it did and the
    /// value found.
    @discardableResult
    public func compareExchange(expected: T, desired: T) -> (exchanged: Bool, original: T) {
        SharedAtomics.compareExchange(pointer, expected, desired)
    }

    /// An atomic load, without the lock.
    public func load() -> T { SharedAtomics.load(pointer) }

    /// An atomic store, without the lock.
    public func store(_ v: T) { SharedAtomics.store(pointer, v) }
}

extension RawSharedValue where T: SharedAtomicInteger {
    /// Adds `delta` atomically (wrapping on overflow); returns the value before.
    @discardableResult
    public func add(_ delta: T) -> T { SharedAtomics.add(pointer, delta) }

    /// Replaces the value with `desired` if it is `expected`, atomically; returns whether it did and the
    /// value found.
    @discardableResult
    public func compareExchange(expected: T, desired: T) -> (exchanged: Bool, original: T) {
        SharedAtomics.compareExchange(pointer, expected, desired)
    }

    /// An atomic load.
    public func load() -> T { SharedAtomics.load(pointer) }

    /// An atomic store.
    public func store(_ v: T) { SharedAtomics.store(pointer, v) }
}

/// A fixed-size array of a fixed-layout type in memory shared between processes, with a lock — Python's
/// `multiprocessing.Array`.
///
/// Each element access takes the lock, as Python's does; bulk reads and writes (``toArray()``,
/// ``replaceAll(with:)``, `a[slice: 2..<5]`) take it once, and ``withLock(timeout:ownerDied:_:)`` gives the whole
/// buffer under the lock. It is a `RandomAccessCollection`, so `Array(a)`, `a.map { … }` and `for x in a`
/// work. Typecodes as for ``SharedValue``.
public final class SharedArray<T: BitwiseCopyable>: Codable, @unchecked Sendable {  // memory guarded by `lock`
    let segment: SharedSegment
    /// The lock that comes with the array — Python's `get_lock()`.
    public let lock: ProcessRLock
    let buffer: UnsafeMutableBufferPointer<T>

    /// A new shared array holding `elements`.
    public init(_ elements: some Collection<T>) throws {
        segment = try makeSegment(T.self, count: elements.count)
        lock = ProcessRLock(place: SharedPlace(segment: segment, offset: 0))
        buffer = UnsafeMutableBufferPointer(
            start: (segment.baseAddress + headerSize).assumingMemoryBound(to: T.self),
            count: elements.count
        )
        _ = buffer.initialize(from: elements)
    }

    /// A new shared array of `count` copies of `value` (Python's `Array('i', 10)` is
    /// `SharedArray(repeating: 0 as Int32, count: 10)`).
    public convenience init(repeating value: T, count: Int) throws {
        try self.init(repeatElement(value, count: count))
    }

    /// Attaches to a shared array encoded in another process (or this one): the same memory and lock, not
    /// copies. Throws ``MultiprocessingError/Code/decodingFailed`` if the sender no longer holds it or its
    /// memory holds elements of another size than `T`.
    public init(from decoder: any Decoder) throws {
        segment = try SharedSegment(from: decoder)
        let n = try checkLayout(segment, T.self)
        lock = ProcessRLock(place: SharedPlace(segment: segment, offset: 0))
        buffer = UnsafeMutableBufferPointer(
            start: (segment.baseAddress + headerSize).assumingMemoryBound(to: T.self),
            count: n
        )
    }

    /// Encodes a reference to the array's shared memory (see ``SharedSegment``), to send it inside a job;
    /// the sender must keep the array until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws { try segment.encode(to: encoder) }

    /// Python's `get_lock()`.
    public func getLock() -> ProcessRLock { lock }

    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        lock.acquire()
        defer { try? lock.release() }
        return try body()
    }

    /// A copy of the elements, taken under the lock (Python's `a[:]`).
    public func toArray() -> [T] { locked { Array(buffer) } }

    /// A copy of elements `range`, read or written under the lock (Python's `a[2:5]`); a written array
    /// must have as many elements as the range.
    public subscript(slice range: Range<Int>) -> [T] {
        get { locked { Array(buffer[range]) } }
        set {
            precondition(newValue.count == range.count, "\(newValue.count) elements for a range of \(range.count)")
            locked { for (i, v) in zip(range, newValue) { buffer[i] = v } }
        }
    }

    /// Replaces every element under the lock; `elements` must have ``count`` elements.
    public func replaceAll(with elements: some Collection<T>) throws {
        guard elements.count == buffer.count else {
            throw MultiprocessingError(
                .invalidState,
                "\(elements.count) elements for a shared array of \(buffer.count)"
            )
        }
        locked { _ = buffer.update(fromContentsOf: elements) }
    }

    /// Runs `body` on the whole buffer holding the lock. See ``SharedValue/withLock(timeout:ownerDied:_:)``.
    public func withLock<R>(
        timeout: Duration? = nil,
        ownerDied: ((UnsafeMutableBufferPointer<T>) throws -> Void)? = nil,
        _ body: (UnsafeMutableBufferPointer<T>) throws -> R
    ) throws -> R {
        let outcome = lock.acquire(timeout: timeout)
        guard outcome.isHeld else { throw lockTimedOut(timeout) }
        defer { try? lock.release() }
        if outcome == .acquiredFromDeadOwner, let ownerDied { try ownerDied(buffer) }
        return try body(buffer)
    }
}

extension SharedArray: RandomAccessCollection, MutableCollection {
    /// Always 0.
    public var startIndex: Int { 0 }
    /// The element count (one past the last index).
    public var endIndex: Int { buffer.count }

    /// Element `i`, read or written under the lock.
    public subscript(i: Int) -> T {
        get { locked { buffer[i] } }
        set { locked { buffer[i] = newValue } }
    }
}

extension SharedArray where T: SharedAtomicInteger {
    /// Adds `delta` to element `i` atomically, without the lock; returns the value before.
    @discardableResult
    public func add(_ delta: T, at i: Int) -> T {
        precondition(i >= 0 && i < buffer.count, "index \(i) out of range")
        return SharedAtomics.add(buffer.baseAddress! + i, delta)
    }
}

/// A fixed-size array in memory shared between processes, without a lock — Python's `RawArray`.
/// Element accesses are plain loads and stores; integers have atomic ``add(_:at:)``.
public final class RawSharedArray<T: BitwiseCopyable>: Codable, @unchecked Sendable {  // unsynchronised by design
    let segment: SharedSegment
    /// The elements, for bulk work (`memcpy`-speed copies with `update(from:)` and the like).
    public let buffer: UnsafeMutableBufferPointer<T>

    /// A new shared array holding `elements`.
    public init(_ elements: some Collection<T>) throws {
        segment = try makeSegment(T.self, count: elements.count)
        buffer = UnsafeMutableBufferPointer(
            start: (segment.baseAddress + headerSize).assumingMemoryBound(to: T.self),
            count: elements.count
        )
        _ = buffer.initialize(from: elements)
    }

    /// A new shared array of `count` copies of `value`.
    public convenience init(repeating value: T, count: Int) throws {
        try self.init(repeatElement(value, count: count))
    }

    /// Attaches to a raw shared array encoded in another process (or this one): the same memory, not a copy. Throws
    /// ``MultiprocessingError/Code/decodingFailed`` if the sender no longer holds it or its memory
    /// holds elements of another size than `T`.
    public init(from decoder: any Decoder) throws {
        segment = try SharedSegment(from: decoder)
        let n = try checkLayout(segment, T.self)
        buffer = UnsafeMutableBufferPointer(
            start: (segment.baseAddress + headerSize).assumingMemoryBound(to: T.self),
            count: n
        )
    }

    /// Encodes a reference to the array's shared memory (see ``SharedSegment``), to send it inside a job;
    /// the sender must keep the array until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws { try segment.encode(to: encoder) }
}

extension RawSharedArray: RandomAccessCollection, MutableCollection {
    /// Always 0.
    public var startIndex: Int { 0 }
    /// The element count (one past the last index).
    public var endIndex: Int { buffer.count }

    /// Element `i` (a plain load or store).
    public subscript(i: Int) -> T {
        get { buffer[i] }
        set { buffer[i] = newValue }
    }
}

extension RawSharedArray where T: SharedAtomicInteger {
    /// Adds `delta` to element `i` atomically; returns the value before.
    @discardableResult
    public func add(_ delta: T, at i: Int) -> T {
        precondition(i >= 0 && i < buffer.count, "index \(i) out of range")
        return SharedAtomics.add(buffer.baseAddress! + i, delta)
    }
}
