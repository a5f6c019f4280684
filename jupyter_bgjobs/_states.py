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
# The same, in the order rows and messages list them.
ENDED_STATES = (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED)
# A progress row of the notebook's own (``add_job``) starts idle.
IDLE = "idle"
# A stored job whose record cannot be read: a row of its own, with the reason.
DAMAGED = "damaged"
# A look of the panel's rows, not a state: some rows could not be read this time.
PARTIAL = "partial"


class Look(NamedTuple):
    """How a state shows, everywhere: its icon; its colour in plain HTML (the notebook's
    rows and widget panel) and as a JupyterLab theme variable (the IDE's pane, which
    follows light, dark and high-contrast themes); the level of the notification its end
    raises ("" for a state that is not an end); and the style of its widget progress bar."""

    icon: str
    colour: str
    theme: str
    notice: str
    bar: str


LOOKS: dict[str, Look] = {
    PENDING: Look("◌", "#1565c0", "--jp-brand-color1", "", "info"),
    STARTING: Look("⏳", "#1565c0", "--jp-brand-color1", "", "info"),
    RUNNING: Look("▶", "#1565c0", "--jp-brand-color1", "", "info"),
    IDLE: Look("○", "#616161", "--jp-ui-font-color2", "", "info"),
    SUCCEEDED: Look("✔", "#2e7d32", "--jp-success-color1", "success", "success"),
    FAILED: Look("✖", "#c62828", "--jp-error-color1", "error", "danger"),
    CANCELLED: Look("■", "#616161", "--jp-ui-font-color2", "info", "warning"),
    TIMED_OUT: Look("⏱", "#ef6c00", "--jp-warn-color0", "warning", "warning"),
    DIED: Look("☠", "#c62828", "--jp-error-color1", "error", "danger"),
    DAMAGED: Look("⚠", "#ef6c00", "--jp-warn-color0", "warning", "warning"),
    PARTIAL: Look("⚠", "#ef6c00", "--jp-warn-color0", "", "warning"),
}


def label(state: str) -> str:
    """A state in words: ``timed_out`` is "timed out"."""
    return state.replace("_", " ")


def icon(state: str) -> str:
    """A state's icon ("" for a word that is no state)."""
    look = LOOKS.get(state)
    return look.icon if look else ""


def colour_of(state: str) -> str:
    """A state's colour in plain HTML."""
    look = LOOKS.get(state)
    return look.colour if look else LOOKS[RUNNING].colour


def typescript() -> str:
    """``src/states.ts``: the same vocabulary for the JupyterLab extension, generated from
    this module; a test holds the file to it. Write it anew with
    ``python -c "from jupyter_bgjobs._states import typescript as t; print(t(), end='')"
    > src/states.ts``."""

    def listed(name: str, doc: str, values: list[str]) -> str:
        rows = ",\n".join(f"  '{v}'" for v in values)
        return f"/** {doc} */\nexport const {name} = [\n{rows}\n];\n"

    def table(name: str, doc: str, values: dict[str, str]) -> str:
        rows = ",\n".join(f"  {k}: '{v}'" for k, v in values.items())
        return (
            f"/** {doc} */\nexport const {name}: {{ [state: string]: string }} = {{\n{rows}\n}};\n"
        )

    return "\n".join(
        [
            "/**\n * The states of a job and how each shows, generated from the Python"
            "\n * package's `_states.py`. Do not edit: a test holds this file to it.\n */",
            listed("STATES", "A job's states, in the order it goes through them.", list(STATES)),
            listed("FINAL_STATES", "The states a job ends in.", list(ENDED_STATES)),
            table("STATE_ICONS", "Each state's icon.", {k: v.icon for k, v in LOOKS.items()}),
            table(
                "STATE_THEME",
                "Each state's colour, a JupyterLab theme variable.",
                {k: v.theme for k, v in LOOKS.items()},
            ),
            table(
                "ENDED_NOTICE",
                "The level of the notification each end raises.",
                {k: v.notice for k, v in LOOKS.items() if v.notice},
            ),
        ]
    )


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
    """``target`` if a named transition leads there from ``current`` (``event_of`` names
    it), else ``TransitionError`` naming both (a final state is final)."""
    name = _BY_TARGET.get(target)
    if name is None or current not in TRANSITIONS[name][0]:
        raise TransitionError(f"no transition from {current!r} to {target!r}")
    return target


def event_of(target: str) -> str:
    """The name of the transition into ``target``: ``fail`` for ``failed``."""
    return _BY_TARGET.get(target, target)


# The entries of a job's history are small and few: one a transition, at most one a state.
MAX_HISTORY = 32


def history_entry(event: str, state: str, reason: str = "") -> dict[str, str]:
    """One line of a job's story: what happened, the state it led to, when, and why (for
    an end)."""
    return {"event": event, "state": state, "at": now().isoformat(), "reason": reason}


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
