"""What a notebook costs when every cell runs as a job, against the same notebook run as it
is, in one run: a notebook of short cells (numpy, pandas) and a working notebook whose
cells are as long as those of public notebooks (most take milliseconds, a few take
seconds). Each way of running a notebook runs in a Python process of its own, started
for it, as a notebook opened anew runs: its cells go through the shell one by one (its
hooks run), each ``%%bgjob`` cell waited for before the next; the trials alternate the
ways, and the medians are compared. As jobs on warm kernels forked from a template (the
default) and on warm kernels started anew (``pool_fork=False``, how every pool kernel
started before). Then what one job costs that does nothing, how soon a job's first
statement runs once the notebook has imported numpy and pandas, against an empty
notebook's job; and what a warm kernel costs in memory, forked and started anew.

Prints four tables. Run: python benchmarks/bench_notebook.py [--pool 2] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

IMPORTS = "import numpy as np\nimport pandas as pd"

# A notebook as people write them: imports, a frame, short steps.
SHORT = [
    IMPORTS,
    "rng = np.random.default_rng(1)\ndf = pd.DataFrame({'g': rng.integers(0, 5, 2000),"
    " 'v': rng.normal(size=2000)})",
    "df.head();",
    "means = df.groupby('g')['v'].mean()",
    "df['z'] = (df['v'] - df['v'].mean()) / df['v'].std()",
    "outliers = int((df['z'].abs() > 2).sum())",
    "hist, edges = np.histogram(df['v'], bins=10)",
    "top = df.nlargest(5, 'v')",
    "summary = df.describe()",
    "pivot = df.pivot_table(index='g', values='v', aggfunc='median')",
]

# A working session: mostly short cells, with the few long ones that hold the work, as in
# public notebooks (their cells took 9 ms at the median and 0.42 s on average).
WORKING = [
    IMPORTS,
    "rng = np.random.default_rng(7)\nn = 1_000_000",
    "events = pd.DataFrame({'user': rng.integers(0, 5000, n), 'kind': rng.integers(0, 8, n),"
    " 'amount': rng.gamma(2.0, 10.0, n)})",
    "events.shape",
    "per_user = events.groupby('user')['amount'].agg(['sum', 'mean', 'count'])",
    "per_user.head();",
    "def bootstrap(values, rounds):\n"
    "    draw = np.random.default_rng(0).choice\n"
    "    return np.array([draw(values, len(values)).mean() for _ in range(rounds)])\n"
    "spread = bootstrap(events['amount'].to_numpy()[:20_000], 16_000)",
    "low, high = np.percentile(spread, [2.5, 97.5])",
    "ranked = per_user.sort_values('sum', ascending=False)",
    "def widest_walk(walkers, steps, seed):\n"
    "    gen = np.random.default_rng(seed)\n"
    "    return max(float(np.abs(gen.normal(size=(walkers, steps)).cumsum(axis=1)).max())\n"
    "               for _ in range(12))\n"
    "widest = widest_walk(1000, 2000, 3)",
    "matrix = rng.normal(size=(1500, 1500))\n"
    "inverse = np.linalg.inv(matrix @ matrix.T + np.eye(1500))",
    "check = float(np.abs(inverse).max())",
    "kinds = events.pivot_table(index='user', columns='kind', values='amount', aggfunc='sum')",
    "top_kinds = kinds.sum().sort_values()",
]


def reset(ip: Any) -> None:
    ip.run_cell("get_ipython().run_line_magic('reset', '-f')")


def notebook_child(which: str, how: str, pool: int) -> list[float]:
    """Run notebook ``which`` in this process, a fresh one, the way ``how`` says: seconds
    per cell, each from the cell's start to its names in the notebook."""
    from IPython.core.interactiveshell import InteractiveShell

    cells = {"short": SHORT, "working": WORKING}[which]
    ip = InteractiveShell.instance()
    times = []
    if how == "plain":
        for cell in cells:
            t0 = time.perf_counter()
            ip.run_cell(cell)
            times.append(time.perf_counter() - t0)
        return times
    import jupyter_bgjobs as bj
    from jupyter_bgjobs._api import manager

    ip.run_line_magic("load_ext", "jupyter_bgjobs")
    try:
        bj.configure(pool_size=pool, pool_fork=how == "forked")
        assert manager.pool().wait_warm(120)
        for i, cell in enumerate(cells):
            name = f"cell_{i}"
            t0 = time.perf_counter()
            ip.run_cell(f"%%bgjob {name}\n{cell}")
            job = bj.get_job(name).wait(300)
            times.append(time.perf_counter() - t0)
            assert job.state == "succeeded", job.report
    finally:
        ip.run_line_magic("unload_ext", "jupyter_bgjobs")
    return times


def run_fresh(which: str, how: str, pool: int) -> list[float]:
    """``notebook_child`` in a Python process started for it."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, how, "--pool", str(pool)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    for line in out.stdout.splitlines():
        if line.startswith("CELLS "):
            return [float(t) for t in json.loads(line[6:])]
    raise RuntimeError(f"{which} {how} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def nothing_job(ip: Any, trials: int) -> float:
    """Median seconds of a cell that is a job doing nothing, from the cell's start to its
    name in the notebook (a warm kernel ready): what every job costs."""
    import jupyter_bgjobs as bj
    from jupyter_bgjobs._api import manager

    out = []
    for i in range(trials):
        assert manager.pool().wait_warm(120)
        t0 = time.perf_counter()
        ip.run_cell(f"%%bgjob nothing_{i}\nx = 1")
        job = bj.get_job(f"nothing_{i}").wait(300)
        out.append(time.perf_counter() - t0)
        assert job.state == "succeeded", job.report
        manager.join_worker(job)
    return statistics.median(out)


def first_statement(ip: Any, code: str, tag: str, trials: int) -> float:
    """Median seconds from the magic to the job's first statement, a warm kernel ready."""
    import jupyter_bgjobs as bj
    from jupyter_bgjobs._api import manager

    out = []
    for i in range(trials):
        assert manager.pool().wait_warm(120)
        name = f"first_{tag}_{i}"
        t_wall = time.time()
        ip.run_cell_magic("bgjob", f"{name} --results none", code)
        job = bj.get_job(name).wait(300)
        assert job.state == "succeeded", job.report
        out.append(job.first_statement_at - t_wall)
        manager.join_worker(job)
    return statistics.median(out)


def unaware_pool(size: int) -> Any:
    """Warm kernels that import nothing ahead: kernels warmed before the notebook
    imported its libraries, never told of them since. Returns what undoes it."""
    import jupyter_bgjobs as bj
    from jupyter_bgjobs._backends import pool

    saved = pool.heavy_imports
    pool.heavy_imports = list  # nothing
    bj.configure(pool_size=0)
    bj.configure(pool_size=size)

    def undo() -> None:
        pool.heavy_imports = saved
        bj.configure(pool_size=0)
        bj.configure(pool_size=size)

    return undo


def warm_memory(size: int) -> dict[bool, float]:
    """Median private memory (USS, MiB) of a ready warm kernel, forked and started anew,
    numpy and pandas imported in each."""
    import psutil

    from jupyter_bgjobs._backends.pool import KernelPool

    found = {}
    for fork in (True, False):
        pool = KernelPool(size, fork=fork)
        try:
            pool.refill()
            assert pool.wait_warm(120)
            found[fork] = statistics.median(
                psutil.Process(k.pid).memory_full_info().uss / 2**20 for k in pool._idle
            )
        finally:
            pool.close()
    return found


HOWS = (
    ("plain", "run as it is"),
    ("forked", "as jobs, forked warm kernels"),
    ("anew", "as jobs, warm kernels started anew"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("NOTEBOOK", "HOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("CELLS " + json.dumps(notebook_child(*args.child, args.pool)))
        return
    # Every process reads the libraries from the page cache, the first one too.
    subprocess.run([sys.executable, "-c", "import numpy, pandas"], check=True)
    runs: dict[tuple[str, str], list[list[float]]] = {}
    for which in ("short", "working"):
        for _ in range(args.trials):
            for how, _label in HOWS:
                runs.setdefault((which, how), []).append(run_fresh(which, how, args.pool))
    # Here, after the notebooks' processes: this process imports what they measure.
    from IPython.core.interactiveshell import InteractiveShell

    import jupyter_bgjobs as bj

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_bgjobs")
    bj.configure(pool_size=args.pool)
    try:
        nothing = nothing_job(ip, args.trials * 3)
        reset(ip)
        empty = first_statement(ip, "x = 1", "empty", args.trials)
        ip.run_cell(IMPORTS + "\nframe = pd.DataFrame({'a': range(9)})")
        following = first_statement(ip, "n = len(frame)", "follow", args.trials)
        undo = unaware_pool(args.pool)
        cold = first_statement(ip, "n = len(frame)", "cold", args.trials)
        undo()
        memory = warm_memory(args.pool)
    finally:
        ip.run_line_magic("unload_ext", "jupyter_bgjobs")
    print(
        f"every cell of a notebook run as a job and waited for, each way in a fresh process, "
        f"medians of {args.trials} trials, pool_size={args.pool}"
    )
    print(
        f"{'':17} {'':35} {'cells':>5} {'total s':>8} {'imports ms':>10} {'rest s':>7} "
        f"{'median cell ms':>14} {'vs plain':>9}"
    )
    for which, label in (("short", "short cells"), ("working", "working notebook")):
        plain = statistics.median(sum(t) for t in runs[(which, "plain")])
        for how, words in HOWS:
            trials = runs[(which, how)]
            total = statistics.median(sum(t) for t in trials)
            first = statistics.median(t[0] for t in trials)
            rest = statistics.median(sum(t[1:]) for t in trials)
            cell = statistics.median(statistics.median(t) for t in trials)
            print(
                f"{label:17} {words:35} {len(trials[0]):5d} {total:8.2f} {first * 1000:10.0f} "
                f"{rest:7.2f} {cell * 1000:14.1f} {total / plain:9.2f}"
            )
    print()
    print(
        f"a cell that is a job doing nothing ('x = 1'), cell start -> name merged, median of "
        f"{args.trials * 3}: {nothing * 1000:.1f} ms"
    )
    print()
    print(f"magic -> first statement, median of {args.trials}, a warm kernel ready")
    print(f"{'':58} {'ms':>7} {'vs empty':>9}")
    for label, t in (
        ("empty notebook, job 'x = 1' (the floor)", empty),
        ("numpy+pandas imported, DataFrame shipped; pool follows", following),
        ("the same, warm kernel never told of the imports", cold),
    ):
        print(f"{label:58} {t * 1000:7.1f} {f'+{(t - empty) * 1000:.0f} ms':>9}")
    print()
    print("a ready warm kernel's own memory (USS), numpy and pandas imported")
    print(f"{'forked from the template':58} {memory[True]:7.1f} MiB")
    print(f"{'started anew (the peer)':58} {memory[False]:7.1f} MiB")
    print(f"{'ratio':58} {memory[True] / memory[False]:7.2f}")


if __name__ == "__main__":
    main()
