"""Queue: tasks on persistent worker processes, the DataFrame they return, and their failures.

Functions are made with ``exec`` in a namespace named ``__main__``, as a notebook makes
them, so they travel by value (cloudpickle) and not as imports of this test module.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cells import gone, notebook

import jupyter_bgjobs as bj
from jupyter_bgjobs import Queue, TaskPickleError, TaskTimeoutError, WorkerDiedError, WorkerPool
from jupyter_bgjobs._panel import row_text, text_table
from jupyter_bgjobs._progress import _handles

COLUMNS = [
    "task_id",
    "worker_id",
    "state",
    "result",
    "runtime",
    "fun",
    "args",
    "created",
    "queued",
    "assigned",
    "started",
    "finished",
    "code",
    "message",
    "stdout",
    "stderr",
    "error",
    "memory",
]


def test_the_r_packages_readme_example() -> None:
    ns = notebook(
        """
        import random, time
        def wait():
            time.sleep(random.uniform(0, 0.3))
        """
    )
    queue = Queue(workers=4)
    for _ in range(6):
        queue.add(ns["wait"])
    df = queue.run(message="none")
    assert list(df.columns) == COLUMNS
    assert list(df["task_id"]) == [f"task_{i}" for i in range(1, 7)]
    assert (df["state"] == "done").all() and (df["code"] == 0).all()
    assert df["result"].isna().all()
    assert 1 <= df["worker_id"].nunique() <= 4
    assert all(gone(pid) for pid in df["worker_id"])
    # Types of a tidy frame: nullable ints, timedeltas, UTC timestamps.
    assert str(df["worker_id"].dtype) == "Int64" and str(df["code"].dtype) == "Int64"
    # The most memory each task's worker held while it ran: a Python process's, at least.
    assert str(df["memory"].dtype) == "Int64" and (df["memory"] > 5_000_000).all()
    assert pd.api.types.is_timedelta64_dtype(df["runtime"])
    for col in ("created", "queued", "assigned", "started", "finished"):
        assert isinstance(df[col].dtype, pd.DatetimeTZDtype), col
    assert (df["created"] <= df["queued"]).all() and (df["queued"] <= df["assigned"]).all()
    assert (df["assigned"] <= df["started"]).all() and (df["started"] <= df["finished"]).all()
    assert (df["runtime"] == df["finished"] - df["started"]).all()


def test_order_results_closures_classes_and_output() -> None:
    ns = notebook(
        """
        import sys
        class Point:
            def __init__(self, x): self.x = x
        scale = 10
        def make(i):
            print("making", i)
            print("warn", i, file=sys.stderr)
            return Point(i * scale)
        add = lambda a, b=0: a + b
        """
    )
    q = Queue(workers=2)
    for i in range(30):
        q.add(ns["make"], args=(i,))
    q.add(ns["add"], args=(1,), kwargs={"b": 2}, id="sum")
    df = q.run(message="none")
    assert [p.x for p in df["result"][:30]] == [i * 10 for i in range(30)]
    assert df["result"].iloc[30] == 3 and df["task_id"].iloc[30] == "sum"
    assert df["stdout"].iloc[7] == "making 7\n" and df["stderr"].iloc[7] == "warn 7\n"
    # Assigned in the order added.
    assert df["assigned"].is_monotonic_increasing
    assert df["args"].iloc[3] == (3,)


def test_an_error_keeps_its_exception_and_remote_traceback() -> None:
    ns = notebook(
        """
        def divide(a, b):
            return a / b
        """
    )
    q = Queue(workers=1)
    q.add(ns["divide"], args=(1, 0), id="bad")
    q.add(ns["divide"], args=(1, 2), id="good")
    df = q.run(message="none").set_index("task_id")
    err = df.loc["bad", "error"]
    assert isinstance(err, ZeroDivisionError)
    assert "in divide" in str(err.__cause__) and "return a / b" in str(err.__cause__)
    assert df.loc["bad", "code"] == 1
    assert df.loc["bad", "message"] == "error: ZeroDivisionError: division by zero"
    assert df.loc["good", "result"] == 0.5 and df.loc["good", "error"] is None


def test_a_task_past_its_time_limit_ends_its_worker_and_the_queue_goes_on(
    tmp_path: Path,
) -> None:
    ns = notebook(
        f"""
        import subprocess, time
        def stuck():
            # A grandchild too: ending the worker must end it as well.
            child = subprocess.Popen(["sleep", "300"])
            open({str(tmp_path / "child")!r}, "w").write(str(child.pid))
            time.sleep(300)
        def quick(x):
            return x
        """
    )
    q = Queue(workers=1)
    q.add(ns["stuck"], id="stuck")
    for i in range(3):
        q.add(ns["quick"], args=(i,))
    df = q.run(timelimit=1, message="none").set_index("task_id")
    row = df.loc["stuck"]
    assert row["code"] == 124 and row["message"] == "timed out after 1 s; its worker was ended"
    assert isinstance(row["error"], TaskTimeoutError)
    # Ended at its limit, not when it would have finished (a slow VM may add a second).
    assert 1 <= row["runtime"].total_seconds() < 5
    assert list(df["result"].iloc[1:]) == [0, 1, 2] and (df["code"].iloc[1:] == 0).all()
    assert df.loc["task_1", "worker_id"] != row["worker_id"]
    assert gone(int(row["worker_id"]))
    assert gone(int((tmp_path / "child").read_text()))


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ("os._exit(3)", 3, "the worker process exited with code 3"),
        ("os.kill(os.getpid(), signal.SIGKILL)", 137, "the worker process was killed by SIGKILL"),
        ("ctypes.string_at(0)", 139, "the worker process was killed by SIGSEGV"),
    ],
    ids=["exit", "sigkill", "segfault"],
)
def test_a_crash_marks_only_its_task_and_the_worker_is_replaced(
    body: str, code: int, words: str
) -> None:
    ns = notebook(
        f"""
        import ctypes, os, signal
        def crash():
            {body}
        def pid():
            return os.getpid()
        """
    )
    q = Queue(workers=2)
    q.add(ns["pid"], id="before")
    q.add(ns["crash"], id="crash")
    for i in range(4):
        q.add(ns["pid"], id=f"after_{i}")
    df = q.run(message="none").set_index("task_id")
    row = df.loc["crash"]
    assert (row["code"], row["message"]) == (code, words)
    assert isinstance(row["error"], WorkerDiedError)
    others = df.drop(index="crash")
    assert (others["code"] == 0).all()
    assert (others["result"] == others["worker_id"]).all()


def test_what_cannot_be_pickled_fails_only_its_row() -> None:
    ns = notebook(
        """
        import threading
        def echo(x):
            return x
        def lock():
            return threading.Lock()
        """
    )
    q = Queue(workers=1)
    q.add(ns["echo"], args=(threading.Lock(),), id="bad_args")
    q.add(ns["lock"], id="bad_result")
    q.add(ns["echo"], args=("fine",), id="fine")
    df = q.run(message="none").set_index("task_id")
    assert df.loc["bad_args", "code"] == 2
    assert df.loc["bad_args", "message"].startswith("the arguments cannot be pickled: ")
    assert isinstance(df.loc["bad_args", "error"], TaskPickleError)
    assert df.loc["bad_result", "code"] == 2
    assert df.loc["bad_result", "message"].startswith("the result (lock) cannot be pickled")
    assert df.loc["fine", "result"] == "fine"


def test_workers_stay_for_the_next_run_and_pool_and_tasklist_give_control() -> None:
    ns = notebook("import os\ndef pid(_):\n    return os.getpid()")
    with WorkerPool(2) as pool:
        check_pool_and_tasks(ns, pool)


def check_pool_and_tasks(ns: dict[str, Any], pool: WorkerPool) -> None:
    q = Queue(pool)
    for i in range(4):
        q.add(ns["pid"], args=(i,))
    first = q.run(message="none", shutdown=False, timelimit=None)
    assert q.get_workers() is pool
    pool.wait_ready()  # the run may end before the second worker has started
    states = pool.state()
    assert sorted(s["state"] for s in states) == ["idle", "idle"]
    pids = {s["worker_id"] for s in states}
    assert set(first["result"]) <= pids
    q.add(ns["pid"], args=(9,), id="again")
    second = q.run(message="none", shutdown=False, timelimit=None)
    assert second.set_index("task_id").loc["again", "result"] in pids
    tasks = q.get_tasks()
    assert len(tasks) == 5 and tasks["again"].ok and tasks[0].id == "task_1"
    assert len(tasks.in_state("done")) == 5 and tasks.counts()["done"] == 5
    tasks.remove("again")
    assert len(tasks) == 4
    pool.shutdown()
    assert all(gone(pid) for pid in pids)
    assert pool.state() == []


def test_start_returns_at_once_wait_returns_the_frame_cancel_stops() -> None:
    ns = notebook("import time\ndef nap(s):\n    time.sleep(s)\n    return s")
    q = Queue(workers=2)
    for _ in range(4):
        q.add(ns["nap"], args=(0.2,))
    assert q.start(message="none") is q
    assert q.running
    df = q.wait(60)
    assert not q.running and (df["code"] == 0).all()

    slow = Queue(workers=1)
    for _ in range(3):
        slow.add(ns["nap"], args=(60,))
    slow.start(message="none")
    tasks = slow.get_tasks()
    first = tasks[0]
    # The first task shows as running once the worker picked it up.
    deadline = time.monotonic() + 60
    while first.state != "running":
        assert time.monotonic() < deadline, first.state
        time.sleep(0.01)
    with pytest.raises(bj.WaitTimeout):
        slow.wait(0.1)
    slow.cancel()
    df = slow.wait(30)
    assert (df["state"] != "done").all()
    assert (df["message"] == "cancelled").all()
    assert first.worker_id is not None and gone(first.worker_id)


def test_messages_in_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    ns = notebook("def one():\n    return 1\ndef bad():\n    raise ValueError('no')")
    q = Queue(workers=1)
    q.add(ns["one"])
    q.add(ns["bad"])
    q.run(message="verbose")
    err = capsys.readouterr().err
    assert "task_1: done (" in err and "task_2: error: ValueError: no (" in err
    assert "Queue complete: 2 of 2 tasks done in " in err and ", 1 failed" in err
    q.add(ns["one"])
    q.run(message="minimal")
    err = capsys.readouterr().err
    assert "task_3" not in err and "Queue complete: 1 of 1 tasks done" in err
    q.add(ns["one"])
    q.run(message="none")
    assert capsys.readouterr().err == ""


def test_bad_input_says_what_to_do() -> None:
    q = Queue(workers=1)
    with pytest.raises(bj.JobSpecError, match="pass the function itself"):
        q.add(42)  # type: ignore[arg-type]
    with pytest.raises(bj.JobSpecError, match=r"for one argument write args=\(x,\)"):
        q.add(abs, args=5)  # type: ignore[arg-type]
    q.add(abs, args=(1,), id="x")
    with pytest.raises(bj.JobSpecError, match="already a task with id 'x'"):
        q.add(abs, args=(1,), id="x")
    with pytest.raises(bj.JobSpecError, match="timelimit must be a positive number"):
        q.run(timelimit=-1)
    with pytest.raises(bj.JobSpecError, match="message must be 'none', 'minimal' or 'verbose'"):
        q.run(message="loud")
    with pytest.raises(bj.JobSpecError, match="workers must be a whole number"):
        Queue(workers=0)
    # The name is checked before anything is made, workers included.
    with pytest.raises(
        bj.JobSpecError,
        match=r"^name must be a string or None, for example Queue\(name='nightly'\), not 42 ",
    ):
        Queue(workers=0, name=42)  # type: ignore[arg-type]
    with pytest.raises(bj.JobSpecError, match="name must not be blank, got ' ': leave it out"):
        Queue(workers=1, name=" ")


def test_a_started_queue_row_is_named_after_its_functions_and_ends_partial() -> None:
    ns = notebook(
        """
        def fit(i):
            if i == 3:
                raise ValueError("no fit for 3")
            return i
        def score(i, j=0):
            return i + j
        class Model:
            def __call__(self, i):
                return i
        """
    )
    q = Queue(workers=2)
    for i in range(8):
        q.add(ns["fit"], args=(i,))
    q.start(message="none").wait(60)
    row = _handles[-1]
    assert row.name == "queue: 8 × fit"
    assert (row.state, row.partial, row.failed, row.progress) == ("succeeded", True, 1, (8, 8))
    assert row.status == "done, 1 of 8 failed"
    assert repr(row) == "<ProgressJob 'queue: 8 × fit' succeeded 8/8 (1 failed)>"
    assert row_text(row).startswith("⚠ queue: 8 × fit  partial  8/8  ")
    assert row_text(row).endswith("  ·  done, 1 of 8 failed")
    cells = [c.strip() for c in text_table([row]).splitlines()[1].split("  ") if c.strip()]
    assert cells[:4] == ["queue: 8 × fit", "partial", "8/8", "done, 1 of 8 failed"]
    # A second run is named after its own tasks, and the failure of the first is not its.
    q.add(ns["Model"](), args=(1,))
    q.add(functools.partial(ns["score"], j=5), args=(1,))
    q.start(message="none").wait(60)
    row = _handles[-1]
    assert row.name == "queue: 1 × Model, 1 × score"
    assert (row.state, row.partial) == ("succeeded", False)
    assert row.status.startswith("Queue complete: 2 of 2 tasks done in ")
    assert not row.status.endswith("failed")
    assert row_text(row).startswith("✔ queue: 1 × Model, 1 × score  succeeded  2/2")


def test_ctrl_c_ends_the_workers_and_leaves_the_states_readable(tmp_path: Path) -> None:
    marker = tmp_path / "running"
    script = tmp_path / "interrupt.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys, time
            from jupyter_bgjobs import Queue

            def long(i):
                open({str(marker)!r} + str(i), "w").close()
                time.sleep(300)

            q = Queue(workers=2)
            for i in range(5):
                q.add(long, args=(i,))
            try:
                q.run(message="none", timelimit=None)
            except KeyboardInterrupt:
                tasks = [[t.id, t.state, t.worker_id, t.message] for t in q.get_tasks()]
                print(json.dumps({{"tasks": tasks, "workers": q.get_workers().state()}}))
                sys.exit(0)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    import time

    deadline = time.monotonic() + 60
    while not (Path(str(marker) + "0").exists() and Path(str(marker) + "1").exists()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)  # polling files the tasks write; there is no event to wait on
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    report = json.loads(out)
    states = [t[1] for t in report["tasks"]]
    assert states[:2] == ["running", "running"] and states[2:] == ["waiting"] * 3
    assert report["tasks"][0][3] == "interrupted before it finished"
    assert report["workers"] == []
    assert all(gone(t[2]) for t in report["tasks"][:2])


def test_a_dropped_pool_takes_its_workers_with_it() -> None:
    import gc

    pool = WorkerPool(2)
    pool.refill()
    pool.wait_ready()
    pids = [w.pid for w in pool.workers]
    del pool
    gc.collect()
    assert all(gone(pid) for pid in pids)


@pytest.fixture(scope="module")
def dask_client() -> Any:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_the_same_queue_on_a_dask_local_cluster(dask_client: Any) -> None:
    ns = notebook(
        """
        import os, time, threading
        def square(x):
            print("squaring", x)
            return x * x
        def bad():
            raise KeyError("missing")
        class TwoArgError(Exception):
            def __init__(self, a, b):
                super().__init__(f"{a} and {b}")
        def two_args():
            raise TwoArgError("left", "right")
        def stuck():
            time.sleep(120)
        def lock():
            return threading.Lock()
        """
    )
    q = Queue(workers=dask_client)
    assert q.get_workers() is dask_client
    for i in range(6):
        q.add(ns["square"], args=(i,))
    q.add(ns["bad"], id="bad")
    q.add(ns["two_args"], id="two_args")
    q.add(ns["stuck"], id="stuck")
    q.add(ns["lock"], id="lock")
    df = q.run(timelimit=2, message="none")
    assert list(df.columns) == COLUMNS
    df = df.set_index("task_id")
    assert list(df["result"].iloc[:6]) == [i * i for i in range(6)]
    assert df["stdout"].iloc[2] == "squaring 2\n"
    assert all(0 < pid != os.getpid() for pid in df["worker_id"].iloc[:6])
    assert df.loc["bad", "code"] == 1 and isinstance(df.loc["bad", "error"], KeyError)
    # An exception that cannot be rebuilt here keeps its name, message and traceback.
    assert df.loc["two_args", "message"] == "error: TwoArgError: left and right"
    assert isinstance(df.loc["two_args", "error"], bj.JobFailedError)
    assert "in two_args" in str(df.loc["two_args", "error"].__cause__)
    assert df.loc["stuck", "code"] == 124 and isinstance(df.loc["stuck", "error"], TaskTimeoutError)
    assert 2 <= df.loc["stuck", "runtime"].total_seconds() < 6
    assert df.loc["lock", "code"] == 2
    # The cluster is still usable after the runaway task's worker was restarted.
    q2 = Queue(workers=dask_client)
    q2.add(ns["square"], args=(7,))
    assert q2.start(message="none").wait(60)["result"].iloc[0] == 49
    assert _handles[-1].name == "queue: 1 × square on dask"


def test_a_tasks_memory_is_its_own_peak() -> None:
    """The memory column is the peak of each task, not of its worker's life: a task that
    holds 200 MB and a small one after it on the same worker are told apart."""
    ns = notebook(
        """
        def hold(n):
            block = bytearray(n * 1000 * 1000)
            for i in range(0, len(block), 4096):
                block[i] = 1
            return len(block)
        """
    )
    queue = Queue(workers=1)
    queue.add(ns["hold"], args=(200,), id="big")
    queue.add(ns["hold"], args=(1,), id="small")
    df = queue.run(message="none").set_index("task_id")
    assert df.loc["big", "memory"] >= 200_000_000
    assert df.loc["small", "memory"] < df.loc["big", "memory"] - 150_000_000
