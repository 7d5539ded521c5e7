#!/usr/bin/env python3
"""CPython's anchor for a chunk-size-1 map on many workers (issue 28 item 5).

    pool_map_c1_w2_py    Pool(2).map(f, xs, chunksize=1), N=20,000   tasks/s
    pool_map_c1_w32_py   Pool(32).map(f, xs, chunksize=1), N=20,000  tasks/s

Each pool is created once and warmed with a 100-item map at chunksize 1; median of 5 runs. Ours:
`bench pool pool_map_c1_w32` (and `pool_map_c1` for 2 workers). The loss from 2 to 32 workers on a
2-core machine is the cost of workers beyond the cores: more processes to feed and to wake.
"""
import multiprocessing as mp
import statistics
import time

N = 20_000
REPS = 5


def f(x):
    return x * x


def report(name, values, unit):
    print("RESULT %s %.0f %s" % (name, statistics.median(values), unit))
    print("INFO %s min=%.0f max=%.0f n=%d unit=%s" % (name, min(values), max(values), len(values), unit))


def main():
    xs = list(range(N))
    expected = sum(x * x for x in xs)
    for workers in (2, 32):
        with mp.Pool(workers) as pool:
            pool.map(f, range(100), chunksize=1)
            rates = []
            for _ in range(REPS):
                t0 = time.perf_counter()
                r = pool.map(f, xs, chunksize=1)
                rates.append(N / (time.perf_counter() - t0))
                assert sum(r) == expected
        report("pool_map_c1_w%d_py" % workers, rates, "tasks/s")


if __name__ == "__main__":
    main()
