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
# A progress row of the notebook's own (``add_job``) starts idle.
IDLE = "idle"

# The named transitions of a job: each event, from which states, to which state. A call
# (``bg()``) and a progress row move through the same names where they mean the same.
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({PENDING}), STARTING),
    "run": (frozenset({STARTING}), RUNNING),
    "succeed": (frozenset({RUNNING}), SUCCEEDED),
    "fail": (frozenset({PENDING, STARTING, RUNNING}), FAILED),
    "cancel": (frozenset({PENDING, STARTING, RUNNING}), CANCELLED),
    "time_out": (frozenset({STARTING, RUNNING}), TIMED_OUT),
    "die": (frozenset({STARTING, RUNNING}), DIED),
}
_BY_TARGET = {target: name for name, (_, target) in TRANSITIONS.items()}


class TransitionError(RuntimeError):
    """A state change no transition allows: a bug of the engine, never of the user."""


def transition(current: str, target: str) -> str:
    """``target`` if a named transition leads there from ``current``, else
    ``TransitionError`` naming both (a final state is final)."""
    name = _BY_TARGET.get(target)
    if name is None or current not in TRANSITIONS[name][0]:
        raise TransitionError(f"no transition from {current!r} to {target!r}")
    return target


RESULT_MODES = ("globals", "object", "none")
CONFLICT_MODES = ("keep", "overwrite")
# What a job that failed does with the names it made before its error: merged, as a
# notebook cell that raised keeps them, or kept in ``job.results`` only.
FAILURE_MODES = ("merge", "keep")


class ErrorInfo(NamedTuple):
    """The exception a job's code raised, as its kernel reported it."""

    ename: str
    evalue: str
    traceback: list[str]


def error_reason(error: ErrorInfo | None) -> str:
    """Why a job failed, in one line, from the error its code raised."""
    if error is None or not (error.ename or error.evalue):
        return "its code raised an error its kernel did not describe"
    return f"{error.ename}: {error.evalue}" if error.evalue else error.ename


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
