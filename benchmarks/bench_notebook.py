"""What a notebook of short cells costs when every cell runs as a job, against the same
notebook run as it is, in one run; and how soon a job's first statement runs once the
notebook has imported numpy and pandas, against an empty notebook's job.

Prints two tables. Run: python benchmarks/bench_notebook.py [--pool 1] [--trials 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

import jupyter_bgjobs as bj
from jupyter_bgjobs._jobs import manager

# A notebook as people write them: imports, a frame, short steps.
CELLS = [
    "import numpy as np\nimport pandas as pd",
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


def run_plain(ip: Any) -> list[float]:
    times = []
    for cell in CELLS:
        t0 = time.perf_counter()
        ip.run_cell(cell)
        times.append(time.perf_counter() - t0)
    return times


def run_as_jobs(ip: Any, tag: str) -> list[float]:
    times = []
    for i, cell in enumerate(CELLS):
        name = f"nb_{tag}_{i}"
        t0 = time.perf_counter()
        ip.run_cell_magic("bgjob", name, cell)
        bj.get_job(name).wait(300)
        times.append(time.perf_counter() - t0)
    return times


def first_statement(ip: Any, code: str, tag: str, trials: int) -> float:
    """Median seconds from the magic to the job's first statement, a warm kernel ready."""
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
    from jupyter_bgjobs._backends import local

    saved = local.heavy_imports
    local.heavy_imports = list  # nothing
    bj.configure(pool_size=0)
    bj.configure(pool_size=size)

    def undo() -> None:
        local.heavy_imports = saved
        bj.configure(pool_size=0)
        bj.configure(pool_size=size)

    return undo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=int, default=1)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_bgjobs")
    bj.configure(pool_size=args.pool)
    try:
        empty = first_statement(ip, "x = 1", "empty", args.trials)
        plain = run_plain(ip)
        ip.run_cell("get_ipython().run_line_magic('reset', '-f')")
        setup = "import numpy as np\nimport pandas as pd\nframe = pd.DataFrame({'a': range(9)})"
        ip.run_cell(setup)  # the pool follows: warm kernels import numpy and pandas
        following = first_statement(ip, "n = len(frame)", "follow", args.trials)
        undo = unaware_pool(args.pool)
        cold = first_statement(ip, "n = len(frame)", "cold", args.trials)
        undo()
        ip.run_cell("get_ipython().run_line_magic('reset', '-f')")
        jobs = run_as_jobs(ip, "a")
    finally:
        ip.run_line_magic("unload_ext", "jupyter_bgjobs")
    print(f"a notebook of {len(CELLS)} short cells (numpy, pandas), pool_size={args.pool}")
    print(f"{'':28} {'total s':>8} {'median cell ms':>15} {'vs plain':>9}")
    for label, times in (("run as it is", plain), ("every cell a job, waited", jobs)):
        print(
            f"{label:28} {sum(times):8.2f} {statistics.median(times) * 1000:15.1f} "
            f"{sum(times) / sum(plain):9.2f}"
        )
    print()
    print(f"magic -> first statement, median of {args.trials}, a warm kernel ready")
    print(f"{'':58} {'ms':>7} {'vs empty':>9}")
    rows = (
        ("empty notebook, job 'x = 1' (the floor)", empty),
        ("numpy+pandas imported, DataFrame shipped; pool follows", following),
        ("the same, warm kernel never told of the imports", cold),
    )
    for label, t in rows:
        print(f"{label:58} {t * 1000:7.1f} {f'+{(t - empty) * 1000:.0f} ms':>9}")


if __name__ == "__main__":
    main()
