"""A small corpus of real-style notebooks, each run twice in real kernels: once as it is,
once with every code cell as a ``%%bgjob`` followed by ``.wait()``. After every cell the
two namespaces must hold the same names with the same values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from cells import FrontEnd, execute

pytest.importorskip("pandas")

# Each notebook: its code cells, in order, as a person wrote them.
CORPUS: dict[str, list[str]] = {
    "tabular": [
        "import numpy as np\nimport pandas as pd",
        "rng = np.random.default_rng(0)\nsales = pd.DataFrame({'region': list('abcab'),"
        " 'amount': rng.integers(1, 100, 5)})",
        "sales.head();",
        "totals = sales.groupby('region')['amount'].sum()\ntotals",
        "%time share = (totals / totals.sum()).round(3)",
        "sales['big'] = sales['amount'] > 50\nn_big = int(sales['big'].sum())",
        "best = totals.idxmax()\nprint('best region', best)",
    ],
    "functions": [
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
        "    return a",
        "values = [fib(i) for i in range(15)]\nvalues[-1]",
        "%timeit -n 1 -r 1 fib(20)",
        "scratch = list(values)\nscratch.sort(reverse=True)",
        "top = scratch[0]\ndel scratch",
        "from collections import Counter\nparity = Counter('even' if v % 2 == 0 else 'odd'"
        " for v in values)",
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
        "origin_x = Point(0, 1).x",
    ],
    "fails_midway": [
        "import math\nradius = 2.0",
        "area = math.pi * radius ** 2\nratio = area / 0\nnever = True",
        "after = round(area, 2)",
        "temp = [1, 2, 3]\nlength = len(temp)\ndel temp",
        "length_squared = length ** 2;",
    ],
}

SUMMARY = r"""
def __bg_summary():
    import json, re, types
    shell = get_ipython()
    out = {}
    for key, value in list(shell.user_ns.items()):
        if key.startswith('_') or key in shell.user_ns_hidden:
            continue
        if isinstance(value, types.ModuleType):
            out[key] = 'module ' + value.__name__
        elif isinstance(value, type) or callable(value) and hasattr(value, '__qualname__'):
            out[key] = 'callable ' + getattr(value, '__qualname__', '?')
        else:
            try:
                # An object's address differs between processes; nothing else may.
                text = re.sub(' at 0x[0-9a-fA-F]+', '', repr(value))
                out[key] = type(value).__name__ + ' ' + text
            except Exception:
                out[key] = type(value).__name__
    print(json.dumps(out, sort_keys=True))
__bg_summary()
del __bg_summary
"""


class Kernel(FrontEnd):
    """A real kernel, run as a notebook's front end runs it."""

    def run(self, code: str) -> str:
        """A cell; an error it raises is the cell's, as in a notebook (its output kept)."""
        try:
            return execute(self.kc, code, timeout=180)
        except AssertionError as exc:
            return str(exc)

    def names(self) -> dict[str, str]:
        return json.loads(execute(self.kc, SUMMARY).strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def kernels() -> Iterator[tuple[Kernel, Kernel]]:
    plain, jobs = Kernel(), Kernel()
    jobs.run("%load_ext jupyter_bgjobs\nfrom jupyter_bgjobs import get_job as __get_job")
    try:
        yield plain, jobs
    finally:
        jobs.run("%unload_ext jupyter_bgjobs")
        plain.close()
        jobs.close()


@pytest.mark.parametrize("notebook", sorted(CORPUS))
def test_every_cell_leaves_the_same_names_as_a_job(
    kernels: tuple[Kernel, Kernel], notebook: str
) -> None:
    plain, jobs = kernels
    reset = "get_ipython().run_line_magic('reset', '-f')"
    plain.run(reset)
    jobs.run(reset + "\nfrom jupyter_bgjobs import get_job as __get_job")
    differ: list[tuple[int, dict[str, Any]]] = []
    for i, cell in enumerate(CORPUS[notebook]):
        plain.run(cell)
        name = f"{notebook}_{i}"
        jobs.run(f"%%bgjob {name}\n{cell}")
        jobs.run(f"__get_job({name!r}).wait(180);")
        want, got = plain.names(), jobs.names()
        if want != got:
            keys = sorted(set(want) | set(got))
            differ.append(
                (i, {k: (want.get(k), got.get(k)) for k in keys if want.get(k) != got.get(k)})
            )
    assert not differ, differ
