# Issue 28 item 5: a served dict and K concurrent CPython clients, against our server and CPython's.
#
# WORKLOAD (the same for both servers): a manager server process (ours: `bench serve-manager`, the path of
# the bench binary given as the argument; CPython's: SyncManager.start()) on 127.0.0.1 with an authkey.
# K client processes (fork) each connect a SyncManager client, create a dict (m.dict()), say "ready" on
# a pipe and wait for "go"; then each does OPS `d[i % 100] = i` and says "done". The parent waits for
# every "ready" (clients start and connect one at a time), reads the server process's CPU time
# (utime + stime, /proc/PID/stat) and t0, sends "go" to all, waits for every "done", reads t1 and the
# CPU time again.
#   manager_clients_k{K}_{py|swift}     = K * OPS / (t1 - t0)   ops/s (the clients share the 2 cores)
#   manager_clients_cpu_k{K}_{py|swift} = server CPU / (K * OPS)  µs/op
#   manager_clients_threads_k{K}_...    = the server's threads during the run (/proc/PID/status), max
# OPS = 2,000 per client (MANAGER_CLIENTS_OPS) up to a total of 100 * OPS or 200,000 (then that / K). K = 1, 10, 50, 200 (MANAGER_CLIENTS_K).
# Median of REPS = 3 repetitions (fresh clients each; one server per K).
# Run: python3 manager_clients.py [path/to/bench]     (no argument: CPython's server only)
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import threading
import time
from multiprocessing.managers import SyncManager

REPS = 3
AUTHKEY = b"bench"
# K = 500 as well with MANAGER_CLIENTS_K=1,10,50,200,500 (CPython's server takes minutes to connect them).
KS = [int(k) for k in os.environ.get("MANAGER_CLIENTS_K", "1,10,50,200").split(",")]
OPS = int(os.environ.get("MANAGER_CLIENTS_OPS", "2000"))
TICK = os.sysconf("SC_CLK_TCK")


def report(name, values, unit, digits=0):
    med = statistics.median(values)
    fmt = "{:.%df}" % digits
    print("RESULT %s %s %s" % (name, fmt.format(med), unit), flush=True)
    print("INFO %s min=%s max=%s n=%d unit=%s" % (
        name, fmt.format(min(values)), fmt.format(max(values)), len(values), unit), flush=True)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def threads(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def client(address, ops, side):
    m = SyncManager(address=address, authkey=AUTHKEY)
    m.connect()
    d = m.dict()
    d[0] = 0  # the proxy's own connection is open before "go"
    side.send("ready")
    side.recv()
    for i in range(ops):
        d[i % 100] = i
    side.send("done")
    side.recv()  # stay connected until every client is done
    # Leave without the proxies' exit-time decrefs: each opens a new connection and handshake, and on
    # CPython's server some of them were seen to wait for ever (both ends reading) at K >= 50.
    os._exit(0)


def once(address, pid, k, ops):
    pipes = [mp.Pipe() for _ in range(k)]
    procs = [mp.Process(target=client, args=(address, ops, theirs)) for (_, theirs) in pipes]
    # One at a time: CPython's server listens with a backlog of 16, and a burst of connections can leave
    # a client ESTABLISHED on its side and forgotten on the server's (it then waits for ever).
    for p, (mine, _) in zip(procs, pipes):
        p.start()
        assert mine.recv() == "ready"
    peak = [threads(pid)]
    stop = threading.Event()

    def watch():
        while not stop.wait(0.05):
            peak[0] = max(peak[0], threads(pid))

    w = threading.Thread(target=watch)
    w.start()
    c0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    for mine, _ in pipes:
        mine.send("go")
    for mine, _ in pipes:
        assert mine.recv() == "done"
    t1 = time.perf_counter()
    c1 = cpu_seconds(pid)
    stop.set()
    w.join()
    for mine, _ in pipes:
        mine.send("bye")
    for p in procs:
        p.join()
    total = k * ops
    return total / (t1 - t0), (c1 - c0) / total * 1e6, peak[0]


def run(tag, address, pid):
    for k in KS:
        ops = min(OPS, max(OPS * 100, 200_000) // k)
        rates, cpus, peaks = [], [], []
        for _ in range(REPS):
            r, c, t = once(address, pid, k, ops)
            rates.append(r)
            cpus.append(c)
            peaks.append(t)
        report("manager_clients_k%d_%s" % (k, tag), rates, "ops/s")
        report("manager_clients_cpu_k%d_%s" % (k, tag), cpus, "us/op", digits=1)
        report("manager_clients_threads_k%d_%s" % (k, tag), peaks, "threads")


if __name__ == "__main__":
    mp.set_start_method("fork")
    if len(sys.argv) > 1:
        server = subprocess.Popen([sys.argv[1], "serve-manager"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline().split()
        assert line[0] == "ADDRESS", line
        run("swift", (line[1], int(line[2])), server.pid)
        server.stdin.close()
        server.wait(timeout=30)
    else:
        m = SyncManager(address=("127.0.0.1", 0), authkey=AUTHKEY)
        m.start()
        run("py", m.address, m._process.pid)
        m.shutdown()
