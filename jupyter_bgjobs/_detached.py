"""Detached jobs: started from a notebook, run by a host process of their own, read back
from the store by any notebook or terminal, before or after a kernel restart."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import _store
from ._errors import StoreError, WaitTimeout
from ._handle import WholeJob
from ._inside import procs as _procs
from ._record import PLAN_FIELDS, JobRecord, attempts_field, not_saved, recorded_reason
from ._states import DAMAGED, FINAL_STATES, ErrorInfo


class DetachedJob(WholeJob):
    """A job read from its record in the store: one handle for every job not driven by
    this process. Detached (the default): its host runs apart from this process. Attached
    (``detached=False``): another process (another notebook, an earlier kernel) ran it;
    its results went to that notebook, and a record that still says running although its
    notebook's kernel has ended is a job that ended with that kernel (``cancelled``).

    It reads like a Job: ``name``, ``id``, ``state``, ``progress``, ``section``,
    ``output``, ``log_path``, ``error``, ``history``, ``results`` (a detached job's, loaded
    from the store once it has ended), ``wait()``, ``cancel()``. A record that cannot be
    read makes the state ``damaged``, with ``reason`` saying what is wrong.
    """

    def __init__(self, folder: Path, detached: bool = True) -> None:
        self.folder = folder
        self.detached = detached
        # While a reader looks at the job as one (``frozen``), each file is read once; the
        # first look takes the spec read here.
        self._memo: dict[str, Any] | None = {}
        spec = self.spec_record()
        self._first: dict[str, Any] | None = self._memo
        self._memo = None
        # The folder's name is the id: a spec that claims another id is damage, never a
        # way to shadow that job.
        self.id: str = folder.name
        self.name: str = _store.text_field(spec.get("name")) or self.id
        # What runs: a cell, a script, a call (``bg()``), a progress row or a queue run.
        self.kind: str = (
            _store.text_field(spec.get("job_kind"))
            or ("call" if spec.get("kind") == "call" else "")
            or "cell"
        )
        self.submitted = _store.text_field(spec.get("submitted"))
        self._results: types.SimpleNamespace | None = None
        # True once its results were attached in this process.
        self.merged = False
        # Rows of the Jobs panel listen here; they refresh from the record as it changes.
        self._listeners: list[Callable[[Any], Any]] = []

    @contextlib.contextmanager
    def frozen(self) -> Iterator[DetachedJob]:
        """Read the job as of one moment: inside, each of its files is read once, however
        many properties are asked (a row of the IDE's list asks a dozen)."""
        self._memo, self._first = self._first or {}, None
        try:
            yield self
        finally:
            self._memo = None

    def _remembered(self, key: str, read: Callable[[], Any]) -> Any:
        memo = self._memo
        if memo is None:
            return read()
        if key not in memo:
            memo[key] = read()
        return memo[key]

    def loaded(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """One of the job's records, read (once a look, in ``frozen``) with every check
        of a file we trust: its object and "", or None and what is wrong."""
        return self._remembered(f"file:{name}", lambda: _store.load_json(self.folder / name))  # type: ignore[no-any-return]

    def _file(self, name: str) -> dict[str, Any]:
        return self.loaded(name)[0] or {}

    def record(self) -> dict[str, Any]:
        """The job's state record as stored (``state.json``), checked: empty when it
        cannot be read as one; a running record whose owner has gone says it ended."""

        def read() -> dict[str, Any]:
            record = self._file("state.json")
            # A field of the wrong type would break every property: none is read from it.
            return self._settled({} if _store.check_state(record) else record)

        return self._remembered("record", read)  # type: ignore[no-any-return]

    def _settled(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.detached or not record:
            return record
        from ._state_record import settle_orphan

        return settle_orphan(self.folder, record)

    @property
    def damage(self) -> str:
        """What makes the job's record unreadable, or ""."""

        def load(path: Path) -> tuple[dict[str, Any] | None, str]:
            return self.loaded(path.name)

        return self._remembered("damage", lambda: _store.damage(self.folder, load))  # type: ignore[no-any-return]

    @property
    def state(self) -> str:
        """The job's state; ``died`` when its host ended without finishing it, ``damaged``
        when its record cannot be read."""
        if self.damage:
            return DAMAGED
        record = self.record()
        state = str(record.get("state", "pending"))
        if state in FINAL_STATES or not self.detached:
            return state
        if self._host_known() and not self._host_alive():
            # A host writes the job's end before it exits: one that just ended has.
            ended = str((_store.load_json(self.folder / "state.json")[0] or {}).get("state"))
            return ended if ended in FINAL_STATES else "died"
        return state

    def host_record(self) -> dict[str, Any]:
        """The host as the record names it (``host_pid``, ``host_id``), else as the
        process that started it wrote it in ``host.json`` (``pid``, ``pid_id``)."""
        record = self.record()
        if record.get("host_pid"):
            return {"pid": record.get("host_pid"), "pid_id": record.get("host_id")}
        return self._file("host.json")

    def _host_known(self) -> bool:
        host = self.host_record()
        pid = host.get("pid")
        return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0

    def _host_alive(self) -> bool:
        def ask() -> bool:
            return _store.recorded_alive(
                self.host_record(), "pid", heartbeat=self.folder / "host.json"
            )

        return self._remembered("host_alive", ask)  # type: ignore[no-any-return]

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES or self.state == DAMAGED

    @property
    def progress(self) -> tuple[int, int]:
        done, total = self.record().get("progress", [0, 0])
        return int(done), int(total)

    @property
    def section(self) -> str:
        return str(self.record().get("section", ""))

    @property
    def status(self) -> str:
        return str(self.record().get("status", ""))

    @property
    def elapsed(self) -> float:
        record = self.record()
        started = record.get("started")
        if not started:
            return 0.0
        if record.get("finished"):
            return float(record.get("elapsed") or 0.0)
        return time.time() - dt.datetime.fromisoformat(started).timestamp()

    @property
    def error(self) -> ErrorInfo | None:
        err = self.record().get("error")
        return ErrorInfo(*err) if err else None

    @property
    def reason(self) -> str:
        damage = self.damage
        if damage or not self.detached:
            return damage or recorded_reason(self.record())
        if self.state == "died" and self.record().get("state") not in FINAL_STATES:
            return "its host process ended before the job did"
        return recorded_reason(self.record())

    @property
    def history(self) -> list[dict[str, str]]:
        """The job's story as its record tells it: each transition, when, and for an end
        why (``[]`` for a record that has none)."""
        return [dict(e) for e in self.record().get("history") or []]

    @property
    def log_note(self) -> str:
        """Why the job's log is incomplete (the disk refused some output), or ""."""
        return str(self.record().get("log_note") or "")

    @property
    def log_path(self) -> Path | None:
        """The job's log: ``output.log`` in its folder (a call's: ``stdout``), whatever a
        record says (a record naming another file is not believed)."""
        return self.folder / ("stdout" if self.kind == "call" else "output.log")

    @property
    def output(self) -> str:
        """The last 64 KiB of the job's output log."""
        try:
            with os.fdopen(_store.open_own(self.folder / "output.log"), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 65536))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:  # not written yet, removed, or not the job's
            return ""

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """The end of the job's output log as one stream output (for rows' Output view)."""
        text = self.output
        return [{"output_type": "stream", "name": "stdout", "text": text}] if text else []

    @property
    def output_version(self) -> int:
        """Grows as the job's log grows."""
        try:
            return (self.log_path or self.folder / "output.log").stat().st_size
        except OSError:
            return 0

    @property
    def can_stop(self) -> bool:
        # Another process's attached job is stopped from there.
        return self.detached and not self.done and bool(self.host_record().get("pid_id"))

    def forget(self) -> None:
        """Nothing to forget here: a stored job is the store's (``bgjobs prune``)."""

    def on_change(self, fn: Callable[[Any], Any]) -> None:
        """Call ``fn(job)`` when a reader of this process sees the job change."""
        self._listeners.append(fn)

    def kept(self) -> dict[str, Any]:
        """What the job's host recorded of its results (``results.json``)."""
        return self._file("results.json")

    @property
    def results(self) -> types.SimpleNamespace | None:
        """The names the job created or rebound, loaded from the store once it has ended.

        Raises ``StoreError`` when the saved results cannot be loaded. None for an
        attached job of another process: its results went to its notebook."""
        if self._results is None and self.done and self.detached:
            values = self._load_values()
            if values is not None:
                self._results = types.SimpleNamespace(**values)
        return self._results

    def _results_path(self, kept: dict[str, Any], spec: dict[str, Any]) -> str:
        """Where results.json says the results are: the job's folder, or its own folder in
        shared memory; anywhere else is not believed."""
        from ._inside.kernel.wire import piece_paths
        from ._runtime import is_private

        path = Path(str(kept.get("path")))
        shm = spec.get("shm_dir")
        in_shm = isinstance(shm, str) and str(path.parent) == shm and is_private(shm)
        if path.parent != self.folder and not in_shm:
            raise StoreError(f"results path {path} is not the job's")
        kept.setdefault("pieces", 1)
        # Nothing is unpickled from a file we did not write: each piece must be a file of
        # ours, no link, that nobody else may write.
        for piece in piece_paths(str(path), int(kept["pieces"])):
            os.close(_store.open_own(Path(piece)))
        return str(path)

    def _load_values(self) -> dict[str, Any] | None:
        kept = self.kept()
        try:
            if isinstance(kept.get("path"), str) and kept.get("names"):
                from ._inside.kernel.wire import load_file

                spec = self.spec_record()
                token = str(spec.get("token", ""))
                try:
                    path = self._results_path(kept, spec)
                    values = dict(load_file(path, token, kept["pieces"]))
                except FileNotFoundError:  # moved from shared memory into the folder meanwhile
                    kept = self.kept()
                    path = self._results_path(kept, spec)
                    values = dict(load_file(path, token, kept["pieces"]))
            elif kept or self.state in FINAL_STATES:
                values = {}
            else:
                return None
        except Exception as exc:  # whatever unpickling a damaged file raises
            raise StoreError(
                f"the results of job {self.name!r} cannot be loaded from {self.folder} "
                f"({type(exc).__name__}: {str(exc)[:200]}); the file is damaged or "
                "needs a module this Python lacks"
            ) from None
        import importlib

        for name, module in (kept.get("modules") or {}).items():
            try:
                values[name] = importlib.import_module(module)
            except Exception:
                continue
        return values

    @property
    def notebook(self) -> str:
        """The notebook that ran it (``JPY_SESSION_NAME``), when known."""
        return str(self.record().get("notebook") or "")

    @property
    def resources(self) -> dict[str, Any]:
        """What its kernel used, as its record says (``rss``, ``peak``, ``cpu``,
        ``cpu_seconds``; empty when it was not sampled)."""
        found = self.record().get("resources")
        return dict(found) if isinstance(found, dict) else {}

    @property
    def attempt(self) -> int:
        """The attempt running or run last, of ``attempts`` (``--retries N``: N + 1)."""
        return attempts_field(self.record().get("attempt"))

    attempts = property(lambda self: attempts_field(self.record().get("attempts")))

    @property
    def checkpoint(self) -> dict[str, Any]:
        """Its newest checkpoint, as its record says (empty while it has none)."""
        found = self.record().get("checkpoint")
        return dict(found) if isinstance(found, dict) else {}

    # Where it went on from, for a job that resumed another ("" for none).
    resumed = property(lambda self: _store.text_field(self.record().get("resumed")))

    @property
    def usage(self) -> list[list[float]]:
        """The samples of its life, ``[seconds since start, rss, cpu]``."""
        found = self.record().get("usage")
        return [list(s) for s in found if isinstance(s, list)] if isinstance(found, list) else []

    @property
    def started_from(self) -> tuple[str, str]:
        """The notebook and the id of its cell that started the job ("" where none)."""
        record = self.record()
        return (str(record.get("notebook") or ""), str(record.get("cell_id") or ""))

    @property
    def report(self) -> str:
        """How it ended, in the words of an attached job's report, and what it saved (an
        attached job of another process: the report its notebook wrote)."""
        if not self.detached:
            return self._notebooks_report()
        info = self.kept()
        names = ", ".join(str(n) for n in _list(info.get("names"))) or "no names"
        state = self.state
        how = f"succeeded in {self.elapsed:.1f} s" if state == "succeeded" else state
        text = f"{self.name}: {how.replace('_', ' ')}"
        if self.reason and state != "succeeded":
            text += f"; {self.reason}"
        resumed = _store.text_field(self.record().get("resumed"))
        if resumed:
            text += f"; {resumed}"
        text += f"; saved {names}"
        missing = not_saved(info)
        if missing:
            text += "; not saved: " + ", ".join(missing)
        return text

    def now(self) -> JobRecord:
        """The job's record as this handle judges it now: its stored record, with the
        state, times and reason its processes say (a host that died makes it died)."""
        stored = self.record()
        done, total = self.progress
        return JobRecord(
            **{k: v for k, v in stored.items() if k in _RECORD_FIELDS},
            id=self.id,
            name=self.name,
            kind=self.kind,
            state=self.state,
            progress=[done, total],
            section=self.section,
            status=self.status,
            elapsed=self.elapsed,
            where=_store.text_field(stored.get("where")) or "local",
            detached=bool(self.detached),
            reason=self.reason,
            log_note=self.log_note,
            report=self.report if self.done else "",
        )

    # -- what a Job has too --------------------------------------------------------------
    def _notebooks_report(self) -> str:
        merged = self.record().get("report")
        if isinstance(merged, str) and merged:
            return merged if merged.startswith(self.name) else f"{self.name}: {merged}"
        if not self.done:
            return ""
        if self.state == "succeeded":
            return f"{self.name}: succeeded; its results merge into its notebook there"
        from ._merge import ended_on_its_way

        err = self.error
        why = self.reason or (f"{err.ename}: {err.evalue}" if err and err.ename else "")
        return ended_on_its_way(self.name, self.state, self.progress, why)

    def spec_record(self) -> dict[str, Any]:
        """The job's spec as its notebook stored it (``spec.json``), checked."""
        return self._file("spec.json")

    @property
    def shipped(self) -> list[str]:
        """The names sent to the job."""
        return [n for n in _list(self.spec_record().get("shipped")) if isinstance(n, str)]

    @property
    def skipped(self) -> list[dict[str, str]]:
        """The names that did not travel, either way, with type and reason."""
        out = [dict(s, direction="in") for s in _list(self.spec_record().get("not_shipped"))]
        out += [dict(s, direction="out") for s in _list(self.kept().get("not_saved"))]
        return [s for s in out if isinstance(s, dict)]

    @property
    def mutated(self) -> list[str]:
        """Names the job changed in place."""
        return [n for n in _list(self.kept().get("mutated")) if isinstance(n, str)]

    @property
    def started(self) -> dt.datetime | None:
        return _when(self.record().get("started"))

    @property
    def finished(self) -> dt.datetime | None:
        return _when(self.record().get("finished"))

    @property
    def exit_code(self) -> int | None:
        code = self.record().get("exit_code")
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    @property
    def kernel_pid(self) -> int | None:
        pid = self.record().get("kernel_pid")
        return pid if isinstance(pid, int) and not isinstance(pid, bool) else None

    def exception(self) -> Any:
        """The error matching how the job ended, or None if it succeeded or still runs."""
        from ._errors import (
            JobCancelledError,
            JobFailedError,
            JobTimeoutError,
            KernelDiedError,
        )

        cls = {
            "failed": JobFailedError,
            "cancelled": JobCancelledError,
            "timed_out": JobTimeoutError,
            "died": KernelDiedError,
        }.get(self.state)
        if cls is None:
            return None
        err = self.error or ErrorInfo("", "", [])
        message = f"job {self.name!r} {self.state.replace('_', ' ')}"
        message += (
            f": {self.reason}"
            if self.reason
            else (f": {err.ename}: {err.evalue}" if err.ename else "")
        )
        return cls(
            message,
            job_name=self.name,
            state=self.state,
            ename=err.ename,
            evalue=err.evalue,
            traceback=err.traceback,
            output=self.output[-5000:],
        )

    def wait(self, timeout: float | None = None) -> DetachedJob:
        """Block until the job ends (polling its record); returns the job. Raises
        ``WaitTimeout`` if ``timeout`` seconds pass first (the job goes on)."""
        from . import _checks

        if timeout is not None:
            timeout = _checks.number("timeout", timeout, unit="seconds")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {self.name!r} is still {self.state} after {timeout} s")
            time.sleep(0.1)
        return self

    def cancel(self) -> bool:
        """Ask the job's host to cancel it; returns False when it has already ended, or
        when the process its record names is not its host any more (its pid reused), or
        for an attached job of another process (it is stopped from there)."""
        if self.done or not self.detached:
            return False
        tag = self.host_record().get("pid_id")
        return isinstance(tag, str) and _procs.signal_identified(tag, signal.SIGTERM)

    def resume(self, ns: dict[str, Any] | None = None) -> Any:
        """Run it again from where it stopped (``Job.resume``); the new job, detached for
        a detached job. ``ns``: names its checkpoint lacks (default: the notebook's)."""
        return resumer[0](self, ns)

    def add_done_callback(self, fn: Callable[[DetachedJob], Any]) -> None:
        """Call ``fn(job)`` from a helper thread once the job has ended."""

        def watch() -> None:
            self.wait()
            fn(self)

        threading.Thread(target=watch, name=f"bgjob-watch-{self.name}", daemon=True).start()

    def __repr__(self) -> str:
        done, total = self.progress
        kind = "DetachedJob" if self.detached else "RecordedJob"
        return f"<{kind} {self.name} ({self.id}) {self.state} {done}/{total}>"


def _when(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _list(value: Any) -> list[Any]:
    """A record's list, or none for a field of another type (a damaged record)."""
    return value if isinstance(value, list) else []


# Detached jobs this process started, by id.
# What a handle's record takes from the stored one as it is (the rest it judges itself).
_RECORD_FIELDS = frozenset(
    {
        "started",
        "finished",
        "finished_ts",
        "notebook",
        "kernel",
        "timings",
        "can_stop",
        "cell_id",
        "resources",
        "usage",
        "memory_limit",
        *PLAN_FIELDS,
    }
)

started_here: dict[str, DetachedJob] = {}
# How a stored job is resumed: set by the layer that starts jobs (``_launch``).
resumer: list[Callable[[DetachedJob, dict[str, Any] | None], Any]] = []
# The ids of the notebook's objects as each of them started: a later merge here tells the
# notebook's own changes from the job's, as for an attached job.
notebook_ids: dict[str, dict[str, int]] = {}


def find(name_or_id: str) -> DetachedJob | None:
    """The detached job of that name or id, None when there is none; ``StoreError`` when
    its entry is damaged."""
    folder = _store.find(name_or_id)
    if folder is None:
        return None
    check_sound(folder, name_or_id)
    spec = _store.read_json(folder / "spec.json") or {}
    if spec.get("kind") != "job":
        return None
    return started_here.get(folder.name) or DetachedJob(folder)


def check_sound(folder: Path, name_or_id: str) -> None:
    """Raise ``StoreError`` naming what is wrong when a store entry is damaged."""
    damage = _store.damage(folder)
    if damage:
        raise StoreError(
            f"the job entry {name_or_id!r} ({folder}) is damaged: {damage}; "
            "`bgjobs prune` removes it"
        )
