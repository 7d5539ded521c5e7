"""Captures the fuzz corpora from CPython itself (scripts/fuzz seeds): a SyncManager client and server
doing what the tutorial and the tests do, with every message recorded as it goes over the wire.

    Tests/Fuzz/Corpus/pickle/           every pickle either side sent (requests and replies)
    Tests/Fuzz/Corpus/manager-request/  the client's requests only
    Tests/Fuzz/Corpus/frames/           each connection's raw byte stream (length headers included)
"""
import hashlib, os, sys, threading
import multiprocessing as mp
import multiprocessing.connection as mc
from multiprocessing.managers import SyncManager

out = sys.argv[1]
for d in ("pickle", "manager-request", "frames"):
    os.makedirs(os.path.join(out, d), exist_ok=True)

def save(kind, data):
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(out, kind, name), "wb") as f:
        f.write(data)

streams = {}
role = {"name": "client"}
_send_bytes = mc.Connection._send_bytes
_send = mc.Connection._send

def send_bytes(self, buf):
    data = bytes(buf)
    if data[:1] == b"\x80":  # a pickle (the handshake's messages are not)
        save("pickle", data)
        if role["name"] == "client":
            save("manager-request", data)
    return _send_bytes(self, buf)

def send(self, buf, write=None):
    s = streams.setdefault(id(self), bytearray())
    if len(s) < 8192:
        s += bytes(buf)
    return _send(self, buf) if write is None else _send(self, buf, write)

def flush():
    for s in streams.values():
        if s:
            save("frames", bytes(s))
    streams.clear()

mc.Connection._send_bytes = send_bytes
mc.Connection._send = send

def server_role():
    role["name"] = "server"
    import atexit
    atexit.register(flush)

if __name__ == "__main__":
    mp.set_start_method("fork")
    m = SyncManager(address=("127.0.0.1", 0), authkey=b"abc")
    m.start(initializer=server_role)
    q = m.Queue()
    for v in [1, -7, 2**70, 3.5, float("inf"), "text", "ünïcode", b"\x00\xff", bytearray(b"ba"), None, True,
              (1, (2, (3,))), [1, [2, [3]]], {"k": {"n": [1, 2]}}, {1, 2, 3}, frozenset({"a"}), complex(1, 2),
              "x" * 300, list(range(100))]:
        q.put(v)
        q.get()
    try:
        q.get(timeout=0.01)
    except Exception:
        pass
    d = m.dict({"a": 1})
    d["b"] = [1, 2]
    d.update({"c": {"d": None}})
    list(d.items())
    l = m.list([1, 2, 3])
    l.append({"x": 1})
    l.extend([b"y"])
    ns = m.Namespace(a=1, b="two")
    ns.c = 3.0
    lock = m.Lock()
    lock.acquire()
    lock.release()
    e = m.Event()
    e.set()
    e.wait(0.01)
    v = m.Value("i", 5)
    v.value = 6
    a = m.Array("d", [1.0, 2.0])
    a[0] = 3.0
    try:
        d["missing"]
    except KeyError:
        pass
    del q, d, l, ns, lock, e, v, a
    m.shutdown()
    flush()
