import MultiprocessingNetwork
import Synchronization
import Threading

// The tutorial's coroutines (its 进程线程 chapter, §12): greenlet, gevent, gevent with I/O. Swift's
// coroutines are async functions; `CooperativeExecutor` runs a set of them on one thread, first in first
// out, which makes the hand-offs as deterministic as greenlet's and gevent's.

/// A greenlet's turn to run: a coroutine waits for it, and `switch(to:)` hands it to another.
final class Baton: Sendable {
    struct GreenletExit: Error {}
    private let turns: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() { (turns, continuation) = AsyncStream.makeStream() }

    /// Waits for this coroutine's turn; `GreenletExit` if it will never come (greenlet throws the same
    /// into a greenlet that is dropped while suspended).
    func waitTurn() async throws {
        var it = turns.makeAsyncIterator()
        if await it.next() == nil { throw GreenletExit() }
    }

    /// Gives the turn to `other` and waits for this one's — greenlet's `other.switch()`.
    func `switch`(to other: Baton) async throws {
        other.continuation.yield()
        try await waitTurn()
    }

    /// Gives the turn back without waiting (a finished coroutine returning to its parent).
    func give() { continuation.yield() }

    /// The coroutine will never run again.
    func kill() { continuation.finish() }
}

/// ```python
/// def test1():
///     print 12; gr2.switch(); print 34; gr2.switch()
/// def test2():
///     print 56; gr1.switch(); print 78
/// gr1 = greenlet(test1); gr2 = greenlet(test2); gr1.switch()
/// ```
/// Prints 12, 56, 34, 78. When test2 ends, control returns to the parent (the main program), so test1
/// never finishes: as greenlet does, it is thrown out (`GreenletExit`) when the program drops it.
public func greenletSwitch() async throws {
    try await CooperativeExecutor.run(name: "greenlet") { loop in
        let main = Baton()
        let gr1 = Baton()
        let gr2 = Baton()
        @Sendable func test1() async throws {
            print(12)
            try await gr1.switch(to: gr2)
            print(34)
            try await gr1.switch(to: gr2)
        }
        @Sendable func test2() async throws {
            print(56)
            try await gr2.switch(to: gr1)
            print(78)
        }
        // A greenlet starts at its first switch and, when it ends, returns to its parent.
        let g1 = loop.spawn {
            try await gr1.waitTurn()
            try await test1()
            main.give()
        }
        let g2 = loop.spawn {
            try await gr2.waitTurn()
            try await test2()
            main.give()
        }
        try await main.switch(to: gr1)  // gr1.switch()
        gr1.kill()
        gr2.kill()
        _ = await (g1.result, g2.result)
    }
}

/// Waits for every task — gevent's `joinall`.
func joinAll<T: Sendable>(_ tasks: [Task<T, any Error>]) async throws -> [T] {
    var results: [T] = []
    for t in tasks { results.append(try await t.value) }
    return results
}

/// ```python
/// def foo():
///     print('Running in foo'); gevent.sleep(0); print('Explicit context switch to foo again')
/// def bar():
///     print('Explicit context to bar'); gevent.sleep(0); print('Implicit context switch back to bar')
/// gevent.joinall([gevent.spawn(foo), gevent.spawn(bar)])
/// ```
/// `await Task.yield()` is `gevent.sleep(0)`: the task goes to the back of the executor's queue.
public func geventYield() async throws {
    try await CooperativeExecutor.run(name: "gevent") { loop in
        @Sendable func foo() async {
            print("Running in foo")
            await Task.yield()
            print("Explicit context switch to foo again")
        }
        @Sendable func bar() async {
            print("Explicit context to bar")
            await Task.yield()
            print("Implicit context switch back to bar")
        }
        _ = try await joinAll([loop.spawn(foo), loop.spawn(bar)])
    }
}

/// ```python
/// from gevent import monkey; monkey.patch_all()
/// def f(url):
///     print('GET: %s' % url)
///     resp = urllib2.urlopen(url); data = resp.read()
///     print('%d bytes received from %s.' % (len(data), url))
/// gevent.joinall([gevent.spawn(f, 'https://www.python.org/'), gevent.spawn(f, 'https://www.yahoo.com/'),
///                 gevent.spawn(f, 'https://github.com/')])
/// ```
/// There is no internet here: the demo serves three pages from 127.0.0.1 itself (sent in pieces, so that
/// the downloads overlap). The three fetches run on one thread, switching whenever a socket has
/// nothing to read (``AsyncSocket``: the wait is in the library's epoll thread, not a thread per request
/// and not a blocked thread of Swift's pool). The "bytes received" lines come in the order the
/// downloads finish.
public func geventDownloads() async throws {
    let pages = [("www.python.org", 48_791), ("www.yahoo.com", 302_417), ("github.com", 161_829)]
    let listener = try AsyncListener(address: .tcp(host: "127.0.0.1", port: 0))
    guard case .tcp(let host, let port) = listener.address else { return }
    let server = Task { try await serve(pages, on: listener, connections: pages.count) }
    defer {
        server.cancel()
        listener.close()
    }
    let onOneThread = try await CooperativeExecutor.run(name: "gevent-io") { loop in
        @Sendable func f(_ url: String) async throws -> Bool {
            print("GET: \(url)")
            let data = try await httpGet(url)
            print("\(data.count) bytes received from \(url).")
            return loop.isCurrent
        }
        let tasks = pages.map { page in loop.spawn { try await f("http://\(host):\(port)/\(page.0)/") } }
        return try await joinAll(tasks).allSatisfy { $0 }
    }
    try await server.value
    print("the three downloads ran on one thread: \(onOneThread)")
}

/// A minimal HTTP/1.0 GET: the body of a 200 response.
func httpGet(_ url: String) async throws -> [UInt8] {
    struct HTTPError: Error, CustomStringConvertible { let description: String }
    guard url.hasPrefix("http://") else { throw HTTPError(description: "not an http:// URL: \(url)") }
    let rest = url.dropFirst("http://".count)
    let authority = rest.prefix { $0 != "/" }
    let path = rest.dropFirst(authority.count)
    let parts = authority.split(separator: ":")
    guard parts.count == 2, let port = UInt16(parts[1]) else { throw HTTPError(description: "no port in \(url)") }
    let socket = try await AsyncSocket.connect(to: .tcp(host: String(parts[0]), port: port))
    defer { socket.close() }
    try await socket.write(Array("GET \(path.isEmpty ? "/" : path) HTTP/1.0\r\nHost: \(authority)\r\n\r\n".utf8))
    let response = try await socket.readToEnd()
    let separator: [UInt8] = Array("\r\n\r\n".utf8)
    guard let end = response.firstRange(of: separator) else { throw HTTPError(description: "no header end") }
    let status = String(decoding: response[..<end.lowerBound], as: UTF8.self).prefix { $0 != "\r" }
    guard status.contains(" 200 ") else { throw HTTPError(description: "\(url): \(status)") }
    return Array(response[end.upperBound...])
}

/// Serves `pages` (path name, size) to `connections` clients, each on a task of its own; bodies go out in
/// 16 KiB pieces with a pause between them.
func serve(_ pages: [(String, Int)], on listener: AsyncListener, connections: Int) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        for _ in 0..<connections {
            let client = try await listener.accept()
            group.addTask {
                defer { client.close() }
                var request: [UInt8] = []
                while request.firstRange(of: Array("\r\n\r\n".utf8)) == nil {
                    let part = try await client.read()
                    if part.isEmpty { return }
                    request += part
                }
                let line = String(decoding: request.prefix { $0 != 13 }, as: UTF8.self).split(separator: " ")
                let name = line.count > 1 ? line[1].split(separator: "/").first.map(String.init) ?? "" : ""
                guard let size = pages.first(where: { $0.0 == name })?.1 else {
                    try await client.write(Array("HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".utf8))
                    return
                }
                try await client.write(
                    Array("HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: \(size)\r\n\r\n".utf8)
                )
                let body = [UInt8](repeating: UInt8(ascii: "x"), count: size)
                var offset = 0
                while offset < size {
                    let n = min(16 * 1024, size - offset)
                    try await client.write(body[offset..<(offset + n)])
                    offset += n
                    try await Task.sleep(for: .milliseconds(2))
                }
            }
        }
        try await group.waitForAll()
    }
}
