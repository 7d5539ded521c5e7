internal import Glibc
package import SystemPackage

/// The package's one path to the kernel: every module that reads, writes, polls, accepts or connects
/// does it through these wrappers, and every wrapper goes through one loop, ``SystemCall/loop(_:_:)``,
/// which applies one policy to the `errno` a call leaves:
///
/// | errno | what happens |
/// | --- | --- |
/// | `EINTR` | the call is made again (a signal handler ran; nothing failed) |
/// | `EAGAIN` / `EWOULDBLOCK` | ``IOResult/wouldBlock``: the caller waits (poll, the reactor) and tries again |
/// | `EBADF`, `EFAULT` | a trap: a descriptor used after its close, or a bad buffer, is a bug in this package, and going on could read or write whatever file gets the number next |
/// | `ECONNRESET` on a read | end of input (0 bytes), as the peer closing: both mean "the other side is gone" |
/// | `EPIPE`, `ECONNRESET` on a write | ``SystemCallError`` whose ``SystemCallError/peerClosed`` is true; modules report it as end of file |
/// | anything else | ``SystemCallError`` with the call's name and the typed `Errno` |
///
/// Descriptors a user hands in (`Connection(fileDescriptor:)`) are checked where they come in (`fstat`,
/// `fcntl`: errors, never traps); after that, the package owns them and guards their close against
/// concurrent use (``DescriptorLifetime``), so a bad descriptor cannot reach the loop without a bug.
///
/// Futex waits are the one family outside it: their `EINTR`, `EAGAIN` and `ETIMEDOUT` are answers of
/// the wait primitive (spurious wake-up, value changed, deadline), handled where the primitive is.
package enum SystemCall {
    /// The one retry loop. `body` makes the call and returns its result (≥ 0) or `-errno` (the shims'
    /// convention; libc calls are adapted with ``libc(_:)``).
    ///
    /// - Parameters:
    ///   - call: the call's name, for the error (built only on failure).
    ///   - resetIsEndOfInput: `ECONNRESET` returns 0 (for reads).
    ///   - trapsBadDescriptor: `EBADF` traps (the default); `false` for a call that carries descriptors a
    ///     user handed in (`sendmsg` with `SCM_RIGHTS`), where a closed one is the user's error.
    /// - Returns: the result, or ``IOResult/wouldBlock`` for `EAGAIN`.
    @inlinable
    package static func loop(
        _ call: @autoclosure () -> String,
        resetIsEndOfInput: Bool = false,
        trapsBadDescriptor: Bool = true,
        _ body: () -> Int
    ) throws(SystemCallError) -> IOResult {
        while true {
            let r = body()
            if r >= 0 { return .done(r) }
            let e = Int32(truncatingIfNeeded: -r)
            switch e {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            case EBADF where !trapsBadDescriptor: throw SystemCallError(call(), Errno(rawValue: e))
            case EBADF, EFAULT: badDescriptorOrBuffer(call(), e)
            case ECONNRESET where resetIsEndOfInput: return .done(0)
            default: throw SystemCallError(call(), Errno(rawValue: e))
            }
        }
    }

    /// A call that does not return `EAGAIN` unless something is wrong (a blocking read, `open`,
    /// `epoll_wait`): the loop's result, with `EAGAIN` an error like any other.
    @inlinable
    package static func blocking(
        _ call: @autoclosure () -> String,
        resetIsEndOfInput: Bool = false,
        _ body: () -> Int
    ) throws(SystemCallError) -> Int {
        switch try loop(call(), resetIsEndOfInput: resetIsEndOfInput, body) {
        case .done(let n): return n
        case .wouldBlock: throw SystemCallError(call(), .resourceTemporarilyUnavailable)
        }
    }

    /// A libc result (`-1` and `errno` on failure) in the shims' convention (`-errno`).
    @inlinable
    package static func libc(_ r: Int) -> Int { r >= 0 ? r : -Int(Glibc.errno) }

    /// A libc result (`-1` and `errno` on failure) in the shims' convention (`-errno`).
    @inlinable
    package static func libc(_ r: Int32) -> Int { r >= 0 ? Int(r) : -Int(Glibc.errno) }

    /// The trap of the policy's `EBADF`/`EFAULT` row.
    @usableFromInline
    static func badDescriptorOrBuffer(_ call: String, _ e: Int32) -> Never {
        preconditionFailure(
            "swift-multiprocessing: \(call) failed with \(Errno(rawValue: e)): a descriptor used after its close "
                + "or a bad buffer (a bug in the library; please report it)"
        )
    }
}

/// What a call that may block returned without blocking. Not generic: every such call returns a count
/// or a descriptor, and a generic result was measured to stay unspecialised across the module boundary
/// (value witnesses on every message; `BENCHMARKS.md`, "One system-call path").
@frozen
package enum IOResult {
    /// The call did its work: its result (a byte count, a descriptor).
    case done(Int)
    /// The call would have blocked (`EAGAIN`): nothing happened.
    case wouldBlock

    /// The result, or `nil` for ``wouldBlock``.
    @inlinable
    package var value: Int? {
        if case .done(let v) = self { return v }
        return nil
    }
}

/// A system call that failed, with its typed `errno`.
package struct SystemCallError: Error, Sendable, CustomStringConvertible {
    /// The call's name (and what it was made on, where the caller said: `open /dev/shm/x`).
    package let call: String
    /// Why.
    package let errno: Errno

    /// An error of `call` with `errno`.
    package init(_ call: String, _ errno: Errno) {
        self.call = call
        self.errno = errno
    }

    /// The peer has gone (`EPIPE`, `ECONNRESET`): the policy reports this as end of file.
    package var peerClosed: Bool { errno == .brokenPipe || errno == .connectionReset }

    /// "recv failed: Connection refused (errno 111)".
    package var description: String { "\(call) failed: \(errno) (errno \(errno.rawValue))" }
}
