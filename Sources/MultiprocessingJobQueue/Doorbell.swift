import Glibc
import MultiprocessingSQL
import Threading

/// Wake-ups for a queue in an SQLite file, among the processes of one machine (SQLite has no `NOTIFY`):
/// each listening worker binds a Unix datagram socket in a directory named after the database file's
/// device and inode (`/tmp/mp-doorbell-DEV-INO/`, so every path to the same file finds it), and whoever
/// commits jobs that are due rings every socket there with the queues' names. A worker then claims at
/// once instead of at its next poll; polling stays, for delayed jobs, retries, and producers that do not
/// ring (jobs queued in a transaction of the caller's, or by SQL of its own).
///
/// A ring is a hint, never a promise: a full socket buffer drops it (the worker has wake-ups pending
/// anyway), a socket whose worker died is removed by the next ring that finds it refused.
enum Doorbell {
    /// The doorbells' directory of the SQLite database at `url`, or nil (not SQLite, in memory, no file).
    static func directory(_ url: DatabaseURL) -> String? {
        guard url.kind == .sqlite, !url.database.isEmpty, url.database != ":memory:" else { return nil }
        var st = stat()
        guard stat(url.database, &st) == 0 else { return nil }
        return "/tmp/mp-doorbell-\(st.st_dev)-\(st.st_ino)"
    }

    /// Rings every doorbell of the database with `queues`' names (one per line). Costs an `opendir` when no
    /// worker listens, a `sendto` per listening worker otherwise; never blocks.
    static func ring(_ url: DatabaseURL, queues: [String]) {
        guard let dir = directory(url), let d = opendir(dir) else { return }
        defer { closedir(d) }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var payload = Array(queues.joined(separator: "\n").utf8)
        if payload.count > 4096 { payload = Array(payload.prefix(4096)) }
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasSuffix(".sock") else { continue }
            let path = dir + "/" + name
            let sent = withSocketAddress(path) { address, length in
                payload.withUnsafeBytes {
                    sendto(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), address, length)
                }
            }
            // Its worker is gone (killed: a worker that stops removes its own): remove the socket.
            if sent == nil || (sent! < 0 && (errno == ECONNREFUSED || errno == ENOENT)) { unlink(path) }
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
/// naming one of its queues into a call of `handler`. ``close()`` stops the thread and removes the socket.
final class DoorbellListener: @unchecked Sendable {  // the descriptors are set once; `open` is atomic
    private let fd: Int32
    private let stopFd: Int32
    private let stopWriter: Int32
    private let path: String
    private var thread: OSThread?
    private let open = TrackedMutex(true)

    /// Listens for rings naming one of `queues`; nil when the database has no doorbells (not a file).
    /// - Throws: ``SQLError`` when the socket cannot be made.
    init?(_ url: DatabaseURL, queues: [String], _ handler: @escaping @Sendable () -> Void) throws {
        guard let dir = Doorbell.directory(url) else { return nil }
        // Writable by everyone who may ring (a producer may run as another user); sticky, as /tmp.
        if mkdir(dir, 0o1777) == 0 { chmod(dir, 0o1777) }
        let path = "\(dir)/\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SQLError(.other, "cannot make a doorbell socket: errno \(errno)") }
        let bound = Doorbell.withSocketAddress(path) { bind(fd, $0, $1) }
        guard bound == 0 else {
            let e = errno
            Glibc.close(fd)
            throw SQLError(.other, "cannot bind the doorbell \(path): errno \(e)")
        }
        chmod(path, 0o666)
        // A socket pair whose one end ``close()`` writes to: the thread's poll sees it and returns.
        var stop: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &stop) == 0 else {
            Glibc.close(fd)
            unlink(path)
            throw SQLError(.other, "cannot make the doorbell's stop socket pair: errno \(errno)")
        }
        let stopFd = stop[0]
        self.stopWriter = stop[1]
        self.fd = fd
        self.stopFd = stopFd
        self.path = path
        let wanted = Set(queues)
        let thread = OSThread(name: "mp-doorbell", daemon: true) {
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
            Glibc.close(fd)
            Glibc.close(stopFd)
            Glibc.close(stop[1])
            unlink(path)
            throw SQLError(.other, "cannot start the doorbell's thread: \(error)")
        }
        self.thread = thread
    }

    /// Until ``close()``.
    var isOpen: Bool { open.withLock { $0 } }

    /// Stops listening: the thread ends, the socket is removed.
    func close() {
        let first = open.withLock { o -> Bool in
            defer { o = false }
            return o
        }
        guard first else { return }
        var one: UInt8 = 1
        _ = write(stopWriter, &one, 1)
        _ = try? thread?.join(timeout: .seconds(10))
        Glibc.close(fd)
        Glibc.close(stopFd)
        Glibc.close(stopWriter)
        unlink(path)
        // The directory too, when this was the last doorbell (a worker binding its own meanwhile finds it
        // gone, and tries again at its next listen step).
        rmdir(String(path[..<path.lastIndex(of: "/")!]))
    }

    deinit { close() }
}

/// What tells a worker that jobs were queued: PostgreSQL's `LISTEN` connection, or an SQLite doorbell.
protocol WakeUps: AnyObject {
    /// Still hearing (a listener that lost its server is reopened).
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
