import Multiprocessing
import MultiprocessingNetwork

let listener = try Listener(address: .tcp(host: "127.0.0.1", port: 0), authkey: Array("abc".utf8))
print("listening on \(listener.address)")
let conn = try listener.accept(timeout: .seconds(30))   // Python: Client(('127.0.0.1', port), authkey=b'abc')
let bytes = try conn.recvBytes(timeout: .seconds(5))
print("\(bytes.count) bytes")
