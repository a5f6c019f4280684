"""The states a job goes through, what ended jobs report, and what every row reads."""

from __future__ import annotations

import datetime as dt
import time
from typing import NamedTuple

PENDING, STARTING, RUNNING = "pending", "starting", "running"
SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED = (
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "died",
)
STATES = (PENDING, STARTING, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED})
RESULT_MODES = ("globals", "object", "none")
CONFLICT_MODES = ("keep", "overwrite")


class ErrorInfo(NamedTuple):
    """The exception a job's code raised, as its kernel reported it."""

    ename: str
    evalue: str
    traceback: list[str]


def now() -> dt.datetime:
    """The time now, with this machine's time zone, as jobs record it."""
    return dt.datetime.now().astimezone()


class RowClock:
    """What every row reads the same way, from ``_done``/``_total`` and the monotonic
    start and end stamps: a job's, a call's and a progress handle's."""

    _done: int
    _total: int
    _t_started: float | None
    _t_finished: float | None

    @property
    def progress(self) -> tuple[int, int]:
        """(units done, units in all): statements for a job."""
        return (self._done, self._total)

    @property
    def elapsed(self) -> float:
        """Seconds it has been running (0 before it starts)."""
        if self._t_started is None:
            return 0.0
        end = self._t_finished if self._t_finished is not None else time.monotonic()
        return end - self._t_started
