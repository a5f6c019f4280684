"""Jobs read from their records: attached jobs of any process (another notebook, an
earlier kernel) beside the store's detached ones; what the IDE's Jobs pane and
``jobs(all=True)`` list; and the store's entries as rows and a table (``bgjobs list``,
``%bgjobs``, prune)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _store
from ._detached import DetachedJob, check_sound, find, notebook_ids, started_here
from ._errors import JobSpecError, JobStateError
from ._record import JobRecord
from ._states import DAMAGED, FINAL_STATES


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


def running_names_of_this_notebook() -> set[str]:
    """The names of the jobs this notebook started from an earlier kernel (or from this
    one, detached) that still run: a new job is named apart from them too."""
    session = os.environ.get("JPY_SESSION_NAME")
    if not session:
        return set()
    names = set()
    for job in detached_jobs():
        try:
            if job.notebook == session and not job.done:
                names.add(job.name)
        except Exception:  # a damaged record names nothing
            continue
    return names


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
    from ._text import usage as usage_text

    rows = [describe(f) for f in _store.entries()]
    if not rows:
        return "no detached jobs"
    damaged = [r for r in rows if r.state == DAMAGED]
    header = ("name", "id", "kind", "state", "progress", "section", "elapsed", "memory")
    body = [
        (
            r.name,
            r.id,
            r.kind,
            r.state,
            "" if r.state == DAMAGED or r.kind == "call" else "{}/{}".format(*r.progress),
            r.section,
            clock_text(r.elapsed) if r.elapsed else "",
            usage_text(r.resources, r.state not in FINAL_STATES),
        )
        for r in rows
    ]
    text = text_table(header, body)
    for r in damaged:
        text += f"\n{r.id}: damaged: {r.reason}; `bgjobs prune` removes it"
    return text


def attach(name_or_id: str, results: str | None = None, ns: dict[str, Any] | None = None) -> str:
    """Merge a detached job's saved results into ``ns`` (the notebook's globals) with the
    merge and conflict report of an attached job; returns the report line.

    ``results``: ``globals``, ``object`` or ``none``; by default what the job was started
    with. A name the notebook has that the job also returns is kept per the job's
    ``--on-conflict`` (``keep``: the job's value goes to ``<name>_results``)."""
    from ._merge import MergeRules, Outcome, merge_results, target_namespace

    job = find(name_or_id)
    if job is None:
        raise JobSpecError(
            f"no detached job named {name_or_id!r}; `%bgjobs` lists the ones in the store"
        )
    if not job.done:  # a damaged one raised in find()
        raise JobStateError(
            f"job {job.name!r} is still {job.state} ({job.progress[0]}/{job.progress[1]}); "
            "attach once it has ended, or job.wait()"
        )
    spec = _store.read_json(job.folder / "spec.json") or {}
    # What the job was started with, as an attached job would have merged them; an
    # explicit ``results`` decides otherwise.
    mode = results or _store.text_field(spec.get("results")) or "globals"
    if mode not in ("globals", "object", "none"):
        raise JobSpecError(f"--results must be globals, object or none, not {mode!r}")
    values = vars(job.results) if job.results is not None else {}
    kept = job.kept()
    outcome = Outcome(
        name=job.name,
        state=job.state,
        progress=job.progress,
        elapsed=job.elapsed,
        rules=MergeRules(
            results=mode,
            results_name=_store.text_field(spec.get("results_name")) or f"{job.name}_results",
            on_conflict=_store.text_field(spec.get("on_conflict")) or "keep",
            on_failure=_store.text_field(spec.get("on_failure")) or "merge",
        ),
        reason=job.reason if job.state != "succeeded" else "",
        error=job.error,
        values=values,
        ns_ids=notebook_ids.get(job.id, {}),
        mutated=[m for m in _store.list_field(kept.get("mutated")) if isinstance(m, str)],
        deleted=[m for m in _store.list_field(kept.get("deleted")) if isinstance(m, str)],
        skipped=[
            dict(s, direction="out")
            for s in _store.list_field(kept.get("not_saved"))
            if isinstance(s, dict)
        ],
        resumed=_store.text_field(job.record().get("resumed")),
    )
    target = ns if ns is not None else target_namespace()
    report = merge_results(outcome, target)
    job.merged = True
    return report
