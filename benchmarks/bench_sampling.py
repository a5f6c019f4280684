"""What sampling a job's usage costs: the CPU time of one sample of a kernel-like process
tree (a parent and three children), at the driver's pace of one sample a second, beside
the floor measured in the same run (one ``memory_info`` of one process, the least any
sampler of memory does) and the target (1 % of one core per running job).
Run: python benchmarks/bench_sampling.py [--samples N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import psutil

from jupyter_bgjobs._usage import Sampler

TARGET = 0.01  # of one core, per running job, at one sample a second

TREE = (
    "import subprocess, sys, time\n"
    "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])"
    " for _ in range(3)]\n"
    "time.sleep(600)\n"
)


def cpu_per_call(fn: object, n: int) -> float:
    """CPU seconds this process spends per call of ``fn``."""
    start = time.process_time()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.process_time() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    tree = subprocess.Popen([sys.executable, "-c", TREE])
    try:
        parent = psutil.Process(tree.pid)
        while len(parent.children()) < 3:
            time.sleep(0.05)  # the children are being started; nothing to wait on
        sampler = Sampler(tree.pid)
        ours = cpu_per_call(sampler.sample, args.samples)
        floor = cpu_per_call(lambda: parent.memory_info(), args.samples)
    finally:
        for proc in [*psutil.Process(tree.pid).children(), tree]:
            proc.kill()
        tree.wait()
    rows = [
        ("one sample (4 processes)", ours * 1e3, ours),
        ("floor: one memory_info", floor * 1e3, floor),
    ]
    print(f"{'what':<28}{'CPU ms per sample':>20}{'share of a core at 1 Hz':>26}")
    for what, ms, share in rows:
        print(f"{what:<28}{ms:>20.3f}{share:>25.3%}")
    print(
        f"\nsampling vs floor: {ours / floor:.1f}x; vs target ({TARGET:.0%} of a core): "
        f"{ours / TARGET:.3f} of the budget"
    )


if __name__ == "__main__":
    main()
