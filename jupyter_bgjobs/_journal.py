"""A job's rich outputs on disk, so the IDE can show plots and tables after the notebook's
kernel is gone.

The log keeps every output's text; ``outputs.jsonl`` beside it keeps each rich output
(display data, results, errors) with the log's byte range its text form took. A reader
rebuilds nbformat outputs in order: log text between the ranges, rich outputs at them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import IO, Any

from ._runtime import open_log

JOURNAL = "outputs.jsonl"
# A job that draws thousands of plots must not fill the disk: past these, rich outputs
# are only in the log (as text), and the journal says so once.
_MAX_JOURNAL = 64 * 1024 * 1024
_MAX_ONE = 16 * 1024 * 1024


class Journal:
    """Appends a job's rich outputs, bounded in size; opened on the first one."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL
        self.size = 0
        self.full = False
        self._fh: IO[str] | None = None

    def add(self, out: dict[str, Any], start: int, end: int) -> None:
        """Keep ``out``, whose text form took bytes ``start`` to ``end`` of the log."""
        if self.full:
            return
        line = json.dumps({"at": [start, end], "output": out}, default=str)
        if len(line) > _MAX_ONE or self.size + len(line) > _MAX_JOURNAL:
            line = json.dumps({"at": [start, start], "dropped": "journal full"})
            self.full = True
        try:
            if self._fh is None:
                self._fh = open_log(self.path)
            self._fh.write(line + "\n")
            self._fh.flush()
        except OSError:  # a full or read-only disk loses rich outputs, never the job
            self.full = True
        self.size += len(line) + 1

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:  # what a full disk refused is lost; closing must not fail
                pass


# Each line starts with its byte range (``add`` writes "at" first): lines before the
# stretch asked for are passed over without parsing their outputs (plots, tables).
_AT = re.compile(r'\{"at": \[(\d{1,18}), ')


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _read_entries(folder: Path, since: int = 0) -> list[dict[str, Any]]:
    """The journal's entries whose stretch of the log starts at ``since`` or later; a
    journal larger than any we write, or a line longer, is damage and ends the reading."""
    from ._store import open_own

    entries: list[dict[str, Any]] = []
    try:
        fh = open(open_own(folder / JOURNAL), encoding="utf-8", errors="replace")
    except OSError:
        return entries
    with fh:
        if os.fstat(fh.fileno()).st_size > _MAX_JOURNAL + _MAX_ONE:
            return entries
        while line := fh.readline(_MAX_ONE + 1024):
            if not line.endswith("\n") and len(line) > _MAX_ONE:
                break
            head = _AT.match(line)
            if head is not None and int(head[1]) < since:
                continue
            try:  # NaN and Infinity are no JSON a page can read: damage, as in records
                entry = json.loads(line, parse_constant=_no_constant)
            except (ValueError, RecursionError):  # being written, or damage: skipped
                continue
            at = entry.get("at") if isinstance(entry, dict) else None
            if (
                isinstance(at, list)
                and len(at) == 2
                and all(isinstance(a, int) for a in at)
                and at[0] >= since
            ):
                entries.append(entry)
    return entries


def stored_outputs(folder: Path, log: Path, tail: int) -> list[dict[str, Any]]:
    """The job's outputs as nbformat outputs: the last ``tail`` bytes of the log, with
    the rich outputs of that stretch in their places."""
    from ._store import open_own

    try:  # a log of the job's own only: no link, no FIFO, nobody else's
        with open(open_own(log), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start = max(0, size - tail)
            fh.seek(start)
            data = fh.read(size - start)
    except OSError:
        size = start = 0
        data = b""
    entries = [e for e in _read_entries(folder, start) if e["at"][1] <= size]
    outputs: list[dict[str, Any]] = []

    def text(a: int, b: int) -> None:
        piece = data[a - start : b - start].decode("utf-8", errors="replace")
        if piece:
            outputs.append({"output_type": "stream", "name": "stdout", "text": piece})

    pos = start
    for entry in entries:
        out = entry.get("output")
        if not isinstance(out, dict):  # "dropped": the text runs on, in one output
            continue
        a, b = entry["at"]
        text(pos, a)
        outputs.append(out)
        pos = max(pos, b)
    text(pos, size)
    return outputs
