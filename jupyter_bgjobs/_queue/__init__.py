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

from .._procs import CODE_CANCELLED, CODE_ERROR, CODE_OK, CODE_PICKLE, CODE_TIMEOUT

# The names other modules imported from the one-module queue, under those names still.
from .._remote import cell_sources as _cell_sources
from .._remote import check_call as _check_call
from .._remote import check_flag as _check_flag
from .._remote import check_seconds as _check_seconds
from .._remote import error_message as _error_message
from .._remote import load_error as _load_error
from .pool import Worker, WorkerPool
from .queue import Queue
from .run import Stopped as _Stopped
from .tasks import COLUMNS, STATES, Task, TaskList

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
    "_Stopped",
    "_cell_sources",
    "_check_call",
    "_check_flag",
    "_check_seconds",
    "_error_message",
    "_load_error",
]
