"""A queue's row in the Jobs panel as a user sees it: its name and how its run ended.

Checked in a real kernel through its widgets' comm messages and the plain-text form of
the row, with real worker processes behind each queue.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_panel import Kernel

FUNCTIONS = """
from jupyter_bgjobs import Queue
def fit(i):
    if i == 3:
        raise ValueError("no fit for 3")
    return i
def score(i):
    return -i
def broken(i):
    raise RuntimeError("broken")
"""


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    k.run("%load_ext jupyter_bgjobs")
    k.run(FUNCTIONS)
    yield k
    k.close()


def test_a_named_queue_shows_its_name_on_its_row(kernel: Kernel) -> None:
    kernel.run("q = Queue(workers=2, name='nightly')\nfor i in range(4):\n    q.add(score, (i,))")
    kernel.run("q.start()\nNone")
    kernel.ended("nightly", "Queue complete: 4 of 4 tasks done", "success", tasks=4)
    assert kernel.run("print(list(q.wait()['result']))").strip() == "[0, -1, -2, -3]"
    assert any(t.startswith("✔ nightly  succeeded  4/4") for t in kernel.plain_texts())
    assert kernel.run("print(repr(q))").startswith("<Queue 'nightly' ")


def test_default_names_say_what_the_tasks_call_and_differ(kernel: Kernel) -> None:
    kernel.run(
        "a = Queue(workers=2)\nfor i in range(4, 7):\n    a.add(score, (i,))\n"
        "b = Queue(workers=2)\nfor i in range(2):\n    b.add(score, (i,))\n"
        "b.add(lambda: 0)\nb.add(abs, (-1,))\n"
    )
    kernel.run("a.run()\nNone")
    kernel.run("b.run()\nNone")
    kernel.ended("queue: 3 × score", "Queue complete: 3 of 3 tasks done", "success")
    # Names of functions only: no argument of any task shows.
    two = "queue: 2 × score, 1 × <lambda> +1 more"
    kernel.ended(two, "Queue complete: 4 of 4 tasks done", "success")
    texts = kernel.plain_texts()
    assert any(t.startswith("✔ queue: 3 × score  succeeded  3/3") for t in texts)
    assert any(t.startswith(f"✔ {two}  succeeded  4/4") for t in texts)


def test_a_queue_with_one_failed_task_of_8_ends_amber_not_red(kernel: Kernel) -> None:
    kernel.run("q = Queue(workers=3)\nfor i in range(8):\n    q.add(fit, (i,))")
    kernel.run("q.start()\nNone")
    ids = kernel.ended("queue: 8 × fit", "done, 1 of 8 failed", "warning", tasks=8)
    state = kernel.models[ids["state"]]["value"]
    assert "⚠ partial" in state and "#ef6c00" in state
    assert "8/8" in kernel.row_text(ids)
    assert kernel.run("print(q.wait()['code'].tolist())").strip() == "[0, 0, 0, 1, 0, 0, 0, 0]"
    kernel.until(
        lambda: any(
            t.startswith("⚠ queue: 8 × fit  partial  8/8  ") and t.endswith("done, 1 of 8 failed")
            for t in kernel.plain_texts()
        )
    )
    # The panel's summary counts it apart from failed jobs, and its plain text says so.
    kernel.run("%bgjobs")
    summaries = [
        s["value"]
        for s in kernel.models.values()
        if s.get("_model_name") == "HTMLModel" and "<b>Jobs</b>" in s.get("value", "")
    ]
    assert "1 partly failed" in summaries[-1]
    texts = (d.get("data", {}).get("text/plain", "") for d in kernel.displays)
    table = [t for t in texts if t.startswith("name")]
    line = next(x for x in table[-1].splitlines() if x.startswith("queue: 8 × fit"))
    assert "partial" in line and "done, 1 of 8 failed" in line


def test_a_queue_whose_every_task_failed_is_red_and_a_cancelled_one_stays_cancelled(
    kernel: Kernel,
) -> None:
    kernel.run("q = Queue(workers=2)\nfor i in range(3):\n    q.add(broken, (i,))")
    kernel.run("q.run()\nNone")
    ids = kernel.ended("queue: 3 × broken", "3 failed", "danger")
    assert "failed" in kernel.models[ids["state"]]["value"]

    kernel.run(
        "import time\nslow = Queue(workers=1, name='slow')\n"
        "for _ in range(3):\n    slow.add(time.sleep, (60,))\n"
        "slow.start()\nslow.cancel()\nslow.wait(60)\nNone"
    )
    ids = kernel.ended("slow", "Queue stopped", "warning")
    assert "cancelled" in kernel.models[ids["state"]]["value"]
