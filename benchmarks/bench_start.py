"""How fast a job starts: the magic's return, first statement with and without a warm kernel.

Prints one table, with jupyter_client's bare cold kernel start measured in the same run.
Run: python benchmarks/bench_start.py [--trials N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from typing import Any

from IPython.core.interactiveshell import InteractiveShell
from jupyter_client import KernelManager

import jupyter_bgjobs as bj
from jupyter_bgjobs._api import manager


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bare_cold_start(trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        km = KernelManager(kernel_name="python3")
        km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        out.append(time.perf_counter() - t0)
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return out


def job_starts(ip: Any, trials: int, warm: bool) -> tuple[list[float], list[float]]:
    """(magic return times, magic -> first statement running), in seconds."""
    returns, firsts = [], []
    bj.configure(pool_size=1 if warm else 0)
    for i in range(trials):
        if warm:
            assert manager.pool().wait_warm(60)
        name = f"bench_{'warm' if warm else 'cold'}_{i}"
        t_wall = time.time()
        t0 = time.perf_counter()
        ip.run_cell_magic("bgjob", f"{name} --results none", "x = 1")
        returns.append(time.perf_counter() - t0)
        job = bj.get_job(name).wait(120)
        assert job.state == "succeeded" and job.first_statement_at is not None
        firsts.append(job.first_statement_at - t_wall)
        manager.join_worker(job)
    return returns, firsts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=15)
    args = parser.parse_args()
    bj.configure(root=tempfile.mkdtemp(prefix="bench-start-"))
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_bgjobs")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        warm_ret, warm_first = job_starts(ip, args.trials, warm=True)
        cold_ret, cold_first = job_starts(ip, max(3, args.trials // 3), warm=False)
    bare = bare_cold_start(max(3, args.trials // 3))
    bare_med = statistics.median(bare)
    rows = [
        ("magic returns (warm pool)", warm_ret, 0.020),
        ("magic returns (no pool)", cold_ret, 0.020),
        ("first statement, warm kernel", warm_first, 0.050),
        ("first statement, no warm kernel", cold_first, bare_med + 0.100),
        ("jupyter_client bare cold start", bare, None),
    ]
    print(f"{'measure':34} {'median ms':>10} {'p95 ms':>8} {'target ms':>10} {'vs bare':>8}  ok")
    for label, values, target in rows:
        med = statistics.median(values)
        ok = "" if target is None else ("yes" if med <= target else "NO")
        tgt = "" if target is None else f"{target * 1000:.0f}"
        print(
            f"{label:34} {med * 1000:10.1f} {pct(values, 0.95) * 1000:8.1f} {tgt:>10} "
            f"{med / bare_med:8.2f}  {ok}"
        )
    ip.run_line_magic("unload_ext", "jupyter_bgjobs")


if __name__ == "__main__":
    main()
