"""jupyter_bgjobs: run notebook code as background jobs in separate Jupyter kernels.

``%load_ext jupyter_bgjobs`` adds ``%%bgjob``, ``%bgjob_script`` and ``%bgjobs``.
From Python: ``run_cell``, ``run_script``, ``get_job``, ``jobs`` and ``configure``.
"""

from __future__ import annotations

from typing import Any

from ._api import Job, WaitTimeout, get_job, jobs, run_cell, run_script
from ._calls import BgCall, bg, bg_call, bg_calls
from ._config import configure
from ._errors import (
    BgJobError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobSpecError,
    JobStateError,
    JobTimeoutError,
    KernelDiedError,
    TaskError,
    TaskPickleError,
    TaskTimeoutError,
    WorkerDiedError,
)
from ._progress import add_job, set_progress, set_status
from ._prune import prune
from ._queue import Queue, Task, TaskList, WorkerPool
from ._sweep import Sweep, sweep

__version__ = "0.1.0"

# Jobs started from the API (no magic, no status line) keep their kernel active too.
from . import _progress
from ._api import manager as _manager
from ._display import ensure_ticker as _ensure_ticker

_manager.submit_hooks.append(_ensure_ticker)


def _panel_hook(job: Any) -> None:
    from ._display import live_frontend

    if live_frontend():
        from ._panel import on_submit

        on_submit(job)


def _handle_hook(handle: Any) -> None:
    from ._display import live_frontend

    if live_frontend():
        from ._panel import on_new_handle

        on_new_handle(handle)


_manager.submit_hooks.append(_panel_hook)
_progress.new_handle_hooks.append(_handle_hook)


def panel() -> Any:
    """The Jobs panel widget: every job, its progress and output, Stop and Remove.

    ``%bgjobs`` displays it; ``%bgjobs --sidebar`` opens it in JupyterLab's side area.
    """
    from ._panel import panel as make

    return make()


def __getattr__(name: str) -> Any:
    # tqdm is imported only when asked for.
    if name == "tqdm":
        from ._progress import make_tqdm

        cls = make_tqdm()
        globals()["tqdm"] = cls
        return cls
    raise AttributeError(f"module 'jupyter_bgjobs' has no attribute {name!r}")


__all__ = [
    "BgCall",
    "BgJobError",
    "Job",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobSpecError",
    "JobStateError",
    "JobTimeoutError",
    "KernelDiedError",
    "Queue",
    "Sweep",
    "Task",
    "TaskError",
    "TaskList",
    "TaskPickleError",
    "TaskTimeoutError",
    "WaitTimeout",
    "WorkerDiedError",
    "WorkerPool",
    "add_job",
    "bg",
    "bg_call",
    "bg_calls",
    "configure",
    "get_job",
    "jobs",
    "load_ipython_extension",
    "panel",
    "prune",
    "run_cell",
    "run_script",
    "set_progress",
    "set_status",
    "sweep",
    "tqdm",
    "unload_ipython_extension",
]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """jupyter_server finds the server extension here (the Jobs pane's REST API)."""
    return [{"module": "jupyter_bgjobs._server"}]


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext jupyter_bgjobs``: add the magics and warm a kernel."""
    from . import _magics

    _magics.load(ip)


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext jupyter_bgjobs``: end running jobs and pooled kernels, remove the magics."""
    from . import _magics

    _magics.unload(ip)
