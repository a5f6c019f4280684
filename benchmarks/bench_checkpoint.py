"""What a checkpoint costs, and what resuming from one costs, against their floors.

Prints, in one run:
1. Writing a checkpoint of a ~1.3 GB namespace (a 1 GiB float64 array and a ~300 MB
   mixed DataFrame) inside a real job's kernel, where its first section ends, against
   the floor: the same number of bytes written from memory to a file on the same
   filesystem (the job's folder), flushed to the disk as the checkpoint is (fsync).
2. Resuming that job from its checkpoint, from ``resume()`` to its first statement,
   against the floor: a job's start on an empty namespace plus reading the same bytes
   from that file.
3. A job of 5 sections (each makes a 40 MB array and computes on it) with and without
   ``--checkpoint``: its time from first statement to end, median of 3 each.

Run: python benchmarks/bench_checkpoint.py [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

import jupyter_bgjobs as bj
from jupyter_bgjobs._config import settings

BUILD = """\
import numpy as np, pandas as pd
# Build ----
rows = int(8_000_000 * {scale})
rng = np.random.default_rng(0)
frame = pd.DataFrame({{
    "f64": rng.random(rows),
    "i64": rng.integers(0, 1_000_000, rows),
    "when": pd.date_range("2020-01-01", periods=rows, freq="s"),
    "f32": rng.random(rows, dtype=np.float32),
    "i32": rng.integers(0, 1000, rows, dtype=np.int32),
    "flag": rng.random(rows) > 0.5,
}})
arr = np.ones(int(2**30 * {scale}) // 8)
# Use ----
raise RuntimeError("stopped here, to be resumed")
"""

FIVE = "\n".join(
    f"# Step {i} ----\n"
    f"a{i} = np.random.default_rng({i}).random(5_000_000)\n"
    f"s{i} = float(np.sort(a{i})[::1000].sum())"
    for i in range(1, 6)
)


def floor_write(folder: Path, nbytes: int) -> float:
    """Seconds to write ``nbytes`` from memory to a new file in ``folder`` and fsync it."""
    data = np.ones(nbytes // 8 + 1)
    view = memoryview(data).cast("B")[:nbytes]
    path = folder / "floor.bin"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while view.nbytes:
            n = os.write(fd, view[: 64 << 20])
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    took = time.perf_counter() - t0
    path.unlink()
    return took


def floor_read(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(64 << 20)
        while fh.readinto(buf):
            pass
    return time.perf_counter() - t0


def first_statement(job: bj.Job) -> float:
    return job.timings["first_statement"] - job.timings["submitted"]


def run_time(job: bj.Job) -> float:
    return job.elapsed - (job.timings["first_statement"] - job.timings["runner_started"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bj.configure(sample_usage=False)

    writes, floors, resumes, loads, starts = [], [], [], [], []
    nbytes = 0
    for _ in range(args.rounds):
        job = bj.run_cell(
            BUILD.format(scale=args.scale), "ckpt_big", env="none", results="none", checkpoint=True
        )
        job.wait(600)
        assert job.state == "failed" and job.checkpoint, (job.reason, job.checkpoint)
        nbytes = int(job.checkpoint["nbytes"])
        writes.append(float(job.checkpoint["seconds"]))
        floors.append(floor_write(job.folder, nbytes))
        empty = bj.run_cell("x = 1", "empty", env="none", results="none").wait(120)
        starts.append(first_statement(empty))
        loads.append(floor_read(job.folder / "checkpoint.snap"))
        again = job.resume().wait(600)
        assert "resumed from section Use" in again.report, again.report
        resumes.append(first_statement(again))
        for done in (job, again, empty):
            done.forget()

    plain, checked = [], []
    for _ in range(args.rounds):
        code = "import numpy as np\n" + FIVE
        for keep, times in ((False, plain), (True, checked)):
            job = bj.run_cell(code, "five", env="none", results="none", checkpoint=keep)
            job.wait(600)
            assert job.state == "succeeded", job.reason
            times.append(run_time(job))
            job.forget()

    med = statistics.median
    print(f"namespace: {nbytes / 1e9:.2f} GB in the checkpoint; median of {args.rounds}")
    print()
    print("| what | seconds | vs floor |")
    print("|---|---|---|")
    print(
        f"| write it where a section ends (in the job's kernel) | {med(writes):.2f} | "
        f"{med(writes) / med(floors):.2f}x (target <= 1.5x) |"
    )
    print(f"| floor: the same bytes written, flushed, same disk | {med(floors):.2f} | 1.00x |")
    floor = med(starts) + med(loads)
    print(
        f"| resume from it: resume() to its first statement | {med(resumes):.2f} | "
        f"{med(resumes) / floor:.2f}x |"
    )
    print(
        f"| floor: an empty job's start ({med(starts):.2f}) + reading the bytes "
        f"({med(loads):.2f}) | {floor:.2f} | 1.00x |"
    )
    print()
    print("| a job of 5 sections (40 MB each) | seconds | vs without |")
    print("|---|---|---|")
    print(f"| without --checkpoint | {med(plain):.2f} | 1.00x |")
    print(
        f"| with --checkpoint (4 checkpoints, 40 to 160 MB) | {med(checked):.2f} | "
        f"{med(checked) / med(plain):.2f}x |"
    )
    print(f"\n(job folders under {settings.job_root()})")


if __name__ == "__main__":
    main()
