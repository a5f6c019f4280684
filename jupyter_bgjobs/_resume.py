"""Resuming a job where it stopped: the newest checkpoint that still fits its code, the
statement to go on from, the words that say so, and the job that does it.

A job with ``--checkpoint`` keeps, in its folder, its namespace as it was where its newest
complete section ended (``_inside.kernel.checkpoint``). A job that resumes it runs in a
fresh kernel that loads that checkpoint and starts at the first statement of the next
section. A resumed job records the checkpoints further back (the job it resumed, and
that job's own), so that after an edit of an earlier section the newest checkpoint from
before that section is found.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import BgJobError, JobSpecError, JobStateError
from ._inside.kernel.cell import plan
from ._inside.kernel.checkpoint import CHECKPOINT_FILE, section_runs
from ._inside.kernel.wire import MAX_HEADER, SnapshotError, header_of
from ._spec import JobSpec, this_cell, transformed
from ._states import ENDED_ON_ITS_WAY
from ._trust import NotOurs, open_own

# The ends a job can be resumed from: those that can come before its last statement.
RESUMABLE = ENDED_ON_ITS_WAY
# How many checkpoints further back a resumed job remembers.
_CHAIN = 16


@dataclass
class Checkpoint:
    """A checkpoint on disk, as its header says: where it was taken, and what it holds."""

    path: str
    token: str
    note: dict[str, Any]
    nbytes: int

    @property
    def sections(self) -> list[list[str]]:
        """The sections it completed: ``[name, digest]`` each."""
        done = self.note.get("sections")
        return [list(s) for s in done] if isinstance(done, list) else []


def read_checkpoint(path: str | Path) -> Checkpoint | None:
    """The checkpoint at ``path`` when there is one we wrote (a job folder's checkpoint
    file in the store, a file of ours, opened without following a link, its header read
    within a bound); None otherwise."""
    if not _in_a_job_folder(Path(path)):
        return None
    try:
        fd = open_own(Path(path))
    except (OSError, NotOurs):
        return None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, min(size, MAX_HEADER + 64), 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        header, _ = header_of(head)
    except SnapshotError:
        return None
    note, token = header.get("note"), header.get("token")
    if not isinstance(note, dict) or not isinstance(token, str):
        return None
    return Checkpoint(str(path), token, note, size)


def _in_a_job_folder(path: Path) -> bool:
    """Whether ``path`` names a checkpoint in a job's folder of this store (a resumed
    job's spec lists where it may go on from: nothing else is read through it)."""
    from . import _store

    folder = path.parent
    if path.name != CHECKPOINT_FILE or not _store.ATTACHED_NAME.fullmatch(folder.name):
        return False
    try:
        roots = {_store.job_root_path(), _store.store_path()}
    except (OSError, BgJobError):  # a store not ours: nothing in it is read
        return False
    return folder.parent in roots and folder.is_dir() and not folder.is_symlink()


def checkpoint_of(folder: Path) -> Path:
    """Where the job of ``folder`` keeps its newest checkpoint."""
    return folder / CHECKPOINT_FILE


def sections_of(code: str) -> tuple[list[tuple[str, str, int, int]], int]:
    """The code's sections, ``(name, digest, first statement, end)``, and how many
    statements it has, as a job's kernel will read it."""
    try:
        steps = plan(transformed(code))
    except SyntaxError:
        return [], 0
    return section_runs(steps), len(steps)


@dataclass
class Plan:
    """Where a resumed job goes on from, and the words its report says it in."""

    start: int
    checkpoint: Checkpoint | None
    note: str

    def where(self) -> dict[str, Any]:
        """The checkpoint's file and token ("" for none) and the statement to start at."""
        ck = self.checkpoint
        return {"path": ck.path if ck else "", "token": ck.token if ck else "", "start": self.start}


def _label(name: str) -> str:
    return name or "(before the first section)"


def choose(name: str, code: str, candidates: list[str], old_code: str | None = None) -> Plan:
    """The newest of ``candidates`` (checkpoint files, newest first) whose completed
    sections are those of ``code`` unchanged, and the statement after them. ``old_code``,
    the code of the job resumed, tells which section an edit changed."""
    runs, total = sections_of(code)
    changed, first_changed = "", -1
    if old_code is not None and old_code != code:
        old, _ = sections_of(old_code)
        for j, run in enumerate(runs):
            if j >= len(old) or run[:2] != old[j][:2]:
                changed, first_changed = f"section {_label(run[0])} changed", j
                break
    found = [c for c in (read_checkpoint(p) for p in candidates) if c is not None]
    for ck in found:
        done = ck.sections
        k = len(done)
        if not 0 < k < len(runs) or any(list(runs[j][:2]) != done[j] for j in range(k)):
            continue
        start = runs[k][2]
        # The statements before the first section have no name to say.
        skipped = ", ".join(r[0] for r in runs[:k] if r[0]) or f"statements 1-{start}"
        note = (
            f"resumed from section {_label(runs[k][0])}, statement {start + 1}/{total}; "
            f"skipped {skipped}"
        )
        return Plan(start, ck, f"{changed}; {note}" if changed else note)
    if not found:
        why = f"{name} has no checkpoint (start it with --checkpoint to resume from its sections)"
    elif not any(r[0] for r in runs[:first_changed]):
        why = changed  # nothing named before it: the start is where it runs from
    elif changed:
        why = f"{changed}, and no checkpoint from before it is kept"
    else:
        why = f"no checkpoint of {name} fits its code"
    return Plan(0, None, f"{why}: ran from the start")


def chain_of(spec: JobSpec, folder: Path | None) -> list[str]:
    """The checkpoints a resume of this job may go on from, newest first: its own, then
    those the job it resumed could."""
    own = [str(checkpoint_of(folder))] if folder is not None else []
    further = spec.resume.get("chain") if isinstance(spec.resume, dict) else None
    return [*own, *[p for p in further or [] if isinstance(p, str)]][:_CHAIN]


def resume_of(spec: JobSpec, job_id: str, folder: Path | None, code: str) -> dict[str, Any]:
    """What a job that resumes the job ``job_id`` (of ``spec``, kept in ``folder``) needs:
    the newest checkpoint that fits ``code`` (its own, or edited), the statement to go
    on from, the words its report says, and the checkpoints further back."""
    chain = chain_of(spec, folder)
    chosen = choose(spec.name, code, chain, old_code=spec.code)
    return {"from": job_id, **chosen.where(), "note": chosen.note, "chain": chain}


def for_runner(
    resume: dict[str, Any], token: str, remote: bool, kind: str = "resume"
) -> dict[str, Any]:
    """What the job's kernel needs to load a snapshot over its seed (``kind``: the
    checkpoint it goes on from, or ``after``, what the jobs it waited for made): its file
    and token and the statement to start at; to a kernel that shares no files with us, it
    is sent (under the job's ``token``)."""
    given = {k: resume.get(k) for k in ("path", "token", "start")}
    if remote and given["path"]:
        given.update(transport="stream", key=f"{token}-{kind}")
    return given


def resume_spec(spec: JobSpec, job_id: str, folder: Path | None) -> JobSpec:
    """A spec that resumes the job ``job_id`` (of ``spec``, kept in ``folder``) with its
    code and options, under the cell that started it."""
    resumed = dataclasses.replace(spec, notify=list(spec.notify))
    resumed.cell_id = spec.cell_id or this_cell()
    resumed.resume = resume_of(spec, job_id, folder, spec.code)
    return resumed


def fresh_start(name: str) -> dict[str, Any]:
    """``--resume`` with no earlier job of that name: the job runs from the start."""
    note = f"no earlier job named {name} to resume: ran from the start"
    return {"from": "", "path": "", "token": "", "start": 0, "note": note, "chain": []}


def check_resumable(name: str, state: str, done: bool) -> None:
    """``JobStateError`` for a job that has not ended, or ended as nothing to resume."""
    if not done:
        raise JobStateError(
            f"job {name!r} is still {state}; wait() for it or cancel() it before resuming it"
        )
    if state not in RESUMABLE:
        raise JobStateError(
            f"job {name!r} {state}: there is nothing to resume; run it again instead "
            f"(resume takes a job that {', '.join(s.replace('_', ' ') for s in RESUMABLE)})"
        )


def stored_spec(folder: Path, record: dict[str, Any], code: str | None) -> JobSpec:
    """The spec of a job from its stored record and code, to resume it from the store."""
    if code is None:
        raise JobSpecError(
            f"the job {record.get('name', folder.name)!r} has no code file to resume"
        )
    return JobSpec.from_json({**record, "code": code})


class Incoming:
    """A checkpoint arriving over the kernel protocol from a kernel that shares no files
    with us (a gateway's): its chunks land in a file beside the job's checkpoint, which
    replaces it once every chunk is in and the whole matches its digest."""

    def __init__(self, folder: Path) -> None:
        self.target = checkpoint_of(folder)
        self.partial = str(self.target) + ".partial"
        self.box: Any = None
        self.seq = -1

    def chunk(self, event: dict[str, Any], buffers: list[Any]) -> None:
        from ._inside.kernel.chunks import Inbox

        if event.get("checkpoint") != self.seq or self.box is None:
            self.drop()
            self.seq = int(event.get("checkpoint", 0))
            self.box = Inbox(int(event["nbytes"]), int(event["chunk"]), self.partial)
        self.box.put(int(event["seq"]), buffers)

    def sent(self, event: dict[str, Any]) -> str:
        """The checkpoint is whole: kept as the job's newest. Returns "" or why not."""
        from ._inside.kernel.wire import SnapshotError

        box, self.box = self.box, None
        if box is None or event.get("checkpoint") != self.seq:
            self.drop()
            return "its chunks did not arrive"
        try:
            box.check(str(event.get("sha256", "")))
        except SnapshotError as exc:
            box.close()
            self.drop()
            return str(exc)
        box.close()
        fd = os.open(self.partial, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.partial, self.target)
        return ""

    def drop(self) -> None:
        if self.box is not None:
            self.box.close()
            self.box = None
        try:
            os.unlink(self.partial)
        except OSError:
            pass
