import Multiprocessing
import MultiprocessingNetwork

// Port 0: the system picks a free one. Python: Client(('127.0.0.1', port), authkey=b'secret')
let listener = try Listener(address: .tcp(host: "127.0.0.1", port: 0), authkey: Array("secret".utf8))
print("listening on \(listener.address)")
let conn = try listener.accept(timeout: .seconds(30))
let request = try conn.recvBytes(timeout: .seconds(5))
try conn.sendBytes(Array("got \(request.count) bytes".utf8))
