"""Queue throughput and latency, with its peers measured in the same run.

1. Throughput: TASKS no-op tasks on 2 workers through our Queue (time limit on, stdout and
   stderr captured per task, each task's peak memory measured, the DataFrame built), the
   same without the peak memory (``configure(sample_usage=False)``),
   multiprocessing.Pool ``apply_async``, pebble ``ProcessPool.schedule(timeout=...)``,
   loky, and a Dask LocalCluster. Every pool is started and warmed first: the figure is
   tasks per second of a warm pool.
2. Makespan: 20 tasks of 0.1 s on 4 warm workers (ideal: 500 ms).
3. Time limit: a task that overruns a 0.3 s limit on 1 worker: how long after the limit it
   was detected (the row is done), and how long after that the next task was running.

Run: python benchmarks/bench_queue.py [--tasks 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from typing import Any

from jupyter_bgjobs import Queue, WorkerPool


def noop(x: int) -> int:
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def best(fn: Callable[[], float], repeat: int) -> float:
    """Median tasks/s over ``repeat`` rounds."""
    return statistics.median(fn() for _ in range(repeat))


def ours(n: int, repeat: int, sample: bool = True) -> float:
    from jupyter_bgjobs import configure

    configure(sample_usage=sample)  # each task's peak memory measured, or not
    pool = WorkerPool(2)
    q = Queue(pool)

    def round_() -> float:
        for i in range(n):
            q.add(noop, args=(i,))
        t0 = time.perf_counter()
        df = q.run(timelimit=60, message="none", shutdown=False)
        took = time.perf_counter() - t0
        assert (df["code"] == 0).all()
        q.get_tasks()._tasks.clear()
        q.get_tasks()._by_id.clear()
        return n / took

    round_()  # warm: workers started, function cached
    rate = best(round_, repeat)
    pool.shutdown()
    return rate


def mp_pool(n: int, repeat: int) -> float:
    with mp.Pool(2) as pool:

        def round_() -> float:
            t0 = time.perf_counter()
            futures = [pool.apply_async(noop, (i,)) for i in range(n)]
            [f.get() for f in futures]
            return n / (time.perf_counter() - t0)

        round_()
        return best(round_, repeat)


def pebble_pool(n: int, repeat: int) -> float:
    from pebble import ProcessPool

    with ProcessPool(max_workers=2) as pool:

        def round_() -> float:
            t0 = time.perf_counter()
            futures = [pool.schedule(noop, args=(i,), timeout=60) for i in range(n)]
            [f.result() for f in futures]
            return n / (time.perf_counter() - t0)

        round_()
        return best(round_, repeat)


def loky_pool(n: int, repeat: int) -> float:
    from loky import get_reusable_executor

    ex = get_reusable_executor(max_workers=2, timeout=60)

    def round_() -> float:
        t0 = time.perf_counter()
        futures = [ex.submit(noop, i) for i in range(n)]
        [f.result() for f in futures]
        return n / (time.perf_counter() - t0)

    round_()
    rate = best(round_, repeat)
    ex.shutdown(wait=True, kill_workers=True)
    return rate


def dask_cluster(n: int, repeat: int) -> float:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):

        def round_() -> float:
            t0 = time.perf_counter()
            futures = client.map(noop, range(n), pure=False)
            client.gather(futures)
            return n / (time.perf_counter() - t0)

        round_()
        return best(round_, repeat)


def makespan() -> tuple[float, float]:
    """(run() wall time with the DataFrame, first task queued -> last task finished)."""
    pool = WorkerPool(4)
    pool.refill()
    pool.wait_ready()
    q = Queue(pool)
    for _ in range(20):
        q.add(nap, args=(0.1,))
    t0 = time.perf_counter()
    q.run(timelimit=60, message="none", shutdown=False)
    wall = time.perf_counter() - t0
    pool.shutdown()
    tasks = list(q.get_tasks())
    span = max(t.finished or 0.0 for t in tasks) - min(t.queued or 0.0 for t in tasks)
    return wall, span


def overrun() -> tuple[float, float]:
    pool = WorkerPool(1)
    q = Queue(pool)
    q.add(noop, args=(0,))  # the worker is started and warm before the overrun
    q.run(timelimit=0.3, message="none", shutdown=False)
    q.add(nap, args=(5.0,), id="slow")
    q.add(noop, args=(1,), id="next")
    q.run(timelimit=0.3, message="none")
    slow, nxt = q.get_tasks()["slow"], q.get_tasks()["next"]
    assert slow.code == 124 and nxt.code == 0
    assert slow.started is not None and slow.finished is not None and nxt.started is not None
    detected = slow.finished - (slow.started + 0.3)
    return detected, nxt.started - slow.finished


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, r = args.tasks, args.repeat
    rates: dict[str, Any] = {
        "jupyter_bgjobs Queue (time limit, output captured, DataFrame)": ours(n, r),
        "jupyter_bgjobs Queue, each task's peak memory not measured": ours(n, r, False),
        "multiprocessing.Pool apply_async (no time limit, no capture)": mp_pool(n, r),
        "pebble ProcessPool.schedule(timeout=60)": pebble_pool(n, r),
        "loky reusable executor": loky_pool(n, r),
        "Dask LocalCluster (2 processes)": dask_cluster(n, r),
    }
    ours_rate = next(iter(rates.values()))
    print(f"{n} no-op tasks on 2 warm workers, median of {r} rounds")
    print()
    print("| pool | tasks/s | ours / this |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {ours_rate / rate:.2f}x |")
    measured = list(rates.values())[:2]
    print(
        f"\neach task's peak memory measured: {measured[0] / measured[1]:.3f} of the "
        "throughput without it (target: above 0.95)"
    )
    print()
    spans = [makespan() for _ in range(3)]
    wall = statistics.median(s[0] for s in spans) * 1e3
    span = statistics.median(s[1] for s in spans) * 1e3
    print(
        f"20 tasks of 0.1 s on 4 warm workers: makespan {span:.0f} ms (queued -> last "
        f"finished), run() returns in {wall:.0f} ms with the DataFrame"
    )
    print("  (medians of 3; ideal 500 ms; target <= 510 ms)")
    trials = [overrun() for _ in range(3)]
    det = statistics.median(t[0] for t in trials) * 1e3
    nxt = statistics.median(t[1] for t in trials) * 1e3
    print(
        f"a task past a 0.3 s limit: detected {det:.1f} ms after the limit; "
        f"next task running {nxt:.1f} ms later (medians of 3; targets <= 50 ms each)"
    )


if __name__ == "__main__":
    main()
