"""What a queue's run shows while it goes: nothing, live counts (a row in the Jobs panel,
or one line on stderr in a terminal), or also a line per finished task."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._inside.procs import CODE_OK
from .._states import ASSIGNED, CANCELLED, FAILED, RUNNING, SUCCEEDED, WAITING
from .tasks import Task, TaskList

MODES = ("none", "minimal", "verbose")


def _fun_name(fun: Any) -> str:
    while isinstance(fun, functools.partial):
        fun = fun.func
    name = getattr(fun, "__name__", None)
    # A callable object without a __name__ is named by its class, never by its repr,
    # which may hold its values.
    return name if isinstance(name, str) and name else type(fun).__name__


def describe(tasks: Sequence[Task], where: str = "") -> str:
    """A row name made of what the tasks call, never of their arguments: ``queue: 8 × fit``,
    ``queue: 5 × fit, 3 × score``, ``queue: 5 × fit, 3 × score +2 more`` (functions), with
    `` on dask`` for a Dask cluster (``where``)."""  # noqa: RUF002 (the sign is the name's)
    counts: dict[str, int] = {}
    for t in tasks:
        name = _fun_name(t.fun)
        counts[name] = counts.get(name, 0) + 1
    shown = ", ".join(f"{n} × {name}" for name, n in list(counts.items())[:2])
    more = f" +{len(counts) - 2} more" if len(counts) > 2 else ""
    on = f" on {where}" if where else ""
    return f"queue: {shown or 'no tasks'}{more}{on}"


class Messages:
    """What a run shows while it goes: nothing, live counts, or also a line per task."""

    def __init__(
        self, tasks: TaskList, cancel: Callable[[], None], mode: str, blocking: bool
    ) -> None:
        self.tasks = tasks
        self.cancel = cancel
        self.mode = mode
        self.blocking = blocking
        self.row: Any = None
        self.t0 = time.monotonic()
        self.last = 0.0
        self.total = 0
        self.done = 0
        self.failed = 0
        self.terminal = False

    def begin(self, total: int, name: str) -> None:
        """A run of ``total`` tasks starts; its row (if it has one) is called ``name``."""
        self.total, self.done, self.failed, self.t0 = total, 0, 0, time.monotonic()
        from .._display import live_frontend

        # Non-blocking runs always get a row (it carries the Stop button).
        if (self.mode != "none" or not self.blocking) and (live_frontend() or not self.blocking):
            from .._progress import ProgressJob, added

            row = ProgressJob(
                name,
                progress_units=total,
                actions={"stop": self.cancel},
                auto_remove=False,
                show=live_frontend(),
            )
            self.row = added(row, running=True, kind="queue")
        elif self.mode != "none":
            self.terminal = True

    def _counts(self) -> str:
        c = self.tasks.counts()
        return f"waiting {c[WAITING] + c[ASSIGNED]} · running {c[RUNNING]} · done {self.done}"

    def progress(self, run: Any) -> None:
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        if self.row is not None:
            self.row.set_status(self._counts())
            self.row.set_progress(self.done)
        elif self.terminal:
            print(f"\r{self._counts()}  {now - self.t0:.1f} s", end="", file=sys.stderr, flush=True)

    def finished(self, task: Task) -> None:
        self.done += 1
        # Counted here, not from the task list: a task that failed in an earlier run is
        # not this run's failure.
        if task.code != CODE_OK:
            self.failed += 1
        if self.mode != "verbose":
            return
        runtime = task.runtime.total_seconds() if task.runtime is not None else 0.0
        line = f"{task.id}: {task.message} ({runtime:.3g} s, worker {task.worker_id})"
        if self.row is not None:
            self.row.add_output(line + "\n", error=task.code != CODE_OK)
        if not self.blocking:
            return
        if self.terminal:
            print("\r" + line + " " * 20, file=sys.stderr, flush=True)
        else:
            # run() holds the notebook's own thread: printing here lands under its cell.
            print(line, flush=True)

    def close(self, interrupted: bool = False) -> None:
        elapsed = time.monotonic() - self.t0
        failed = self.failed
        word = "stopped" if interrupted else "complete"
        summary = f"Queue {word}: {self.done} of {self.total} tasks done in {elapsed:.2f} s"
        summary += f", {failed} failed" if failed else ""
        if self.row is not None:
            self.row.set_progress(self.done)
            if interrupted:
                status, state, partly = summary, CANCELLED, 0
            elif failed and failed < self.done:
                # Some failed, the rest have their results: not the red of a queue that
                # came to nothing.
                status, state, partly = f"done, {failed} of {self.total} failed", SUCCEEDED, failed
            else:
                status, state, partly = summary, FAILED if failed else SUCCEEDED, 0
            self.row.set_status(status)
            self.row.set_state(state, failed=partly)
        elif self.terminal:
            print("\r" + summary + " " * 20, file=sys.stderr, flush=True)
