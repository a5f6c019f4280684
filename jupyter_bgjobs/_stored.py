"""Jobs read from their records: attached jobs of any process (another notebook, an
earlier kernel) beside the store's detached ones; what the IDE's Jobs pane and
``jobs(all=True)`` list; and the store's entries as rows and a table (``bgjobs list``,
``%bgjobs``, prune)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _store
from ._detached import DetachedJob, check_sound, started_here
from ._record import JobRecord
from ._states import DAMAGED


def attached_jobs() -> list[DetachedJob]:
    """The attached jobs of any process with a record under the job root."""
    found = []
    for folder in _store.attached_folders():
        spec = _store.read_json(folder / "spec.json")
        # A folder whose spec cannot be read is listed too, as damaged (unless it is
        # being made right now); calls are not jobs.
        if (spec is None and not _store.being_made(folder)) or (spec or {}).get("kind") == "job":
            found.append(DetachedJob(folder, detached=False))
    return found


def recorded_jobs() -> list[DetachedJob]:
    """Every job with a record under the job root: attached ones of any process and the
    store's detached ones, each a ``DetachedJob`` (attached ones with ``detached=False``)."""
    return [*attached_jobs(), *detached_jobs()]


def detached_jobs() -> list[DetachedJob]:
    """The store's detached jobs (this process's own handles where it started them)."""
    found = []
    for folder in _store.entries():
        spec = _store.read_json(folder / "spec.json")
        # An entry whose spec cannot be read is listed as a damaged job, so it can be seen
        # and removed; calls are not jobs.
        if spec is None or spec.get("kind") == "job":
            found.append(started_here.get(folder.name) or DetachedJob(folder))
    return found


def find_recorded(name_or_id: str) -> DetachedJob | None:
    """The attached job of another process (or an earlier kernel) with this id, or the
    newest with this name; ``StoreError`` when its record is damaged."""
    match: DetachedJob | None = None
    for job in attached_jobs():
        if job.id == name_or_id:
            match = job
            break
        if job.name == name_or_id and (match is None or job.submitted >= match.submitted):
            match = job
    if match is not None:
        check_sound(match.folder, name_or_id)
    return match


def earlier_jobs() -> list[DetachedJob]:
    """The jobs this notebook's earlier kernels ran (same ``JPY_SESSION_NAME``), from
    their records: after a restart, ``%bgjobs`` shows them ended, with their logs."""
    session = os.environ.get("JPY_SESSION_NAME")
    if not session:
        return []
    me = _store.owner_tag()
    return [j for j in attached_jobs() if j.notebook == session and j.record().get("owner") != me]


def describe(folder: Path) -> JobRecord:
    """The record of a store entry, job or call, as its handle judges it now; a damaged
    one is described as such, with the reason, and never raises."""
    spec = _store.read_json(folder / "spec.json") or {}
    name = _store.text_field(spec.get("name")) or folder.name
    kind = "call" if spec.get("kind") == "call" else _store.text_field(spec.get("job_kind"))
    damage = _store.damage(folder)
    if not damage:
        try:
            return _describe(folder, spec, name)
        except Exception as exc:  # a record odd in a way no check foresaw: still a row
            damage = f"{type(exc).__name__}: {exc}"
    return JobRecord.damaged(folder.name, name, damage, kind or "cell", detached=True)


def _describe(folder: Path, spec: dict[str, Any], name: str) -> JobRecord:
    if spec.get("kind") == "call":
        from ._calls import BgCall
        from ._state_record import call_record

        call = BgCall(folder, name, detached=True)
        call.settle_record()
        return call_record(call)
    job = DetachedJob(folder)
    record = job.now()
    if record.state == "died" and not record.finished_ts:
        record.finished_ts = _store.newest_mtime(folder)
    return record


def table() -> str:
    """The store as a plain-text table (``%bgjobs`` and ``bgjobs list``)."""
    from ._text import clock as clock_text
    from ._text import text_table

    rows = [describe(f) for f in _store.entries()]
    if not rows:
        return "no detached jobs"
    damaged = [r for r in rows if r.state == DAMAGED]
    header = ("name", "id", "kind", "state", "progress", "section", "elapsed")
    body = [
        (
            r.name,
            r.id,
            r.kind,
            r.state,
            "" if r.state == DAMAGED or r.kind == "call" else "{}/{}".format(*r.progress),
            r.section,
            clock_text(r.elapsed) if r.elapsed else "",
        )
        for r in rows
    ]
    text = text_table(header, body)
    for r in damaged:
        text += f"\n{r.id}: damaged: {r.reason}; `bgjobs prune` removes it"
    return text
