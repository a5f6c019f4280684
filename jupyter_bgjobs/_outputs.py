"""A job's output tail in memory: bounded in bytes, whatever the job writes."""

from __future__ import annotations

import collections
import threading
from typing import Any

# Consecutive stream text of one stream merges into one output up to this size.
_MERGE_LIMIT = 16384


def output_text(out: dict[str, Any]) -> str:
    """An nbformat output as text: streams as they are, rich outputs by their text form."""
    kind = out.get("output_type")
    if kind == "stream":
        return str(out.get("text", ""))
    if kind == "error":
        return f"{out.get('ename')}: {out.get('evalue')}\n"
    data = out.get("data", {})
    text = data.get("text/plain", "")
    others = [m for m in data if m != "text/plain"]
    if others and not text:
        text = f"[{', '.join(others)}]"
    return str(text) + "\n" if text else ""


def _size(out: dict[str, Any]) -> int:
    if out.get("output_type") == "stream":
        return len(out.get("text", ""))
    if out.get("output_type") == "error":
        return sum(len(t) for t in out.get("traceback", [])) + len(str(out.get("evalue", "")))
    return sum(len(str(v)) for v in out.get("data", {}).values())


class OutputTail:
    """The newest outputs of a job, at most ``max_outputs`` of them and ``max_chars``
    characters in all; older ones are dropped (the log on disk keeps everything).

    A single output larger than the budget keeps only its end (stream text) or becomes a
    note that names its size (a rich output). ``version`` grows with every change, so a
    view can tell new text appended to the last output from no change at all.
    """

    def __init__(self, max_outputs: int, max_chars: int) -> None:
        self.max_outputs = max(1, max_outputs)
        self.max_chars = max(1024, max_chars)
        self._items: collections.deque[dict[str, Any]] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        self._chars = 0
        self.version = 0
        self._lock = threading.Lock()

    def add(self, out: dict[str, Any]) -> None:
        size = _size(out)
        with self._lock:
            self.version += 1
            last = self._items[-1] if self._items else None
            if (
                out.get("output_type") == "stream"
                and last is not None
                and last.get("output_type") == "stream"
                and last.get("name") == out.get("name")
                and self._sizes[-1] + size <= _MERGE_LIMIT
            ):
                # A new dict, not the old one changed: views hold on to what they were sent.
                self._items[-1] = dict(last, text=last["text"] + out["text"])
                self._sizes[-1] += size
                self._chars += size
            else:
                if size > self.max_chars:
                    out, size = self._shrunk(out, size)
                self._items.append(out)
                self._sizes.append(size)
                self._chars += size
            while self._items and (
                self._chars > self.max_chars or len(self._items) > self.max_outputs
            ):
                self._items.popleft()
                gone = self._sizes.popleft()
                self._chars -= gone

    def _shrunk(self, out: dict[str, Any], size: int) -> tuple[dict[str, Any], int]:
        keep = self.max_chars // 2
        if out.get("output_type") == "stream":
            text = out["text"][-keep:]
            return dict(out, text=text), len(text)
        note = (
            f"[{out.get('output_type')} of {size} characters, too large to keep in memory; "
            "the job's log has its text]"
        )
        return {"output_type": "stream", "name": "stdout", "text": note + "\n"}, len(note) + 1

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)

    @property
    def chars(self) -> int:
        return self._chars


class Tailed:
    """What a row reads of anything with an output tail (a job, a progress row)."""

    _tail: OutputTail

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """The tail of the outputs as nbformat output dicts, in order (bounded in size; a
        job's ``log_path`` holds the whole output)."""
        return self._tail.items()

    @property
    def output_version(self) -> int:
        """Grows with every output sent, appended text included."""
        return self._tail.version

    @property
    def output(self) -> str:
        """The tail as text (streams, and rich outputs' text form)."""
        return "".join(output_text(o) for o in self.outputs)
