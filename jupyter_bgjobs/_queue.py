"""Queue: many tasks on a pool of persistent worker processes; ``run()`` returns a DataFrame.

R's ``queue`` package in Python. One controller loop owns all state: it sends tasks to
workers in the order they were added (a few at a time once tasks prove fast), reads results
as they arrive (one selector over the workers' sockets), ends a
worker whose task overruns the time limit, replaces workers that die, and keeps the
counts shown while it runs. ``run()`` drives that loop in the caller's thread, so Ctrl-C
lands there; ``start()`` drives it in a thread of its own.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from ._errors import (
    JobFailedError,
    JobSpecError,
    JobStateError,
    RemoteTraceback,
    TaskError,
    TaskPickleError,
    TaskTimeoutError,
    WorkerDiedError,
)
from ._worker import read_capture

STATES = ("created", "waiting", "assigned", "running", "done")
COLUMNS = (
    "task_id",
    "worker_id",
    "state",
    "result",
    "runtime",
    "fun",
    "args",
    "created",
    "queued",
    "assigned",
    "started",
    "finished",
    "code",
    "message",
    "stdout",
    "stderr",
    "error",
)
# Status codes of a finished task, as a shell would give them.
CODE_OK, CODE_ERROR, CODE_PICKLE, CODE_TIMEOUT, CODE_CANCELLED = 0, 1, 2, 124, 130
_WORKER = str(Path(__file__).with_name("_worker.py"))
_SLOT_SIZE = 16
_FRAME = struct.Struct("<I")
# Arguments of these types go through the standard pickler, faster than cloudpickle.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})
# Tasks queued ahead in a worker: enough for ~2 ms of work, so fast tasks do not wait for a
# round trip each, while slow ones are handed out one at a time and stay balanced.
_AHEAD_SECONDS = 0.002
_AHEAD_MAX = 64


class Task:
    """One call ``fun(*args, **kwargs)`` and what became of it (a row of the result)."""

    def __init__(
        self,
        task_id: str,
        fun: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.id = task_id
        self.fun = fun
        self.args = args
        self.kwargs = kwargs
        self.state = "created"
        self.result: Any = None
        self.error: BaseException | None = None
        self.code: int | None = None
        self.message = ""
        self.stdout = ""
        self.stderr = ""
        self.worker_id: int | None = None
        self.created = time.time()
        self.queued: float | None = None
        self.assigned: float | None = None
        self.started: float | None = None
        self.finished: float | None = None

    @property
    def runtime(self) -> timedelta | None:
        """How long the function ran, once the task is done."""
        if self.started is None or self.finished is None:
            return None
        return timedelta(seconds=self.finished - self.started)

    @property
    def ok(self) -> bool:
        """True when the task is done and its function returned."""
        return self.state == "done" and self.code == CODE_OK

    def _finish(self, code: int, message: str, error: BaseException | None = None) -> None:
        self.state = "done"
        self.code = code
        self.message = message
        self.error = error
        if self.finished is None:
            self.finished = time.time()

    def _requeue(self) -> None:
        self.state = "waiting"
        self.worker_id = None
        self.assigned = None
        self.started = None

    def __repr__(self) -> str:
        extra = f" code={self.code} {self.message!r}" if self.state == "done" else ""
        return f"<Task {self.id} {self.state}{extra}>"


class TaskList:
    """The tasks of a queue, in the order they were added (R's ``TaskList``)."""

    def __init__(self) -> None:
        self._tasks: list[Task] = []
        self._by_id: dict[str, Task] = {}
        self._counter = itertools.count(1)

    def add(
        self,
        fun: Callable[..., Any],
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Task:
        """Add a task; its id defaults to ``task_1``, ``task_2``, ..."""
        _check_call("a task", fun, args, kwargs, "q.add(math.sqrt, args=(2,))")
        if id is None:
            id = f"task_{next(self._counter)}"
            while id in self._by_id:
                id = f"task_{next(self._counter)}"
        elif not isinstance(id, str) or not id:
            raise JobSpecError(f"a task id must be a non-empty string, got {id!r}")
        if id in self._by_id:
            raise JobSpecError(f"there is already a task with id {id!r}; ids must be unique")
        task = Task(id, fun, tuple(args), dict(kwargs or {}))
        self._tasks.append(task)
        self._by_id[id] = task
        return task

    def remove(self, id: str) -> Task:
        """Take a task that is not running out of the list."""
        task = self.get(id)
        if task.state in ("assigned", "running"):
            raise JobStateError(f"task {id!r} is {task.state}; it can be removed once done")
        self._tasks.remove(task)
        del self._by_id[id]
        return task

    def get(self, id: str) -> Task:
        """The task with that id."""
        try:
            return self._by_id[id]
        except KeyError:
            raise JobSpecError(f"no task with id {id!r}") from None

    def in_state(self, state: str) -> list[Task]:
        """The tasks in one of the states created, waiting, assigned, running, done."""
        if state not in STATES:
            raise JobSpecError(f"unknown task state {state!r}; one of {', '.join(STATES)}")
        return [t for t in self._tasks if t.state == state]

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state."""
        counts = dict.fromkeys(STATES, 0)
        for t in self._tasks:
            counts[t.state] += 1
        return counts

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per task in the order added (``run()``'s result)."""
        import pandas as pd

        def stamp(values: list[float | None]) -> Any:
            return pd.to_datetime(
                [v if v is not None else float("nan") for v in values], unit="s", utc=True
            )

        tasks = self._tasks
        frame = pd.DataFrame(
            {
                "task_id": pd.Series([t.id for t in tasks], dtype=object),
                "worker_id": pd.array([t.worker_id for t in tasks], dtype="Int64"),
                "state": pd.Series([t.state for t in tasks], dtype=object),
                "result": pd.Series([t.result for t in tasks], dtype=object),
                "runtime": None,
                "fun": pd.Series([t.fun for t in tasks], dtype=object),
                "args": pd.Series([t.args for t in tasks], dtype=object),
                "created": stamp([t.created for t in tasks]),
                "queued": stamp([t.queued for t in tasks]),
                "assigned": stamp([t.assigned for t in tasks]),
                "started": stamp([t.started for t in tasks]),
                "finished": stamp([t.finished for t in tasks]),
                "code": pd.array([t.code for t in tasks], dtype="Int64"),
                "message": pd.Series([t.message for t in tasks], dtype=object),
                "stdout": pd.Series([t.stdout for t in tasks], dtype=object),
                "stderr": pd.Series([t.stderr for t in tasks], dtype=object),
                "error": pd.Series([t.error for t in tasks], dtype=object),
            },
            columns=list(COLUMNS),
        )
        # From the same timestamps as the columns beside it, so the two always agree.
        frame["runtime"] = frame["finished"] - frame["started"]
        return frame

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks))

    def __getitem__(self, key: int | str) -> Task:
        return self.get(key) if isinstance(key, str) else self._tasks[key]

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        return f"<TaskList {len(self)} tasks: {counts or 'empty'}>"


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
        self._slot_file.truncate(_SLOT_SIZE)
        self._err = tempfile.TemporaryFile()
        fds = (child.fileno(), self._slot_file.fileno(), *self._capture_fds)
        self.proc = subprocess.Popen(
            [sys.executable, _WORKER, *map(str, fds), str(os.getpid())],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            # Its own process group: ending a worker ends what its task started too.
            start_new_session=True,
        )
        child.close()
        self.sock = parent
        self._buf = bytearray()
        import mmap

        self._slot = mmap.mmap(self._slot_file.fileno(), _SLOT_SIZE)
        self.pid: int = self.proc.pid
        self.state = "starting"
        self.task: Task | None = None
        self.ahead: collections.deque[Task] = collections.deque()
        self.funs: set[int] = set()
        hello = {"sys_path": [p for p in sys.path if p], "cwd": os.getcwd()}
        self._send(pickle.dumps(hello))

    def _send(self, data: bytes) -> None:
        self.sock.sendall(_FRAME.pack(len(data)) + data)

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
        while len(buf) - pos >= 4:
            (size,) = _FRAME.unpack_from(buf, pos)
            if len(buf) - pos - 4 < size:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        del buf[:pos]
        return frames

    def running(self) -> tuple[int, float]:
        """(index of the task running now or -1, its start on the monotonic clock)."""
        index, start = struct.unpack_from("<qd", self._slot, 0)
        return int(index), float(start)

    def send(self, batch: list[tuple[int, int, bytes | None, bytes]] | None) -> None:
        self._send(pickle.dumps(batch, protocol=5))

    def kill(self) -> None:
        """End the worker and whatever its task started, at once."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reap()

    def _reap(self) -> None:
        # After SIGKILL the wait is short; waitpid without a timeout does not poll.
        self.proc.wait()
        self.state = "finished"
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
            return 255, "the worker process stopped answering"
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            return 128 - rc, f"the worker process was killed by {name}"
        return rc or 255, f"the worker process exited with code {rc}"

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
        _check_flag("reserve", reserve)
        with self._lock:
            self.workers = [w for w in self.workers if w.state != "finished"]
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
                if w.reserve and w.state != "finished":
                    w.reserve = False
                    if w.state == "spare":
                        w.state = "idle"
                    return True
        return False

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until every started worker has said it is ready."""
        import selectors

        _check_seconds("timeout", timeout)
        deadline = time.monotonic() + timeout
        for w in list(self.workers):
            with selectors.DefaultSelector() as sel:
                sel.register(w.sock, selectors.EVENT_READ)
                while w.state == "starting":
                    left = deadline - time.monotonic()
                    if left <= 0 or not sel.select(left):
                        raise TaskError("a worker did not start within the time allowed")
                    frames = w.read_frames()
                    if frames is None:
                        _failed_start(w)
                    elif frames:
                        _ready(w, frames[0])

    def state(self) -> list[dict[str, Any]]:
        """Each worker: its pid, state (starting, idle, busy, spare, finished) and task id."""
        import selectors

        for w in list(self.workers):
            if w.state != "starting":
                continue
            with selectors.DefaultSelector() as sel:
                sel.register(w.sock, selectors.EVENT_READ)
                if sel.select(0):
                    frames = w.read_frames()
                    if frames:
                        _ready(w, frames[0])
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
        live = sum(w.state != "finished" for w in self.workers)
        return f"<WorkerPool size={self.size}, {live} live workers>"


_live_pools: Any = __import__("weakref").WeakSet()


def _end_all_pools() -> None:
    for pool in list(_live_pools):
        for w in list(pool.workers):
            w.kill()
        _remove_folder(pool._folder)
        pool._folder = None


def _remove_folder(folder: Path | None) -> None:
    if folder is not None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


__import__("atexit").register(_end_all_pools)


def _failed_start(w: Worker) -> None:
    w._reap()
    raise TaskError("a queue worker could not start: " + (w.startup_error() or "it exited at once"))


def _ready(w: Worker, frame: bytes) -> None:
    if frame != b"ready":
        raise TaskError(f"a queue worker sent {frame[:40]!r} before saying it was ready")
    w.state = "spare" if w.reserve else "idle"


# Keys of functions cached in workers: unique in this process, since a worker outlives runs.
_FUN_KEYS = itertools.count()
# Names of the workers' output files, unique in this process.
_WORKER_FILES = itertools.count(1)


class _Run:
    """One pass of the controller over the tasks that are waiting."""

    def __init__(
        self,
        pool: WorkerPool,
        tasks: list[Task],
        timelimit: float | None,
        on_progress: Callable[[_Run], None],
        on_finished: Callable[[Task], None],
        interval: float,
    ) -> None:
        self.pool = pool
        self.tasks = tasks
        self.waiting: collections.deque[Task] = collections.deque(tasks)
        self.index = {id(t): i for i, t in enumerate(tasks)}
        self.timelimit = timelimit
        self.on_progress = on_progress
        self.on_finished = on_finished
        self.interval = interval
        self.fun_bytes: dict[int, bytes] = {}
        self.fun_keys: dict[int, int] = {}
        self.keep_alive: list[Any] = []  # the functions whose ids are keys
        self.mean_runtime: float | None = None
        self.left = len(tasks)
        self.stop = threading.Event()

    # -- sending ----------------------------------------------------------------------
    def _fun_key(self, fun: Callable[..., Any]) -> int:
        key = self.fun_keys.get(id(fun))
        if key is None:
            import cloudpickle

            key = next(_FUN_KEYS)
            self.fun_bytes[key] = cloudpickle.dumps((fun, _cell_sources(fun)), protocol=5)
            self.fun_keys[id(fun)] = key
            self.keep_alive.append(fun)
        return key

    def _ahead(self, live: int) -> int:
        if self.mean_runtime is None:
            return 1
        n = int(_AHEAD_SECONDS / max(self.mean_runtime, 1e-6))
        fair = math.ceil(len(self.waiting) / max(live, 1))
        return max(1, min(_AHEAD_MAX, n, fair))

    def dispatch(self) -> None:
        import cloudpickle

        ready = [w for w in self.pool.workers if w.state in ("idle", "busy")]
        ahead = self._ahead(len(ready))
        for w in ready:
            batch: list[tuple[int, int, bytes | None, bytes]] = []
            while self.waiting and len(w.ahead) < ahead:
                task = self.waiting.popleft()
                try:
                    key = self._fun_key(task.fun)
                except Exception as exc:
                    self._done(
                        task,
                        CODE_PICKLE,
                        f"the function cannot be pickled: {exc}",
                        TaskPickleError(f"task {task.id}: the function cannot be pickled: {exc}"),
                    )
                    continue
                try:
                    plain = all(type(a) in _PLAIN for a in task.args) and all(
                        type(v) in _PLAIN for v in task.kwargs.values()
                    )
                    args = (pickle if plain else cloudpickle).dumps(
                        (task.args, task.kwargs), protocol=5
                    )
                except Exception as exc:
                    self._done(
                        task,
                        CODE_PICKLE,
                        f"the arguments cannot be pickled: {exc}",
                        TaskPickleError(f"task {task.id}: the arguments cannot be pickled: {exc}"),
                    )
                    continue
                index = self.index[id(task)]
                batch.append((index, key, None if key in w.funs else self.fun_bytes[key], args))
                w.funs.add(key)
                task.state = "assigned"
                task.assigned = time.time()
                task.worker_id = w.pid
                w.ahead.append(task)
            if batch:
                try:
                    w.send(batch)
                except OSError:
                    pass  # it died; its reader sees the end and requeues these
                w.state = "busy"

    # -- receiving ----------------------------------------------------------------------
    def _done(self, task: Task, code: int, message: str, error: BaseException | None) -> None:
        task._finish(code, message, error)
        self.left -= 1
        self.on_finished(task)

    def _result(self, w: Worker, raw: bytes) -> None:
        index, code, payload, out, err, started, finished = pickle.loads(raw)
        task = self.tasks[index]
        if w.ahead and w.ahead[0] is task:
            w.ahead.popleft()
        else:
            w.ahead.remove(task)
        task.stdout, task.stderr = out, err
        task.started, task.finished = started, finished
        runtime = finished - started
        self.mean_runtime = (
            runtime if self.mean_runtime is None else 0.8 * self.mean_runtime + 0.2 * runtime
        )
        if code == CODE_OK:
            try:
                task.result = pickle.loads(payload)
            except Exception as exc:
                self._done(
                    task,
                    CODE_PICKLE,
                    f"the result cannot be loaded here: {exc}",
                    TaskPickleError(f"task {task.id}: the result cannot be loaded here: {exc}"),
                )
            else:
                self._done(task, CODE_OK, "done", None)
        elif code == CODE_ERROR:
            error, _ = _load_error(payload)
            self._done(task, CODE_ERROR, _error_message(error), error)
        else:
            self._done(
                task, CODE_PICKLE, str(payload), TaskPickleError(f"task {task.id}: {payload}")
            )
        if not w.ahead:
            w.state = "idle"
            w.task = None

    def _lost(self, w: Worker, code: int, message: str, error: BaseException) -> None:
        """A worker ended with tasks on it: the running one fails, the rest wait again."""
        index, start = w.running()
        running = self.tasks[index] if 0 <= index < len(self.tasks) else None
        w.kill()
        for task in list(w.ahead):
            if task is running:
                # What it printed before the end, read from the worker's files.
                task.stdout, task.stderr = w.output
                if task.started is None:
                    task.started = time.time() - (time.monotonic() - start)
                task.finished = time.time()
                self._done(task, code, message, error)
        requeue = [t for t in w.ahead if t is not running]
        for task in reversed(requeue):
            task._requeue()
            self.waiting.appendleft(task)
        w.ahead.clear()
        w.task = None
        self.pool.promote_spare()

    def _died(self, w: Worker) -> None:
        if w.state == "starting":
            _failed_start(w)
        w.proc.wait(5) if w.proc.poll() is None else None
        code, why = w.exit_reason()
        index, _ = w.running()
        name = self.tasks[index].id if 0 <= index < len(self.tasks) else "?"
        self._lost(w, code, why, WorkerDiedError(f"task {name}: {why}"))

    def _read(self, w: Worker) -> None:
        frames = w.read_frames()
        if frames is None:
            self._died(w)
            return
        for raw in frames:
            if w.state == "starting":
                _ready(w, raw)
            else:
                self._result(w, raw)

    # -- the loop -----------------------------------------------------------------------
    def _check_running(self, enforce: bool = True) -> float:
        """Mark running tasks, end overrunning ones; return seconds to the next deadline."""
        now = time.monotonic()
        wake = self.interval
        for w in list(self.pool.workers):
            if w.state != "busy":
                continue
            index, start = w.running()
            if index < 0 or start <= 0 or not 0 <= index < len(self.tasks):
                continue
            task = self.tasks[index]
            if task.state == "assigned" and task in w.ahead:
                task.state = "running"
                task.started = time.time() - (now - start)
                w.task = task
            if self.timelimit is None or task.state != "running" or not enforce:
                continue
            over = now - start - self.timelimit
            if over >= 0:
                limit = _seconds(self.timelimit)
                self._lost(
                    w,
                    CODE_TIMEOUT,
                    f"timed out after {limit}; its worker was ended",
                    TaskTimeoutError(f"task {task.id} ran longer than its time limit of {limit}"),
                )
            else:
                wake = min(wake, -over)
        return max(wake, 0.0)

    def loop(self) -> None:
        import selectors

        try:
            self._loop(selectors)
        except BaseException:
            # Interrupted: the states read afterwards say which tasks were running.
            self._check_running(enforce=False)
            raise

    def _loop(self, selectors: Any) -> None:
        self.pool.refill()
        with selectors.DefaultSelector() as sel:
            watched: dict[Worker, Any] = {}
            while self.left > 0:
                if self.stop.is_set():
                    raise _Stopped
                # Overruns first: a spare that replaces an ended worker gets work at once.
                wake = self._check_running()
                self.dispatch()
                # Replacements and the spare start after the tasks are out, not before.
                self.pool.refill(reserve=self.timelimit is not None)
                self.on_progress(self)
                live = [w for w in self.pool.workers if w.state != "finished"]
                for w in [w for w in watched if w not in live]:
                    watched.pop(w)
                    try:
                        sel.unregister(w.sock)
                    except (KeyError, ValueError, OSError):
                        pass
                for w in live:
                    if w not in watched:
                        watched[w] = sel.register(w.sock, selectors.EVENT_READ, w)
                for key, _ in sel.select(wake):
                    w = key.data
                    if w.state != "finished":
                        self._read(w)
        self._check_running()
        self.on_progress(self)


class _Stopped(Exception):
    """The queue was cancelled while it ran."""


def _cell_sources(fun: Any) -> tuple[str, Any] | None:
    """Where a function typed into a notebook cell came from, and the cell's lines: they
    exist only in this process's linecache, and cloudpickle renames the file of the code it
    sends, so the worker needs both to show the code in a traceback."""
    import linecache

    code = getattr(fun, "__code__", None)
    filename = getattr(code, "co_filename", None)
    if not filename:
        return None
    if os.path.exists(filename):
        return (str(filename), None)  # the other process reads the file itself
    entry = linecache.cache.get(filename)
    return None if entry is None else (str(filename), entry)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _load_error(payload: bytes) -> tuple[BaseException, str]:
    """The exception a task or call raised, from ``_worker._error_payload``, and its remote
    traceback text (also set as its ``__cause__``). One that cannot be rebuilt here becomes
    a ``JobFailedError`` with the same type name, message and traceback."""
    try:
        blob, text, meta = pickle.loads(payload)
    except Exception as load_exc:
        text = f"(the exception could not be loaded here: {load_exc})"
        exc: BaseException = TaskError(text)
        exc.__cause__ = RemoteTraceback(text)
        return exc, text
    loaded = None
    if blob is not None:
        try:
            loaded = pickle.loads(blob)
        except Exception:
            loaded = None  # e.g. its class is in a module this process cannot import
    if isinstance(loaded, BaseException):
        exc = loaded
    else:
        name, module, message = meta["type"], meta["module"], meta["message"]
        # Named as Python's traceback names it: with its module, unless built in or __main__.
        shown = name if module in ("builtins", "__main__") else f"{module}.{name}"
        exc = JobFailedError(
            f"{shown}: {message}" if message else shown,
            state="failed",
            ename=name,
            evalue=message,
            traceback=[text],
        )
    exc.__cause__ = RemoteTraceback(text)
    return exc, text


def _error_message(error: BaseException) -> str:
    """A row's ``message`` for a task that raised: ``error: TypeName: text``."""
    if isinstance(error, JobFailedError) and error.ename:
        return f"error: {error}"  # a stand-in: its message starts with the type's name
    return f"error: {type(error).__name__}: {error}"


def _check_seconds(name: str, value: Any, *, none: str = "", zero: bool = False) -> None:
    """Reject a duration that is not a finite number of seconds > 0 (>= 0 with ``zero``);
    ``None`` too, unless ``none`` says what None means here."""
    if value is None and none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        kind = "a number of seconds >= 0" if zero else "a positive number of seconds"
        also = f", or None for {none}" if none else ""
        raise JobSpecError(f"{name} must be {kind}{also}, got {value!r}")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise JobSpecError(f"{name} must be True or False, got {value!r}")


def _check_call(what: str, fun: Any, args: Any, kwargs: Any, example: str) -> None:
    """Reject a function call that cannot be made, before anything is created for it."""
    if not callable(fun):
        raise JobSpecError(
            f"{what} needs a function to call, got {type(fun).__name__} {fun!r:.40}: "
            f"pass the function itself, e.g. {example}"
        )
    if not isinstance(args, (tuple, list)):
        raise JobSpecError(
            f"args must be a tuple of positional arguments, got {type(args).__name__}: "
            "for one argument write args=(x,)"
        )
    if kwargs is not None and not (
        isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)
    ):
        raise JobSpecError(
            f"kwargs must be a dict of keyword arguments by name, got {kwargs!r:.60}: "
            "e.g. kwargs={'n': 3}"
        )


class Queue:
    """Run many function calls in parallel on worker processes (R's ``queue::Queue``).

    ``workers`` is a number of workers, a :class:`WorkerPool` to share, or a
    ``dask.distributed.Client`` to run the tasks on a Dask cluster. ``add()`` tasks, then
    ``run()`` them: a pandas DataFrame comes back, one row per task in the order added.
    ``start()`` runs them without blocking (a row in the Jobs panel); ``wait()`` returns
    the DataFrame.
    """

    def __init__(self, workers: Any = 4) -> None:
        self._dask: Any = None
        if isinstance(workers, WorkerPool):
            self._pool = workers
        elif hasattr(workers, "submit") and hasattr(workers, "scheduler_info"):
            from ._queue_dask import DaskBackend

            self._dask = DaskBackend(workers)
            self._pool = WorkerPool(1)  # unused; get_workers() on Dask describes the cluster
        elif not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise JobSpecError(
                f"workers must be a whole number >= 1, a WorkerPool or a dask.distributed "
                f"Client, got {workers!r:.40}: e.g. Queue(workers=4)"
            )
        else:
            self._pool = WorkerPool(workers)
        self._tasks = TaskList()
        self._thread: threading.Thread | None = None
        self._run: _Run | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()

    def add(
        self,
        fun: Callable[..., Any],
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Task:
        """Add ``fun(*args, **kwargs)`` as a task; returns the Task (ids: task_1, ...)."""
        return self._tasks.add(fun, args, kwargs, id)

    def get_workers(self) -> Any:
        """The WorkerPool (or, on Dask, the client)."""
        return self._dask.client if self._dask is not None else self._pool

    def get_tasks(self) -> TaskList:
        """The TaskList."""
        return self._tasks

    @property
    def running(self) -> bool:
        """True while ``start()``'s run is going on."""
        return self._thread is not None and self._thread.is_alive()

    def run(
        self,
        timelimit: float | None = 60,
        message: str = "minimal",
        interval: float = 0.05,
        shutdown: bool = True,
    ) -> Any:
        """Run every task not yet done and return the DataFrame of all tasks.

        ``timelimit`` seconds per task (``None``: none): a task that runs longer is ended
        with its worker, which is replaced. ``message``: ``"none"``, ``"minimal"`` (live
        counts) or ``"verbose"`` (also a line per finished task). ``interval``: the longest
        the controller sleeps between checks. ``shutdown=False`` keeps the workers for the
        next run. Ctrl-C ends the workers, keeps the tasks' states, and re-raises.
        """
        self._check_args(timelimit, message, interval, shutdown)
        if self.running:
            raise JobStateError("this queue is already running (start()); use wait()")
        display = _Messages(self, message, blocking=True)
        try:
            self._drive(timelimit, interval, display)
        except BaseException:
            # Ctrl-C or a fault: no worker outlives an interrupted run; states stay readable.
            self._abort("interrupted before it finished")
            self._shutdown_workers()
            display.close(interrupted=True)
            raise
        if shutdown:
            self._shutdown_workers()
        display.close()
        return self._tasks.to_frame()

    def start(
        self,
        timelimit: float | None = 60,
        message: str = "minimal",
        interval: float = 0.05,
        shutdown: bool = True,
    ) -> Queue:
        """Run the tasks in the background and return at once; ``wait()`` for the result.

        The queue shows in the Jobs panel as one row with ``done/total`` and a Stop button.
        """
        self._check_args(timelimit, message, interval, shutdown)
        if self.running:
            raise JobStateError("this queue is already running; use wait()")
        self._stop.clear()
        self._error = None
        display = _Messages(self, message, blocking=False)

        def body() -> None:
            try:
                self._drive(timelimit, interval, display)
            except _Stopped:
                self._abort("cancelled", code=CODE_CANCELLED)
            except BaseException as exc:
                self._error = exc
                self._abort(f"not run: {exc}")
            finally:
                if shutdown or self._error is not None or self._stop.is_set():
                    self._shutdown_workers()
                display.close(interrupted=self._stop.is_set() or self._error is not None)

        self._thread = threading.Thread(target=body, name="bgjobs-queue", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Block until a ``start()``-ed run ends; return the DataFrame of all tasks."""
        _check_seconds("timeout", timeout, none="no limit", zero=True)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                from ._jobs import WaitTimeout

                raise WaitTimeout(f"the queue is still running after {timeout} s")
        if self._error is not None:
            raise TaskError(f"the queue stopped: {self._error}") from self._error
        return self._tasks.to_frame()

    def cancel(self) -> None:
        """Stop a ``start()``-ed run: workers end; tasks not done say ``cancelled``."""
        self._stop.set()
        if self._run is not None:
            self._run.stop.set()

    def shutdown(self) -> None:
        """End the queue's workers (after ``run(shutdown=False)``)."""
        self.cancel()
        if self._thread is not None:
            self._thread.join()
        self._shutdown_workers()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<Queue {self._tasks!r} on {self.get_workers()!r}>"

    # -- internals ----------------------------------------------------------------------
    @staticmethod
    def _check_args(timelimit: float | None, message: str, interval: float, shutdown: bool) -> None:
        _check_seconds("timelimit", timelimit, none="no limit")
        if not isinstance(message, str) or message not in ("none", "minimal", "verbose"):
            raise JobSpecError(f"message must be 'none', 'minimal' or 'verbose', got {message!r}")
        _check_seconds("interval", interval)
        _check_flag("shutdown", shutdown)

    def _drive(self, timelimit: float | None, interval: float, display: _Messages) -> None:
        todo = [t for t in self._tasks if t.state != "done"]
        now = time.time()
        for t in todo:
            t._requeue()
            t.queued = now
        display.begin(len(todo))
        if self._dask is not None:
            self._dask.run(todo, timelimit, display, self._stop)
            return
        run = _Run(self._pool, todo, timelimit, display.progress, display.finished, interval)
        run.stop = self._stop
        self._run = run
        try:
            run.loop()
        finally:
            self._run = None

    def _abort(self, message: str, code: int | None = None) -> None:
        for t in self._tasks:
            if t.state in ("waiting", "assigned", "running"):
                t.message = message
                if code is not None:
                    t.code = code

    def _shutdown_workers(self) -> None:
        if self._dask is not None:
            return
        workers = list(self._pool.workers)
        self._pool.shutdown()
        # A task stopped mid-run (Ctrl-C, cancel()) keeps what it printed, from its
        # worker's files: they hold the running task's output only.
        printed = {w.pid: w.output for w in workers}
        for t in self._tasks:
            if t.state == "running" and t.worker_id in printed:
                t.stdout, t.stderr = printed[t.worker_id]


class _Messages:
    """What a run shows while it goes: nothing, live counts, or also a line per task."""

    def __init__(self, queue: Queue, mode: str, blocking: bool) -> None:
        self.queue = queue
        self.mode = mode
        self.blocking = blocking
        self.row: Any = None
        self.t0 = time.monotonic()
        self.last = 0.0
        self.total = 0
        self.done = 0
        self.terminal = False

    def begin(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        from ._display import live_frontend

        # Non-blocking runs always get a row (it carries the Stop button).
        if (self.mode != "none" or not self.blocking) and (live_frontend() or not self.blocking):
            from ._progress import add_job

            self.row = add_job(
                "queue",
                progress_units=total,
                actions={"stop": self.queue.cancel},
                running=True,
                auto_remove=False,
                show=live_frontend(),
            )
        elif self.mode != "none":
            self.terminal = True

    def _counts(self) -> str:
        c = self.queue._tasks.counts()
        return f"waiting {c['waiting'] + c['assigned']} · running {c['running']} · done {self.done}"

    def progress(self, run: Any) -> None:
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        if self.row is not None:
            self.row.set_status(self._counts())
            self.row.set_progress(self.done)
        elif self.terminal:
            print(f"\r{self._counts()}  {now - self.t0:.1f} s", end="", file=sys.stderr, flush=True)

    def finished(self, task: Task) -> None:
        self.done += 1
        if self.mode != "verbose":
            return
        runtime = task.runtime.total_seconds() if task.runtime is not None else 0.0
        line = f"{task.id}: {task.message} ({runtime:.3g} s, worker {task.worker_id})"
        if self.row is not None:
            self.row.add_output(line + "\n", error=task.code != CODE_OK)
        if not self.blocking:
            return
        if self.terminal:
            print("\r" + line + " " * 20, file=sys.stderr, flush=True)
        else:
            # run() holds the notebook's own thread: printing here lands under its cell.
            print(line, flush=True)

    def close(self, interrupted: bool = False) -> None:
        elapsed = time.monotonic() - self.t0
        failed = sum(1 for t in self.queue._tasks if t.state == "done" and t.code != CODE_OK)
        word = "stopped" if interrupted else "complete"
        summary = f"Queue {word}: {self.done} of {self.total} tasks done in {elapsed:.2f} s"
        summary += f", {failed} failed" if failed else ""
        if self.row is not None:
            self.row.set_progress(self.done)
            self.row.set_status(summary)
            self.row.set_state(
                "cancelled" if interrupted else ("failed" if failed else "succeeded")
            )
        elif self.terminal:
            print("\r" + summary + " " * 20, file=sys.stderr, flush=True)
