import Glibc
import MultiprocessingSQL
import Threading

/// Wake-ups for a queue in an SQLite file, among the processes of one machine and one user (SQLite has no
/// `NOTIFY`): each listening worker binds a Unix datagram socket in a directory of the user's own, named
/// after the database file's device and inode (`/tmp/mp-doorbell-UID-DEV-INO/`, mode 0700, so every path
/// to the same file finds it), and whoever commits jobs that are due rings every socket there with the
/// queues' names. A worker then claims at once instead of at its next poll; polling stays, for delayed
/// jobs, retries, other users' producers, and producers that do not ring (jobs queued in a transaction of
/// the caller's, or by SQL of its own).
///
/// A ring is a hint, never a promise: a full socket buffer drops it (the worker has wake-ups pending
/// anyway), a socket whose worker died is removed by the next ring that finds it refused. A directory
/// that is not the user's own 0700 directory (another user made it first, or it is a link) is not used.
enum Doorbell {
    /// The doorbells' directory of the SQLite database at `url`, or nil (not SQLite, in memory, no file).
    static func directory(_ url: DatabaseURL) -> String? {
        guard url.kind == .sqlite, !url.database.isEmpty, url.database != ":memory:" else { return nil }
        var st = stat()
        guard stat(url.database, &st) == 0 else { return nil }
        return "/tmp/mp-doorbell-\(getuid())-\(st.st_dev)-\(st.st_ino)"
    }

    /// Opens `dir` if it is a directory (not a link) of this user's with mode 0700; creates it when `create`.
    /// Returns its descriptor, or -1.
    static func openDirectory(_ dir: String, create: Bool) -> Int32 {
        if create { _ = mkdir(dir, 0o700) }
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return -1 }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_uid == getuid(), st.st_mode & 0o7777 == 0o700 else {
            close(fd)
            return -1
        }
        return fd
    }

    /// The names' datagram: one per line, whole names only, at most 4 KiB.
    static func payload(_ queues: [String]) -> [UInt8] {
        var out: [UInt8] = []
        for q in queues {
            let name = Array(q.utf8)
            guard out.count + name.count + 1 <= 4096 else { break }
            if !out.isEmpty { out.append(UInt8(ascii: "\n")) }
            out += name
        }
        return out
    }

    /// Rings every doorbell in `dir` (``directory(_:)``) with `queues`' names. Costs a failed `open` when no
    /// worker listens, a `sendto` per listening worker otherwise; never blocks.
    static func ring(_ dir: String?, queues: [String]) {
        guard let dir else { return }
        let dirFd = openDirectory(dir, create: false)
        guard dirFd >= 0, let d = fdopendir(dirFd) else { return }
        defer { closedir(d) }  // closes dirFd
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let bytes = payload(queues)
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasSuffix(".sock") else { continue }
            // Sockets only, never through a link.
            var st = stat()
            guard fstatat(dirFd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFSOCK else { continue }
            let sent = withSocketAddress(dir + "/" + name) { address, length in
                bytes.withUnsafeBytes {
                    sendto(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), address, length)
                }
            }
            // Its worker is gone (killed: a worker that stops removes its own): remove the socket.
            if let sent, sent < 0, errno == ECONNREFUSED { unlinkat(dirFd, name, 0) }
        }
    }

    /// Calls `body` with `path` as a `sockaddr_un`; nil when the path does not fit one.
    static func withSocketAddress<R>(
        _ path: String,
        _ body: (UnsafePointer<sockaddr>, socklen_t) -> R
    ) -> R? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}

/// A worker's doorbell: its socket in the database's doorbell directory and a thread that turns each ring
/// naming one of its queues into a call of `handler`. ``close()`` stops the thread and removes the socket;
/// ``isOpen`` turns false when the thread ended or the socket was removed (the worker listens again).
final class DoorbellListener: @unchecked Sendable {  // the descriptors are set once; the rest is locked
    private let fd: Int32
    private let stopFd: Int32
    private let stopWriter: Int32
    private let path: String
    private let inode: UInt
    private var thread: OSThread?
    private struct State {
        var open = true
        var threadRunning = true
        var lastCheck: ContinuousClock.Instant?
    }
    private let state = TrackedMutex(State())

    /// Listens for rings naming one of `queues`; nil when the database has no doorbells (not a file).
    /// - Throws: ``SQLError`` when the directory is not this user's own or the socket cannot be made.
    init?(_ url: DatabaseURL, queues: [String], _ handler: @escaping @Sendable () -> Void) throws {
        guard let dir = Doorbell.directory(url) else { return nil }
        let dirFd = Doorbell.openDirectory(dir, create: true)
        guard dirFd >= 0 else {
            throw SQLError(.other, "the doorbell directory \(dir) is not this user's own 0700 directory")
        }
        Glibc.close(dirFd)
        let path = "\(dir)/\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SQLError(.other, "cannot make a doorbell socket: errno \(errno)") }
        var st = stat()
        guard Doorbell.withSocketAddress(path, { bind(fd, $0, $1) }) == 0, lstat(path, &st) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw SQLError(.other, "cannot bind the doorbell \(path): errno \(e)")
        }
        // A socket pair whose one end ``close()`` writes to: the thread's poll sees it and returns.
        var stop: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &stop) == 0 else {
            let e = errno
            Glibc.close(fd)
            unlink(path)
            throw SQLError(.other, "cannot make the doorbell's stop socket pair: errno \(e)")
        }
        self.fd = fd
        self.stopFd = stop[0]
        self.stopWriter = stop[1]
        self.path = path
        self.inode = UInt(st.st_ino)
        let wanted = Set(queues)
        let stopFd = stop[0]
        let state = self.state
        let thread = OSThread(name: "mp-doorbell", daemon: true) {
            defer { state.withLock { $0.threadRunning = false } }
            var fds = [
                pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: stopFd, events: Int16(POLLIN), revents: 0),
            ]
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = poll(&fds, 2, -1)
                if n < 0 && errno == EINTR { continue }
                if n < 0 || fds[1].revents != 0 { return }
                var rung = false
                // Every ring waiting, one wake-up for all.
                while true {
                    let got = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                    if got < 0 { break }
                    let names = buffer[0..<got].split(separator: UInt8(ascii: "\n"))
                    if names.contains(where: { wanted.contains(String(decoding: $0, as: UTF8.self)) }) { rung = true }
                }
                if rung { handler() }
            }
        }
        do {
            try thread.start()
        } catch {
            // `deinit` runs now: it finds the doorbell closed, and closes nothing twice.
            state.withLock { $0.open = false }
            Glibc.close(fd)
            Glibc.close(stop[0])
            Glibc.close(stop[1])
            unlink(path)
            throw SQLError(.other, "cannot start the doorbell's thread: \(error)")
        }
        self.thread = thread
    }

    /// Until ``close()``, while its thread runs and its socket is in place (looked at once a second).
    var isOpen: Bool {
        let now = ContinuousClock.now
        let (open, look) = state.withLock { s -> (Bool, Bool) in
            guard s.open && s.threadRunning else { return (false, false) }
            let look = s.lastCheck.map { now - $0 >= .seconds(1) } ?? true
            if look { s.lastCheck = now }
            return (true, look)
        }
        guard open, look else { return open }
        var st = stat()
        return lstat(path, &st) == 0 && UInt(st.st_ino) == inode
    }

    /// Stops listening: the thread ends, the socket is removed.
    func close() {
        let first = state.withLock { s -> Bool in
            defer { s.open = false }
            return s.open
        }
        guard first else { return }
        var one: UInt8 = 1
        _ = write(stopWriter, &one, 1)
        let joined = (try? thread?.join(timeout: .seconds(10))) ?? true
        var st = stat()
        if lstat(path, &st) == 0 && UInt(st.st_ino) == inode { unlink(path) }
        // The directory too, when this was the last doorbell (a worker binding its own meanwhile finds it
        // gone, and tries again at its next listen step).
        rmdir(String(path[..<path.lastIndex(of: "/")!]))
        // A thread that did not end (it never blocks but in poll) keeps its descriptors: closing them under
        // it could hand their numbers to someone else's files.
        guard joined else { return }
        Glibc.close(fd)
        Glibc.close(stopFd)
        Glibc.close(stopWriter)
    }

    deinit { close() }
}

/// What tells a worker that jobs were queued: PostgreSQL's `LISTEN` connection, or an SQLite doorbell.
protocol WakeUps: AnyObject {
    /// Still hearing (a listener that lost its server, or its socket, is reopened).
    var isOpen: Bool { get }
    /// Stops hearing.
    func close()
}

extension DoorbellListener: WakeUps {}

/// A `LISTEN`ing connection as ``WakeUps``.
final class ListeningConnection: WakeUps {
    let connection: any SQLNotificationListening
    init(connection: any SQLNotificationListening) { self.connection = connection }
    var isOpen: Bool { connection.isOpen }
    func close() { connection.close() }
}
