"""Progress rows for any long task (rstudioapi's jobAdd family), and a tqdm that drives one.

In the notebook, ``add_job`` makes a row in the Jobs panel. Inside a ``%%bgjob`` it drives
the job's own row in the notebook instead, through the runner's events.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from . import _checks
from ._config import settings
from ._errors import JobSpecError, JobStateError
from ._outputs import OutputTail, Tailed
from ._states import (
    FINAL_STATES,
    MAX_HISTORY,
    PROGRESS_MOVES,
    RUNNING,
    SUCCEEDED,
    RowClock,
    history_entry,
    now,
)

# The words a row's state may be, in the order they are said.
PROGRESS_STATES = tuple(PROGRESS_MOVES.moves[m][1] for m in PROGRESS_MOVES.moves)


def _runner() -> Any:
    """The job runner module when this code runs inside a job, else None."""
    mod = sys.modules.get("_bgjobs_runner")
    return mod if mod is not None and getattr(mod, "CURRENT", None) is not None else None


class ProgressJob(Tailed, RowClock):
    """A row for a task you drive yourself: ``add_output``, ``add_progress``,
    ``set_progress``, ``set_status``, ``set_state``, ``remove``. As a context manager it
    starts running on entry and ends ``succeeded``, or ``failed`` on an exception.

    A row that ends ``set_state("succeeded", failed=k)`` with some of its units failed is
    ``partial``: the panel shows it amber, apart from the all-red ``failed``."""

    def __init__(
        self,
        name: str,
        status: str = "",
        progress_units: int = 0,
        actions: dict[str, Callable[[], Any]] | None = None,
        running: bool = False,
        auto_remove: bool = True,
        show: bool = True,
    ) -> None:
        _checks.text("name", name, example="'download'")
        if not name:
            raise JobSpecError("add_job needs a name for its row, for example 'download'")
        _checks.text("status", status)
        progress_units = int(_checks.number("progress_units", progress_units, integer=True))
        actions = _checks.callables("actions", actions)
        for arg, value in (("running", running), ("auto_remove", auto_remove), ("show", show)):
            _checks.flag(arg, value)
        unknown = set(actions or {}) - {"stop"}
        if unknown:
            raise JobSpecError(f"unknown action(s) {sorted(unknown)}; the one action is 'stop'")
        self.id = uuid.uuid4().hex[:8]
        self.name = name
        self.status = status
        self.section = ""
        self.report = ""
        self.reason = ""
        self.actions = dict(actions or {})
        self.auto_remove = auto_remove
        self.show = show
        self._total = int(progress_units)
        self._done = 0
        self._failed = 0
        self._state = "idle"
        self._t_started: float | None = None
        self._t_finished: float | None = None
        self._tail = OutputTail(settings.output_tail, settings.output_tail_bytes)
        self._listeners: list[Callable[[Any], Any]] = []
        self._lock = threading.Lock()
        self.removed = False
        # A progress row has no log or store folder of its own (its record is in the job
        # root, for the IDE's pane), and nothing to merge.
        self.log_path: Path | None = None
        self.folder: Path | None = None
        self.merged = True
        # What it is to the readers of its record: a progress row, or a queue's run.
        self.kind = "progress"
        self.started: dt.datetime | None = None
        self.finished: dt.datetime | None = None
        self.history: list[dict[str, str]] = []
        self.writer: Any = None
        self.in_job = _runner() is not None
        # A row made by code, not started from a cell: no cell shows it by id; no process
        # of its own to sample.
        self.started_from = ("", "")
        self.resources: dict[str, Any] = {}
        if running:
            self.set_state("running")
        if self.in_job:
            self._forward()

    # -- what a row reads ---------------------------------------------------------------
    @property
    def state(self) -> str:
        """idle, running, succeeded, cancelled or failed."""
        return self._state

    @property
    def done(self) -> bool:
        return self._state in FINAL_STATES

    @property
    def failed(self) -> int:
        """Units of the progress that failed, as the last ``set_state`` said."""
        return self._failed

    @property
    def partial(self) -> bool:
        """True when the row succeeded with some of its units failed."""
        return self._state == SUCCEEDED and self._failed > 0

    @property
    def can_stop(self) -> bool:
        return "stop" in self.actions

    def cancel(self) -> bool:
        """The row's Stop button: calls the ``stop`` action."""
        if self.done or "stop" not in self.actions:
            return False
        self.actions["stop"]()
        return True

    # -- what the task calls ------------------------------------------------------------
    def add_output(self, text: str, error: bool = False) -> None:
        """Append text to the row's output."""
        _checks.text("text", text)
        self._tail.add(
            {"output_type": "stream", "name": "stderr" if error else "stdout", "text": str(text)}
        )
        self._changed()

    def add_progress(self, units: int) -> None:
        """Add ``units`` to the progress done."""
        self.set_progress(self._done + units)

    def set_progress(self, units: int) -> None:
        """Set the progress done to ``units`` (of ``progress_units``)."""
        units = int(_checks.number("units", units, integer=True))
        if self._state == "idle":
            self.set_state("running")
        self._done = int(units)
        self._changed()

    def set_status(self, text: str) -> None:
        """Set the row's status text."""
        self.status = _checks.text("text", text) or ""
        self._changed()

    def set_state(self, state: str, failed: int = 0) -> None:
        """Set the state: idle, running, succeeded, cancelled or failed.

        ``failed``: how many units failed; ``"succeeded"`` with some failed ends the row
        ``partial`` (amber), for work that finished with a few of its parts failed.
        """
        if state not in PROGRESS_STATES:
            raise JobSpecError(f"state must be one of {', '.join(PROGRESS_STATES)}, not {state!r}")
        failed = int(_checks.number("failed", failed, integer=True))
        if state in (RUNNING, *FINAL_STATES) and self._t_started is None:
            self._t_started = time.monotonic()
            self.started = now()
        if state in FINAL_STATES:
            self._t_finished = time.monotonic()
            self.finished = now()
            if state == "succeeded" and self._total:
                self._done = self._total
        # One change for both: a row must never be seen succeeded before it is partial.
        self._failed = failed
        self._state = PROGRESS_MOVES.move(self._state, state)
        entry = history_entry(PROGRESS_MOVES.event_of(state), state)
        self.history = [*self.history, entry][-MAX_HISTORY:]
        self._changed()

    def remove(self) -> None:
        """Take the row out of the panel."""
        self.removed = True
        self._changed()

    def __enter__(self) -> ProgressJob:
        if self._state == "idle":
            self.set_state("running")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.set_state("succeeded")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.set_state("cancelled")
        else:
            self.add_output(f"{exc_type.__name__}: {exc}\n", error=True)
            self.set_state("failed")

    def __repr__(self) -> str:
        failed = f" ({self._failed} failed)" if self.partial else ""
        return f"<ProgressJob {self.name!r} {self._state} {self._done}/{self._total}{failed}>"

    def forget(self) -> None:
        """Nothing to forget: a progress row lives in its panel only."""

    def on_change(self, fn: Callable[[Any], Any]) -> None:
        """Call ``fn(row)`` after every change of the row."""
        self._listeners.append(fn)

    def _changed(self) -> None:
        if self.in_job:
            self._forward()
            return
        for fn in list(self._listeners):
            try:
                fn(self)
            except Exception:
                pass

    def _forward(self) -> None:
        runner = _runner()
        if runner is None:
            return
        runner.report_progress(self._done, self._total or None)
        text = self.status or self.name
        if text != getattr(self, "_sent_status", None):
            self._sent_status = text
            runner.report_status(text)


_handles: list[ProgressJob] = []
new_handle_hooks: list[Callable[[ProgressJob], Any]] = []


def add_job(
    name: str,
    status: str = "",
    progress_units: int = 0,
    actions: dict[str, Callable[[], Any]] | None = None,
    running: bool = False,
    auto_remove: bool = True,
    show: bool = True,
) -> ProgressJob:
    """Add a progress row for any long task (rstudioapi's ``jobAdd``) and return its handle.

    Drive it with ``set_progress``/``add_progress``, ``set_status``, ``add_output`` and
    ``set_state``; or use it as a context manager. ``actions={"stop": fn}`` adds a Stop
    button that calls ``fn``. Inside a ``%%bgjob`` the handle drives the job's own row.
    """
    handle = ProgressJob(name, status, progress_units, actions, False, auto_remove, show)
    return added(handle, running)


def added(handle: ProgressJob, running: bool = False, kind: str = "progress") -> ProgressJob:
    """A row just made: recorded (as a ``kind``: a queue's run is one), in the panel, and
    running when asked."""
    handle.kind = kind
    if not handle.in_job:
        _recorded(handle)
        _handles.append(handle)
        for hook in list(new_handle_hooks):
            hook(handle)
    if running:
        handle.set_state(RUNNING)
    return handle


def _recorded(row: ProgressJob) -> None:
    """Give the row a record in the job root, where the IDE's Jobs pane and every other
    reader of records list it; a root that refuses it costs the row nothing."""
    from . import _store
    from ._state_record import RecordWriter, row_record

    folder = settings.job_root() / row.id
    try:
        folder.mkdir(mode=0o700)
        spec = {
            "kind": "progress",
            "job_kind": row.kind,
            "id": row.id,
            "name": row.name,
            "submitted": now().isoformat(),
            "detached": False,
        }
        _store.write_json(folder / "spec.json", spec)
    except OSError:
        return
    row.writer = RecordWriter(row, record=row_record, folder=folder)
    row.on_change(row.writer)
    row.writer.write()
    with _tended_lock:
        _tended.append((row, folder))
        if len(_tended) == 1:
            threading.Thread(target=_tend, name="bgjobs-rows", daemon=True).start()


# Recorded rows that have not ended: their records are brought up to date, and a Stop
# asked from the IDE's pane (``cancel.json`` in the row's folder) is passed to the row.
_tended: list[tuple[ProgressJob, Path]] = []
_tended_lock = threading.Lock()
_TEND_EVERY = 0.5


def _tend() -> None:
    idle = threading.Event()
    while True:
        with _tended_lock:
            _tended[:] = [(r, f) for r, f in _tended if not (r.done or r.removed)]
            rows = list(_tended)
            if not rows:
                return
        for row, folder in rows:
            row.writer.flush()
            asked = folder / "cancel.json"
            if os.path.lexists(asked):
                try:
                    os.unlink(asked)
                except OSError:
                    pass
                try:
                    row.cancel()
                except Exception as exc:  # the owner's action failed: said on the row
                    row.add_output(f"Stop failed: {type(exc).__name__}: {exc}\n", error=True)
        idle.wait(_TEND_EVERY)


def set_progress(units: int, total: int | None = None) -> None:
    """Inside a ``%%bgjob``: report the job's progress as ``units`` of ``total``, in place
    of statement counts."""
    runner = _runner()
    if runner is None:
        raise JobStateError(
            "set_progress reports progress from inside a %%bgjob; in the notebook, "
            "use jupyter_bgjobs.add_job(...) and its set_progress"
        )
    units = int(_checks.number("units", units, integer=True))
    if total is not None:
        total = int(_checks.number("total", total, integer=True))
    runner.report_progress(units, total)


def set_status(text: str) -> None:
    """Inside a ``%%bgjob``: set the status text of the job's row."""
    runner = _runner()
    if runner is None:
        raise JobStateError(
            "set_status reports from inside a %%bgjob; in the notebook, use "
            "jupyter_bgjobs.add_job(...) and its set_status"
        )
    runner.report_status(_checks.text("text", text) or "")


def make_tqdm() -> type:
    from tqdm import tqdm as std_tqdm

    class tqdm(std_tqdm):  # type: ignore[misc]
        """A tqdm bar that drives a Jobs panel row (or, inside a job, the job's row)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._row: ProgressJob | None = None
            kwargs.setdefault("file", _Discard())
            super().__init__(*args, **kwargs)
            self._row = add_job(
                self.desc or "tqdm", progress_units=int(self.total or 0), running=True
            )
            self.display()

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            row = getattr(self, "_row", None)
            if row is not None:
                row._total = int(self.total or 0)
                row.status = str(self).strip()
                row.set_progress(int(self.n))
            return True

        def close(self) -> None:
            row = getattr(self, "_row", None)
            if row is not None and not row.done and not self.disable:
                self.display()
                row.set_state(
                    "succeeded" if not self.total or self.n >= self.total else "cancelled"
                )
            super().close()

    # Its public name, so a job that imports it sends it back as an import, not a pickle.
    tqdm.__module__, tqdm.__qualname__ = "jupyter_bgjobs", "tqdm"
    return tqdm


class _Discard:
    """tqdm's text goes nowhere: the row shows the bar."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
