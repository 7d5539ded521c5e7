internal import CMultiprocessingShims
import DequeModule
import Glibc
import Logging
import Multiprocessing
import MultiprocessingNetwork
import Synchronization
import SystemCalls
import SystemPackage
import Threading

/// A manager server's event loop: one thread and one `epoll` set serve every client connection — the
/// authkey handshake, reading requests, the calls that complete at once, writing replies. A call that
/// must wait (a `get` on an empty queue, an `acquire`, a `wait`, a method of an object that may block) is
/// handed to the server's ``ServedThreads``; its connection reads nothing more until the reply is back
/// (a client's requests are answered in order), and every other connection goes on meanwhile.
///
/// Everything here but ``post(_:)``, ``requestStop()``, ``requestCut()`` and ``abandon()`` runs on the
/// loop's thread.
final class ManagerLoop: @unchecked Sendable {  // loop-thread state; `inbox` and the flags are shared
    /// One client connection (touched only on the loop's thread; blocking calls carry it opaquely).
    final class Session: @unchecked Sendable {
        enum Phase {
            /// We sent our challenge (`message`: what the client must sign).
            case challenged([UInt8])
            /// We accepted the client's answer and wait for its challenge.
            case awaitingChallenge
            /// We answered the client's challenge and wait for its verdict.
            case awaitingVerdict
            /// Authenticated: one-shot server requests (`create`, `incref`, …).
            case serving
            /// Authenticated: a method channel (`accept_connection`).
            case channel
        }

        let id: UInt64
        let connection: Connection
        let fd: Int32
        let peer: Address?
        var phase: Phase
        var decoder: FrameDecoder
        /// Replies not yet written, from `outStart`.
        var out: [UInt8] = []
        var outStart = 0
        /// When the handshake must be over.
        var deadline: ContinuousClock.Instant?
        /// A call of this connection runs on a served thread: nothing more is read until it answers.
        var busy = false
        /// The client sent its last byte (or the connection failed, or the server stopped reading).
        var inputEnded = false
        /// A write failed: the connection is dropped without further replies.
        var failed = false
        /// Nothing more is decoded (a rejected handshake, a malformed frame, a call that gave up): what is
        /// owed is written, then the connection closes.
        var done = false
        var closed = false
        /// Serving stopped because the client left `backlogLimit` bytes of replies unread.
        var stalled = false
        /// The peer shut its side (`EPOLLRDHUP`/`EPOLLHUP`): read to the end, a short read notwithstanding
        /// (its end of input came with the last bytes, and brings no edge of its own).
        var hungUp = false
        /// Whether `EPOLLOUT` is watched (replies wait for room in the socket).
        var watchingWrites = false
        /// A CPython client on TCP: a message of its that no reply answers at once is ACKed at once (its next
        /// one would wait for our ACK: Nagle).
        var quickAck: Bool

        init(id: UInt64, accepted: AcceptedConnection, message: [UInt8], deadline: ContinuousClock.Instant) {
            self.id = id
            connection = accepted.connection
            fd = accepted.connection.fileDescriptor
            peer = accepted.peer
            phase = .challenged(message)
            // Handshake messages are small: a peer that has not proved the key cannot make us buffer more.
            decoder = FrameDecoder(maxFrame: Handshake.maxMessage, capacity: 2 * Handshake.maxMessage)
            self.deadline = deadline
            if case .tcp? = accepted.peer { quickAck = true } else { quickAck = false }
        }

        var authenticated: Bool {
            switch phase {
            case .serving, .channel: true
            default: false
            }
        }

        var backlog: Int { out.count - outStart }

        var peerDescription: String { peer.map { "\($0)" } ?? "?" }
    }

    /// A call that ran on a served thread: its connection and the reply's pickle (`nil`: the call gave up,
    /// its client is gone or the server stops; the connection gets no answer and closes once the replies
    /// it was owed before have gone out).
    struct Completion: Sendable {
        let session: Session
        let reply: [UInt8]?
    }

    private unowned let server: ManagerServer
    private let listener: Listener
    private let authkey: [UInt8]
    private let logger: Logger
    private let epfd: Int32
    private let wakeFd: Int32
    private let listenFd: Int32
    /// Completions from served threads, taken by the loop when `wakeFd` fires; `ended` once the loop has
    /// closed `wakeFd` (a late wake-up must not write to a number the system may have given to another file).
    private let inbox = TrackedMutex<(completions: [Completion], ended: Bool)>(([], false))
    private let stopRequested = Atomic<Bool>(false)
    private let cutRequested = Atomic<Bool>(false)

    // Loop-thread state.
    private var sessions: [Int32: Session] = [:]
    /// Handshakes in accept order (their deadlines are in the same order); closed ones are skipped.
    private var handshakes = Deque<Session>()
    /// Sessions to serve again before the next wait (a budget ran out, or a call answered).
    private var pending: [Session] = []
    private var nextID: UInt64 = 1
    /// Shutdown began: no client is accepted, nothing more is read.
    private var stopping = false
    /// Accepting paused (out of descriptors, and the waiting client could not be refused) until then.
    private var acceptResumes: ContinuousClock.Instant?
    private var acceptPause = Duration.milliseconds(1)
    private var exhausted = false
    private let clock = ContinuousClock()

    /// Edge-triggered reads; writability is watched only while replies wait for room (an `EPOLLOUT` edge
    /// per ACK of every reply would double the loop's wake-ups).
    private static let sessionEvents = UInt32(EPOLLIN.rawValue) | UInt32(EPOLLRDHUP.rawValue) | UInt32(EPOLLET.rawValue)
    private static let sessionEventsWriting = sessionEvents | UInt32(EPOLLOUT.rawValue)
    /// Requests one connection may have served in a row before the others get a turn.
    private static let budget = 64
    /// Replies a client leaves unread before the server stops reading its requests.
    private static let backlogLimit = 1 << 20

    init(server: ManagerServer, listener: Listener, authkey: [UInt8], logger: Logger) throws {
        self.server = server
        self.listener = listener
        self.authkey = authkey
        self.logger = logger
        epfd = try Syscall.mapped { () throws(SystemCallError) in try SystemCall.epollCreate() }
        let e = mp_eventfd(0)
        guard e >= 0 else {
            Syscall.close(epfd)
            throw MultiprocessingError.system("eventfd", -e)
        }
        wakeFd = e
        listenFd = listener.fileDescriptor
        do {
            try watch(wakeFd, UInt32(EPOLLIN.rawValue))
            try watch(listenFd, UInt32(EPOLLIN.rawValue))
        } catch {
            Syscall.close(wakeFd)
            Syscall.close(epfd)
            throw error
        }
    }

    private func watch(_ fd: Int32, _ events: UInt32) throws(MultiprocessingError) {
        var ev = epoll_event()
        ev.events = events
        ev.data.fd = fd
        if let e = SystemCall.epollControl(epfd, EPOLL_CTL_ADD, fd, &ev) {
            throw MultiprocessingError.system("epoll_ctl", e.rawValue)
        }
    }

    /// Releases the loop's descriptors when it will never run (its thread could not start).
    func abandon() {
        closeWake()
        Syscall.close(epfd)
    }

    private func closeWake() {
        inbox.withLock { i in
            i.ended = true
            Syscall.close(wakeFd)
        }
    }

    // MARK: From other threads

    /// Hands a served thread's reply to the loop.
    func post(_ c: Completion) {
        inbox.withLock { i in
            i.completions.append(c)
            ring(unless: i.ended)
        }
    }

    /// Asks the loop to stop: no new client, no more requests read; those read are answered.
    func requestStop() {
        stopRequested.store(true, ordering: .releasing)
        wake()
    }

    /// Asks the loop to cut every connection now (clients that do not read their replies).
    func requestCut() {
        cutRequested.store(true, ordering: .releasing)
        wake()
    }

    private func wake() { inbox.withLock { ring(unless: $0.ended) } }

    /// With the inbox's lock held: wakes the loop, unless it has closed `wakeFd` (`ended`).
    private func ring(unless ended: Bool) {
        guard !ended else { return }
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { try? SystemCall.write(wakeFd, $0) }
    }

    // MARK: The loop

    /// Runs until the server has stopped and every connection is closed.
    func run() {
        var events = [epoll_event](repeating: epoll_event(), count: 128)
        while true {
            let n: Int
            do {
                n = try SystemCall.epollWait(epfd, &events, timeoutMs: waitLimit())
            } catch {
                // EBADF, EFAULT, EINVAL: the loop itself is broken; spinning would hide it at 100 % CPU.
                fatalError("swift-multiprocessing manager server: epoll_wait: \(error)")
            }
            for i in 0..<n {
                let fd = events[i].data.fd
                let got = events[i].events
                if fd == wakeFd {
                    _ = SystemCall.takeCount(wakeFd)
                    takeInbox()
                } else if fd == listenFd {
                    if !stopping { acceptAll() }
                } else if let s = sessions[fd] {
                    let hup = UInt32(EPOLLRDHUP.rawValue) | UInt32(EPOLLHUP.rawValue) | UInt32(EPOLLERR.rawValue)
                    if got & hup != 0 { s.hungUp = true }
                    if got & UInt32(EPOLLOUT.rawValue) != 0 && s.backlog > 0 { flush(s) }
                    serve(s)
                }
            }
            if stopRequested.load(ordering: .acquiring) && !stopping { beginStop() }
            if cutRequested.exchange(false, ordering: .acquiring) { cutAll() }
            expireHandshakes()
            resumeAccepting()
            if !pending.isEmpty {
                let again = pending
                pending = []
                for s in again where !s.closed { serve(s) }
            }
            if stopping && sessions.isEmpty {
                SystemCall.epollRemove(epfd, wakeFd)
                closeWake()
                Syscall.close(epfd)
                server.loopEnded()
                return
            }
        }
    }

    /// Milliseconds `epoll_wait` may sleep: 0 with sessions pending, else until the next deadline.
    private func waitLimit() -> Int32 {
        if !pending.isEmpty { return 0 }
        var next: ContinuousClock.Instant?
        if let first = handshakes.first(where: { !$0.closed && !$0.authenticated }), let d = first.deadline { next = d }
        if let r = acceptResumes { next = next.map { min($0, r) } ?? r }
        guard let next else { return -1 }
        let left = next - clock.now
        if left <= .zero { return 0 }
        let ms = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1
        return Int32(clamping: ms)
    }

    private func takeInbox() {
        let done = inbox.withLock { i -> [Completion] in
            defer { i.completions.removeAll() }
            return i.completions
        }
        for c in done {
            let s = c.session
            s.busy = false
            guard !s.closed else { continue }
            if let reply = c.reply {
                appendFrame(reply, to: s)
            } else {
                // Given up: its client is gone, or the server stops. No answer; the connection ends once
                // the replies it is owed from before have gone out.
                logger.debug("call abandoned", metadata: ["peer": "\(s.peerDescription)"])
                s.done = true
            }
            // Replies go out with whatever the connection's next requests produce.
            serve(s)
        }
    }

    // MARK: Accepting and the handshake

    private func acceptAll() {
        while !stopping {
            let accepted: AcceptedConnection
            do {
                accepted = try listener.acceptConnection(timeout: .zero)
            } catch let e as MultiprocessingError where e.code == .timedOut {
                return
            } catch let e as MultiprocessingError where e.code == .resourceExhausted {
                // Out of descriptors: the listener closed the waiting connection (its client learns at once)
                // and stays open; accepting resumes when descriptors are freed.
                server.rejectedOne()
                if !exhausted {
                    exhausted = true
                    logger.error(
                        "out of resources: refusing new clients until some are freed",
                        metadata: ["address": "\(listener.address)", "error": "\(e)"]
                    )
                }
                let refused = (e.errnoCode == EMFILE || e.errnoCode == ENFILE) && listener.refusesWhenExhausted
                if !refused {
                    // The waiting connection could not be closed (out of memory, or no reserve descriptor):
                    // stop watching the listener for a moment instead of spinning on it.
                    SystemCall.epollRemove(epfd, listenFd)
                    acceptResumes = clock.now + acceptPause
                    acceptPause = min(acceptPause * 2, .milliseconds(200))
                }
                // At the limit, accept fails whether or not a client waits: the listener's next readiness
                // (a client waiting) brings the loop back, and the connections it serves go on meanwhile.
                return
            } catch {
                return  // closed
            }
            acceptPause = .milliseconds(1)
            if exhausted {
                exhausted = false
                logger.notice("accepting clients again", metadata: ["address": "\(listener.address)"])
            }
            admit(accepted)
        }
    }

    private func resumeAccepting() {
        guard let r = acceptResumes, clock.now >= r else { return }
        acceptResumes = nil
        guard !stopping else { return }
        if (try? watch(listenFd, UInt32(EPOLLIN.rawValue))) == nil {
            acceptResumes = clock.now + acceptPause
            return
        }
        acceptAll()
    }

    /// A new connection: our challenge goes out at once (Python's `deliver_challenge`).
    private func admit(_ accepted: AcceptedConnection) {
        var random = [UInt8](repeating: 0, count: 40)
        guard (try? Handshake.fillRandom(&random)) != nil else {
            accepted.connection.close()
            return
        }
        let message = Array("{sha256}".utf8) + random
        let s = Session(
            id: nextID,
            accepted: accepted,
            message: message,
            deadline: clock.now + listener.handshakeTimeout
        )
        nextID += 1
        do {
            try watch(s.fd, Self.sessionEvents)
        } catch {
            server.rejectedOne()
            logger.error("cannot watch a client's connection; refused", metadata: ["error": "\(error)"])
            accepted.connection.close()
            return
        }
        sessions[s.fd] = s
        handshakes.append(s)
        appendFrame(Handshake.challenge + message, to: s)
        flush(s)
        serve(s)
    }

    private func reject(_ s: Session, _ why: String) {
        server.rejectedOne()
        logger.warning("client rejected", metadata: ["peer": "\(s.peerDescription)", "error": "\(why)"])
        // No further handshake message is looked at (each would be another guess at the same challenge).
        s.done = true
    }

    /// One handshake message from the client.
    private func handshake(_ s: Session, _ frame: [UInt8]) {
        switch s.phase {
        case .challenged(let message):
            if Handshake.verify(authkey: authkey, message: message, response: frame) {
                appendFrame(Handshake.welcome, to: s)
                s.phase = .awaitingChallenge
            } else {
                appendFrame(Handshake.failure, to: s)
                reject(s, "digest received was wrong")
            }
        case .awaitingChallenge:
            guard frame.starts(with: Handshake.challenge), frame.count >= Handshake.challenge.count + 20,
                let answer = try? Handshake.response(
                    authkey: authkey,
                    message: Array(frame[Handshake.challenge.count...])
                )
            else { return reject(s, "protocol error: expected a challenge, got \(frame.count) other bytes") }
            appendFrame(answer, to: s)
            s.phase = .awaitingVerdict
        case .awaitingVerdict:
            guard frame == Handshake.welcome else { return reject(s, "digest sent was rejected") }
            guard !stopping else {
                s.inputEnded = true
                s.failed = true
                return
            }
            s.phase = .serving
            s.deadline = nil
            // Requests may be large (what arrived after the verdict stays buffered).
            s.decoder.maxFrame = Connection.defaultMaxMessageSize
            server.clientConnected()
        case .serving, .channel:
            break
        }
    }

    private func expireHandshakes() {
        let now = clock.now
        while let first = handshakes.first {
            if first.closed || first.authenticated {
                handshakes.removeFirst()
                continue
            }
            guard let d = first.deadline, d <= now else { return }
            handshakes.removeFirst()
            reject(first, "the peer did not complete the authentication handshake in time")
            first.failed = true
            close(first)
        }
    }

    // MARK: Serving a connection

    /// Reads and answers what a connection sent, until it has nothing more, is waiting on a call, or
    /// has had its turn; then writes the replies and closes the connection if it has ended.
    private func serve(_ s: Session) {
        guard !s.closed else { return }
        var budget = Self.budget
        var readSomething = false
        let owed = s.backlog
        /// A read got less than it offered: the socket has nothing more now (new bytes bring a new edge).
        var drained = false
        while !s.busy && !s.failed && !s.done && budget > 0 && s.backlog < Self.backlogLimit {
            let frame: [UInt8]?
            do {
                frame = try s.decoder.nextArray()
            } catch {
                // An oversized or malformed frame: the stream's position is lost; only this client is dropped.
                if s.authenticated {
                    server.failedOne()
                    logger.warning(
                        "malformed request",
                        metadata: ["peer": "\(s.peerDescription)", "error": "\(error)"]
                    )
                } else {
                    reject(s, "handshake message rejected: \(error)")
                }
                s.done = true
                break
            }
            if let frame {
                budget -= 1
                if s.authenticated { request(s, frame) } else { handshake(s, frame) }
                continue
            }
            if s.inputEnded || (drained && !s.hungUp) { break }
            let r: Int?
            do {
                r = try s.decoder.read { free throws(SystemCallError) in
                    try SystemCall.recv(s.fd, free).value
                }
            } catch {
                // A reset, or a peer that stopped answering keep-alive probes (a machine gone).
                logger.notice("client lost", metadata: ["peer": "\(s.peerDescription)", "error": "\(error)"])
                s.inputEnded = true
                s.failed = true
                break
            }
            guard let r else { break }  // nothing more now: the next edge brings more
            if r == 0 {
                s.inputEnded = true
            } else {
                readSomething = true
                drained = s.decoder.lastReadWasShort
            }
        }
        // Bytes read and no reply to carry their ACK (a handshake's verdict, a call gone to a thread): ACK
        // now, or a CPython client's next message waits for our delayed ACK (Nagle). A reply carries it.
        if readSomething && s.quickAck && s.backlog == owed { _ = mp_quick_ack(s.fd) }
        if s.backlog >= Self.backlogLimit { s.stalled = true }
        if s.backlog > 0 && !s.failed { flush(s) }
        if budget == 0 && !s.busy { pending.append(s) }
        // Ended: once every request read is answered and written (or the connection failed).
        if !s.busy && (s.failed || (s.backlog == 0 && (s.done || (s.inputEnded && !s.decoder.hasWholeFrame)))) {
            close(s)
        }
    }

    private func appendFrame(_ payload: [UInt8], to s: Session) {
        s.out.append(contentsOf: FrameDecoder.header(for: payload.count))
        s.out.append(contentsOf: payload)
    }

    /// Writes what the socket takes now; the rest goes when it says it is writable again.
    private func flush(_ s: Session) {
        while s.outStart < s.out.count {
            let r: IOResult
            do {
                r = try s.out.withUnsafeBytes { all throws(SystemCallError) in
                    try SystemCall.send(s.fd, UnsafeRawBufferPointer(rebasing: all[s.outStart...]))
                }
            } catch {
                s.failed = true
                s.inputEnded = true
                s.out = []
                s.outStart = 0
                return
            }
            guard case .done(let n) = r else {
                if !s.watchingWrites { setWatchingWrites(s, true) }
                // Full: compact now and then, so that a slow reader does not pin what it already took.
                if s.outStart > 64 * 1024 && s.outStart > s.out.count / 2 {
                    s.out.removeFirst(s.outStart)
                    s.outStart = 0
                }
                return
            }
            s.outStart += n
        }
        if s.out.capacity > 1 << 20 { s.out = [] } else { s.out.removeAll(keepingCapacity: true) }
        s.outStart = 0
        if s.watchingWrites { setWatchingWrites(s, false) }
        // The backlog limit stopped this connection's requests: serve them again.
        if s.stalled {
            s.stalled = false
            pending.append(s)
        }
    }

    private func setWatchingWrites(_ s: Session, _ on: Bool) {
        var ev = epoll_event()
        ev.events = on ? Self.sessionEventsWriting : Self.sessionEvents
        ev.data.fd = s.fd
        // A failure leaves the connection unable to write its replies: it is dropped.
        if SystemCall.epollControl(epfd, EPOLL_CTL_MOD, s.fd, &ev) != nil {
            s.failed = true
            s.inputEnded = true
            return
        }
        s.watchingWrites = on
    }

    /// One request of an authenticated connection: answered now, or handed to a served thread.
    private func request(_ s: Session, _ frame: [UInt8]) {
        let outcome = server.handle(frame, session: s, loop: self)
        switch outcome {
        case .reply(let bytes):
            appendFrame(bytes, to: s)
        case .channel(let bytes, let ours):
            appendFrame(bytes, to: s)
            s.phase = .channel
            // Our client sets TCP_NODELAY and never waits on our ACKs: no quick-ACK call per request.
            if ours { s.quickAck = false }
        case .stop(let bytes):
            appendFrame(bytes, to: s)
            s.inputEnded = true
            flush(s)
            server.requestShutdown()  // sets the server's flag (waiting calls give up), then stops this loop
        case .offloaded:
            s.busy = true
        case .drop:
            s.failed = true
        }
    }

    private func close(_ s: Session) {
        guard !s.closed else { return }
        s.closed = true
        SystemCall.epollRemove(epfd, s.fd)
        sessions[s.fd] = nil
        let wasClient = s.authenticated
        var wasChannel = false
        if case .channel = s.phase { wasChannel = true }
        s.connection.close()
        // Only a method channel can hold anything (one-shot requests acquire nothing).
        if wasClient { server.clientDisconnected(s.id, holding: wasChannel) }
    }

    // MARK: Stopping

    private func beginStop() {
        stopping = true
        acceptResumes = nil
        SystemCall.epollRemove(epfd, listenFd)
        listener.close()
        for s in Array(sessions.values) {
            s.inputEnded = true  // nothing more is read; what was read is answered
            if !s.authenticated { s.failed = true }  // a client in the handshake has sent no request
            if !s.busy { serve(s) }
        }
    }

    private func cutAll() {
        for s in Array(sessions.values) {
            s.failed = true
            s.inputEnded = true
            if s.busy {
                // Its call gives up within a slice (the server stops); the connection closes then.
                s.connection.shutdownSocket(reading: true, writing: true)
            } else {
                close(s)
            }
        }
    }
}
