"""The record of a job: the one schema of what a job is, on disk and on the wire.

The driver (or a call's owner) writes it as ``state.json``; every reader reads it: the
handles, ``%bgjobs``, the CLI, the server's REST answers and event stream, and through
them the IDE's pane, whose job type a test holds to ``ROW``. A ``bg()`` call's record is
of the same schema (``kind`` says what it is). What each field may hold is said once,
beside it, and the check of a stored record is made from that.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ._inside.procs import PID_MAX
from ._states import DAMAGED, MAX_HISTORY, PENDING, STATES, ErrorInfo, error_reason

_NONE = type(None)


def _holds(*types: type) -> dict[str, tuple[type, ...]]:
    """A field's metadata: the JSON types a stored record may hold in it."""
    return {"json": types}


@dataclass
class JobRecord:
    """What a job (or a ``bg()`` call) is, now: its state, progress, times, the reason it
    ended, where it runs and which processes are its. ``to_json`` is what ``state.json``
    holds; ``row`` is what a row of the IDE's pane shows."""

    id: str = field(default="", metadata=_holds(str))
    name: str = field(default="", metadata=_holds(str))
    # What runs: a cell, a script, a call (``bg()``).
    kind: str = field(default="cell", metadata=_holds(str))
    state: str = field(default=PENDING, metadata=_holds(str))
    progress: list[int] = field(default_factory=lambda: [0, 0], metadata=_holds(list))
    section: str = field(default="", metadata=_holds(str))
    status: str = field(default="", metadata=_holds(str))
    started: str | None = field(default=None, metadata=_holds(str, _NONE))
    finished: str | None = field(default=None, metadata=_holds(str, _NONE))
    finished_ts: float | None = field(default=None, metadata=_holds(int, float, _NONE))
    elapsed: float | None = field(default=0.0, metadata=_holds(int, float, _NONE))
    error: list[Any] | None = field(default=None, metadata=_holds(list, _NONE))
    reason: str = field(default="", metadata=_holds(str))
    exit_code: int | None = field(default=None, metadata=_holds(int, _NONE))
    log_path: str | None = field(default=None, metadata=_holds(str, _NONE))
    log_note: str = field(default="", metadata=_holds(str))
    # The process whose job it is (an attached job ends with it), as a tag and a pid.
    owner: str | None = field(default=None, metadata=_holds(str, _NONE))
    owner_pid: int | None = field(default=None, metadata=_holds(int, _NONE))
    # A detached job's host (or a detached call's supervisor), the only one signalled.
    host_pid: int | None = field(default=None, metadata=_holds(int, _NONE))
    host_id: str | None = field(default=None, metadata=_holds(str, _NONE))
    kernel_pid: int | None = field(default=None, metadata=_holds(int, _NONE))
    # A call's own process.
    pid: int | None = field(default=None, metadata=_holds(int, _NONE))
    detached: bool = field(default=False, metadata=_holds(bool))
    where: str | None = field(default="local", metadata=_holds(str, _NONE))
    kernel: str | None = field(default=None, metadata=_holds(str, _NONE))
    notebook: str | None = field(default=None, metadata=_holds(str, _NONE))
    # The id of the notebook cell that started it ("" when none did).
    cell_id: str = field(default="", metadata=_holds(str))
    skipped: list[dict[str, str]] = field(default_factory=list, metadata=_holds(list))
    # Every transition, with its time and, for an end, its reason.
    history: list[dict[str, str]] = field(default_factory=list, metadata=_holds(list))
    # Whether its owner offers Stop (a progress row without a stop action does not).
    can_stop: bool = field(default=True, metadata=_holds(bool))
    # The merge report of an attached job ("merged a, b into globals"), for the IDE.
    report: str = field(default="", metadata=_holds(str))
    # What it uses: rss and peak (bytes), cpu (percent of a core), cpu_seconds; and the
    # samples of its life for a plot, [seconds since start, rss, cpu].
    resources: dict[str, Any] = field(default_factory=dict, metadata=_holds(dict))
    usage: list[list[float]] = field(default_factory=list, metadata=_holds(list))
    # Its memory limit in bytes (0: none).
    memory_limit: int = field(default=0, metadata=_holds(int))
    # The attempt running or last run, of how many it may have (``--retries N``: N + 1).
    attempt: int = field(default=1, metadata=_holds(int))
    attempts: int = field(default=1, metadata=_holds(int))
    # Its newest checkpoint (``--checkpoint``): the section it follows, statements,
    # bytes, names kept and skipped, seconds to write, when; empty while it has none.
    checkpoint: dict[str, Any] = field(default_factory=dict, metadata=_holds(dict))
    # The job it resumed (its id; "" for none), and where it went on from, in words.
    resumed_from: str = field(default="", metadata=_holds(str))
    resumed: str = field(default="", metadata=_holds(str))
    # The jobs it waits for (``_waits``): in words, "fit (df)", and their ids.
    waits_for: list[str] = field(default_factory=list, metadata=_holds(list))
    waits_for_ids: list[str] = field(default_factory=list, metadata=_holds(list))
    # A run of a sweep: the sweep's id and the names this run set.
    sweep: str = field(default="", metadata=_holds(str))
    params: dict[str, Any] = field(default_factory=dict, metadata=_holds(dict))
    # Wall-clock stamps of the job's milestones (benchmarks read them).
    timings: dict[str, float] = field(default_factory=dict, metadata=_holds(dict))

    def to_json(self) -> dict[str, Any]:
        """The record as ``state.json`` holds it."""
        return asdict(self)

    def row(self, notebook_path: str | None = None) -> dict[str, Any]:
        """What a row of the IDE's pane shows (``ROW``): the record's fields, and where
        its notebook is under the server's root."""
        return {key: notebook_path if key == "notebook_path" else getattr(self, key) for key in ROW}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        """A stored record, checked: ``damaged`` (with the reason) when it is not one."""
        problem = cls.problem(data)
        if problem:
            return cls.damaged(str(data.get("id", "")), str(data.get("name", "")), problem)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def damaged(
        cls, id: str, name: str, reason: str, kind: str = "cell", detached: bool = False
    ) -> JobRecord:
        """The record of a job whose stored record cannot be read as one: listed, with
        ``reason`` (what is wrong), and removable."""
        return cls(
            id=id,
            name=name or id,
            kind=kind,
            state=DAMAGED,
            elapsed=0.0,
            where="local",
            detached=detached,
            reason=reason[:300],
        )

    @staticmethod
    def problem(data: dict[str, Any]) -> str:
        """What is wrong with a stored record, or "": a field of a type it may not hold,
        a state that is none, times that are no times, pids that are no pids."""
        for f in fields(JobRecord):
            if f.name not in data:
                continue
            value, types = data[f.name], f.metadata["json"]
            # bool is an int to Python, never to a record.
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                allowed = " or ".join("null" if t is _NONE else t.__name__ for t in types)
                return (
                    f"state.json: {f.name!r} is {type(value).__name__} {value!r:.40}, not {allowed}"
                )
        if "state" in data and data["state"] not in STATES:
            return f"state.json: 'state' {data['state']!r:.40} is no state of a job"
        progress = data.get("progress", [0, 0])
        if len(progress) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in progress
        ):
            return f"state.json: 'progress' {progress!r:.40} is not [done, total]"
        error = data.get("error")
        if error is not None and (len(error) != 3 or not isinstance(error[2], list)):
            return "state.json: 'error' is not [ename, evalue, traceback]"
        history = data.get("history", [])
        if len(history) > MAX_HISTORY or not all(
            isinstance(e, dict) and all(isinstance(v, str) for v in e.values()) for e in history
        ):
            return "state.json: 'history' is not a list of transitions"
        for key in ("started", "finished"):
            if data.get(key) is not None and not is_time(data[key]):
                return f"state.json: {key!r} {data[key]!r:.40} is not a time"
        for key in ("finished_ts", "elapsed"):
            value = data.get(key)
            if value is not None and not (math.isfinite(value) and -_LONGEST <= value <= _LONGEST):
                return f"state.json: {key!r} {value!r:.40} is no time of a job"
        for key in ("host_pid", "kernel_pid", "owner_pid", "pid"):
            value = data.get(key)
            if value is not None and not (isinstance(value, int) and 0 < value <= PID_MAX):
                return f"state.json: {key!r} {value!r:.40} is no pid"
        return ""


# What a record says of a job's attempts, checkpoint, resume, waits and sweep: rows show
# them, and a stored job's handle takes them as they are.
PLAN_FIELDS = (
    "attempt",
    "attempts",
    "checkpoint",
    "resumed_from",
    "resumed",
    "waits_for",
    "waits_for_ids",
    "sweep",
    "params",
)

# What a row of the IDE's pane shows of a record (and ``notebook_path``, the server's).
ROW = (
    "id",
    "name",
    "state",
    "progress",
    "section",
    "status",
    "started",
    "finished",
    "elapsed",
    "where",
    "notebook",
    "notebook_path",
    "cell_id",
    "kind",
    "detached",
    "reason",
    "log_note",
    "report",
    "can_stop",
    "resources",
    *PLAN_FIELDS,
)

# Seconds no time of a job is beyond (about 3,000 years either side of 1970).
_LONGEST = 1e11


def is_time(value: Any) -> bool:
    """A time every reader can compute with (a year 1 is text, not a time)."""
    try:
        dt.datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError, OverflowError, OSError):
        return False
    return True


# The TypeScript of a field whose JSON type says too little (a list of what, a map of what).
_TS_SHAPES = {
    "progress": "[number, number]",
    "error": "[string, string, string[]] | null",
    "skipped": "{ [key: string]: string }[]",
    "history": "IHistoryEntry[]",
    "timings": "{ [milestone: string]: number }",
    "resources": "{ [figure: string]: number }",
    "checkpoint": "{ [fact: string]: string | number }",
    "waits_for": "string[]",
    "waits_for_ids": "string[]",
    "params": "{ [name: string]: unknown }",
    "usage": "[number, number, number][]",
}
_TS_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", _NONE: "null"}


def typescript() -> str:
    """``src/record.ts``: the record and the row as the JupyterLab extension types them,
    generated from ``JobRecord``; a test holds the file to it. Write it anew with
    ``python -c "from jupyter_bgjobs._record import typescript as t; print(t(), end='')"
    > src/record.ts``."""

    def ts(name: str, types: tuple[type, ...]) -> str:
        if name in _TS_SHAPES:
            return _TS_SHAPES[name]
        return " | ".join(dict.fromkeys(_TS_TYPES[t] for t in types))

    typed = {f.name: ts(f.name, f.metadata["json"]) for f in fields(JobRecord)}
    typed["notebook_path"] = "string | null"
    record = "\n".join(f"  {name}: {typed[name]};" for name in typed if name != "notebook_path")
    # A row's handle has judged these: always there.
    typed_row = {**typed, "elapsed": "number", "where": "string"}
    row = "\n".join(f"  {name}: {typed_row[name]};" for name in ROW)
    return (
        "/**\n * A job's record and the row of the Jobs pane, generated from the Python"
        "\n * package's `_record.py`. Do not edit: a test holds this file to it.\n */\n\n"
        "/** One transition of a job: what happened, the state it led to, when, and why. */\n"
        "export interface IHistoryEntry {\n  event: string;\n  state: string;\n"
        "  at: string;\n  reason: string;\n}\n\n"
        "/** What a job is, as its record (`state.json`) says. */\n"
        f"export interface IJobRecord {{\n{record}\n}}\n\n"
        "/** A row of the Jobs pane, as the server sends it. */\n"
        f"export interface IJob {{\n{row}\n}}\n"
    )


def recorded_reason(record: dict[str, Any]) -> str:
    """The reason a record gives; for a failure recorded without one (by an older
    version), the error the job raised."""
    reason = str(record.get("reason") or "")
    if reason or record.get("state") != "failed":
        return reason
    err = record.get("error")
    if isinstance(err, list) and len(err) == 3:
        return error_reason(ErrorInfo(str(err[0]), str(err[1]), []))
    return error_reason(None)


def not_saved(info: dict[str, Any]) -> list[str]:
    """What results.json says was not saved, as text; odd items are shown as they are."""
    out = []
    listed = info.get("not_saved")
    for m in listed if isinstance(listed, list) else []:
        if isinstance(m, dict):
            out.append(f"{m.get('name')} ({m.get('type')}: {m.get('reason')})")
        else:
            out.append(repr(m)[:80])
    return out


def attempts_field(value: Any) -> int:
    """A record's count of attempts, or 1 for a field of another type."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
