"""What travels back from a call or a task keeps its meaning: exceptions that cannot be
rebuilt here, output printed before a worker died, bad arguments refused before anything
starts, and call folders only their owner can read."""

from __future__ import annotations

import math
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cells import notebook

import jupyter_bgjobs as bj
from jupyter_bgjobs import JobFailedError, JobSpecError, Queue, WorkerPool
from jupyter_bgjobs._config import settings


@pytest.fixture
def unrebuildable(tmp_path: Path) -> dict[str, Any]:
    """Two functions whose exceptions the parent cannot rebuild: a notebook class whose
    ``__init__`` takes two arguments, and a class from a module only the child imports."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "childonly_errors.py").write_text(
        "class HiddenError(Exception):\n    pass\n\n"
        "def fail(what):\n    raise HiddenError(f'{what} went wrong')\n"
    )
    return notebook(
        f"""
        import sys
        class TwoArgError(Exception):
            def __init__(self, a, b):
                super().__init__(f"{{a}} and {{b}}")
                self.a, self.b = a, b
        def two_args():
            raise TwoArgError("left", "right")
        def hidden_module():
            sys.path.insert(0, {str(hidden)!r})
            import childonly_errors
            childonly_errors.fail("the hidden module")
        """
    )


CASES = [
    (
        "two_args",
        "TwoArgError",
        "TwoArgError: left and right",
        'raise TwoArgError("left", "right")',
    ),
    (
        "hidden_module",
        "HiddenError",
        "childonly_errors.HiddenError: the hidden module went wrong",
        "raise HiddenError(f'{what} went wrong')",
    ),
]


@pytest.mark.parametrize(("fun", "ename", "shown", "line"), CASES, ids=["two_args", "module"])
def test_a_call_whose_exception_cannot_be_rebuilt_keeps_its_name_message_and_traceback(
    unrebuildable: dict[str, Any], fun: str, ename: str, shown: str, line: str
) -> None:
    call = bj.bg(unrebuildable[fun])
    with pytest.raises(JobFailedError) as info:
        call.result(60)
    err = info.value
    assert str(err) == shown
    assert (err.ename, err.evalue) == (ename, shown.split(": ", 1)[1])
    assert call.state == "failed" and call.reason == f"raised {ename}"
    remote = str(err.__cause__)
    assert line in remote and remote.rstrip().endswith(shown)
    assert isinstance(err, bj.BgJobError)


@pytest.mark.parametrize(("fun", "ename", "shown", "line"), CASES, ids=["two_args", "module"])
def test_a_task_whose_exception_cannot_be_rebuilt_keeps_its_name_message_and_traceback(
    unrebuildable: dict[str, Any], fun: str, ename: str, shown: str, line: str
) -> None:
    q = Queue(workers=1)
    q.add(unrebuildable[fun], id="bad")
    q.add(abs, args=(-3,), id="after")
    df = q.run(message="none").set_index("task_id")
    row = df.loc["bad"]
    assert row["code"] == 1 and row["message"] == f"error: {shown}"
    err = row["error"]
    assert isinstance(err, JobFailedError) and str(err) == shown and err.ename == ename
    assert line in str(err.__cause__)
    assert df.loc["after", "result"] == 3


def test_an_exception_that_is_rebuilt_is_still_the_functions_own() -> None:
    ns = notebook(
        """
        class OneArgError(Exception):
            pass
        def fail():
            raise OneArgError("plain")
        """
    )
    call = bj.bg(ns["fail"])
    with pytest.raises(Exception, match="plain") as info:
        call.result(60)
    assert type(info.value).__name__ == "OneArgError"
    assert not isinstance(info.value, bj.BgJobError)
    assert "raise OneArgError" in str(info.value.__cause__)


DEATHS = {
    "exit": ("os._exit(3)", 3, None),
    "segfault": ("ctypes.string_at(0)", 139, None),
    "sigkill": ("os.kill(os.getpid(), signal.SIGKILL)", 137, None),
    "timelimit": ("time.sleep(300)", 124, 2),
}


@pytest.mark.parametrize("how", list(DEATHS))
def test_a_task_that_dies_keeps_what_it_printed(how: str) -> None:
    body, code, timelimit = DEATHS[how]
    ns = notebook(
        f"""
        import ctypes, os, signal, sys, time
        def chatty(i):
            print("chatty", i)
            print("warned", i, file=sys.stderr)
            return i
        def dies():
            print("before the end")
            print("é and a lone \\udc80 too", file=sys.stderr)
            {body}
        def quiet():
            return "quiet"
        """
    )
    q = Queue(workers=1)
    q.add(ns["chatty"], args=(1,), id="first")
    q.add(ns["dies"], id="dies")
    q.add(ns["quiet"], id="quiet")
    q.add(ns["chatty"], args=(2,), id="last")
    df = q.run(message="none", timelimit=timelimit).set_index("task_id")
    row = df.loc["dies"]
    assert row["code"] == code
    assert row["stdout"] == "before the end\n"
    assert row["stderr"].startswith("é and a lone ")
    # Each task's output is its own, before and after the death.
    assert (df.loc["first", "stdout"], df.loc["first", "stderr"]) == ("chatty 1\n", "warned 1\n")
    assert (df.loc["quiet", "stdout"], df.loc["quiet", "stderr"]) == ("", "")
    assert (df.loc["last", "stdout"], df.loc["last", "stderr"]) == ("chatty 2\n", "warned 2\n")


def test_a_cancelled_task_keeps_what_it_printed(tmp_path: Path) -> None:
    marker = tmp_path / "printed"
    ns = notebook(
        f"""
        import sys, time
        def long():
            print("started")
            print("and warned", file=sys.stderr)
            open({str(marker)!r}, "w").close()
            time.sleep(300)
        """
    )
    q = Queue(workers=1)
    q.add(ns["long"], id="long")
    q.start(message="none", timelimit=None)
    deadline = time.monotonic() + 60
    while not marker.exists() or q.get_tasks()["long"].state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)  # polling the file the task writes; there is no event to wait on
    q.cancel()
    row = q.wait(60).set_index("task_id").loc["long"]
    assert row["message"] == "cancelled"
    assert (row["stdout"], row["stderr"]) == ("started\n", "and warned\n")


def test_a_worker_keeps_each_tasks_output_apart_and_its_files_private() -> None:
    ns = notebook(
        """
        import sys
        def say(i):
            if i % 3:
                print("task", i)
            sys.stdout.write("\\udc80" if i == 4 else "")
            return i
        """
    )
    with WorkerPool(1) as pool:
        q = Queue(pool)
        for i in range(9):
            q.add(ns["say"], args=(i,))
        # No time limit, so no spare: one worker, one file per stream.
        df = q.run(message="none", shutdown=False, timelimit=None)
        expected = [f"task {i}\n" if i % 3 else "" for i in range(9)]
        expected[4] += "\udc80"  # what a StringIO would have kept, unchanged
        assert list(df["stdout"]) == expected
        folder = pool._folder
        assert folder is not None and stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = list(folder.iterdir())
        assert len(files) == 2
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert not folder.exists(), "shutdown() removes the pool's output folder"


# -- bad arguments: refused at once, before any folder or process ------------------------


def _f(x: int = 0) -> int:
    return x


BAD: dict[str, tuple[Callable[[], Any], str]] = {
    "queue_add_not_callable": (lambda: Queue(1).add(42), "needs a function to call"),  # type: ignore[arg-type]
    "queue_add_args": (lambda: Queue(1).add(_f, args=5), "args must be a tuple"),  # type: ignore[arg-type]
    "queue_add_kwargs": (lambda: Queue(1).add(_f, kwargs=[1]), "kwargs must be a dict"),  # type: ignore[arg-type]
    "queue_add_kwargs_keys": (lambda: Queue(1).add(_f, kwargs={1: 2}), "kwargs must be a dict"),
    "bg_kwargs": (lambda: bj.bg_call(_f, kwargs=[1]), "kwargs must be a dict"),  # type: ignore[arg-type]
    "bg_args": (lambda: bj.bg_call(_f, args=3), "args must be a tuple"),  # type: ignore[arg-type]
    "bg_not_callable": (lambda: bj.bg_call(42), "needs a function to call"),  # type: ignore[arg-type]
    "bg_name": (lambda: bj.bg_call(_f, name=5), "name must be a string"),  # type: ignore[arg-type]
    "bg_timeout_inf": (lambda: bj.bg_call(_f, timeout=math.inf), "timeout must be a positive"),
    "bg_timeout_nan": (lambda: bj.bg_call(_f, timeout=math.nan), "timeout must be a positive"),
    "bg_timeout_bool": (lambda: bj.bg_call(_f, timeout=True), "timeout must be a positive"),
    "bg_timeout_negative": (lambda: bj.bg_call(_f, timeout=-1), "timeout must be a positive"),
    "bg_timeout_zero": (lambda: bj.bg_call(_f, timeout=0), "timeout must be a positive"),
    "bg_timeout_text": (lambda: bj.bg_call(_f, timeout="5"), "timeout must be a positive"),  # type: ignore[arg-type]
    "bg_detach": (lambda: bj.bg_call(_f, detach="yes"), "detach must be True or False"),  # type: ignore[arg-type]
    "queue_workers_negative": (lambda: Queue(workers=-1), "workers must be a whole number"),
    "queue_workers_text": (lambda: Queue(workers="x"), "workers must be a whole number"),
    "pool_workers": (lambda: WorkerPool(2.5), "workers must be a whole number"),  # type: ignore[arg-type]
    "run_timelimit_nan": (lambda: _queue().run(timelimit=math.nan), "timelimit must be a positive"),
    "run_timelimit_inf": (lambda: _queue().run(timelimit=math.inf), "or None for no limit"),
    "run_timelimit_bool": (lambda: _queue().run(timelimit=True), "timelimit must be a positive"),
    "run_interval": (lambda: _queue().run(interval=0), "interval must be a positive"),
    "run_interval_nan": (lambda: _queue().run(interval=math.nan), "interval must be a positive"),
    "run_message": (lambda: _queue().run(message="loud"), "message must be 'none', 'minimal'"),
    "run_shutdown": (lambda: _queue().run(shutdown="no"), "shutdown must be True or False"),  # type: ignore[arg-type]
    "start_timelimit": (lambda: _queue().start(timelimit=-2), "timelimit must be a positive"),
    "wait_timeout": (lambda: _queue().wait(timeout=math.nan), "timeout must be a number"),
    "pool_refill": (lambda: WorkerPool(1).refill(reserve="yes"), "reserve must be True or"),  # type: ignore[arg-type]
    "pool_wait_ready": (lambda: WorkerPool(1).wait_ready(timeout=math.inf), "timeout must be"),
    "tasklist_add": (lambda: bj.TaskList().add(_f, args=7), "args must be a tuple"),  # type: ignore[arg-type]
    "tasklist_state": (lambda: bj.TaskList().in_state("lost"), "unknown task state"),
}


def _queue() -> Queue:
    q = Queue(workers=1)
    q.add(_f, args=(1,))
    return q


@pytest.fixture
def nothing_created() -> Iterator[None]:
    """No call folder and no process may come from a refused argument (a pool's folder is
    made only as its first worker starts, so no process means no folder)."""
    root = settings.job_root()
    detached = root / "detached"
    before = set(root.iterdir())
    before_detached = set(detached.iterdir()) if detached.exists() else set()
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    ours = [p for p in psutil.Process().children(recursive=True) if p.pid not in children]
    assert ours == [], "a refused argument started a process"
    assert set(root.iterdir()) - before <= {detached}, "a refused argument made a folder"
    if detached.exists():
        assert set(detached.iterdir()) == before_detached, "a refused argument made a folder"


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_are_refused_before_anything_is_made(
    case: str, nothing_created: None
) -> None:
    make, words = BAD[case]
    with pytest.raises(JobSpecError) as info:
        make()
    message = str(info.value)
    assert words in message
    assert "\n" not in message, "one line"
    assert isinstance(info.value, bj.BgJobError) and isinstance(info.value, ValueError)


def test_an_unpicklable_call_leaves_no_folder(nothing_created: None) -> None:
    import threading

    with pytest.raises(JobSpecError, match="cannot be pickled"):
        bj.bg(_f, threading.Lock())


# -- call folders: the owner's alone -----------------------------------------------------


@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
def test_every_file_of_a_call_folder_is_private_and_the_shipped_call_is_gone(
    detach: bool,
) -> None:
    ns = notebook(
        """
        import sys
        def work(n):
            print("out", n)
            print("err", n, file=sys.stderr)
            return n + 1
        """
    )
    old = os.umask(0o022)
    try:
        call = bj.bg_call(ns["work"], (41,), detach=detach)
        assert call.result(60) == 42
    finally:
        os.umask(old)
    assert call.read_output() == "out 41\n" and call.read_error() == "err 41\n"
    files = sorted(p.name for p in call.folder.iterdir())
    assert "call.pkl" not in files
    assert {"stdout", "stderr", "result.pkl", "status.json", "spec.json", "pid.json"} <= set(files)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in call.folder.iterdir()}
    assert set(modes.values()) == {"0o600"}, modes
    assert stat.S_IMODE(call.folder.stat().st_mode) == 0o700
