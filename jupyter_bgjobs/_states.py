"""The states a job goes through, what ended jobs report, and what every row reads."""

from __future__ import annotations

import datetime as dt
import time
from typing import NamedTuple

PENDING, STARTING, RUNNING = "pending", "starting", "running"
# A job that waits for the jobs whose results it reads (``_waits``); a queue task waits
# for a worker (the same word).
WAITING = "waiting"
SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED = (
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "died",
)
STATES = (PENDING, WAITING, STARTING, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED})
# The same, in the order rows and messages list them.
ENDED_STATES = (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED)
# The ends that can come before a job's last statement: its row then says the statement
# it was at ("at 4/5"), as its report does ("failed at statement 4/5").
ENDED_ON_ITS_WAY = (FAILED, CANCELLED, TIMED_OUT, DIED)
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
    WAITING: Look("⧗", "#1565c0", "--jp-brand-color1", "", "info"),
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
        # As the project's formatter writes it: on one line when it fits in 80 columns.
        line = f"export const {name} = [{', '.join(repr(v) for v in values)}];"
        if len(line) <= 80:
            return f"/** {doc} */\n{line}\n"
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
            listed(
                "ENDED_ON_ITS_WAY",
                "The ends that can come before a job's last statement.",
                list(ENDED_ON_ITS_WAY),
            ),
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


class TransitionError(RuntimeError):
    """A state change no transition allows: a bug of the engine, never of the user."""


class Machine:
    """The named moves of one kind of thing that runs: each event, the states it may
    start from, and the state it leads to. Every state change of that thing is checked
    here, and named by its event (a job's history tells the events)."""

    def __init__(self, kind: str, moves: dict[str, tuple[frozenset[str], str]]) -> None:
        self.kind = kind
        self.moves = moves
        self._by_target = {target: name for name, (_, target) in moves.items()}
        self.states = frozenset(s for sources, target in moves.values() for s in (*sources, target))

    def move(self, current: str, target: str) -> str:
        """``target`` if a move leads there from ``current``, else ``TransitionError``
        naming both (a final state is final)."""
        name = self._by_target.get(target)
        if name is None or current not in self.moves[name][0]:
            raise TransitionError(f"no transition from {current!r} to {target!r} of a {self.kind}")
        return target

    def event_of(self, target: str) -> str:
        """The name of the move into ``target``: ``fail`` for ``failed``."""
        return self._by_target.get(target, target)


_STARTED = frozenset({STARTING, RUNNING})
_UNENDED = frozenset({PENDING, WAITING, STARTING, RUNNING})

# A job: pending until a slot is free (waiting first for the jobs whose results it reads),
# starting while its kernel is acquired, running once its code is sent; an end from there
# (a start that fails is a failure; a job whose producer failed is cancelled waiting).
JOB_MOVES = Machine(
    "job",
    {
        "wait": (frozenset({PENDING}), WAITING),
        "start": (frozenset({PENDING, WAITING}), STARTING),
        "run": (frozenset({STARTING}), RUNNING),
        "succeed": (frozenset({RUNNING}), SUCCEEDED),
        "fail": (_UNENDED, FAILED),
        "cancel": (_UNENDED, CANCELLED),
        "time_out": (_STARTED, TIMED_OUT),
        "die": (_STARTED, DIED),
    },
)
TRANSITIONS = JOB_MOVES.moves

# A progress row (``add_job``) is set by its owner's code, in any order, as rstudioapi's
# jobSetState is: every state may follow every other; only the words are checked.
_PROGRESS = frozenset({IDLE, RUNNING, SUCCEEDED, CANCELLED, FAILED})
PROGRESS_MOVES = Machine(
    "progress row",
    {
        "idle": (_PROGRESS, IDLE),
        "run": (_PROGRESS, RUNNING),
        "succeed": (_PROGRESS, SUCCEEDED),
        "cancel": (_PROGRESS, CANCELLED),
        "fail": (_PROGRESS, FAILED),
    },
)

# A queue task (R's queue): its words are the R package's, and its end is one state,
# ``done``, whose code says how; a task whose worker was lost waits again.
CREATED, ASSIGNED, DONE = "created", "assigned", "done"
# In the order a task goes through them (the R package's, and its table's column).
TASK_STATES = (CREATED, WAITING, ASSIGNED, RUNNING, DONE)
TASK_MOVES = Machine(
    "queue task",
    {
        "queue": (frozenset({CREATED, WAITING, ASSIGNED, RUNNING}), WAITING),
        "assign": (frozenset({WAITING}), ASSIGNED),
        "run": (frozenset({ASSIGNED}), RUNNING),
        "finish": (frozenset({CREATED, WAITING, ASSIGNED, RUNNING, DONE}), DONE),
    },
)

# A queue worker: a process that runs one task after another, so it goes back to idle
# (and a busy one is given the next tasks ahead); a spare is kept warm for one that dies.
W_IDLE, BUSY, SPARE, FINISHED = "idle", "busy", "spare", "finished"
WORKER_MOVES = Machine(
    "queue worker",
    {
        "ready": (frozenset({STARTING, SPARE, BUSY}), W_IDLE),
        "keep": (frozenset({STARTING}), SPARE),
        "take": (frozenset({W_IDLE, BUSY}), BUSY),
        "end": (frozenset({STARTING, W_IDLE, SPARE, BUSY, FINISHED}), FINISHED),
    },
)

# A ``bg()`` call has no moves: its state is read, each time, from the files its process
# and its watcher write (``status.json``), so that any process reads the same.


def transition(current: str, target: str) -> str:
    """A job's move: ``target`` if one leads there from ``current`` (``event_of`` names
    it), else ``TransitionError`` naming both."""
    return JOB_MOVES.move(current, target)


def event_of(target: str) -> str:
    """The name of a job's move into ``target``: ``fail`` for ``failed``."""
    return JOB_MOVES.event_of(target)


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
