"""The worker processes of a queue: R's ``WorkerPool``, and one ``Worker`` each.

A worker is ``_inside/worker.py``, started by ``_procs`` in a process group of its own, so
ending it ends what its task started too. The parent talks to it over a socket pair, sees
which task it runs (and since when) in a 16-byte shared slot, and reads what a task printed
from two files the worker writes as the task prints.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import mmap
import os
import pickle
import socket
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .._calling import check_flag, check_seconds
from .._config import settings
from .._errors import JobSpecError, TaskError
from .._inside import procs as _procs
from .._inside.worker import FRAME, SLOT, read_capture

# A worker's states besides starting: waiting for work, with tasks on it, a spare started
# ahead of need, ended.
from .._states import FINISHED, SPARE, STARTING, WORKER_MOVES
from .._states import W_IDLE as IDLE
from .tasks import Task

_WORKER = str(Path(__file__).parent.parent / "_inside" / "worker.py")
# Names of the workers' output files, unique in this process.
_WORKER_FILES = itertools.count(1)


class Worker:
    """One worker process of a pool."""

    def __init__(self, folder: Path, reserve: bool = False) -> None:
        # A reserve worker starts ahead of need and waits, "spare", to replace one that is
        # ended for overrunning the time limit or dies, without a process start's delay.
        self.reserve = reserve
        # The task's stdout and stderr, written by the worker as they come: what a task
        # printed before its worker was killed is read from here (``output``).
        n = next(_WORKER_FILES)
        self._capture_paths = [folder / f"worker{n}.stdout", folder / f"worker{n}.stderr"]
        self._capture_fds = [
            os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            for p in self._capture_paths
        ]
        self.output = ("", "")
        parent, child = socket.socketpair()
        self._slot_file = tempfile.TemporaryFile()
        self._slot_file.truncate(SLOT.size)
        self._err = tempfile.TemporaryFile()
        fds = (child.fileno(), self._slot_file.fileno(), *self._capture_fds)
        # Its own process group: ending a worker ends what its task started too.
        self.proc = _procs.start(
            [sys.executable, _WORKER, *map(str, fds), str(os.getpid())],
            pass_fds=fds,
            stderr=self._err,
        )
        child.close()
        self.sock = parent
        self._buf = bytearray()
        self._slot = mmap.mmap(self._slot_file.fileno(), SLOT.size)
        self.pid: int = self.proc.pid
        self.state = STARTING
        self.task: Task | None = None
        self.ahead: collections.deque[Task] = collections.deque()
        self.funs: set[int] = set()
        hello = {
            "sys_path": [p for p in sys.path if p],
            "cwd": os.getcwd(),
            "peaks": settings.sample_usage,
        }
        self._send(pickle.dumps(hello))

    def move(self, target: str) -> None:
        """Into ``target`` by one of a worker's moves (``TransitionError`` for another)."""
        self.state = WORKER_MOVES.move(self.state, target)

    def _send(self, data: bytes) -> None:
        self.sock.sendall(FRAME.pack(len(data)) + data)

    def read_frames(self) -> list[bytes] | None:
        """The whole messages that have arrived (one read; call when readable), or None
        when the worker's end is closed."""
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            return None
        if not data:
            return None
        buf = self._buf
        buf += data
        frames = []
        pos = 0
        head = FRAME.size
        while len(buf) - pos >= head:
            (size,) = FRAME.unpack_from(buf, pos)
            if len(buf) - pos - head < size:
                break
            frames.append(bytes(buf[pos + head : pos + head + size]))
            pos += head + size
        del buf[:pos]
        return frames

    def running(self) -> tuple[int, float]:
        """(index of the task running now or -1, its start on the monotonic clock)."""
        index, start = SLOT.unpack_from(self._slot, 0)
        return int(index), float(start)

    def send(self, batch: list[tuple[int, int, bytes | None, bytes]] | None) -> None:
        self._send(pickle.dumps(batch, protocol=5))

    def kill(self) -> None:
        """End the worker and whatever its task started, at once, and reap it (also one
        that has ended already: what it left in its group ends too)."""
        if self.state == FINISHED:
            return
        _procs.end(self.proc, grace=0)
        self.move(FINISHED)
        if self._capture_fds:
            try:
                # What the task that was running printed, for its row.
                out, err = (read_capture(fd) for fd in self._capture_fds)
                self.output = (
                    out.decode("utf-8", errors="replace"),
                    err.decode("utf-8", errors="replace"),
                )
            except OSError:
                pass
        for closer in (self.sock.close, self._slot.close, self._slot_file.close):
            try:
                closer()
            except (OSError, ValueError):
                pass
        for fd in self._capture_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        for path in self._capture_paths:
            try:
                path.unlink()
            except OSError:
                pass
        self._capture_fds = []

    def startup_error(self) -> str:
        self._err.seek(0)
        text = self._err.read().decode("utf-8", errors="replace").strip()
        return text.splitlines()[-1] if text else ""

    def exit_reason(self) -> tuple[int, str]:
        """(status code for the task, why the worker ended, in words)."""
        rc = self.proc.poll()
        if rc is None:
            return _procs.CODE_LOST, "the worker process stopped answering"
        # A worker that exits 0 mid-task did not run it well: that code is not "ok".
        code = _procs.status_code(rc) or _procs.CODE_LOST
        return code, _procs.death_reason(rc, "the worker process", with_code=False)

    def failed_to_start(self) -> None:
        """Raise why the worker, which ended before it said it was ready, could not start."""
        self.kill()
        why = self.startup_error() or "it exited at once"
        raise TaskError(f"a queue worker could not start: {why}")

    def started(self, frame: bytes) -> None:
        """Take the worker's first message, which says it is ready."""
        if frame != b"ready":
            raise TaskError(f"a queue worker sent {frame[:40]!r} before saying it was ready")
        self.move(SPARE if self.reserve else IDLE)

    def __repr__(self) -> str:
        task = f" running {self.task.id}" if self.task else ""
        return f"<Worker pid={self.pid} {self.state}{task}>"


class WorkerPool:
    """A set of persistent worker processes (R's ``WorkerPool``).

    Workers start when first needed (or on ``refill()``) and live until ``shutdown()``.
    """

    def __init__(self, workers: int = 4) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise JobSpecError(
                f"workers must be a whole number >= 1, got {workers!r}: e.g. workers=4"
            )
        self.size = workers
        self.workers: list[Worker] = []
        self._lock = threading.Lock()
        # Private (0700) folder of the workers' output files; made when the first worker
        # starts, removed by shutdown().
        self._folder: Path | None = None
        _live_pools.add(self)

    def refill(self, reserve: bool = False) -> list[Worker]:
        """Start workers until the pool has ``size`` live ones (and, with ``reserve``, one
        spare besides); returns the new ones."""
        check_flag("reserve", reserve)
        with self._lock:
            self.workers = [w for w in self.workers if w.state != FINISHED]
            missing = self.size - sum(1 for w in self.workers if not w.reserve)
            spare = reserve and not any(w.reserve for w in self.workers)
            if missing <= 0 and not spare:
                return []
            if self._folder is None or not self._folder.is_dir():
                self._folder = Path(tempfile.mkdtemp(prefix="bgjobs-pool-"))
            new = [Worker(self._folder) for _ in range(missing)]
            if spare:
                new.append(Worker(self._folder, reserve=True))
            self.workers.extend(new)
            return new

    def promote_spare(self) -> bool:
        """Turn the spare worker, if there is one, into a regular one."""
        with self._lock:
            for w in self.workers:
                if w.reserve and w.state != FINISHED:
                    w.reserve = False
                    if w.state == SPARE:
                        w.move(IDLE)
                    return True
        return False

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until every started worker has said it is ready."""
        import selectors

        check_seconds("timeout", timeout)
        deadline = time.monotonic() + timeout
        for w in list(self.workers):
            with selectors.DefaultSelector() as sel:
                sel.register(w.sock, selectors.EVENT_READ)
                while w.state == STARTING:
                    left = deadline - time.monotonic()
                    if left <= 0 or not sel.select(left):
                        raise TaskError("a worker did not start within the time allowed")
                    frames = w.read_frames()
                    if frames is None:
                        w.failed_to_start()
                    elif frames:
                        w.started(frames[0])

    def state(self) -> list[dict[str, Any]]:
        """Each worker: its pid, state (starting, idle, busy, spare, finished) and task id."""
        import selectors

        for w in list(self.workers):
            if w.state != STARTING:
                continue
            with selectors.DefaultSelector() as sel:
                sel.register(w.sock, selectors.EVENT_READ)
                if sel.select(0):
                    frames = w.read_frames()
                    if frames:
                        w.started(frames[0])
        return [
            {"worker_id": w.pid, "state": w.state, "task": w.task.id if w.task else None}
            for w in self.workers
        ]

    def shutdown(self) -> None:
        """End every worker (and anything its task started) at once. A worker holds no
        state between tasks, so ending an idle one loses nothing."""
        with self._lock:
            workers, self.workers = self.workers, []
            folder, self._folder = self._folder, None
        for w in workers:
            w.kill()
        _remove_folder(folder)

    def __del__(self) -> None:
        # A pool dropped without shutdown() still takes its processes with it.
        for w in list(getattr(self, "workers", [])):
            try:
                w.kill()
            except Exception:
                pass
        if getattr(self, "_folder", None) is not None:
            try:
                _remove_folder(self._folder)
            except Exception:
                pass  # at interpreter exit the module's names may be gone already

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        live = sum(w.state != FINISHED for w in self.workers)
        return f"<WorkerPool size={self.size}, {live} live workers>"


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def _end_all_pools() -> None:
    for pool in list(_live_pools):
        pool.shutdown()


def _remove_folder(folder: Path | None) -> None:
    if folder is not None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_end_all_pools)
