"""One run of a queue's controller: the loop that owns every task's state while it runs.

It sends tasks to workers in the order they were added (a few at a time once tasks prove
fast), reads results as they arrive (one selector over the workers' sockets), ends a worker
whose task overruns the time limit, and replaces workers that die.
"""

from __future__ import annotations

import collections
import itertools
import math
import pickle
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any

from .._calling import cell_sources, error_message, load_error
from .._errors import TaskPickleError, TaskTimeoutError, WorkerDiedError
from .._inside import procs as _procs
from .._inside.outcome import PLAIN
from .._inside.procs import CODE_ERROR, CODE_OK, CODE_PICKLE, CODE_TIMEOUT
from .._states import ASSIGNED, BUSY, FINISHED, RUNNING, STARTING
from .._states import W_IDLE as IDLE
from .pool import Worker, WorkerPool
from .tasks import Task

# Tasks queued ahead in a worker: enough for ~2 ms of work, so fast tasks do not wait for a
# round trip each, while slow ones are handed out one at a time and stay balanced.
_AHEAD_SECONDS = 0.002
_AHEAD_MAX = 64
# Keys of functions cached in workers: unique in this process, since a worker outlives runs.
_FUN_KEYS = itertools.count()


class Stopped(Exception):
    """The queue was cancelled while it ran."""


class Run:
    """One pass of the controller over the tasks that are waiting."""

    def __init__(
        self,
        pool: WorkerPool,
        tasks: list[Task],
        timelimit: float | None,
        on_progress: Callable[[Run], None],
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
            self.fun_bytes[key] = cloudpickle.dumps((fun, cell_sources(fun)), protocol=5)
            self.fun_keys[id(fun)] = key
            self.keep_alive.append(fun)
        return key

    def _ahead(self, live: int) -> int:
        if self.mean_runtime is None:
            return 1
        n = int(_AHEAD_SECONDS / max(self.mean_runtime, 1e-6))
        fair = math.ceil(len(self.waiting) / max(live, 1))
        return max(1, min(_AHEAD_MAX, n, fair))

    def _pack(self, task: Task) -> tuple[int, bytes] | None:
        """The task's function key and pickled arguments; None (its row done) when either
        cannot be pickled."""
        import cloudpickle

        what = "function"
        try:
            key = self._fun_key(task.fun)
            what = "arguments"
            plain = all(type(a) in PLAIN for a in task.args) and all(
                type(v) in PLAIN for v in task.kwargs.values()
            )
            args = (pickle if plain else cloudpickle).dumps((task.args, task.kwargs), protocol=5)
        except Exception as exc:
            why = f"the {what} cannot be pickled: {exc}"
            self._done(task, CODE_PICKLE, why, TaskPickleError(f"task {task.id}: {why}"))
            return None
        return key, args

    def dispatch(self) -> None:
        ready = [w for w in self.pool.workers if w.state in (IDLE, BUSY)]
        ahead = self._ahead(len(ready))
        for w in ready:
            batch: list[tuple[int, int, bytes | None, bytes]] = []
            while self.waiting and len(w.ahead) < ahead:
                task = self.waiting.popleft()
                packed = self._pack(task)
                if packed is None:
                    continue
                key, args = packed
                index = self.index[id(task)]
                batch.append((index, key, None if key in w.funs else self.fun_bytes[key], args))
                w.funs.add(key)
                task.move(ASSIGNED)
                task.assigned = time.time()
                task.worker_id = w.pid
                w.ahead.append(task)
            if batch:
                try:
                    w.send(batch)
                except OSError:
                    pass  # it died; its reader sees the end and requeues these
                w.move(BUSY)

    # -- receiving ----------------------------------------------------------------------
    def _done(self, task: Task, code: int, message: str, error: BaseException | None) -> None:
        task.finish(code, message, error)
        self.left -= 1
        self.on_finished(task)

    def _result(self, w: Worker, raw: bytes) -> None:
        index, code, payload, out, err, started, finished, peak = pickle.loads(raw)
        task = self.tasks[index]
        task.memory = peak
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
            error, _ = load_error(payload)
            self._done(task, CODE_ERROR, error_message(error), error)
        else:
            self._done(
                task, CODE_PICKLE, str(payload), TaskPickleError(f"task {task.id}: {payload}")
            )
        if not w.ahead:
            w.move(IDLE)
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
            task.requeue()
            self.waiting.appendleft(task)
        w.ahead.clear()
        w.task = None
        self.pool.promote_spare()

    def _died(self, w: Worker) -> None:
        if w.state == STARTING:
            w.failed_to_start()
        _procs.reap(w.proc, 5)
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
            if w.state == STARTING:
                w.started(raw)
            else:
                self._result(w, raw)

    # -- the loop -----------------------------------------------------------------------
    def _check_running(self, enforce: bool = True) -> float:
        """Mark running tasks, end overrunning ones; return seconds to the next deadline."""
        now = time.monotonic()
        wake = self.interval
        for w in list(self.pool.workers):
            if w.state != BUSY:
                continue
            index, start = w.running()
            if index < 0 or start <= 0 or not 0 <= index < len(self.tasks):
                continue
            task = self.tasks[index]
            if task.state == ASSIGNED and task in w.ahead:
                task.move(RUNNING)
                task.started = time.time() - (now - start)
                w.task = task
            if self.timelimit is None or task.state != RUNNING or not enforce:
                continue
            over = now - start - self.timelimit
            if over >= 0:
                limit = f"{self.timelimit:g} s"
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
        try:
            self._loop()
        except BaseException:
            # Interrupted: the states read afterwards say which tasks were running.
            self._check_running(enforce=False)
            raise

    def _loop(self) -> None:
        self.pool.refill()
        with selectors.DefaultSelector() as sel:
            watched: dict[Worker, Any] = {}
            while self.left > 0:
                if self.stop.is_set():
                    raise Stopped
                # Overruns first: a spare that replaces an ended worker gets work at once.
                wake = self._check_running()
                self.dispatch()
                # Replacements and the spare start after the tasks are out, not before.
                self.pool.refill(reserve=self.timelimit is not None)
                self.on_progress(self)
                live = [w for w in self.pool.workers if w.state != FINISHED]
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
                    if w.state != FINISHED:
                        self._read(w)
        self._check_running()
        self.on_progress(self)
