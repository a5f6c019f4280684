"""Queue: many tasks on a pool of persistent worker processes; ``run()`` returns a DataFrame.

R's ``queue`` package in Python, in modules by responsibility:

- ``tasks``: ``Task`` (one row) and ``TaskList``, the task states and the columns;
- ``pool``: ``WorkerPool`` and its ``Worker`` processes (``_inside/worker.py``);
- ``run``: the controller loop of one run, which owns every task's state while it runs;
- ``messages``: what a run shows (nothing, live counts, a line per task);
- ``queue``: ``Queue``, which ties them together;
- ``dask``: the same tasks on a ``dask.distributed`` cluster.

Arrows point one way: queue -> messages, dask -> run -> pool -> tasks; messages -> tasks.
"""

from __future__ import annotations

from .._inside.procs import CODE_CANCELLED, CODE_ERROR, CODE_OK, CODE_PICKLE, CODE_TIMEOUT
from .._states import TASK_STATES as STATES
from .pool import Worker, WorkerPool
from .queue import Queue
from .tasks import COLUMNS, Task, TaskList

__all__ = [
    "CODE_CANCELLED",
    "CODE_ERROR",
    "CODE_OK",
    "CODE_PICKLE",
    "CODE_TIMEOUT",
    "COLUMNS",
    "STATES",
    "Queue",
    "Task",
    "TaskList",
    "Worker",
    "WorkerPool",
]
