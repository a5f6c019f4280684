"""The rows of the IDE's Jobs pane, read from the store, and the one watcher per server
that reads them for every open page.

A row is read whole (each of its files once, ``DetachedJob.frozen``) only when one of its
files changed; an unchanged ended row is kept as it is, an unchanged running one costs a
look at whether its process still runs. The watcher reads the store once per tick, off
the event loop, and hands the same encoded change to every page: the cost grows with the
jobs, not with jobs times pages.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _store
from .._detached import DetachedJob
from .._errors import StoreError
from .._record import JobRecord
from .._states import DAMAGED, ENDED_STATES

# What a row is read from: it changes only when one of these files does (or its process
# ends, for a running one).
_ROW_FILES = (
    "spec.json",
    "state.json",
    "host.json",
    "results.json",
    "results.snap",
    "status.json",
)
# How often the watcher looks at the store, and how long a page waits for news before it
# is sent a comment that keeps proxies from closing the stream.
PERIOD = 0.5
KEEP_ALIVE = 15.0
# A page that has not taken this many events is too slow: it is let go, and reconnects
# to a stream that starts with every row again.
_BACKLOG = 64

Stamp = tuple[tuple[int, int, int], ...]


def _stamp(folder: Path) -> Stamp:
    out = []
    for name in _ROW_FILES:
        try:
            st = os.lstat(folder / name)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0, -1))
    return tuple(out)


def _relative(path: Any, root: str) -> str | None:
    """A notebook's path as the IDE names it (relative to the server's root), if under it."""
    if not isinstance(path, str) or not path:
        return None
    if not os.path.isabs(path):
        return path
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return None
    return None if rel.startswith("..") else rel.replace(os.sep, "/")


def summary(job: DetachedJob, root: str) -> dict[str, Any]:
    """What a row of the IDE's Jobs panel shows of a job."""
    record = job.now()
    return record.row(notebook_path=_relative(record.notebook, root))


def damaged_row(job: DetachedJob, exc: BaseException) -> dict[str, Any]:
    """The row of a job whose record could not be read as one: listed, and removable."""
    why = f"its record cannot be read: {type(exc).__name__}: {str(exc)[:200]}"
    return JobRecord.damaged(job.id, job.name, why, job.kind, bool(job.detached)).row()


def state_of(job: DetachedJob) -> str:
    """A job's state; ``damaged`` for one whose record cannot be read as one."""
    try:
        return job.state
    except Exception:
        return DAMAGED


def handle(folder: Path, detached: bool) -> DetachedJob:
    """A fresh handle of the job in ``folder``: rows never share one with other readers."""
    return DetachedJob(folder, detached=detached)


def job_row(folder: Path, detached: bool, root: str) -> dict[str, Any]:
    """One job's row, each of its files read once."""
    job = handle(folder, detached)
    with job.frozen():
        return summary(job, root)


@dataclass
class _Kept:
    stamp: Stamp
    row: dict[str, Any]
    key: str  # the row as JSON without its clock: what tells a change
    started: float | None
    alive: Any  # how to ask whether a running row's process still runs


def _started_ts(row: dict[str, Any]) -> float | None:
    try:
        return dt.datetime.fromisoformat(row["started"]).timestamp()
    except (TypeError, ValueError, KeyError):
        return None


class Rows:
    """Every job's row, read again only where its files changed (thread-safe)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()

    def _folders(self) -> list[tuple[Path, bool]]:
        store = _store.store_path()
        found = [(f, False) for f in _store.attached_folders()]
        try:
            entries = list(os.scandir(store))
        except OSError:
            entries = []
        for entry in entries:
            if not _store.ATTACHED_NAME.fullmatch(entry.name):  # ids are 8 hex digits
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    found.append((Path(entry.path), True))
            except OSError:
                continue
        return found

    def read(self) -> dict[str, tuple[dict[str, Any], str]]:
        """Every job's row and its change key, by id. ``StoreError`` when the store is
        not this user's alone."""
        with self._lock:
            return self._read()

    def _read(self) -> dict[str, tuple[dict[str, Any], str]]:
        out: dict[str, tuple[dict[str, Any], str]] = {}
        seen = set()
        now = time.time()
        for folder, detached in self._folders():
            seen.add(folder.name)
            stamp = _stamp(folder)
            kept = self._kept.get(folder.name)
            if kept is not None and kept.stamp == stamp and self._still(kept):
                row = kept.row
                if kept.started is not None and row["state"] not in _ENDED:
                    row = dict(row, elapsed=max(0.0, now - kept.started))
                out[folder.name] = (row, kept.key)
                continue
            fresh = self._take(folder, detached, stamp)
            if fresh is not None:
                out[folder.name] = fresh
        for gone in set(self._kept) - seen:
            del self._kept[gone]
        return out

    def _still(self, kept: _Kept) -> bool:
        """Whether a kept row still holds: an ended one does; a running one while the
        process it depends on runs."""
        if kept.row["state"] in _ENDED:
            return True
        try:
            return bool(kept.alive())
        except OSError:
            return False

    def _take(
        self, folder: Path, detached: bool, stamp: Stamp
    ) -> tuple[dict[str, Any], str] | None:
        job = handle(folder, detached)
        try:
            with job.frozen():
                # Each file read once a look: the spec read here is the one the row uses.
                spec, _ = job.loaded("spec.json")
                if spec is None and _store.being_made(folder):
                    return None  # its spec comes next: looked at again on the next read
                row = summary(job, self.root)
                alive = _liveness(job)
        except FileNotFoundError:  # removed while read: gone from the next look
            return None
        except Exception as exc:  # a record odd in a way no check foresaw: still a row
            row, alive = damaged_row(job, exc), None
        key = json.dumps({k: v for k, v in row.items() if k != "elapsed"}, default=str)
        self._kept[folder.name] = _Kept(stamp, row, key, _started_ts(row), alive)
        return row, key


_ENDED = (*ENDED_STATES, DAMAGED)


def _liveness(job: DetachedJob) -> Any:
    """How to ask, later, whether a running job's row still holds: its host (detached)
    or its notebook's kernel (attached) still runs."""
    record = job.record()
    if job.detached:
        host = job.host_record()
        heartbeat = job.folder / "host.json"
        return lambda: _store.recorded_alive(host, "pid", heartbeat=heartbeat)
    owner = record.get("owner")
    if isinstance(owner, str) and owner:
        return lambda: not _store.owner_gone(owner)
    return lambda: True


class Watcher:
    """The server's one reader of the store for its event streams: while any page
    listens, it reads every row once per tick and sends each page the same change."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows
        self._pages: set[asyncio.Queue[str | None]] = set()
        self._current: dict[str, tuple[dict[str, Any], str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._looking = asyncio.Lock()
        self.problem = ""

    async def subscribe(self) -> asyncio.Queue[str | None]:
        """A queue of this page's events, the first of which lists every job as it is
        now (what changed since the last look goes to the other pages first)."""
        await self._tick()
        page: asyncio.Queue[str | None] = asyncio.Queue()
        rows = self._current or {}
        page.put_nowait(_event(ordered(r for r, _ in rows.values()), [], self.problem))
        self._pages.add(page)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return page

    def unsubscribe(self, page: asyncio.Queue[str | None]) -> None:
        self._pages.discard(page)

    async def _tick(self) -> None:
        """Look at the store once and send what changed to every page."""
        async with self._looking:  # one look at a time: rows never go back in time
            problem = self.problem
            changed, removed = await self._look()
            if not (changed or removed or problem != self.problem):
                return
            event = _event(changed, removed, self.problem)
            for page in list(self._pages):
                if page.qsize() >= _BACKLOG:
                    self._pages.discard(page)
                    page.put_nowait(None)  # too slow: let go, it reconnects
                else:
                    page.put_nowait(event)

    async def _look(self) -> tuple[list[dict[str, Any]], list[str]]:
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(None, self.rows.read)
            self.problem = ""
        except StoreError as exc:
            rows = {}
            self.problem = str(exc)
        except Exception as exc:  # a fault of ours must not end every page's stream
            rows = self._current or {}
            self.problem = f"the job store cannot be read: {type(exc).__name__}: {exc}"
        before = self._current or {}
        changed = [r for k, (r, key) in rows.items() if k not in before or before[k][1] != key]
        removed = [k for k in before if k not in rows]
        self._current = rows
        return changed, removed

    async def _run(self) -> None:
        try:
            while self._pages:
                await asyncio.sleep(PERIOD)
                if self._pages:
                    await self._tick()
        finally:
            # Nobody listens: the next page starts from a fresh look.
            self._current = None


def ordered(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the order they started (jobs not started yet last), then by id."""
    return sorted(rows, key=lambda r: (r.get("started") is None, str(r.get("started")), r["id"]))


def _event(rows: list[dict[str, Any]], removed: list[str], problem: str) -> str:
    body: dict[str, Any] = {"jobs": rows, "removed": removed}
    if problem:
        body["problem"] = problem
    return f"data: {json.dumps(body, default=str)}\n\n"
