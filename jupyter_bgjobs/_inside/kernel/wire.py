"""The snapshot format both sides share: encode, decode, write, map, stream chunks.

A snapshot: ``MAGIC``, a length-prefixed JSON header (the job's token, the sizes), the main
pickle (cloudpickle, protocol 5), a fallback pickle (dill, for what cloudpickle cannot do),
then each out-of-band buffer, 64-byte aligned. Large array and DataFrame buffers never pass
through a pickler: they are written once and, locally, mapped back copy-on-write without a
copy. Over the kernel protocol a snapshot travels in binary chunks (``chunks``).

Runs on both sides of the kernel boundary: imported normally in the notebook, sent as
source into each job's kernel. Standard library only at import time.
"""

from __future__ import annotations

import bisect
import json
import mmap
import os
import re
import struct
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

# The private MIME type of the runner's events on the kernel's iopub channel.
EVENT_MIME = "application/vnd.jupyter-bgjobs.event+json"

_IPYTHON_NAME = re.compile(r"^(_+|_i+|_i?\d+|_[ido]h|_ih|_exit_code|In|Out|exit|quit|get_ipython)$")


def is_internal_name(name: str) -> bool:
    """IPython's own names, dunders and ours: never shipped, never returned."""
    return (
        bool(_IPYTHON_NAME.match(name))
        or (name.startswith("__") and name.endswith("__"))
        or name.startswith("_bgjobs")
    )


MAGIC = b"BGJOBS\x01\n"
_ALIGN = 64


class SnapshotError(Exception):
    """A snapshot stream that is not for this job, or damaged."""


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def encode(
    values: dict[str, Any], token: str, note: dict[str, Any] | None = None
) -> tuple[list[Any], list[dict[str, str]], dict[str, Any]]:
    """Serialize ``values``: (parts to write in order, skipped, what travelled how).

    Everything pickles in one cloudpickle stream, so names that alias one object still do
    after loading. What cloudpickle cannot do goes to dill; what neither can is skipped.
    ``note`` (a checkpoint's: where it was taken) goes into the header, with what was
    skipped, so that it can be read without loading the values.
    """
    import pickle

    skipped: list[dict[str, str]] = []
    main = {}
    for key, value in values.items():
        why = _not_portable(value)
        if why:
            skipped.append({"name": key, "type": type(value).__name__, "reason": why})
        else:
            main[key] = value
    fallback: dict[str, Any] = {}
    buffers: list[pickle.PickleBuffer] = []
    try:
        meta = _dumps(main, buffers.append)
    except Exception:
        for key in list(main):
            try:
                _dumps(main[key], lambda b: None)
                continue
            except Exception as exc:
                first = exc
            value = main.pop(key)
            try:
                import dill

                dill.dumps(value, protocol=5, recurse=True)
                fallback[key] = value
            except Exception:
                skipped.append(
                    {
                        "name": key,
                        "type": type(value).__name__,
                        "reason": f"{type(first).__name__}: {first}",
                    }
                )
        buffers = []
        meta = _dumps(main, buffers.append)
    extra = b""
    if fallback:
        import dill

        extra = dill.dumps(fallback, protocol=5, recurse=True)
    raws = [b.raw() for b in buffers]
    fields: dict[str, Any] = {
        "token": token,
        "meta": len(meta),
        "fallback": len(extra),
        "buffers": [r.nbytes for r in raws],
    }
    if note is not None:
        fields["note"] = {**note, "skipped": skipped}
    header = json.dumps(fields).encode()
    parts: list[Any] = [MAGIC, struct.pack("<Q", len(header)), header, meta, extra]
    offset = len(MAGIC) + 8 + len(header) + len(meta) + len(extra)
    for raw in raws:
        parts.append(b"\0" * _pad(offset))
        offset += _pad(offset)
        parts.append(raw)
        offset += raw.nbytes
    info = {
        "pickled": sorted(main),
        "dill": sorted(fallback),
        "nbytes": offset,
        "out_of_band": sum(r.nbytes for r in raws),
    }
    return parts, skipped, info


def _not_portable(value: Any) -> str:
    """Why ``value`` must not be copied into another process, or "" when it may.

    dill could recreate some of these (it reopens a file by name, in its old mode: a file
    open for writing would be truncated), so they are refused before any pickler runs.
    """
    import io
    import socket
    import threading

    if isinstance(value, io.IOBase):
        return "an open file belongs to this process; pass its path and open it in the job"
    if isinstance(value, socket.socket):
        return "a socket belongs to this process; connect again in the job"
    if isinstance(value, (type(threading.Lock()), type(threading.RLock()))):
        return "a lock guards this process's threads; the job has its own"
    if isinstance(value, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)):
        return "a running generator or coroutine cannot be copied; recreate it in the job"
    module = type(value).__module__ or ""
    if module.split(".")[0] in ("sqlite3", "psycopg2", "psycopg", "pymysql", "sqlalchemy") and (
        "Connection" in type(value).__name__
        or "Cursor" in type(value).__name__
        or "Engine" in type(value).__name__
    ):
        return "a database connection belongs to this process; connect again in the job"
    return ""


# Each piece of a large snapshot is a file of its own with a writer thread of its own:
# shared memory serialises the writers of one file, and on two cores two files are written
# in about 0.6 of the time of one. Below this many bytes a piece is not worth a thread.
_PIECE_MIN = 16 << 20
MAX_PIECES = 4


def piece_paths(path: str, pieces: int) -> list[str]:
    """The files a snapshot of ``pieces`` pieces occupies: ``path``, ``path.1``, ..."""
    return [path] + [f"{path}.{i}" for i in range(1, pieces)]


def _pieces_for(nbytes: int) -> int:
    if _map_fixed() is None:
        return 1
    return int(max(1, min(os.cpu_count() or 1, MAX_PIECES, nbytes // _PIECE_MIN)))


def write_parts(path: str, parts: list[Any], prepared: int = 0) -> int:
    """Write a snapshot, as files readable by their owner only; returns how many pieces.

    Piece boundaries fall on page boundaries, so the reader can map the pieces back to
    back into one run of addresses (see ``load_file``). The first ``prepared`` pieces may
    already exist, made by this process (see ``_Arena``): they are overwritten and cut to
    size, and prepared pieces beyond those needed are removed.
    """
    views = [memoryview(p).cast("B") for p in parts]
    total = sum(v.nbytes for v in views)
    pieces = _pieces_for(total)
    for extra in piece_paths(path, prepared)[pieces:]:
        unlink_quietly(extra)
    page = mmap.ALLOCATIONGRANULARITY
    step = -(-total // pieces)
    step += (-step) % page
    bounds = [(lo, min(total, lo + step)) for lo in range(0, total, step)] or [(0, 0)]
    paths = piece_paths(path, len(bounds))
    import threading

    errors: list[BaseException] = []
    stop = threading.Event()

    def work(i: int) -> None:
        try:
            _write_range(paths[i], views, *bounds[i], i < prepared, stop)
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, len(bounds))]
    try:
        for t in threads:
            t.start()
        work(0)
        if errors:
            stop.set()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    except BaseException:
        # Also on Ctrl-C in the caller: the other writers stop, and no half-written file
        # is left in shared memory.
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join()
        for p in piece_paths(path, max(len(bounds), prepared)):
            unlink_quietly(p)
        raise
    return len(bounds)


def write_whole(path: str, parts: list[Any]) -> None:
    """Write ``parts`` as one new file at ``path`` (a snapshot of one piece)."""
    unlink_quietly(path)
    views = [memoryview(p).cast("B") for p in parts]
    _write_range(path, views, 0, sum(v.nbytes for v in views))


def write_somewhere(
    candidates: list[str], path: str, parts: list[Any], prepared: int = 0
) -> tuple[str, int]:
    """``write_parts`` at ``path``, one of ``candidates``; if that fails (shared memory
    filled up meanwhile: other jobs write there too), at the last candidate, the job's own
    folder. Returns where, and in how many pieces."""
    try:
        return path, write_parts(path, parts, prepared)
    except OSError:
        if path == candidates[-1]:
            raise
        return candidates[-1], write_parts(candidates[-1], parts)


def views_in_range(
    views: list[memoryview], lo: int, hi: int, starts: list[int] | None = None
) -> Iterator[memoryview]:
    """The pieces of the concatenated ``views`` that make bytes ``lo:hi``, in order. Given
    the views' ``starts`` (offsets), the first is found by bisection: a snapshot of many
    small values is not walked whole for each piece of it."""
    first, start = 0, 0
    if starts:
        first = max(0, bisect.bisect_right(starts, lo) - 1)
        start = starts[first]
    for i in range(first, len(views)):
        if start >= hi:
            return
        v = views[i]
        end = start + v.nbytes
        if end > lo and v.nbytes:
            yield v[max(lo, start) - start : min(hi, end) - start]
        start = end


def _write_range(
    path: str,
    views: list[memoryview],
    lo: int,
    hi: int,
    prepared: bool = False,
    stop: Any = None,
) -> None:
    """Write bytes ``lo:hi`` of the concatenated ``views`` to a new file at ``path`` (or
    over a prepared one, cut to size)."""
    flags = os.O_WRONLY if prepared else os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o600)
    if prepared and os.fstat(fd).st_size > hi - lo:
        os.ftruncate(fd, hi - lo)
    with os.fdopen(fd, "wb", buffering=0) as fh:
        for view in views_in_range(views, lo, hi):
            while view.nbytes:
                if stop is not None and stop.is_set():
                    return
                n = fh.write(view[: 64 << 20])
                view = view[n:]


def decode(data: Any, token: str) -> dict[str, Any]:
    """Load a snapshot from a buffer (an mmap or bytes); buffers are not copied."""
    import pickle

    view = memoryview(data)
    header, pos = header_of(view)
    if header.get("token") != token:
        raise SnapshotError("this snapshot was not written for this job")
    meta = view[pos : pos + header["meta"]]
    pos += header["meta"]
    extra = view[pos : pos + header["fallback"]]
    pos += header["fallback"]
    bufs = []
    for size in header["buffers"]:
        pos += _pad(pos)
        bufs.append(view[pos : pos + size])
        pos += size
    if pos > view.nbytes:
        raise SnapshotError("the snapshot is truncated")
    values: dict[str, Any] = pickle.loads(meta, buffers=bufs)
    if header["fallback"]:
        import dill

        values.update(dill.loads(bytes(extra)))
    return values


# A header is a few numbers and, for a checkpoint, its note: never near this.
MAX_HEADER = 8 << 20


def header_of(data: Any) -> tuple[dict[str, Any], int]:
    """A snapshot's header, and where its pickles start: read without loading them."""
    view = memoryview(data)
    if view[: len(MAGIC)] != MAGIC:
        raise SnapshotError("not a jupyter_bgjobs snapshot")
    (hlen,) = struct.unpack("<Q", view[len(MAGIC) : len(MAGIC) + 8])
    pos = len(MAGIC) + 8
    if hlen > MAX_HEADER or pos + hlen > view.nbytes:
        raise SnapshotError("the snapshot's header is damaged")
    try:
        header = json.loads(bytes(view[pos : pos + hlen]))
    except ValueError:
        raise SnapshotError("the snapshot's header is damaged") from None
    if not isinstance(header, dict):
        raise SnapshotError("the snapshot's header is damaged")
    return header, pos + hlen


def load_file(path: str, token: str, pieces: int = 1) -> dict[str, Any]:
    """Map a snapshot's files copy-on-write and load it; the files may be removed afterwards."""
    if pieces > 1:
        view: Any = _map_pieces(piece_paths(path, pieces))
    else:
        # Ours, written by name: never a link put in its place.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            view = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
    start = _address(memoryview(view))
    if start is not None:
        _MAPPED.append((start, start + len(view)))
    return decode(view, token)


_LIBC: Any = False


def _map_fixed() -> Any:
    """libc, set up to map files at chosen addresses; None where that is not available."""
    global _LIBC
    if _LIBC is False:
        found = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                libc.mmap.restype = ctypes.c_void_p
                libc.mmap.argtypes = [
                    ctypes.c_void_p,
                    ctypes.c_size_t,
                    ctypes.c_int,
                    ctypes.c_int,
                    ctypes.c_int,
                    ctypes.c_long,
                ]
                libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
                found = libc
            except (OSError, AttributeError):
                pass
        # Published only when complete: another thread may be asking at the same time.
        _LIBC = found
    return _LIBC


def _map_pieces(paths: list[str]) -> Any:
    """Map the pieces of one snapshot back to back, copy-on-write, as one bytes-like
    object: a buffer that spans two pieces is still one run of memory. The mapping lives as
    long as anything loaded from it does."""
    import ctypes
    import weakref

    libc = _map_fixed()
    if libc is None:
        raise SnapshotError("this snapshot is in pieces, which this system cannot map")
    fds: list[int] = []
    try:
        for path in paths:
            fds.append(os.open(path, os.O_RDONLY))
        sizes = [os.fstat(fd).st_size for fd in fds]
        total = sum(sizes)
        failed = ctypes.c_void_p(-1).value
        prot_rw = mmap.PROT_READ | mmap.PROT_WRITE
        # Reserve the whole run first, so no other mapping can land between the pieces.
        base = libc.mmap(None, total, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, failed):
            raise OSError(ctypes.get_errno(), "cannot reserve addresses for a snapshot")
        offset = 0
        for fd, size in zip(fds, sizes, strict=True):
            if offset % mmap.ALLOCATIONGRANULARITY:
                libc.munmap(base, total)
                raise SnapshotError("a piece of the snapshot is not page aligned")
            got = libc.mmap(base + offset, size, prot_rw, mmap.MAP_PRIVATE | _MAP_FIXED, fd, 0)
            if got != base + offset:
                libc.munmap(base, total)
                raise OSError(ctypes.get_errno(), "cannot map a piece of the snapshot")
            offset += size
    finally:
        for fd in fds:
            os.close(fd)
    region = (ctypes.c_char * total).from_address(base)
    unmap = weakref.finalize(region, libc.munmap, base, total)
    # Not at exit: what was loaded may still be used by exit handlers and daemon threads.
    unmap.atexit = False
    return memoryview(region).cast("B")


_MAP_FIXED = 0x10  # the same on every Linux architecture


# Address ranges of snapshot files mapped copy-on-write: only buffers inside them can be
# checked through the page map; any other buffer (a stream-transported snapshot lives in
# ordinary memory) is hashed.
_MAPPED: list[tuple[int, int]] = []


def _in_mapping(addr: int, length: int) -> bool:
    return any(lo <= addr and addr + length <= hi for lo, hi in _MAPPED)


def pick_path(candidates: list[str], nbytes: int, reserved: int = 0) -> str:
    """The first candidate folder with room for ``nbytes`` (shared memory first);
    ``reserved`` bytes in the first one are already ours to overwrite."""
    for i, path in enumerate(candidates[:-1]):
        try:
            st = os.statvfs(os.path.dirname(path))
        except OSError:
            continue
        free = st.f_bavail * st.f_frsize + (reserved if i == 0 else 0)
        if free > nbytes * 1.2 + (64 << 20):
            return path
    return candidates[-1]


def _dumps(value: Any, buffer_callback: Callable[[Any], Any]) -> bytes:
    import io

    sink = io.BytesIO()
    pickler = _pickler_class()(sink, protocol=5, buffer_callback=buffer_callback)
    # The objects that travel by name: a numpy view of one of them travels as a view of it.
    pickler.travelling = {id(v) for v in value.values()} if isinstance(value, dict) else set()
    pickler.dump(value)
    return sink.getvalue()


def _view_reduce(obj: Any, travelling: set[int]) -> Any:
    """A numpy view travelling by name, whose base travels by name too, goes as a view of
    it (``np.ndarray`` over the base's buffer, at the view's offset and strides), so a
    change made through one name is seen through the other, as in the notebook; numpy
    alone would copy it."""
    np = sys.modules.get("numpy")
    if np is None or type(obj) is not np.ndarray:
        return NotImplemented
    base = obj.base
    if (
        id(obj) not in travelling  # a name's value, not an array inside another object
        or type(base) is not np.ndarray
        or id(base) not in travelling
        or obj.dtype.hasobject
        or not (base.flags.c_contiguous or base.flags.f_contiguous)
    ):
        return NotImplemented
    offset = obj.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    if offset < 0 or offset > base.nbytes:
        return NotImplemented
    return (np.ndarray, (obj.shape, obj.dtype, base, offset, obj.strides))


def _out_of_band_reduce(obj: Any) -> Any:
    """numpy pickles datetime64 and timedelta64 arrays in band, through the pickler: a
    DataFrame's time column is often its largest. They go as int64 buffers, out of band,
    and are viewed back as their own dtype when loaded."""
    np = sys.modules.get("numpy")
    if (
        np is not None
        and type(obj) is np.ndarray
        and obj.dtype.kind in "mM"
        and obj.dtype.itemsize == 8
        and (obj.flags.c_contiguous or obj.flags.f_contiguous)
        and not obj.dtype.hasobject
    ):
        return (np.ndarray.view, (obj.view(np.int64), obj.dtype))
    return NotImplemented


_PICKLERS: dict[str, Any] = {}


def _pickler_class() -> Any:
    """cloudpickle's pickler, with large numpy time arrays sent out of band."""
    if "data" not in _PICKLERS:
        import cloudpickle

        class DataPickler(cloudpickle.Pickler):  # type: ignore[misc]
            def reducer_override(self, obj: Any) -> Any:
                reduced = _view_reduce(obj, getattr(self, "travelling", set()))
                if reduced is NotImplemented:
                    reduced = _out_of_band_reduce(obj)
                if reduced is not NotImplemented:
                    return reduced
                return super().reducer_override(obj)

        _PICKLERS["data"] = DataPickler
    return _PICKLERS["data"]


def _address(raw: memoryview) -> int | None:
    try:
        import ctypes

        if raw.readonly:
            import numpy

            return int(numpy.frombuffer(raw, dtype=numpy.uint8).ctypes.data)
        return ctypes.addressof(ctypes.c_char.from_buffer(raw))
    except Exception:
        return None


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
