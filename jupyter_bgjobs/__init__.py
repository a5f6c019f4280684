"""jupyter_bgjobs: run notebook code as background jobs in separate Jupyter kernels.

``%load_ext jupyter_bgjobs`` adds ``%%bgjob``, ``%bgjob_script`` and ``%bgjobs``.
From Python: ``run_cell``, ``run_script``, ``get_job``, ``jobs`` and ``configure``.
"""

from __future__ import annotations

from typing import Any

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
)
from ._jobs import Job, WaitTimeout, get_job, jobs, run_cell, run_script

__version__ = "0.1.0"

# Jobs started from the API (no magic, no status line) keep their kernel active too.
from ._display import ensure_ticker as _ensure_ticker
from ._jobs import manager as _manager

_manager.submit_hooks.append(_ensure_ticker)

__all__ = [
    "BgJobError",
    "Job",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobSpecError",
    "JobStateError",
    "JobTimeoutError",
    "KernelDiedError",
    "WaitTimeout",
    "configure",
    "get_job",
    "jobs",
    "load_ipython_extension",
    "run_cell",
    "run_script",
    "unload_ipython_extension",
]


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext jupyter_bgjobs``: add the magics and warm a kernel."""
    from . import _magics

    _magics.load(ip)


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext jupyter_bgjobs``: end running jobs and pooled kernels, remove the magics."""
    from . import _magics

    _magics.unload(ip)
