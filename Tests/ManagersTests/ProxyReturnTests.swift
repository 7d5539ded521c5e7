import Foundation
import MultiprocessingNetwork
import MultiprocessingTestSupport
import Testing
import Threading

@testable import MultiprocessingManagers

/// `#PROXY` replies (Python's `method_to_typeid`): iterating a dict proxy gives a proxy to a served
/// iterator, both ways between Swift and CPython.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ProxyReturnTests {
    let key = Array("abc".utf8)

    /// A CPython client iterates a dict our server serves (`for k in d`, `list(d)`), and the iterators are
    /// freed when it drops them.
    @Test func aPythonClientIteratesOurDict() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let port = try tcpPort(server)
        let (code, out) = try runPython(
            """
            import gc
            from multiprocessing.managers import SyncManager
            m = SyncManager(address=('127.0.0.1', \(port)), authkey=b'abc')
            m.connect()
            d = m.dict({1: 'a', 'two': 2, (3,): None})
            print('keys', [k for k in d])
            print('list', list(d))
            it = iter(d)
            print('next', next(it), next(it), next(it))
            try:
                next(it)
            except StopIteration:
                print('stop')
            del it
            gc.collect()
            print('objects', m._number_of_objects())
            """
        )
        #expect(code == 0, "\(out)")
        #expect(out.contains("keys [1, 'two', (3,)]"), "\(out)")
        #expect(out.contains("list [1, 'two', (3,)]"), "\(out)")
        #expect(out.contains("next 1 two (3,)"), "\(out)")
        #expect(out.contains("stop"), "\(out)")
        #expect(out.contains("objects 1"), "\(out)")  // the dict alone
    }

    /// Our client iterates a CPython SyncManager's dict.
    @Test func ourClientIteratesAPythonDict() throws {
        let peer = try PythonPeer(
            """
            from multiprocessing.managers import SyncManager
            m = SyncManager(address=('127.0.0.1', 0), authkey=b'abc')
            s = m.get_server()
            print(s.address[1], flush=True)
            s.serve_forever()
            """
        )
        defer { _ = peer.finish(timeout: 0) }
        guard let port = UInt16(peer.out.fileHandleForReading.availableLine()) else {
            Issue.record("no port")
            return
        }
        let client = try ManagerClient(address: .tcp(host: "127.0.0.1", port: port), authkey: key)
        let d = try client.dict([PythonPair(.int(1), "a"), PythonPair("b", .float(2.5))])
        let it = try d.makeIterator()
        var keys: [PythonValue] = []
        while let k = try it.next() { keys.append(k) }
        #expect(keys == [.int(1), "b"])
        #expect(try d.keys() == [.int(1), "b"])
    }

    /// Ours against ours; a plain `call` of a method that returns a proxy says so and leaks nothing.
    @Test func ourClientIteratesOurDict() throws {
        let server = try ManagerServer(authkey: key)
        try server.start()
        defer { server.shutdown() }
        let client = try ManagerClient(address: server.address, authkey: key)
        let d = try client.dict([PythonPair("x", 1), PythonPair("y", 2)])
        do {
            let it = try d.makeIterator()
            #expect(try it.next() == "x")
            #expect(try it.next() == "y")
            #expect(try it.next() == nil)
            #expect(server.objectCount == 2)
        }
        let proxied = #expect(throws: ManagerError.self) { try d.proxy.call("__iter__") }
        #expect(proxied?.code == .proxyReturned)
        let valued = #expect(throws: ManagerError.self) { try d.proxy.callProxy("keys") }
        #expect(valued?.code == .valueReturned)
        // The dropped iterator's proxy releases its reference from a thread of its own.
        try eventually("the iterator freed (objects: \(server.objectCount))") { server.objectCount <= 1 }
        #expect(server.objectCount == 1)
    }
}
