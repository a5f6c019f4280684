"""A snapshot over the kernel protocol: numbered chunks of binary buffers.

When the job's kernel shares no files with the notebook (a gateway's), a snapshot travels
as the ``buffers`` of kernel messages, never as text: chunk ``k`` is bytes
``[k * CHUNK, (k + 1) * CHUNK)`` of the snapshot, so either side can ask for, or send
again, any chunk a dropped connection lost. The whole is checked by its size and sha256.

An ``Outbox`` serves chunks as views of the snapshot's parts (no copy); an ``Inbox`` is the
one buffer the snapshot arrives in, which is then loaded in place. Runs on both sides of
the kernel boundary: standard library only.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from typing import Any

from .wire import SnapshotError, views_in_range

# Under tornado's default limit of 10 MiB a message (jupyter_server's websocket), and
# large enough that a message's own cost is small beside its bytes.
CHUNK = 4 << 20


def chunk_count(nbytes: int, chunk: int = CHUNK) -> int:
    """How many chunks ``nbytes`` takes (an empty snapshot still sends one)."""
    return max(1, -(-nbytes // chunk))


class Outbox:
    """A snapshot's parts, served chunk by chunk as views of them."""

    def __init__(self, parts: list[Any], chunk: int = CHUNK) -> None:
        self.views = [memoryview(p).cast("B") for p in parts]
        self.starts: list[int] = []
        digest = hashlib.sha256()
        total = 0
        for view in self.views:
            self.starts.append(total)
            digest.update(view)
            total += view.nbytes
        self.nbytes = total
        self.sha256 = digest.hexdigest()
        self.chunk = chunk

    def described(self) -> dict[str, Any]:
        """What the receiver needs to fetch and check it: size, sha256, chunk size."""
        return {"nbytes": self.nbytes, "sha256": self.sha256, "chunk": self.chunk}

    def count(self) -> int:
        return chunk_count(self.nbytes, self.chunk)

    def piece(self, seq: int) -> list[memoryview]:
        """The views that make chunk ``seq``, in order."""
        lo = seq * self.chunk
        return list(views_in_range(self.views, lo, min(self.nbytes, lo + self.chunk), self.starts))


class Inbox:
    """Where a snapshot's chunks land: one buffer of its final size (a file's mapping when
    ``path`` is given, so a large snapshot goes to disk, not to memory)."""

    def __init__(self, nbytes: int, chunk: int = CHUNK, path: str | None = None) -> None:
        self.nbytes = nbytes
        self.chunk = chunk
        self.data: Any
        if path is None:
            self.data = bytearray(nbytes)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.ftruncate(fd, nbytes)
                self.data = mmap.mmap(fd, nbytes) if nbytes else bytearray()
            finally:
                os.close(fd)
        self.have: set[int] = set()
        # Hashed as the chunks come, in order: the check at the end costs nothing more,
        # and the hashing overlaps the next chunks' way here.
        self._digest = hashlib.sha256()
        self._hashed = 0

    def expected(self, seq: int) -> int:
        return max(0, min(self.nbytes, (seq + 1) * self.chunk) - seq * self.chunk)

    def put(self, seq: int, buffers: list[Any]) -> None:
        """Take chunk ``seq``; a chunk of the wrong size is refused, a repeated one ignored."""
        if not 0 <= seq < chunk_count(self.nbytes, self.chunk):
            raise ValueError(f"chunk {seq} is outside a snapshot of {self.nbytes} bytes")
        views = [memoryview(b).cast("B") for b in buffers]
        size = sum(v.nbytes for v in views)
        if size != self.expected(seq):
            raise ValueError(f"chunk {seq} has {size} bytes, expected {self.expected(seq)}")
        if seq in self.have:
            return
        _copy_into(self.data, seq * self.chunk, views)
        self.have.add(seq)
        while self._hashed in self.have:
            lo = self._hashed * self.chunk
            self._digest.update(memoryview(self.data)[lo : lo + self.expected(self._hashed)])
            self._hashed += 1

    def missing(self) -> list[int]:
        return [s for s in range(chunk_count(self.nbytes, self.chunk)) if s not in self.have]

    def check(self, sha256: str) -> Any:
        """The whole snapshot, once every chunk is in and its sha256 matches."""
        lost = self.missing()
        if lost:
            raise SnapshotError(
                f"the snapshot arrived without {len(lost)} of its "
                f"{chunk_count(self.nbytes, self.chunk)} chunks"
            )
        if self._digest.hexdigest() != sha256:
            raise SnapshotError("the snapshot failed its sha256 check")
        return self.data

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            self.data.flush()
            self.data.close()
        self.data = bytearray()


def join_parts(parts: list[Any]) -> bytearray:
    """The parts in one buffer: a seed is copied once as it is taken, so that what the
    notebook changes afterwards cannot change what the job gets."""
    views = [memoryview(p).cast("B") for p in parts]
    out = bytearray(sum(v.nbytes for v in views))
    _copy_into(out, 0, views)
    return out


def _copy_into(dest: Any, pos: int, views: list[memoryview]) -> None:
    for view in views:
        dest[pos : pos + view.nbytes] = view
        pos += view.nbytes
