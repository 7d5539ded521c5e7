import Multiprocessing

let q = try ProcessQueue<String>(maxsize: 100)   // pass it inside a job to share it
try q.put("A")
print(try q.get(timeout: .seconds(1)))           // A

let (mine, theirs) = try makePipe()               // `theirs` travels inside a job
try theirs.send("hello")
print(try mine.recv(String.self, timeout: .seconds(1)))   // hello
