"""The state record of a job: ``state.json`` in its folder, rewritten whole as the job runs.

One schema for every job, attached or detached, local or remote, so any process can read
any job without its writer alive: its state, progress, section, status, times, pids, the
reason it ended, where it runs, and the notebook that started it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import _store
from ._backends.providers import where
from ._errors import StoreError
from ._record import JobRecord
from ._states import FINAL_STATES, IDLE, PENDING, RUNNING, event_of

# Why a job whose notebook kernel went away while it ran is over, in its record.
KERNEL_ENDED = "its notebook's kernel ended while it ran (restarted, shut down or killed)"
KERNEL_SHUT_DOWN = "its notebook's kernel was shut down or restarted"


def record_of(job: Any) -> JobRecord:
    """The record of ``job`` (a ``Job`` of this process) now."""
    started, finished = job.started, job.finished
    spec = job.spec
    return JobRecord(
        id=job.id,
        name=job.name,
        kind=spec.kind,
        state=job.state,
        progress=list(job.progress),
        section=job.section,
        status=job.status,
        started=started.isoformat() if started else None,
        finished=finished.isoformat() if finished else None,
        finished_ts=finished.timestamp() if finished else None,
        elapsed=job.elapsed,
        error=_bounded_error(job.error),
        reason=job.reason,
        exit_code=job.exit_code,
        log_path=str(job.log_path),
        log_note=job.log_note,
        owner=_store.owner_tag(),
        owner_pid=os.getpid(),
        # The host as a process (namespace, pid, start time): only that very process is
        # ever signalled, and a pid reused by another is not taken for it.
        host_pid=os.getpid() if job.detached else None,
        host_id=_store.owner_tag() if job.detached else None,
        kernel_pid=job.kernel_pid,
        detached=job.detached,
        where=spec.gateway or where(spec),
        kernel=spec.kernel,
        notebook=job.notebook,
        cell_id=spec.cell_id,
        skipped=list(job.skipped),
        history=list(job.history),
        report=job.report or "",
        timings=dict(job.timings),
        resources=dict(job.resources),
        usage=[list(s) for s in job.usage],
        memory_limit=spec.memory_limit,
        attempt=job.attempt,
        attempts=spec.retries + 1,
        checkpoint=dict(job.checkpoint),
        resumed_from=str(spec.resume.get("from", "")) if spec.resume else "",
        resumed=job.resumed,
        waits_for=list(job.waits_for),
        waits_for_ids=list(job.waits_for_ids),
        sweep=spec.sweep,
        params=dict(spec.params),
    )


def launched_record(job: Any) -> JobRecord:
    """The record of a detached job as the process that launches it writes it: its host
    is not named, since it is not this process (``host.json`` names it once started)."""
    record = record_of(job)
    record.host_pid = record.host_id = None
    return record


# A record stays small whatever the job raised: the error's text and traceback are cut to
# this many characters each (the whole traceback is in the job's log).
_ERROR_TEXT = 64 * 1024


def _bounded_error(error: Any) -> list[Any] | None:
    if not error:
        return None
    ename, evalue, traceback = error
    lines, size = [], 0
    for line in reversed(list(traceback)):  # the end of a traceback says the most
        size += len(line)
        if size > _ERROR_TEXT:
            lines.append("... (cut; the whole traceback is in the job's log)")
            break
        lines.append(line)
    return [str(ename)[:1000], str(evalue)[:_ERROR_TEXT], lines[::-1]]


def row_record(row: Any) -> JobRecord:
    """The record of a progress row (``add_job``, a queue's run): listed where jobs are.
    An idle row has not started: pending, in a job's words."""
    state = PENDING if row.state == IDLE else row.state
    done, total = row.progress
    started, finished = row.started, row.finished
    return JobRecord(
        id=row.id,
        name=row.name,
        kind=row.kind,
        state=state,
        progress=[done, total],
        status=row.status,
        started=started.isoformat() if started else None,
        finished=finished.isoformat() if finished else None,
        finished_ts=finished.timestamp() if finished else None,
        elapsed=row.elapsed,
        reason=row.reason,
        owner=_store.owner_tag(),
        owner_pid=os.getpid(),
        notebook=os.environ.get("JPY_SESSION_NAME") or None,
        can_stop=row.can_stop,
        history=list(row.history),
        report=row.report,
    )


def call_record(call: Any) -> JobRecord:
    """The record of a ``bg()`` call: calls are read where jobs are (a call has no
    statements, so no progress or section; its results are its return value, never
    merged, so no merge report)."""
    state = call.state
    done = state in FINAL_STATES
    status = (call.ended_status() or {}) if done else {}
    ended = status.get("ended") if isinstance(status.get("ended"), (int, float)) else None
    started = call.started
    pids = call.pids()
    at = started.isoformat()
    history = [
        {"event": "submit", "state": PENDING, "at": at, "reason": ""},
        {"event": "run", "state": RUNNING, "at": at, "reason": ""},
    ]
    if done and ended is not None:
        # A call runs from its start: its story is its start and, once over, its end.
        history.append(
            {"event": event_of(state), "state": state, "at": _iso(ended), "reason": call.reason}
        )
    return JobRecord(
        id=call.id,
        name=call.name,
        kind="call",
        state=state,
        started=at,
        finished=None if ended is None else _iso(ended),
        finished_ts=ended,
        elapsed=(ended - started.timestamp()) if ended is not None else None,
        reason=call.reason if done else "",
        exit_code=call.exit_code,
        log_path=str(call.folder / "stdout"),
        owner=None if call.detached else _store.owner_tag(),
        owner_pid=None if call.detached else os.getpid(),
        host_pid=pids.get("supervisor") if call.detached else None,
        host_id=pids.get("supervisor_id") if call.detached else None,
        pid=pids.get("pid"),
        detached=call.detached,
        notebook=os.environ.get("JPY_SESSION_NAME") or None,
        history=history,
        resources=call.resources,
        usage=call.usage,
    )


def write_call_record(call: Any) -> None:
    """Write a call's record; a store that refuses it costs the call nothing."""
    try:
        _store.write_json(call.folder / "state.json", call_record(call).to_json())
    except OSError:
        pass


def _iso(stamp: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(stamp).astimezone().isoformat()


class RecordWriter:
    """Keeps a job's record current: at most every ``interval`` seconds while it runs, at
    once when its state changes. A write the store refuses is said once in the job's log,
    never raised; the next write that succeeds says the record is current again."""

    def __init__(
        self,
        job: Any,
        interval: float = 0.25,
        log: IO[str] | None = None,
        record: Callable[[Any], JobRecord] | None = None,
        folder: Path | None = None,
    ) -> None:
        self.job = job
        # What the record says of ``job`` (a job's, or a progress row's), and where it goes.
        self.record = record or record_of
        self.folder = folder or job.folder
        self.interval = interval
        self.log = log
        self.failing = ""
        self._last = 0.0
        self._last_state = ""
        self.dirty = False
        self._writing = threading.Lock()

    def __call__(self, job: Any) -> None:
        # An ended job changes once more at most (its merge report): written at once,
        # since no driver is left to flush it.
        if job.state == self._last_state and not self.failing and not job.done:
            self.dirty = True  # written by ``flush`` once the interval has passed
            self.flush()
            return
        self.write()

    def flush(self) -> None:
        """Write what changed since the last write, once ``interval`` has passed; the
        job's driver calls it as it waits, so the last change is never left unwritten."""
        if self.dirty and time.monotonic() - self._last >= self.interval:
            self.write()

    def write(self) -> bool:
        """Write the record now; False when the store refused it."""
        job = self.job
        try:
            # The driver's thread and the notebook's (a merge's report) both write: the
            # record is read and written under one lock, so the last written is the newest.
            with self._writing:
                self._last, self._last_state, self.dirty = time.monotonic(), job.state, False
                _store.write_json(self.folder / "state.json", self.record(job).to_json())
        except (StoreError, OSError) as exc:
            if not self.failing:
                self.say(
                    f"the job's record cannot be updated: {exc}. The job keeps running; "
                    "its record is written again once the store can be written"
                )
            self.failing = str(exc)
            return False
        if self.failing:
            self.failing = ""
            self.say("the store can be written again; the job's record is current")
        return True

    def say(self, line: str) -> None:
        if self.log is None:
            return
        try:
            self.log.write(f"\n[jupyter_bgjobs: {line}]\n")
            self.log.flush()
        except (OSError, ValueError):
            pass


def open_log_for_notes(path: Path) -> IO[str] | None:
    """The job's log opened for the writer's notes, while it can still be opened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return None
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


def settle_orphan(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    """A record that says running although its owner has ended: the job ended with its
    notebook's kernel. Says so (and writes it into the record when the store allows)."""
    if record.get("state") in FINAL_STATES or record.get("detached"):
        return record
    owner = record.get("owner")
    if not isinstance(owner, str) or not _store.owner_gone(owner):
        return record
    settled = dict(record, state="cancelled", reason=record.get("reason") or KERNEL_ENDED)
    if not settled.get("finished_ts"):
        settled["finished_ts"] = _store.newest_mtime(folder)
    if not settled.get("finished"):
        import datetime as dt

        try:
            ended = dt.datetime.fromtimestamp(settled["finished_ts"]).astimezone()
        except (OverflowError, OSError, ValueError):  # no time: it ended when last changed
            settled["finished_ts"] = _store.newest_mtime(folder)
            ended = dt.datetime.fromtimestamp(settled["finished_ts"]).astimezone()
        settled["finished"] = ended.isoformat()
        started = settled.get("started")
        if isinstance(started, str):
            try:
                begun = dt.datetime.fromisoformat(started).timestamp()
                settled["elapsed"] = max(0.0, settled["finished_ts"] - begun)
            except ValueError:
                pass
    try:
        if not _store.read_only_reason(folder):
            _store.write_json(folder / "state.json", settled)
    except OSError:
        pass
    return settled
