"""The processes we start: in a group of their own, ended (SIGTERM, grace, SIGKILL to the
group), reaped, how they ended told as a code and in words, and the parent watch of a child.

The code lives in ``_inside/procs.py``, so the processes on the other side of the boundary
(a detached call's supervisor, a worker watching its parent) run the same code without
importing the package; this is its name on the notebook side.
"""

from __future__ import annotations

from ._inside.procs import (
    CODE_CANCELLED,
    CODE_ERROR,
    CODE_LOST,
    CODE_OK,
    CODE_PICKLE,
    CODE_SIGNAL,
    CODE_TIMEOUT,
    death_reason,
    end,
    group_alive,
    identity,
    identity_alive,
    reap,
    reap_when_ended,
    signal_group,
    signal_identified,
    signal_process,
    start,
    status_code,
    watch_parent,
)

__all__ = [
    "CODE_CANCELLED",
    "CODE_ERROR",
    "CODE_LOST",
    "CODE_OK",
    "CODE_PICKLE",
    "CODE_SIGNAL",
    "CODE_TIMEOUT",
    "death_reason",
    "end",
    "group_alive",
    "identity",
    "identity_alive",
    "reap",
    "reap_when_ended",
    "signal_group",
    "signal_identified",
    "signal_process",
    "start",
    "status_code",
    "watch_parent",
]
