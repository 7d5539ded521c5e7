# Anchor for issue 28 item 5: one producer, K consumer processes on one multiprocessing.Queue.
#
# WORKLOAD (the Swift port, `queue_fanout_k*_swift` in Benchmarks/Sources/bench/IPC.swift, does exactly
# this): per repetition a fresh Queue q and K fresh consumer processes (fork). Each consumer signals
# "ready" on its own side pipe, then loops x = q.get() until it gets the sentinel -1, summing, and sends
# its sum back on its pipe. The PARENT is the producer: it waits for every "ready"; t0; puts the ints
# 0..N-1 (N = 200_000) then K sentinels; waits for every sum; t1; checks that the sums add up to
# N(N-1)/2; joins the consumers (not timed).  items/s = N / (t1 - t0), for K = 1 and K = 8.
# Median of REPS = 5 repetitions (INFO: min/max). Run: python3 queue_fanout.py
import multiprocessing as mp
import statistics
import time

REPS = 5
N = 200_000


def report(name, values, unit, digits=0):
    med = statistics.median(values)
    fmt = "{:.%df}" % digits
    print("RESULT %s %s %s" % (name, fmt.format(med), unit), flush=True)
    print("INFO %s min=%s max=%s n=%d unit=%s" % (
        name, fmt.format(min(values)), fmt.format(max(values)), len(values), unit), flush=True)


def consumer(q, side):
    side.send("ready")
    total = 0
    while True:
        x = q.get()
        if x < 0:
            break
        total += x
    side.send(total)


def once(k):
    q = mp.Queue()
    pipes = [mp.Pipe() for _ in range(k)]
    procs = [mp.Process(target=consumer, args=(q, theirs)) for (_, theirs) in pipes]
    for p in procs:
        p.start()
    for mine, _ in pipes:
        assert mine.recv() == "ready"
    t0 = time.perf_counter()
    for i in range(N):
        q.put(i)
    for _ in range(k):
        q.put(-1)
    total = sum(mine.recv() for mine, _ in pipes)
    t1 = time.perf_counter()
    assert total == N * (N - 1) // 2
    for p in procs:
        p.join()
    return N / (t1 - t0)


if __name__ == "__main__":
    mp.set_start_method("fork")
    for k in (1, 8):
        report("queue_fanout_k%d_py" % k, [once(k) for _ in range(REPS)], "items/s")
