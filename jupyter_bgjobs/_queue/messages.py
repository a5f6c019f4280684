"""What a queue's run shows while it goes: nothing, live counts (a row in the Jobs panel,
or one line on stderr in a terminal), or also a line per finished task."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from .._procs import CODE_OK
from .._states import CANCELLED, FAILED, RUNNING, SUCCEEDED
from .tasks import ASSIGNED, DONE, WAITING, Task, TaskList

MODES = ("none", "minimal", "verbose")


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
        self.terminal = False

    def begin(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        from .._display import live_frontend

        # Non-blocking runs always get a row (it carries the Stop button).
        if (self.mode != "none" or not self.blocking) and (live_frontend() or not self.blocking):
            from .._progress import add_job

            self.row = add_job(
                "queue",
                progress_units=total,
                actions={"stop": self.cancel},
                running=True,
                auto_remove=False,
                show=live_frontend(),
            )
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
        failed = sum(1 for t in self.tasks if t.state == DONE and t.code != CODE_OK)
        word = "stopped" if interrupted else "complete"
        summary = f"Queue {word}: {self.done} of {self.total} tasks done in {elapsed:.2f} s"
        summary += f", {failed} failed" if failed else ""
        if self.row is not None:
            self.row.set_progress(self.done)
            self.row.set_status(summary)
            self.row.set_state(CANCELLED if interrupted else (FAILED if failed else SUCCEEDED))
        elif self.terminal:
            print("\r" + summary + " " * 20, file=sys.stderr, flush=True)
