import Glibc
import Threading

/// Something ``waitReady(_:timeout:)`` can wait on: connections, process sentinels, raw descriptors.
public protocol Waitable: AnyObject, Sendable {
    /// The descriptor that becomes readable when the object is ready.
    var waitDescriptor: Int32 { get }
    /// Ready without polling (data already buffered).
    var isReadyWithoutPolling: Bool { get }
}

extension Connection: Waitable {
    /// The connection's descriptor.
    public var waitDescriptor: Int32 { fileDescriptor }
    /// Whether a message (or part of one) is already buffered.
    public var isReadyWithoutPolling: Bool { hasBufferedData }
}

extension ProcessHandle: Waitable {
    /// The process's pidfd, readable once it has ended.
    public var waitDescriptor: Int32 { sentinel }
    /// Always `false`: a process's end is seen by polling its pidfd.
    public var isReadyWithoutPolling: Bool { false }
}

/// A raw descriptor to wait on (for example a ``ChildProcess/sentinel``).
public final class DescriptorWaitable: Waitable {
    /// The descriptor to poll for readability.
    public let waitDescriptor: Int32
    /// Always `false`: a raw descriptor buffers nothing.
    public var isReadyWithoutPolling: Bool { false }
    /// Wraps `fd`, which the caller keeps open while waiting (it is not closed by this object).
    public init(_ fd: Int32) { waitDescriptor = fd }
}

/// Waits until at least one object is ready — Python's `multiprocessing.connection.wait(objects, timeout)`:
/// a connection with a message (or whose peer hung up), a process that has ended.
///
/// - Returns: the ready objects (empty after a timeout).
public func waitReady(_ objects: [any Waitable], timeout: Duration? = nil) throws -> [any Waitable] {
    let buffered = objects.filter { $0.isReadyWithoutPolling }
    if !buffered.isEmpty { return buffered }
    let ready = try Syscall.poll(objects.map { ($0.waitDescriptor, Int16(POLLIN)) }, deadline: Deadline.after(timeout))
    return ready.map { objects[$0] }
}
