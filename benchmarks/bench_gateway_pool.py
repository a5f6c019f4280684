"""How soon a job's first statement runs after its ``%%bgjob`` magic: in a kernel the
gateway starts for it (cold), in one of ``gateway_pool_size`` kernels kept warm on the
gateway, and in a warm local kernel (the floor: no network, no gateway). A Kernel Gateway
on loopback.

Prints one table of medians. Run: python benchmarks/bench_gateway_pool.py [--trials 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

import jupyter_bgjobs as bj
from jupyter_bgjobs._api import manager

TARGET_MS = 100


def first_statement_after(ip: Any, name: str, gateway: str | None, wait_warm: bool) -> float:
    """Seconds from the ``%%bgjob`` magic to the job's first statement, as its kernel
    clocked it."""
    if wait_warm:
        pool = manager.gateway_pool() if gateway else manager.pool()
        assert pool is not None and pool.wait_warm(120), "the pool did not warm"
    line = f"{name} --results none" + (f" --gateway {gateway}" if gateway else "")
    t0 = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        ip.run_cell_magic("bgjob", line, "x = 1")
    job = bj.get_job(name).wait(120)
    assert job.state == "succeeded", job.reason
    manager.join_worker(job)
    return float(job.timings["first_statement"]) - t0


def trials(ip: Any, label: str, n: int, gateway: str | None, wait_warm: bool) -> list[float]:
    return [first_statement_after(ip, f"{label}_{i}", gateway, wait_warm) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    # This script's folder is sys.path[0]: the gateway is started as bench_remote does.
    from bench_remote import TOKEN, start_gateway

    folder = tempfile.mkdtemp(prefix="bench-gateway-pool-")
    bj.configure(root=folder, pool_size=0)
    proc, url = start_gateway(folder)
    os.environ["JUPYTER_GATEWAY_AUTH_TOKEN"] = TOKEN
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_bgjobs")
    try:
        cold = trials(ip, "cold", args.trials, url, wait_warm=False)
        bj.configure(gateway=url, gateway_pool_size=1)
        warm = trials(ip, "pooled", args.trials, url, wait_warm=True)
        bj.configure(gateway="", gateway_pool_size=0, pool_size=1)
        local = trials(ip, "local", args.trials, None, wait_warm=True)
    finally:
        ip.run_line_magic("unload_ext", "jupyter_bgjobs")
        manager.shutdown()
        proc.terminate()
        proc.wait(30)
    rows = [
        ("cold gateway kernel", cold),
        ("warm pooled gateway kernel", warm),
        ("warm local kernel (floor)", local),
    ]
    print(f"%%bgjob to the first statement, ms (median of {args.trials}; min, max)")
    print(f"{'kernel':28} {'median':>8} {'min':>8} {'max':>8}")
    for label, times in rows:
        ms = [t * 1000 for t in times]
        print(f"{label:28} {statistics.median(ms):8.1f} {min(ms):8.1f} {max(ms):8.1f}")
    print(json.dumps({"target_ms_warm_pooled": TARGET_MS}))


if __name__ == "__main__":
    main()
