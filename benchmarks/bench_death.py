"""How soon a job whose kernel was killed is seen as ``died``.

From the SIGKILL of a running job's kernel to the job's end (state ``died``), beside, in the
same run, jupyter_client's own restarter (what jupyter_server relies on to see a kernel die:
it polls every ``time_to_dead``, 3 s by default) and the floor, the operating system telling
a parent of its killed child. README states the target: seen within 2 s.
Run: python benchmarks/bench_death.py [--trials N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from jupyter_client.ioloop import IOLoopKernelManager

import jupyter_bgjobs as bj
from jupyter_bgjobs._api import manager

TARGET = 2.0


def ours(trials: int) -> list[float]:
    out = []
    for i in range(trials):
        job = bj.run_cell(
            "import time\nprint('ready', flush=True)\ntime.sleep(600)",
            name=f"bench_death_{i}",
            results="none",
        )
        with job._cond:
            assert job._cond.wait_for(lambda j=job: "ready" in j.output, 120), job.reason
        assert job.kernel_pid is not None
        os.kill(job.kernel_pid, signal.SIGKILL)
        killed = time.monotonic()
        job.wait(60)
        assert job.state == "died" and job._t_finished is not None, job.state
        out.append(job._t_finished - killed)
        manager.join_worker(job)
    return out


async def _restarter_once() -> float:
    km = IOLoopKernelManager(kernel_name="python3")
    km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    seen = asyncio.Event()
    at: list[float] = []

    def noticed() -> None:
        at.append(time.monotonic())
        seen.set()

    km.add_restart_callback(noticed, "restart")
    km.start_restarter()
    # A kill at a random point of the restarter's polling period (3 s), as a death is.
    await asyncio.sleep(random.uniform(0, 3.0))
    km.signal_kernel(signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.wait_for(seen.wait(), 60)
    km.stop_restarter()
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return at[0] - killed


def restarter(trials: int) -> list[float]:
    return [asyncio.run(_restarter_once()) for _ in range(trials)]


def floor(trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        time.sleep(0.2)  # let it start; the time measured begins at the kill
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(60)
        out.append(time.monotonic() - killed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=7)
    args = parser.parse_args()
    bj.configure(root=tempfile.mkdtemp(prefix="bench-death-"))
    rows = [
        ("jupyter_bgjobs job -> died", ours(args.trials)),
        ("jupyter_client restarter", restarter(args.trials)),
        ("floor: parent reaps its child", floor(args.trials)),
    ]
    peer = statistics.median(rows[1][1])
    print(f"{'kill -> seen':32} {'median ms':>10} {'max ms':>8} {'vs restarter':>13}  target")
    for label, values in rows:
        med = statistics.median(values)
        mark = ""
        if label.startswith("jupyter_bgjobs"):
            mark = "yes" if max(values) <= TARGET else "NO"
        print(f"{label:32} {med * 1000:10.1f} {max(values) * 1000:8.1f} {med / peer:13.3f}  {mark}")
    manager.shutdown()


if __name__ == "__main__":
    main()
