"""The Queue: many function calls on a pool of worker processes, one DataFrame back.

``run()`` drives the controller (``run.Run``) in the caller's thread, so Ctrl-C lands
there; ``start()`` drives it in a thread of its own, ``wait()`` joins it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .. import _checks
from .._calling import check_flag, check_seconds
from .._errors import JobSpecError, JobStateError, TaskError, WaitTimeout
from .._inside.procs import CODE_CANCELLED
from .._states import ASSIGNED, DONE, RUNNING, WAITING
from .messages import MODES, Messages, describe
from .pool import WorkerPool
from .run import Run, Stopped
from .tasks import Task, TaskList


class Queue:
    """Run many function calls in parallel on worker processes (R's ``queue::Queue``).

    ``workers`` is a number of workers, a :class:`WorkerPool` to share, or a
    ``dask.distributed.Client`` to run the tasks on a Dask cluster. ``add()`` tasks, then
    ``run()`` them: a pandas DataFrame comes back, one row per task in the order added.
    ``start()`` runs them without blocking (a row in the Jobs panel); ``wait()`` returns
    the DataFrame.

    ``name`` names the queue's row in the Jobs panel. Without one, the row is named after
    the functions of the tasks it runs, never their arguments: ``queue: 8 × fit``;
    ``queue: 5 × fit, 3 × score`` for two functions, and ``+2 more`` for the functions past
    two; a lambda is ``<lambda>``; `` on dask`` on a Dask cluster. A run that ends with
    some but not all of its tasks failed ends its row ``done, 1 of 8 failed`` in amber; all
    failed is red.
    """  # noqa: RUF002 (the multiplication sign is the name's)

    def __init__(self, workers: Any = 4, name: str | None = None) -> None:
        _checks.text("name", name, optional=True, example="Queue(name='nightly')")
        if name is not None and not name.strip():
            raise JobSpecError(
                f"name must not be blank, got {name!r}: leave it out to name the row after "
                "the tasks, or give a name, for example Queue(name='nightly')"
            )
        self._name = name
        self._dask: Any = None
        if isinstance(workers, WorkerPool):
            self._pool = workers
        elif hasattr(workers, "submit") and hasattr(workers, "scheduler_info"):
            from .dask import DaskBackend

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
        self._run: Run | None = None
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
        display = Messages(self._tasks, self.cancel, message, blocking=True)
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
        display = Messages(self._tasks, self.cancel, message, blocking=False)

        def body() -> None:
            try:
                self._drive(timelimit, interval, display)
            except Stopped:
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
        check_seconds("timeout", timeout, none="no limit", zero=True)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise WaitTimeout(
                    f"the queue is still running after {timeout} s; "
                    "call .wait() again or .cancel() it"
                )
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
        name = f" {self._name!r}" if self._name is not None else ""
        return f"<Queue{name} {self._tasks!r} on {self.get_workers()!r}>"

    # -- internals ----------------------------------------------------------------------
    @staticmethod
    def _check_args(timelimit: float | None, message: str, interval: float, shutdown: bool) -> None:
        check_seconds("timelimit", timelimit, none="no limit")
        if not isinstance(message, str) or message not in MODES:
            raise JobSpecError(f"message must be 'none', 'minimal' or 'verbose', got {message!r}")
        check_seconds("interval", interval)
        check_flag("shutdown", shutdown)

    def _drive(self, timelimit: float | None, interval: float, display: Messages) -> None:
        todo = [t for t in self._tasks if t.state != DONE]
        now = time.time()
        for t in todo:
            t.requeue()
            t.queued = now
        where = "dask" if self._dask is not None else ""
        display.begin(len(todo), self._name or describe(todo, where))
        if self._dask is not None:
            self._dask.run(todo, timelimit, display, self._stop)
            return
        run = Run(self._pool, todo, timelimit, display.progress, display.finished, interval)
        run.stop = self._stop
        self._run = run
        try:
            run.loop()
        finally:
            self._run = None

    def _abort(self, message: str, code: int | None = None) -> None:
        for t in self._tasks:
            if t.state in (WAITING, ASSIGNED, RUNNING):
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
            if t.state == RUNNING and t.worker_id in printed:
                t.stdout, t.stderr = printed[t.worker_id]
