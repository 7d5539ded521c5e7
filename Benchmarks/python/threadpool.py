# Anchor for the Threading issue: concurrent.futures.ThreadPoolExecutor submit + result of a no-op.
# (shared/bench/python/threads.py does not measure it.)
#
# WORKLOAD (the Swift port, `threadpool_*_swift` in Benchmarks/Sources/bench, does exactly this):
#   threadpool_submit_py     ex = ThreadPoolExecutor(2); submit N = 20_000 no-ops, then .result() on
#                            each in order; tasks/s = N / elapsed (submit of the first .. last result).
#   threadpool_roundtrip_py  same executor; S = 2_000 times { ex.submit(noop).result() } one at a time;
#                            us per submit+result (median of the per-call times).
# Median of REPS = 5 repetitions (INFO: min/max). Run: python3 threadpool.py
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

REPS = 5
N = 20_000
S = 2_000


def noop():
    return None


def report(name, values, unit, digits=1):
    med = statistics.median(values)
    fmt = "{:.%df}" % digits
    print("RESULT %s %s %s" % (name, fmt.format(med), unit), flush=True)
    print("INFO %s min=%s max=%s n=%d unit=%s" % (name, fmt.format(min(values)), fmt.format(max(values)),
                                                  len(values), unit), flush=True)


def submit_all(ex):
    t0 = time.perf_counter()
    fs = [ex.submit(noop) for _ in range(N)]
    for f in fs:
        f.result()
    return N / (time.perf_counter() - t0)


def roundtrips(ex):
    times = []
    for _ in range(S):
        t0 = time.perf_counter()
        ex.submit(noop).result()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def main():
    with ThreadPoolExecutor(2) as ex:
        ex.submit(noop).result()
        report("threadpool_submit_py", [submit_all(ex) for _ in range(REPS)], "tasks/s", 0)
        report("threadpool_roundtrip_py", [roundtrips(ex) for _ in range(REPS)], "us", 2)


if __name__ == "__main__":
    main()
