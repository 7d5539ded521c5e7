internal import CMultiprocessingShims
import Glibc

/// A block of memory that several processes map at once: what ``SharedValue``, ``SharedArray`` and the
/// process-shared locks live in.
///
/// The memory is an anonymous memory file (`memfd_create`), so it has no name to leak: the kernel frees
/// it when the last process that maps it unmaps it or exits, however it exits (SIGKILL included). For
/// memory that unrelated processes find by name, see ``SharedMemory``.
///
/// A segment is `Codable` and travels inside jobs, to ``ChildProcess``es and ``ProcessPool`` tasks alike:
/// it is encoded as the sender's process id, its descriptor number and the file's inode, and the
/// receiver opens `/proc/<pid>/fd/<n>` (allowed between processes of the same user), checks the inode,
/// and maps the same pages — not a copy. The sender must still hold the segment when the receiver
/// decodes it (the usual case: the parent keeps it while the child or the task runs); otherwise decoding
/// fails with a clear error.
public final class SharedSegment: Codable, @unchecked Sendable {  // immutable; the memory is the user's
    /// Bytes mapped.
    public let size: Int
    /// The start of the mapping in this process (page-aligned).
    public let baseAddress: UnsafeMutableRawPointer
    let fd: Int32
    let inode: Int

    /// Creates `size` bytes of zeroed shared memory.
    public init(size: Int) throws {
        guard size > 0 else {
            throw MultiprocessingError(.invalidState, "a shared segment needs a positive size, not \(size)")
        }
        let fd = try Syscall.sharedMemory(name: "mp-shared", size: size)
        do {
            self.inode = try Syscall.inode(fd)
            self.baseAddress = try Syscall.mapShared(fd, size: size)
        } catch {
            Syscall.close(fd)
            throw error
        }
        self.fd = fd
        self.size = size
    }

    deinit {
        Syscall.unmap(baseAddress, size: size)
        Syscall.close(fd)
    }

    private enum Key: String, CodingKey { case pid, fd, inode, size }

    /// Encodes the segment as this process's id, its descriptor number, the file's inode and the size (not
    /// the memory's contents); keep the segment alive until the receiver has decoded it.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(getpid(), forKey: .pid)
        try c.encode(fd, forKey: .fd)
        try c.encode(inode, forKey: .inode)
        try c.encode(size, forKey: .size)
    }

    /// Maps the segment another process (or this one) encoded.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let pid = try c.decode(Int32.self, forKey: .pid)
        let number = try c.decode(Int32.self, forKey: .fd)
        let inode = try c.decode(Int.self, forKey: .inode)
        let size = try c.decode(Int.self, forKey: .size)
        guard size > 0 else { throw MultiprocessingError(.decodingFailed, "a shared segment of size \(size)") }
        let fd: Int32
        do {
            fd = try Syscall.open("/proc/\(pid)/fd/\(number)", O_RDWR)
        } catch {
            throw MultiprocessingError(
                .decodingFailed,
                "cannot attach the shared segment held by process \(pid) (it must still hold it): \(error)"
            )
        }
        do {
            // The number may have been closed and reused for another file since it was encoded.
            guard try Syscall.inode(fd) == inode, try Syscall.fileSize(fd) >= size else {
                throw MultiprocessingError(
                    .decodingFailed,
                    "process \(pid) no longer holds the shared segment it sent (descriptor \(number) is another file)"
                )
            }
            self.baseAddress = try Syscall.mapShared(fd, size: size)
        } catch {
            Syscall.close(fd)
            throw error
        }
        self.fd = fd
        self.inode = inode
        self.size = size
    }

    /// Whether `other` maps the same memory (in this process or another).
    public func isSameMemory(as other: SharedSegment) -> Bool { inode == other.inode }
}
