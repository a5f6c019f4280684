"""Code that runs inside a job's kernel, and the wire format both sides share.

This module is sent to the job kernel as source text and executed there, so it imports
nothing from jupyter_bgjobs and only the standard library at import time (cloudpickle and
dill are imported when a snapshot or results need them). The parent talks to it through
``run(spec_json)`` (and ``receive`` for snapshot bytes sent over the kernel protocol); the
runner reports back through display_data messages of a private MIME type on the kernel's
iopub channel, in order with the job's own output.

The snapshot format: ``MAGIC``, a length-prefixed JSON header (the job's token, the sizes),
the main pickle (cloudpickle, protocol 5), a fallback pickle (dill, for what cloudpickle
cannot do), then each out-of-band buffer, 64-byte aligned. Large array and DataFrame
buffers never pass through a pickler: they are written once and, locally, mapped back
copy-on-write without a copy.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import mmap
import os
import re
import struct
import sys
import time
import traceback
import types
import zlib
from collections.abc import Callable, Iterator
from typing import Any

EVENT_MIME = "application/vnd.jupyter-bgjobs.event+json"
_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect into every kernel

_SECTION_R = re.compile(r"^\s*#+\s*(?P<name>[^#\s].*?)\s*-{4,}\s*$")
_SECTION_PY = re.compile(r"^\s*#\s*%%\s*(?P<name>.*?)\s*$")
_IPYTHON_NAME = re.compile(r"^(_+|_i+|_i?\d+|_[ido]h|_ih|_exit_code|In|Out|exit|quit|get_ipython)$")


def section_of(line: str) -> str | None:
    """The section a marker line opens, or None when the line is no marker."""
    m = _SECTION_R.match(line) or _SECTION_PY.match(line)
    if not m:
        return None
    return m.group("name").strip()


def is_internal_name(name: str) -> bool:
    """IPython's own names, dunders and ours: never shipped, never returned."""
    return (
        bool(_IPYTHON_NAME.match(name))
        or (name.startswith("__") and name.endswith("__"))
        or name.startswith("_bgjobs")
    )


def plan(source: str) -> list[tuple[ast.stmt, str]]:
    """Split transformed source into top-level statements, each with its section."""
    tree = ast.parse(source)
    lines = source.splitlines()
    markers: list[tuple[int, str]] = []
    for lineno, line in enumerate(lines, start=1):
        name = section_of(line)
        if name is not None:
            markers.append((lineno, name))
    out: list[tuple[ast.stmt, str]] = []
    current = ""
    mi = 0
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        while mi < len(markers) and markers[mi][0] < first:
            current = markers[mi][1]
            mi += 1
        out.append((node, current))
    return out


MAGIC = b"BGJOBS\x01\n"
_ALIGN = 64
_CHUNK = 4 << 20
_INBOX: dict[str, bytearray] = {}


class SnapshotError(Exception):
    """A snapshot stream that is not for this job, or damaged."""


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def encode(
    values: dict[str, Any], token: str
) -> tuple[list[Any], list[dict[str, str]], dict[str, Any]]:
    """Serialize ``values``: (parts to write in order, skipped, what travelled how).

    Everything pickles in one cloudpickle stream, so names that alias one object still do
    after loading. What cloudpickle cannot do goes to dill; what neither can is skipped.
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
    header = json.dumps(
        {
            "token": token,
            "meta": len(meta),
            "fallback": len(extra),
            "buffers": [r.nbytes for r in raws],
        }
    ).encode()
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
        _unlink(extra)
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
            _unlink(p)
        raise
    return len(bounds)


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
        start = 0
        for v in views:
            end = start + v.nbytes
            if end > lo and start < hi:
                view = v[max(lo, start) - start : min(hi, end) - start]
                while view.nbytes:
                    if stop is not None and stop.is_set():
                        return
                    n = fh.write(view[: 64 << 20])
                    view = view[n:]
            start = end


def decode(data: Any, token: str) -> dict[str, Any]:
    """Load a snapshot from a buffer (an mmap or bytes); buffers are not copied."""
    import pickle

    view = memoryview(data)
    if view[: len(MAGIC)] != MAGIC:
        raise SnapshotError("not a jupyter_bgjobs snapshot")
    (hlen,) = struct.unpack("<Q", view[len(MAGIC) : len(MAGIC) + 8])
    pos = len(MAGIC) + 8
    header = json.loads(bytes(view[pos : pos + hlen]))
    if header.get("token") != token:
        raise SnapshotError("this snapshot was not written for this job")
    pos += hlen
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


def load_file(path: str, token: str, pieces: int = 1) -> dict[str, Any]:
    """Map a snapshot's files copy-on-write and load it; the files may be removed afterwards."""
    if pieces > 1:
        view: Any = _map_pieces(piece_paths(path, pieces))
    else:
        with open(path, "rb") as fh:
            view = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
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


def receive(token: str, seq: int, chunk: str | None = None) -> None:
    """Take one base64 chunk of a snapshot sent over the kernel protocol: in the request's
    metadata (``bgjobs_chunk``), so megabytes of data never pass through IPython's input
    transformation and parser as source code; or, from older callers, as the argument."""
    if chunk is None:
        ip = _ipython()
        parent = ip.kernel.get_parent("shell") if ip is not None else {}
        chunk = parent.get("metadata", {}).get("bgjobs_chunk", "")
    box = _INBOX.setdefault(token, bytearray())
    if seq == 0:
        box.clear()
    box += base64.b64decode(chunk)


def _ipython() -> Any:
    try:
        from IPython import get_ipython

        return get_ipython()
    except ImportError:
        return None


def stream_chunks(parts: list[Any]) -> tuple[list[str], str, int]:
    """A snapshot as base64 chunks for the kernel protocol, with its sha256 and size."""
    digest = hashlib.sha256()
    pending = bytearray()
    chunks: list[str] = []
    size = 0
    for part in parts:
        view = memoryview(part).cast("B")
        digest.update(view)
        size += view.nbytes
        pending += view
        while len(pending) >= _CHUNK:
            chunks.append(base64.b64encode(pending[:_CHUNK]).decode())
            del pending[:_CHUNK]
    if pending or not chunks:
        chunks.append(base64.b64encode(pending).decode())
    return chunks, digest.hexdigest(), size


def take_stream(data: bytearray, sha256: str, nbytes: int) -> bytearray:
    """Check a snapshot that arrived in chunks: size and sha256 must match."""
    if len(data) != nbytes:
        raise SnapshotError(f"snapshot stream is {len(data)} bytes, expected {nbytes}")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SnapshotError("snapshot stream failed its sha256 check")
    return data


class _Fingerprints:
    """Tell, cheaply, whether a seeded object was changed in place.

    An object's in-band pickle is hashed; its out-of-band buffers, when they live in the
    copy-on-write mapping of the snapshot, are checked page by page in /proc/self/pagemap
    (a written page stops being a file page), which costs milliseconds for gigabytes.
    Elsewhere the buffers are hashed.
    """

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.pagemap = os.access("/proc/self/pagemap", os.R_OK)

    def take(self, value: Any) -> tuple[Any, ...] | None:
        import io

        bufs: list[Any] = []
        sink = io.BytesIO()
        try:
            _fingerprint_pickler()(sink, protocol=5, buffer_callback=bufs.append).dump(value)
        except Exception:
            return None
        meta = sink.getbuffer()
        spans: list[tuple[int | None, int, int | None]] = []
        for b in bufs:
            raw = b.raw()
            addr = _address(raw)
            if addr is not None and self.pagemap and _in_mapping(addr, raw.nbytes):
                spans.append((addr, raw.nbytes, None))
            else:
                spans.append((addr, raw.nbytes, zlib.crc32(raw)))
        return (zlib.crc32(meta), tuple(spans))

    def changed(self, before: tuple[Any, ...] | None, value: Any) -> bool:
        if before is None:
            return True
        after = self.take(value)
        if after is None or after[0] != before[0] or len(after[1]) != len(before[1]):
            return True
        for (a0, n0, c0), (a1, n1, c1) in zip(before[1], after[1], strict=True):
            if (a0, n0) != (a1, n1) or c0 != c1:
                return True
            if c0 is None and self._written(a0, n0):
                return True
        return False

    def _written(self, addr: int, length: int) -> bool:
        if length == 0:
            return False
        first, last = addr // self.page, (addr + length - 1) // self.page
        try:
            with open("/proc/self/pagemap", "rb") as pm:
                pm.seek(first * 8)
                data = pm.read((last - first + 1) * 8)
        except OSError:
            return True
        try:
            import numpy

            entries = numpy.frombuffer(data, dtype="<u8")
            present = (entries >> 63) & 1
            swapped = (entries >> 62) & 1
            filepage = (entries >> 61) & 1
            return bool(((present == 1) & (filepage == 0)).any() or swapped.any())
        except ImportError:
            pass
        for (entry,) in struct.iter_unpack("<Q", data):
            present, swapped, filepage = entry >> 63 & 1, entry >> 62 & 1, entry >> 61 & 1
            if swapped or (present and not filepage):
                return True
        return False


def _dumps(value: Any, buffer_callback: Callable[[Any], Any]) -> bytes:
    import io

    sink = io.BytesIO()
    _pickler_class()(sink, protocol=5, buffer_callback=buffer_callback).dump(value)
    return sink.getvalue()


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
                reduced = _out_of_band_reduce(obj)
                if reduced is not NotImplemented:
                    return reduced
                return super().reducer_override(obj)

        _PICKLERS["data"] = DataPickler
    return _PICKLERS["data"]


def _fingerprint_pickler() -> Any:
    """A pickler for fingerprints only: code (classes, functions, modules) counts by
    identity, so a fingerprint follows the data. Pickling a class by value is not stable
    enough to compare (cloudpickle's output for one unchanged class has been seen to vary).
    """
    if "fingerprint" not in _PICKLERS:

        class FingerprintPickler(_pickler_class()):  # type: ignore[misc]
            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, (type, types.FunctionType)):
                    qualname = getattr(obj, "__qualname__", "")
                    if obj.__module__ == "__main__" or "<" in qualname:
                        return (str, (f"{qualname}@{id(obj)}",))
                return super().reducer_override(obj)

        _PICKLERS["fingerprint"] = FingerprintPickler
    return _PICKLERS["fingerprint"]


def _address(raw: memoryview) -> int | None:
    try:
        import ctypes

        if raw.readonly:
            import numpy

            return int(numpy.frombuffer(raw, dtype=numpy.uint8).ctypes.data)
        return ctypes.addressof(ctypes.c_char.from_buffer(raw))
    except Exception:
        return None


class _Arena:
    """Shared memory made ready for the results while the job's code runs.

    Most of the cost of writing results into shared memory is the system finding fresh
    pages, not the copy (on a VM, pages not used for a few seconds cost several times
    more). A thread allocates, on the other core, about as much as the job's own memory
    has grown, in the files the results will be written to, so at the end only the copy
    is left. It never takes the machine below half its memory free, gives memory back when
    it gets short, and gives back what the results do not use.
    """

    STEP = 32 << 20

    def __init__(self, path: str) -> None:
        import threading

        self.paths = piece_paths(path, _pieces_for(1 << 62))
        self.sizes = [0] * len(self.paths)
        self._stop = threading.Event()
        self._base = _anon_bytes()
        self._thread = threading.Thread(target=self._grow, name="bgjobs-arena", daemon=True)
        self._thread.start()

    def _grow(self) -> None:
        fds: list[int] = []
        zeros = bytes(1 << 22)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            while not self._stop.wait(0.05):
                want = _anon_bytes() - self._base
                while want > sum(self.sizes) + self.STEP and not self._stop.is_set():
                    if not _room_for(self.STEP, self.paths[0]):
                        break
                    # Created only once there is something to prepare: a job that does
                    # not grow leaves no files, even if its kernel is killed.
                    while len(fds) < len(self.paths):
                        fds.append(os.open(self.paths[len(fds)], flags, 0o600))
                    i = self.sizes.index(min(self.sizes))
                    # Written, not fallocate()d: tmpfs would leave the pages untouched,
                    # and a VM backs a page only when it is first touched.
                    for offset in range(0, self.STEP, len(zeros)):
                        os.pwrite(fds[i], zeros, self.sizes[i] + offset)
                    self.sizes[i] += self.STEP
                # The job freed what it had grown by, or needs the memory more: give back.
                while sum(self.sizes) > max(want, 0) + 2 * self.STEP or (
                    sum(self.sizes) > 0 and not _room_for(0, self.paths[0])
                ):
                    i = self.sizes.index(max(self.sizes))
                    self.sizes[i] = max(0, self.sizes[i] - self.STEP)
                    os.ftruncate(fds[i], self.sizes[i])
        except OSError:
            pass  # no arena, or a smaller one: the results are written all the same
        finally:
            for fd in fds:
                os.close(fd)

    def stop(self) -> int:
        """Stop growing; how many of ``paths`` exist (all of them, or none)."""
        self._stop.set()
        self._thread.join()
        return len(self.paths) if all(os.path.exists(p) for p in self.paths) else 0

    def discard(self) -> None:
        self.stop()
        for path in self.paths:
            _unlink(path)


def _anon_bytes() -> int:
    """This process's resident anonymous memory (the job's own data), in bytes."""
    try:
        with open("/proc/self/statm") as fh:
            _, resident, shared = (int(x) for x in fh.read().split()[:3])
        return (resident - shared) * mmap.PAGESIZE
    except (OSError, ValueError):
        return 0


def _room_for(nbytes: int, path: str) -> bool:
    """Whether ``nbytes`` more of shared memory leaves half of the memory free: the
    machine's, and the container's (shared memory counts against its limit too)."""
    try:
        st = os.statvfs(os.path.dirname(path))
        if st.f_bavail * st.f_frsize < nbytes + (256 << 20):
            return False
        info: dict[str, int] = {}
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        if info["MemAvailable"] - nbytes <= info["MemTotal"] // 2:
            return False
        limit, used = _cgroup_memory()
        return limit is None or limit - used - nbytes > limit // 2
    except (OSError, KeyError, ValueError):
        return False


def _cgroup_memory() -> tuple[int | None, int]:
    """This process's memory cgroup: (limit or None when unlimited, bytes in use)."""
    v2 = ["/sys/fs/cgroup"]
    v1 = ["/sys/fs/cgroup/memory"]
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, where = line.strip().split(":", 2)
                where = where.rstrip("/")
                if controllers == "":
                    v2.insert(0, "/sys/fs/cgroup" + where)
                elif "memory" in controllers.split(","):
                    v1.insert(0, "/sys/fs/cgroup/memory" + where)
    except (OSError, ValueError):
        pass
    for folder in v2:
        try:
            with open(os.path.join(folder, "memory.max")) as fh:
                raw = fh.read().strip()
            with open(os.path.join(folder, "memory.current")) as fh:
                used = int(fh.read())
        except (OSError, ValueError):
            continue
        return (None if raw == "max" else int(raw)), used
    for folder in v1:
        try:
            with open(os.path.join(folder, "memory.limit_in_bytes")) as fh:
                limit = int(fh.read())
            with open(os.path.join(folder, "memory.usage_in_bytes")) as fh:
                used = int(fh.read())
        except (OSError, ValueError):
            continue
        # v1 says "unlimited" with a number near 2**63.
        return (None if limit >= 1 << 60 else limit), used
    return None, 0


class _Runner:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ip = _get_ipython()
        self.ns: dict[str, Any] = self.ip.user_ns if self.ip is not None else _main_ns()
        self.fingerprints: dict[str, Any] = {}
        self.seeded_ids: dict[str, int] = {}
        self.prints = _Fingerprints()
        self.t_start = time.time()
        self.arena: _Arena | None = None
        self.status = "ok"
        self.error: dict[str, Any] | None = None
        self.done = 0
        self.total = 0
        self.before: dict[str, int] | None = None
        self.skipped_in: list[dict[str, str]] = []
        self._saved_io: tuple[Any, ...] | None = None
        self._bounded: list[Callable[[], None]] = []

    def emit(self, kind: str, **fields: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        payload = {"type": kind, "t": time.time(), **fields}
        if self.ip is not None:
            from IPython.display import publish_display_data

            publish_display_data({EVENT_MIME: payload, "text/plain": ""})
        else:
            print(json.dumps(payload), file=sys.__stdout__, flush=True)

    def run(self) -> None:
        """Run the job's statements in order, as a cell of this kernel would."""
        steps = self._begin()
        for i, code in steps:
            try:
                exec(code, self.ns)
            except BaseException as exc:  # the job's exception is its result
                if self._stopped_by(exc):
                    break
            self.done = i + 1
        self._end()

    async def run_async(self) -> None:
        """The same, for a job with top-level ``await``: this kernel's event loop runs it,
        as IPython's autoawait does for a cell."""
        steps = self._begin(flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for i, code in steps:
            try:
                if code.co_flags & _CO_COROUTINE:
                    await eval(code, self.ns)
                else:
                    exec(code, self.ns)
            except BaseException as exc:
                if self._stopped_by(exc):
                    break
            self.done = i + 1
        self._end()

    def _begin(self, flags: int = 0) -> Iterator[tuple[int, types.CodeType]]:
        """Set the job up and yield its compiled statements one by one, each announced to
        the parent first; a fault while setting up is reported as the job's error."""
        try:
            self._enter_context()
            skipped_in = self._seed()
            self.skipped_in = skipped_in
            self.before = {k: id(v) for k, v in self.ns.items()}
            self.arena = self._start_arena()
            source = self.spec["code"]
            if self.ip is not None:
                source = self.ip.transform_cell(source)
            steps = plan(source)
            self.total = len(steps)
            filename = self._register_source(source)
            self.emit(
                "plan",
                total=self.total,
                sections=[s for _, s in steps],
                skipped=skipped_in,
                t_start=self.t_start,
            )
        except BaseException as exc:
            self._stopped_by(exc)
            return
        for i, (node, section) in enumerate(steps):
            self.emit("stmt", index=i, total=self.total, section=section, line=node.lineno)
            try:
                if i == self.total - 1 and isinstance(node, ast.Expr):
                    code = compile(ast.Interactive([node]), filename, "single", flags)
                else:
                    code = compile(ast.Module([node], []), filename, "exec", flags)
            except BaseException as exc:
                self._stopped_by(exc)
                return
            yield i, code

    def _stopped_by(self, exc: BaseException) -> bool:
        """Record how ``exc`` ends the job; False for a ``SystemExit(0)``, which does not."""
        if isinstance(exc, KeyboardInterrupt):
            self.status = "interrupted"
            self._show_exception()
            return True
        if isinstance(exc, SystemExit) and not exc.code:
            return False
        self.status = "error"
        self.error = self._show_exception()
        return True

    def _end(self) -> None:
        self._leave_context()
        code_done = time.time()
        results: dict[str, Any] = {}
        if self.before is not None:
            try:
                results = self._save_results(self.before)
            except BaseException as exc:
                if self.arena is not None:
                    self.arena.discard()
                results = {
                    "names": [],
                    "modules": {},
                    "skipped": [
                        {"name": "*", "type": "results", "reason": f"{type(exc).__name__}: {exc}"}
                    ],
                }
        self.emit(
            "end",
            status=self.status,
            done=self.done,
            total=self.total,
            error=self.error,
            results=results,
            code_done=code_done,
        )

    def _enter_context(self) -> None:
        """What the cell would see in the notebook: its working directory, its import path
        and its environment as they were when the job was submitted; and no keyboard."""
        spec = self.spec
        if spec.get("workdir"):
            os.chdir(spec["workdir"])
        context = spec.get("context") or {}
        for key in context.get("unset") or ():
            os.environ.pop(key, None)
        os.environ.update(context.get("set") or {})
        os.environ.update(spec.get("env_vars") or {})
        notebook_path = context.get("sys_path")
        if notebook_path is not None:
            if context.get("prefix") == sys.prefix:
                # The same environment: the notebook's path exactly, in its order.
                own = [p for p in sys.path if p not in notebook_path]
                sys.path[:] = list(notebook_path) + own
            else:
                # Another environment: only the folders the notebook added, never its
                # site-packages, which belong to another Python.
                sys.path[:0] = [p for p in context.get("added_path") or () if p not in sys.path]
        elif spec.get("workdir") and spec["workdir"] not in sys.path:
            sys.path.insert(0, spec["workdir"])
        self._saved_io = _no_keyboard()
        self._bounded = [_bound_stream(s) for s in (sys.stdout, sys.stderr)]

    def _leave_context(self) -> None:
        for undo in self._bounded:
            undo()
        self._bounded = []
        if self._saved_io is not None:
            _restore_io(self._saved_io)
            self._saved_io = None

    def _show_exception(self) -> dict[str, Any]:
        etype, value, tb = sys.exc_info()
        if isinstance(value, NameError) and value.name:
            hint = self._name_hint(value.name)
            if hint:
                value.args = (f"{value.args[0] if value.args else value.name}: {hint}",)
        # Drop the runner's own frames: the user sees their code only.
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        if self.ip is not None:
            stb = self.ip.InteractiveTB.structured_traceback(etype, value, tb)
            self.ip._showtraceback(etype, value, stb)
        else:
            stb = traceback.format_exception(etype, value, tb)
            sys.stderr.write("".join(stb))
        return {
            "ename": getattr(etype, "__name__", str(etype)),
            "evalue": str(value),
            "traceback": list(stb),
        }

    def _name_hint(self, name: str) -> str:
        """Why a name the job misses is missing, when the notebook has it, and the fix."""
        failed = {s["name"]: s for s in self.skipped_in}.get(name)
        if failed is not None:
            module = (self.spec.get("imports") or {}).get(name, [name])[0]
            origin = (self.spec.get("import_origins") or {}).get(name)
            where = f" (the notebook has it from {origin})" if origin else ""
            return (
                f"the notebook's {name!r} is the module {module}{where}, which this job could "
                f"not import: {failed['reason'].split(': ', 1)[-1]}. The job imports with the "
                "notebook's sys.path as it was when the job started: put the module's folder on "
                "sys.path in the notebook first, or install the module in the job's kernel"
            )
        why = {s["name"]: s for s in self.spec.get("not_shipped") or []}.get(name)
        if why is not None:
            return f"{name!r} was not shipped to this job ({why['type']}: {why['reason']})"
        if name in set(self.spec.get("notebook_names") or ()):
            return (
                f"the notebook has {name!r}, but this job was not given it (--env auto ships "
                "only the names it can see the code read; eval() and globals() hide them): "
                f"start the job with --env {name} (or env={name!r}), or --env all"
            )
        return ""

    def _register_source(self, source: str) -> str:
        name = self.spec.get("filename") or f"<bgjob {self.spec.get('name', '')}>"
        if self.ip is not None and not self.spec.get("filename"):
            try:
                return str(self.ip.compile.cache(source))
            except Exception:
                pass
        import linecache

        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        return name

    def _seed(self) -> list[dict[str, str]]:
        import importlib

        skipped: list[dict[str, str]] = []
        for name, (module, qualname) in (self.spec.get("imports") or {}).items():
            try:
                value: Any = importlib.import_module(module)
                for part in qualname.split(".") if qualname else ():
                    value = getattr(value, part)
                self.ns[name] = value
            except Exception as exc:  # reported to the parent, the job goes on
                what = f"{module}.{qualname}" if qualname else module
                skipped.append(
                    {
                        "name": name,
                        "type": "import",
                        "reason": f"import of {what} failed: {type(exc).__name__}: {exc}",
                    }
                )
        seed = self.spec.get("seed")
        if seed:
            token = self.spec["token"]
            if seed["transport"] == "stream":
                data = take_stream(_INBOX.pop(token, bytearray()), seed["sha256"], seed["nbytes"])
                values = decode(data, token)
            else:
                pieces = seed.get("pieces", 1)
                try:
                    values = load_file(seed["path"], token, pieces)
                finally:
                    for path in piece_paths(seed["path"], pieces):
                        _unlink(path)
            self.ns.update(values)
            for key, value in values.items():
                self.seeded_ids[key] = id(value)
                self.fingerprints[key] = self.prints.take(value)
        if self.spec.get("script_file"):
            self.ns["__file__"] = self.spec["script_file"]
        return skipped

    def _start_arena(self) -> _Arena | None:
        out = self.spec.get("results") or {}
        paths = out.get("paths") or []
        # Only for shared memory (the last candidate is the job's folder on disk), and
        # only where the pieces can be mapped back.
        if (
            out.get("transport") != "file"
            or not out.get("arena")
            or len(paths) < 2
            or _map_fixed() is None
        ):
            return None
        return _Arena(paths[0])

    def _save_results(self, before: dict[str, int]) -> dict[str, Any]:
        out = self.spec.get("results")
        if not out:
            return {"names": [], "modules": {}, "skipped": []}
        changed = [
            k
            for k, v in list(self.ns.items())
            if not is_internal_name(k) and before.get(k) != id(v)
        ]
        mutated = (
            [
                k
                for k, v in list(self.ns.items())
                if k in self.seeded_ids
                and self.seeded_ids[k] == id(v)
                and before.get(k) == id(v)
                and self.prints.changed(self.fingerprints.get(k), v)
            ]
            if self.seeded_ids
            else []
        )
        names = changed + mutated
        modules = {
            k: self.ns[k].__name__ for k in names if isinstance(self.ns[k], types.ModuleType)
        }
        values = {k: self.ns[k] for k in names if k not in modules}
        result_t0 = time.time()
        arena, self.arena = self.arena, None
        prepared = arena.stop() if arena is not None else 0
        parts, skipped, info = encode(values, self.spec["token"])
        travelled = sorted(set(info["pickled"]) | set(info["dill"]))
        result: dict[str, Any] = {
            "names": travelled,
            "mutated": sorted(set(mutated) & set(travelled)),
            "modules": modules,
            "skipped": skipped,
            "nbytes": info["nbytes"],
            "t_compared": result_t0,
        }
        if not travelled or out.get("transport") == "stream":
            if arena is not None:
                arena.discard()
        if not travelled:
            return result
        if out.get("transport") == "stream":
            chunks, digest, size = stream_chunks(parts)
            for seq, chunk in enumerate(chunks):
                self.emit("chunk", seq=seq, data=chunk)
            result.update(transport="stream", sha256=digest, nbytes=size)
        else:
            reserved = sum(arena.sizes) if arena is not None and prepared else 0
            path = pick_path(out["paths"], info["nbytes"], reserved)
            if arena is not None and (not prepared or path != out["paths"][0]):
                arena.discard()
                prepared = 0
            result["t_encoded"] = time.time()
            path, pieces = write_somewhere(out["paths"], path, parts, prepared)
            result.update(transport="file", path=path, pieces=pieces, t_written=time.time())
        return result


def resend(request_json: str) -> None:
    """Send each result on its own file: the parent could not load them all at once."""
    request = json.loads(request_json)
    runner = _Runner({"token": request["token"]})
    for name, candidates in request["paths"].items():
        if name not in runner.ns:
            runner.emit("resent", name=name, error="the job no longer holds it")
            continue
        try:
            parts, skipped, info = encode({name: runner.ns[name]}, request["token"])
            if skipped:
                raise SnapshotError(skipped[0]["reason"])
            path, pieces = write_somewhere(candidates, pick_path(candidates, info["nbytes"]), parts)
            runner.emit("resent", name=name, path=path, pieces=pieces)
        except Exception as exc:
            runner.emit("resent", name=name, error=f"{type(exc).__name__}: {exc}")


CURRENT: _Runner | None = None
_last_progress = 0.0


def report_progress(units: int, total: int | None = None) -> None:
    """Inside a job: set the job's progress to ``units`` (of ``total``) for its row."""
    global _last_progress
    if CURRENT is None:
        raise RuntimeError("not inside a job")
    now = time.monotonic()
    # Tight loops call this often; the row needs at most ~20 updates a second.
    if total is None or units < total:
        if now - _last_progress < 0.05:
            return
    _last_progress = now
    CURRENT.emit("progress", units=units, total=total)


def report_status(text: str) -> None:
    """Inside a job: set the job's status text."""
    if CURRENT is None:
        raise RuntimeError("not inside a job")
    CURRENT.emit("status", text=text)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _get_ipython() -> Any:
    try:
        from IPython import get_ipython

        return get_ipython()
    except ImportError:
        return None


def _main_ns() -> dict[str, Any]:
    import __main__

    ns: dict[str, Any] = __main__.__dict__
    return ns


def run(spec_json: str) -> None:
    """Run one job described by ``spec_json``; never raises."""
    global CURRENT
    CURRENT = _Runner(json.loads(spec_json))
    try:
        CURRENT.run()
    finally:
        CURRENT = None


async def run_async(spec_json: str) -> None:
    """``run`` for a job whose code uses top-level ``await``; the kernel awaits it."""
    global CURRENT
    CURRENT = _Runner(json.loads(spec_json))
    try:
        await CURRENT.run_async()
    finally:
        CURRENT = None


class NoStdinError(EOFError):
    """A background job read from stdin: it has no keyboard."""


_NO_KEYBOARD = (
    "{what}, but a background job has no keyboard to read from. Give the job "
    "the value instead: set it in a notebook variable before starting the job (it travels "
    "with --env auto or --env NAME), or put it in an environment variable or a file."
)


class _NoStdin:
    """``sys.stdin`` of a job: every read fails at once, saying why, instead of hanging."""

    closed = False
    encoding = "utf-8"

    def _fail(self, *_: Any, **__: Any) -> Any:
        raise NoStdinError(_NO_KEYBOARD.format(what="the job read sys.stdin"))

    read = readline = readlines = fileno = __next__ = _fail

    def __iter__(self) -> _NoStdin:
        return self

    def isatty(self) -> bool:
        return False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _no_input(prompt: Any = "", *_: Any, **__: Any) -> str:
    raise NoStdinError(_NO_KEYBOARD.format(what="input() was called"))


def _no_getpass(prompt: Any = "", *_: Any, **__: Any) -> str:
    raise NoStdinError(
        _NO_KEYBOARD.format(what="getpass() was called")
        + " For a secret, an environment variable set in the notebook is the usual way."
    )


def _no_keyboard() -> tuple[Any, ...]:
    """Make input(), getpass() and sys.stdin fail at once; returns what to put back."""
    import builtins
    import getpass

    saved = (builtins.input, getpass.getpass, sys.stdin)
    builtins.input = _no_input
    getpass.getpass = _no_getpass
    sys.stdin = _NoStdin()
    return saved


def _restore_io(saved: tuple[Any, ...]) -> None:
    import builtins
    import getpass

    builtins.input, getpass.getpass, sys.stdin = saved


# A job's print goes out in messages of at most about this many characters, however it
# writes: one huge line or a flood of small ones never makes one huge message.
_MESSAGE_CHARS = 1 << 18


def _bound_stream(stream: Any) -> Callable[[], None]:
    """Split large writes to ``stream`` and flush every ``_MESSAGE_CHARS``; returns the
    undo. The stream's own ``write`` is kept, so ``isinstance`` checks still hold."""
    write = getattr(stream, "write", None)
    flush = getattr(stream, "flush", None)
    if write is None or flush is None:
        return lambda: None
    pending = 0

    def bounded(text: str) -> int:
        nonlocal pending
        n = len(text)
        if pending + n < _MESSAGE_CHARS:
            pending += n
            return write(text) or n
        for start in range(0, n, _MESSAGE_CHARS):
            write(text[start : start + _MESSAGE_CHARS])
            flush()
        pending = 0
        return n

    try:
        stream.write = bounded
    except (AttributeError, TypeError):
        return lambda: None

    def undo() -> None:
        try:
            del stream.write
        except AttributeError:
            pass

    return undo
