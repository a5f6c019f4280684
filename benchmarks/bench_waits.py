"""Jobs that wait for the jobs whose results they read: three independent jobs and a
fourth that reads all three.

Prints, in one run (medians of --rounds):
1. How long the notebook is held: the four ``run_cell`` calls, returned.
2. The fourth job's first statement after the last of the three ended (its results
   loaded, ready to merge): the wait's own cost (target <= 50 ms).
3. The whole, from the first submit to the fourth's end, against its floor measured in the
   same run: the longest of the three alone plus the fourth alone (its names already in
   the notebook), each from submit to end (target: within 5 %).

Run: python benchmarks/bench_waits.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jupyter_bgjobs as bj
from jupyter_bgjobs._merge import target_namespace

PRODUCERS = [
    ("load_a", "import time\ntime.sleep(1.0)\na = list(range(1000))"),
    ("load_b", "import time\ntime.sleep(1.5)\nb = {'rows': 200}"),
    ("load_c", "import time\ntime.sleep(2.0)\nc = 'ready'"),
]
FOURTH = "import time\ntime.sleep(0.5)\nreport = (len(a), b['rows'], c)"


def wall(job: bj.Job) -> float:
    assert job.finished is not None
    return job.finished.timestamp() - job.timings["submitted"]


def one_round() -> tuple[float, float, float, float]:
    ns = target_namespace()
    for name in ("a", "b", "c", "report"):
        ns.pop(name, None)
    t0 = time.perf_counter()
    started = time.time()
    producers = [bj.run_cell(code, name, env="none") for name, code in PRODUCERS]
    fourth = bj.run_cell(FOURTH, "combine")
    held = time.perf_counter() - t0
    assert fourth.state == "waiting" or fourth.waits_for, fourth.state
    fourth.wait(60)
    assert fourth.state == "succeeded", fourth.reason
    assert ns["report"] == (1000, 200, "ready")
    for producer in producers:
        producer.wait()  # their names into the notebook, as the next cell would
    last = max(p.finished.timestamp() for p in producers if p.finished is not None)
    gap = fourth.timings["first_statement"] - last
    assert fourth.finished is not None
    total = fourth.finished.timestamp() - started
    # The floor, in the same run: the longest alone, then the fourth alone.
    longest = bj.run_cell(PRODUCERS[-1][1], "alone_c", env="none").wait(60)
    alone = bj.run_cell(FOURTH, "alone_combine").wait(60)
    floor = wall(longest) + wall(alone)
    for job in [*producers, fourth, longest, alone]:
        job.forget()
    return held, gap, total, floor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Four jobs at once, each with a warm kernel: the machine's two cores do not decide.
    bj.configure(max_concurrent=4, pool_size=4, sample_usage=False)
    bj.run_cell("x = 1", "warm", env="none").wait(120)
    rounds = [one_round() for _ in range(args.rounds)]
    held, gap, total, floor = (statistics.median(r[i] for r in rounds) for i in range(4))
    print(
        f"three jobs of 1.0, 1.5 and 2.0 s and a fourth of 0.5 s that reads all three; "
        f"median of {args.rounds}"
    )
    print()
    print("| measure | median | target |")
    print("|---|---|---|")
    print(f"| the notebook held by the four `run_cell` calls | {held * 1000:.1f} ms | at once |")
    print(
        f"| the fourth's first statement after the last of the three ended | "
        f"{gap * 1000:.1f} ms | <= 50 ms |"
    )
    print(f"| the whole, first submit to the fourth's end | {total:.2f} s | |")
    print(f"| floor: the longest alone + the fourth alone | {floor:.2f} s | |")
    print(f"| the whole against its floor | {total / floor:.3f}x | <= 1.05x |")


if __name__ == "__main__":
    main()
