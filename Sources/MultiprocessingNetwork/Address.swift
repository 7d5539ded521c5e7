import Glibc
import Multiprocessing

/// Where a ``Listener`` listens or a client connects — Python's `('host', port)` tuples and
/// Unix-socket paths.
public enum Address: Sendable, Hashable, CustomStringConvertible {
    /// A TCP address; port 0 asks the system for a free port when listening.
    case tcp(host: String, port: UInt16)
    /// A Unix-domain socket path (at most 107 bytes).
    case unix(path: String)

    /// `host:port` for TCP, the path for a Unix socket.
    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): path
        }
    }

    /// The resolved socket addresses (TCP: from `getaddrinfo`, IPv4 first).
    func withSockaddrs<R>(_ body: (Int32, UnsafePointer<sockaddr>, socklen_t) throws -> R?) throws -> R {
        switch self {
        case .unix(let path):
            var sun = sockaddr_un()
            sun.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: sun.sun_path) else {
                throw MultiprocessingError(.invalidState, "Unix socket path too long: \(path)")
            }
            withUnsafeMutableBytes(of: &sun.sun_path) { p in
                p.copyBytes(from: bytes)
                p[bytes.count] = 0
            }
            let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
            let r = try withUnsafePointer(to: &sun) { p in
                try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body(AF_UNIX, $0, len) }
            }
            guard let r else { throw MultiprocessingError(.system, "cannot use \(path)") }
            return r
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV | (host.isEmpty ? AI_PASSIVE : 0)
            var res: UnsafeMutablePointer<addrinfo>?
            let rc = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &res)
            guard rc == 0, let first = res else {
                throw MultiprocessingError(.system, "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
            }
            defer { freeaddrinfo(first) }
            var candidates: [UnsafeMutablePointer<addrinfo>] = []
            var p: UnsafeMutablePointer<addrinfo>? = first
            while let a = p {
                candidates.append(a)
                p = a.pointee.ai_next
            }
            candidates.sort { ($0.pointee.ai_family == AF_INET ? 0 : 1) < ($1.pointee.ai_family == AF_INET ? 0 : 1) }
            var lastError: (any Error)?
            for a in candidates {
                do {
                    if let r = try body(a.pointee.ai_family, a.pointee.ai_addr, a.pointee.ai_addrlen) { return r }
                } catch {
                    lastError = error
                }
            }
            throw lastError ?? MultiprocessingError(.system, "no usable address for \(host)")
        }
    }

    /// The address of a bound or connected socket.
    static func local(of fd: Int32, unixPath: String?) -> Address {
        if let a = socketAddress(of: fd, peer: false), case .tcp = a { return a }
        return .unix(path: unixPath ?? "")
    }

    /// The address of a connected socket's peer (nil for an unnamed Unix peer or on error).
    static func peer(of fd: Int32) -> Address? {
        let a = socketAddress(of: fd, peer: true)
        if case .unix(let p)? = a, p.isEmpty { return nil }
        return a
    }

    private static func socketAddress(of fd: Int32, peer: Bool) -> Address? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                peer ? getpeername(fd, $0, &len) : getsockname(fd, $0, &len)
            }
        }
        guard rc == 0 else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    var a = sin.pointee.sin_addr
                    var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                    inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
                    return .tcp(host: cstring(buf), port: UInt16(bigEndian: sin.pointee.sin_port))
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin in
                    var a = sin.pointee.sin6_addr
                    var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
                    inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
                    return .tcp(host: cstring(buf), port: UInt16(bigEndian: sin.pointee.sin6_port))
                }
            }
        default:
            return .unix(path: "")
        }
    }
}

func cstring(_ buf: [CChar]) -> String {
    String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
