"""Memory checks of a job's kernel: whether a seeded object changed in place, the results
arena made ready in shared memory while the job runs, and how much memory is free.

Runs inside the job's kernel (sent as source); standard library only at import time.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import types
import zlib
from typing import Any

from .wire import (
    _PICKLERS,
    _address,
    _in_mapping,
    _pickler_class,
    _pieces_for,
    piece_paths,
    unlink_quietly,
)


class _Fingerprints:
    """Tell, cheaply, whether a seeded object was changed in place.

    An object's in-band pickle is hashed; its out-of-band buffers, when they live in the
    copy-on-write mapping of the snapshot, are checked page by page in /proc/self/pagemap
    (a written page stops being a file page), which costs milliseconds for gigabytes.
    Elsewhere the buffers are hashed.
    """

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.pagemap = _pagemap_readable()

    def take(self, value: Any) -> tuple[Any, ...] | None:

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


_PAGEMAP: list[bool] = []


def _pagemap_readable() -> bool:
    """Whether this process may read its page map: asked once (a template's kernels know
    it from the template)."""
    if not _PAGEMAP:
        _PAGEMAP.append(os.access("/proc/self/pagemap", os.R_OK))
    return _PAGEMAP[0]


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


# How many looks, 50 ms apart, memory must have stayed grown for the arena to follow it.
_STEADY = 4


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
        # Memory the job holds for a while, not what a step of it holds for a moment (a
        # loop that makes and drops an array each turn): the least of the last few looks.
        recent: list[int] = []
        try:
            while not self._stop.wait(0.05):
                recent = [*recent[-(_STEADY - 1) :], _anon_bytes() - self._base]
                want = min(recent)
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
            unlink_quietly(path)


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
