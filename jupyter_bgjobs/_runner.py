"""Moved: the job runner and the snapshot format now live in ``_inside.kernel`` (``runner``,
``wire``, ``arena``). These names stay importable from here until every import has moved."""

from __future__ import annotations

from ._inside.kernel.arena import _room_for
from ._inside.kernel.wire import (
    EVENT_MIME,
    MAX_PIECES,
    SnapshotError,
    decode,
    encode,
    is_internal_name,
    load_file,
    pick_path,
    piece_paths,
    stream_chunks,
    take_stream,
    write_parts,
    write_somewhere,
)

__all__ = [
    "EVENT_MIME",
    "MAX_PIECES",
    "SnapshotError",
    "_room_for",
    "decode",
    "encode",
    "is_internal_name",
    "load_file",
    "pick_path",
    "piece_paths",
    "stream_chunks",
    "take_stream",
    "write_parts",
    "write_somewhere",
]
