"""The tasks of a queue and their states, R's ``Task`` rows and ``TaskList``.

A task's states are the R package's documented words: created (added), waiting (queued by
a run), assigned (sent to a worker), running (its function was called), done.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from .._calling import check_call
from .._errors import JobSpecError, JobStateError
from .._inside.procs import CODE_OK
from .._states import ASSIGNED, CREATED, DONE, RUNNING, TASK_MOVES, WAITING
from .._states import TASK_STATES as STATES

COLUMNS = (
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
)


class Task:
    """One call ``fun(*args, **kwargs)`` and what became of it (a row of the result)."""

    def __init__(
        self,
        task_id: str,
        fun: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.id = task_id
        self.fun = fun
        self.args = args
        self.kwargs = kwargs
        self.state = CREATED
        self.result: Any = None
        self.error: BaseException | None = None
        self.code: int | None = None
        self.message = ""
        self.stdout = ""
        self.stderr = ""
        self.worker_id: int | None = None
        self.created = time.time()
        self.queued: float | None = None
        self.assigned: float | None = None
        self.started: float | None = None
        self.finished: float | None = None
        # The most memory its worker held while it ran (bytes; None where not measured).
        self.memory: int | None = None

    @property
    def runtime(self) -> timedelta | None:
        """How long the function ran, once the task is done."""
        if self.started is None or self.finished is None:
            return None
        return timedelta(seconds=self.finished - self.started)

    @property
    def ok(self) -> bool:
        """True when the task is done and its function returned."""
        return self.state == DONE and self.code == CODE_OK

    def move(self, target: str) -> None:
        """Into ``target`` by one of a task's moves (``TransitionError`` for another)."""
        self.state = TASK_MOVES.move(self.state, target)

    def finish(self, code: int, message: str, error: BaseException | None = None) -> None:
        """Done: its code (see `CODE_OK`), message and error, as its worker told them."""
        self.move(DONE)
        self.code = code
        self.message = message
        self.error = error
        if self.finished is None:
            self.finished = time.time()

    def requeue(self) -> None:
        """Waiting again: queued by a run, or its worker was lost before it ended."""
        self.move(WAITING)
        self.worker_id = None
        self.assigned = None
        self.started = None

    def __repr__(self) -> str:
        extra = f" code={self.code} {self.message!r}" if self.state == DONE else ""
        return f"<Task {self.id} {self.state}{extra}>"


class TaskList:
    """The tasks of a queue, in the order they were added (R's ``TaskList``)."""

    def __init__(self) -> None:
        self._tasks: list[Task] = []
        self._by_id: dict[str, Task] = {}
        self._counter = itertools.count(1)

    def add(
        self,
        fun: Callable[..., Any],
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Task:
        """Add a task; its id defaults to ``task_1``, ``task_2``, ..."""
        check_call("a task", fun, args, kwargs, "q.add(math.sqrt, args=(2,))")
        if id is None:
            id = f"task_{next(self._counter)}"
            while id in self._by_id:
                id = f"task_{next(self._counter)}"
        elif not isinstance(id, str) or not id:
            raise JobSpecError(f"a task id must be a non-empty string, got {id!r}")
        if id in self._by_id:
            raise JobSpecError(f"there is already a task with id {id!r}; ids must be unique")
        task = Task(id, fun, tuple(args), dict(kwargs or {}))
        self._tasks.append(task)
        self._by_id[id] = task
        return task

    def remove(self, id: str) -> Task:
        """Take a task that is not running out of the list."""
        task = self.get(id)
        if task.state in (ASSIGNED, RUNNING):
            raise JobStateError(f"task {id!r} is {task.state}; it can be removed once done")
        self._tasks.remove(task)
        del self._by_id[id]
        return task

    def get(self, id: str) -> Task:
        """The task with that id."""
        try:
            return self._by_id[id]
        except KeyError:
            raise JobSpecError(f"no task with id {id!r}") from None

    def in_state(self, state: str) -> list[Task]:
        """The tasks in one of the states created, waiting, assigned, running, done."""
        if state not in STATES:
            raise JobSpecError(f"unknown task state {state!r}; one of {', '.join(STATES)}")
        return [t for t in self._tasks if t.state == state]

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state."""
        counts = dict.fromkeys(STATES, 0)
        for t in self._tasks:
            counts[t.state] += 1
        return counts

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per task in the order added (``run()``'s result)."""
        import pandas as pd

        def stamp(values: list[float | None]) -> Any:
            return pd.to_datetime(
                [v if v is not None else float("nan") for v in values], unit="s", utc=True
            )

        tasks = self._tasks
        frame = pd.DataFrame(
            {
                "task_id": pd.Series([t.id for t in tasks], dtype=object),
                "worker_id": pd.array([t.worker_id for t in tasks], dtype="Int64"),
                "state": pd.Series([t.state for t in tasks], dtype=object),
                "result": pd.Series([t.result for t in tasks], dtype=object),
                "runtime": None,
                "fun": pd.Series([t.fun for t in tasks], dtype=object),
                "args": pd.Series([t.args for t in tasks], dtype=object),
                "created": stamp([t.created for t in tasks]),
                "queued": stamp([t.queued for t in tasks]),
                "assigned": stamp([t.assigned for t in tasks]),
                "started": stamp([t.started for t in tasks]),
                "finished": stamp([t.finished for t in tasks]),
                "code": pd.array([t.code for t in tasks], dtype="Int64"),
                "message": pd.Series([t.message for t in tasks], dtype=object),
                "stdout": pd.Series([t.stdout for t in tasks], dtype=object),
                "stderr": pd.Series([t.stderr for t in tasks], dtype=object),
                "error": pd.Series([t.error for t in tasks], dtype=object),
                "memory": pd.array([t.memory for t in tasks], dtype="Int64"),
            },
            columns=list(COLUMNS),
        )
        # From the same timestamps as the columns beside it, so the two always agree.
        frame["runtime"] = frame["finished"] - frame["started"]
        return frame

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks))

    def __getitem__(self, key: int | str) -> Task:
        return self.get(key) if isinstance(key, str) else self._tasks[key]

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        return f"<TaskList {len(self)} tasks: {counts or 'empty'}>"
