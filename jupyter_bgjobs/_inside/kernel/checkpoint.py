"""Checkpoints: a job's namespace saved each time one of its sections completes, and
loaded again to resume the job from the next section.

A checkpoint is a snapshot (``wire``) whose header carries a note of where it was taken:
the sections completed (each its name and a digest of its statements), the statement to
go on from, which of the names the job had made or changed by then (the rest are the
notebook's, as it gave them) and which it had deleted, the modules it held (by name), and
what could not be saved. It is one file in the job's folder, written beside it and renamed
over it, so the newest complete checkpoint is the only one there and a half-written one
never is. A kernel that shares no files with the notebook (a gateway's) sends it instead,
in chunks on its iopub channel, and the notebook's side writes it the same way.

Runs on both sides of the kernel boundary (the notebook side reads the sections of a cell
and a checkpoint's note with it): standard library only.
"""

from __future__ import annotations

import ast
import hashlib
import os
import time
import types
from collections.abc import Callable
from typing import Any

from .chunks import Outbox
from .wire import (
    decode,
    encode,
    header_of,
    is_internal_name,
    load_file,
    unlink_quietly,
    write_whole,
)

CHECKPOINT_FILE = "checkpoint.snap"


def section_runs(steps: list[tuple[ast.stmt, str]]) -> list[tuple[str, str, int, int]]:
    """A cell's sections in order, as runs of its statements: (name, digest, first, end).

    The digest is of the statements' syntax trees, so an edit of a comment or of blank
    lines changes no section, while any edit of its code does."""
    runs: list[tuple[str, str, int, int]] = []
    first = 0
    for i in range(1, len(steps) + 1):
        if i < len(steps) and steps[i][1] == steps[first][1]:
            continue
        digest = hashlib.sha256()
        for node, _ in steps[first:i]:
            digest.update(ast.dump(node, include_attributes=False).encode())
        runs.append((steps[first][1], digest.hexdigest()[:16], first, i))
        first = i
    return runs


def save_file(path: str, parts: list[Any]) -> None:
    """Write ``parts`` as the file ``path``, durably and whole or not at all: beside it
    first, flushed to the disk, then renamed over it."""
    partial = path + ".partial"
    try:
        write_whole(partial, parts)
        fd = os.open(partial, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
    except BaseException:
        unlink_quietly(partial)
        raise
    try:  # the rename itself, flushed too: a reboot finds the new file or the old one
        dirfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError:
        pass


class Checkpoints:
    """Takes a job's checkpoints as its runner reaches the start of each next section."""

    def __init__(
        self,
        where: dict[str, Any],
        token: str,
        emit: Callable[..., None],
        publish: Callable[[dict[str, Any], list[Any]], None],
    ) -> None:
        self.where = where
        self.token = token
        self.emit = emit
        self.publish = publish
        self.count = 0

    def take(self, runner: Any, index: int, steps: list[tuple[ast.stmt, str]]) -> None:
        """Save the namespace as it is before statement ``index``, the first of a
        section; a checkpoint that cannot be written is said, and the job goes on."""
        t0 = time.time()
        runs = section_runs(steps)
        done = [r for r in runs if r[3] <= index]
        changed, deleted = runner.changes()
        kernel = runner.kernel_ids
        # What the job was given and what it made, never what its kernel had of its own.
        own = {
            k: v
            for k, v in list(runner.ns.items())
            if not is_internal_name(k) and kernel.get(k) != id(v)
        }
        modules = {k: v.__name__ for k, v in own.items() if isinstance(v, types.ModuleType)}
        values = {k: v for k, v in own.items() if k not in modules}
        note = {
            "job": runner.spec.get("job_id", ""),
            "name": runner.spec.get("name", ""),
            "statement": index,
            "total": len(steps),
            "sections": [[name, digest] for name, digest, _, _ in done],
            "changed": sorted(changed),
            "deleted": sorted(deleted),
            "modules": modules,
            "at": t0,
        }
        event: dict[str, Any] = {
            "section": done[-1][0] if done else "",
            "sections_done": len(done),
            "statement": index,
            "total": len(steps),
        }
        try:
            parts, skipped, info = encode(values, self.token, note=note)
            if self.where.get("transport") == "stream":
                self._send(parts)
            else:
                save_file(self.where["path"], parts)
        except Exception as exc:  # the disk is full, say: the job goes on without it
            self.emit("checkpoint", error=f"{type(exc).__name__}: {exc}", **event)
            return
        self.count += 1
        self.emit(
            "checkpoint",
            nbytes=info["nbytes"],
            names=len(values) - len(skipped) + len(modules),
            skipped=skipped,
            seconds=round(time.time() - t0, 3),
            **event,
        )

    def _send(self, parts: list[Any]) -> None:
        """Over the kernel protocol: every chunk, then the whole's size and digest, by
        which the notebook's side keeps it or throws it away."""
        box = Outbox(parts)
        seq = self.count
        for i in range(box.count()):
            head = {"type": "checkpoint_chunk", "checkpoint": seq, "seq": i, "nbytes": box.nbytes}
            self.publish({**head, "chunk": box.chunk}, box.piece(i))
        self.publish({"type": "checkpoint_sent", "checkpoint": seq, **box.described()}, [])


def restore(runner: Any, resume: dict[str, Any], data: Any = None) -> int:
    """Load the checkpoint ``resume`` names into the runner's namespace (from ``data`` when
    it came over the kernel protocol) and return the statement to go on from.

    Names the job had made or changed count as its own, so they come back with its
    results; the rest are as the notebook gave them, seeds whose changes are watched."""
    start = int(resume.get("start") or 0)
    if not resume.get("path") and data is None:
        return start  # no checkpoint: from ``start`` (the beginning) with the seed alone
    token = resume["token"]
    if data is not None:
        values = decode(data, token)
        header, _ = header_of(data)
    else:
        values = load_file(resume["path"], token)
        fd = os.open(resume["path"], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            header, _ = header_of(fh.read(min(os.fstat(fd).st_size, 8 << 20)))
    note = header.get("note") or {}
    import importlib

    ns = runner.ns
    changed = set(note.get("changed") or ())
    for name, module in (note.get("modules") or {}).items():
        ns[name] = importlib.import_module(module)
        if name not in changed:
            runner.before[name] = id(ns[name])
    for name, value in values.items():
        ns[name] = value
        if name not in changed:
            runner.before[name] = id(value)
            runner.seeded_ids[name] = id(value)
            runner.fingerprints[name] = runner.prints.take(value)
    for name in note.get("deleted") or ():
        ns.pop(name, None)
        runner.seeded_ids[name] = -1  # given, then deleted: deleted in the notebook too
    return start
