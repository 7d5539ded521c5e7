internal import CMultiprocessingShims
import Glibc
import Synchronization
import Threading

/// Named shared memory that unrelated processes open by name — Python's
/// `multiprocessing.shared_memory.SharedMemory`, and the same files: a segment created here is
/// `/dev/shm/<name>`, which Python's `SharedMemory(name)` attaches to, and the other way round.
///
/// **Clean-up.** A segment this library creates is removed when its creator ends without
/// ``unlink()``ing it — whether it returns, crashes or is SIGKILLed: on the first creation a small
/// tracker process is started (this executable again), which holds one end of a socket; when the
/// creator ends, however it ends, the kernel closes the other end and the tracker unlinks what is still
/// registered, then exits. Attaching never registers (CPython's tracker also unregisters on attach,
/// and so unlinks segments other processes still use, gh-82300). Pass `persistent: true` for a segment
/// that must outlive its creator.
///
/// `SharedMemory` is `Codable` (by name), so it can be sent inside jobs.
public final class SharedMemory: Codable, @unchecked Sendable {  // `mapping` behind `lock`; memory is the user's
    /// The name, without the leading `/` (Python's `name`).
    public let name: String
    /// Bytes mapped (Python's `size`).
    public let size: Int
    private let base: UnsafeMutableRawPointer
    private let lock = TrackedMutex<Bool>(true)  // mapped

    /// Creates a segment of `size` bytes (Python's `SharedMemory(create=True, size=…)`); `name` is
    /// chosen at random when nil. Fails if the name exists.
    public init(create size: Int, name: String? = nil, persistent: Bool = false) throws {
        guard size > 0 else {
            throw MultiprocessingError(.invalidState, "a shared memory segment needs a positive size, not \(size)")
        }
        let name = try name.map(Self.validated) ?? Self.randomName()
        let path = "/dev/shm/" + name
        let fd = try Syscall.open(path, O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
        defer { Syscall.close(fd) }
        do {
            try Syscall.check("ftruncate", mp_ftruncate(fd, size))
            base = try Syscall.mapShared(fd, size: size)
        } catch {
            _ = Glibc.unlink(path)
            throw error
        }
        self.name = name
        self.size = size
        if !persistent {
            do {
                try SegmentTracker.register(name)
            } catch {
                Syscall.unmap(base, size: size)
                _ = Glibc.unlink(path)
                throw error
            }
        }
    }

    /// Attaches to the existing segment `name` (Python's `SharedMemory(name)`); its size is the file's.
    public init(attach name: String) throws {
        let name = try Self.validated(name)
        let fd = try Syscall.open("/dev/shm/" + name, O_RDWR)
        defer { Syscall.close(fd) }
        let size = try Syscall.fileSize(fd)
        guard size > 0 else { throw MultiprocessingError(.invalidState, "shared memory \(name) is empty") }
        base = try Syscall.mapShared(fd, size: size)
        self.name = name
        self.size = size
    }

    deinit { close() }

    /// Attaches to the segment named in the encoding, as ``SharedMemory/init(attach:)`` does: a new mapping
    /// of the same memory. Throws if no segment of that name exists (any more).
    public convenience init(from decoder: any Decoder) throws {
        try self.init(attach: try decoder.singleValueContainer().decode(String.self))
    }

    /// Encodes the segment as its name, to send it inside a job; the receiver attaches to it by name.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(name)
    }

    /// The mapped bytes (Python's `buf`). Invalid after ``close()``.
    public var buffer: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: size) }

    /// The memory as `count` elements of `T` from byte `offset` (a typed view; `T` must be aligned there).
    public func view<T: BitwiseCopyable>(
        as _: T.Type,
        offset: Int = 0,
        count: Int? = nil
    ) throws
        -> UnsafeMutableBufferPointer<T>
    {
        let n = count ?? (size - offset) / MemoryLayout<T>.stride
        guard offset >= 0, n >= 0, offset + n * MemoryLayout<T>.stride <= size,
            offset % MemoryLayout<T>.alignment == 0
        else {
            throw MultiprocessingError(
                .invalidState,
                "a view of \(n) \(T.self) at \(offset) does not fit \(size) bytes"
            )
        }
        return UnsafeMutableBufferPointer(start: (base + offset).assumingMemoryBound(to: T.self), count: n)
    }

    /// Unmaps the memory in this process (the segment stays for others) — Python's `close()`.
    public func close() {
        let wasMapped = lock.withLock { m in
            defer { m = false }
            return m
        }
        if wasMapped { Syscall.unmap(base, size: size) }
    }

    /// Removes the name, so no one else can attach; the memory lives on until every process has closed
    /// it — Python's `unlink()`. Call it once, usually in the creator.
    public func unlink() throws {
        try Syscall.unlink("/dev/shm/" + name)
        SegmentTracker.unregister(name)
    }

    static func validated(_ name: String) throws -> String {
        let n = name.hasPrefix("/") ? String(name.dropFirst()) : name
        guard !n.isEmpty, n.utf8.count < 250, !n.contains("/"), n != ".", n != ".." else {
            throw MultiprocessingError(.invalidState, "invalid shared memory name \"\(name)\"")
        }
        return n
    }

    private static func randomName() throws -> String {
        var bytes = [UInt8](repeating: 0, count: 8)
        try Syscall.check("getrandom", mp_getrandom(&bytes, bytes.count))
        return "mp_"
            + bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
            .joined()
    }
}

/// The process that unlinks this process's named segments when it ends (see ``SharedMemory``).
///
/// It is this executable in worker mode with `SWIFT_MP_TRACKER` set: it reads `+name` and `-name`
/// frames on its channel, and at end of file (its creator ended or exited) unlinks what is left and
/// exits. It ignores SIGINT, SIGTERM and SIGHUP, and is not killed with its parent, so it always gets to
/// clean up. At a normal exit the parent closes the channel and reaps it.
enum SegmentTracker {
    private struct Running {
        let handle: ProcessHandle
        let channel: Connection
    }

    private static let state = TrackedMutex<Running?>(nil)

    /// The tracker's process id, if this process has started one.
    static var pid: Int32? { state.withLock { $0?.handle.pid } }

    static func register(_ name: String) throws {
        try state.withLock { running in
            if running == nil {
                let w = try Spawner.spawn(environment: ["SWIFT_MP_TRACKER": "1"], dieWithParent: false, runsJobs: false)
                let handle = ProcessHandle(
                    pid: w.pid,
                    pidfd: w.pidfd,
                    name: "SegmentTracker",
                    daemon: false,
                    registered: false
                )
                running = Running(handle: handle, channel: w.channel)
                // At exit: close the channel (the tracker unlinks what is left and exits), then reap it.
                atexit { SegmentTracker.closeAtExit() }
            }
            try running!.channel.sendBytes(Array(("+" + name).utf8), timeout: .seconds(5))
        }
    }

    static func unregister(_ name: String) {
        state.withLock { running in
            _ = try? running?.channel.sendBytes(Array(("-" + name).utf8), timeout: .seconds(5))
        }
    }

    private static func closeAtExit() {
        let handle = state.withLock { running -> ProcessHandle? in
            running?.channel.close()
            return running?.handle
        }
        _ = try? handle?.join(timeout: .seconds(2))
    }

    /// The tracker's side: runs until its channel ends, then unlinks what is left.
    static func serve(_ channel: Connection) -> Never {
        signal(SIGTERM, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        var names = Set<String>()
        while let frame = try? channel.recvBytes() {
            guard let op = frame.first, frame.count > 1 else { continue }
            let name = String(decoding: frame.dropFirst(), as: UTF8.self)
            guard (try? SharedMemory.validated(name)) == name else { continue }
            if op == UInt8(ascii: "+") { names.insert(name) } else { names.remove(name) }
        }
        for name in names { _ = Glibc.unlink("/dev/shm/" + name) }
        _exit(0)
    }
}
