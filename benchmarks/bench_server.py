"""What the IDE's event stream costs the server: one look at every job's row (it looks
twice a second, for each open page), with N ended jobs in the store.

Prints one table: rows read whole each time (as before rows of ended jobs were kept), rows
of unchanged ended jobs kept, and the floor measured in the same run, only listing the
jobs. Run: python benchmarks/bench_server.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jupyter_bgjobs as bj
from jupyter_bgjobs._runtime import pid_alive
from jupyter_bgjobs._server import handlers


def best(fn: Callable[[], object], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ended_jobs(root: Path, n: int) -> None:
    """One finished detached job, and ``n - 1`` copies of its entry."""
    script = root / "job.py"
    script.write_text("total = 6\n")
    job = bj.run_script(script, name="seed", detach=True).wait(120)
    assert job.state == "succeeded", job.reason
    host = json.loads((job.folder / "host.json").read_text())["pid"]
    while pid_alive(host):  # its host ends just after the record says succeeded
        time.sleep(0.05)
    for _ in range(n - 1):
        copy = job.folder.with_name(uuid.uuid4().hex[:8])
        shutil.copytree(job.folder, copy)
        spec = json.loads((copy / "spec.json").read_text())
        spec["id"] = copy.name
        (copy / "spec.json").write_text(json.dumps(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    try:
        bj.configure(root=str(root))
        ended_jobs(root, args.jobs)
        where = str(root)
        rows = [
            (
                "rows read whole",
                lambda: [json.dumps(handlers.summary(j, where)) for j in handlers._jobs()],
            ),
            (
                "ended rows kept (now)",
                lambda: [json.dumps(handlers.row(j, where)) for j in handlers._jobs()],
            ),
            ("floor: listing the jobs", handlers._jobs),
        ]
        times = [(label, best(fn)) for label, fn in rows]
        floor = times[-1][1]
        print(f"one look at {args.jobs} ended jobs (best of 7)")
        print(f"{'':26} {'ms':>8} {'vs floor':>9} {'core share at 2/s':>18}")
        for label, t in times:
            print(f"{label:26} {t * 1000:8.1f} {t / floor:9.2f} {2 * t:17.0%}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
