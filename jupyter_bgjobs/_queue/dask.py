"""The Queue on a Dask cluster: the same tasks, the same DataFrame, the time limit too.

Each task runs on a Dask worker inside a wrapper that captures its stdout and stderr, times
it, pickles its result itself (so an unpicklable result fails only its row) and watches the
time limit. A thread cannot be killed, so a task past its limit is reported at once and its
Dask worker is restarted by its nanny, which ends the runaway call.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
import traceback
import uuid
from typing import Any

from .._calling import error_message, load_error
from .._errors import TaskPickleError, TaskTimeoutError, WorkerDiedError
from .._inside.outcome import error_payload
from .._inside.procs import CODE_ERROR, CODE_LOST, CODE_OK, CODE_PICKLE, CODE_TIMEOUT
from .._states import ASSIGNED
from .run import Stopped


class _ThreadStreams(io.TextIOBase):
    """sys.stdout / sys.stderr on a Dask worker: each task thread writes to its own buffer;
    other threads write through to the real stream."""

    def __init__(self, real: Any, local: threading.local, name: str) -> None:
        self.real, self.local, self.name = real, local, name

    def write(self, text: str) -> int:
        buf = getattr(self.local, self.name, None)
        if buf is None:
            return int(self.real.write(text))
        buf.append(text)
        return len(text)

    def flush(self) -> None:
        if getattr(self.local, self.name, None) is None:
            self.real.flush()


_LOCAL = threading.local()


def _install_streams() -> None:
    if not isinstance(sys.stdout, _ThreadStreams):
        sys.stdout = _ThreadStreams(sys.stdout, _LOCAL, "out")
    if not isinstance(sys.stderr, _ThreadStreams):
        sys.stderr = _ThreadStreams(sys.stderr, _LOCAL, "err")


def _call(fun: Any, args: Any, kwargs: Any, timelimit: float | None) -> dict[str, Any]:
    """Runs on a Dask worker: one task, its output, its outcome as a record."""
    import cloudpickle

    _install_streams()
    record: dict[str, Any] = {"pid": os.getpid()}
    try:
        from distributed import get_worker

        record["address"] = get_worker().address
    except Exception:
        record["address"] = None
    out: list[str] = []
    err: list[str] = []
    box: dict[str, Any] = {}

    def target() -> None:
        _LOCAL.out, _LOCAL.err = out, err
        try:
            box["value"] = fun(*args, **kwargs)
        except BaseException as exc:  # the task's exception is its result
            box["exc"] = exc
            box["text"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        finally:
            _LOCAL.out = _LOCAL.err = None

    record["started"] = time.time()
    runner = threading.Thread(target=target, daemon=True)
    runner.start()
    runner.join(timelimit)
    record["finished"] = time.time()
    record["stdout"], record["stderr"] = "".join(out), "".join(err)
    if runner.is_alive():
        record["code"] = CODE_TIMEOUT
        return record
    if "exc" in box:
        record["code"] = CODE_ERROR
        record["payload"] = error_payload(box["exc"], box["text"])
        return record
    try:
        record["payload"] = cloudpickle.dumps(box.get("value"))
        record["code"] = CODE_OK
    except Exception as exc:
        record["code"] = CODE_PICKLE
        record["payload"] = (
            f"the result ({type(box.get('value')).__name__}) cannot be pickled: {exc}"
        )
    return record


class DaskBackend:
    """Runs a queue's tasks through a ``dask.distributed.Client``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def run(self, tasks: list[Any], timelimit: float | None, display: Any, stop: Any) -> None:
        import cloudpickle
        from distributed import wait

        futures: dict[Any, Any] = {}
        tag = uuid.uuid4().hex[:8]
        for task in tasks:
            try:
                cloudpickle.dumps((task.fun, task.args, task.kwargs))
            except Exception as exc:
                task.finish(
                    CODE_PICKLE,
                    f"the function or its arguments cannot be pickled: {exc}",
                    TaskPickleError(f"task {task.id}: cannot be pickled: {exc}"),
                )
                display.finished(task)
                continue
            future = self.client.submit(
                _call,
                task.fun,
                task.args,
                task.kwargs,
                timelimit,
                key=f"bgjobs-{task.id}-{tag}",
                pure=False,
            )
            task.move(ASSIGNED)
            task.assigned = time.time()
            futures[future] = task
        pending = set(futures)
        try:
            while pending:
                if stop.is_set():
                    raise Stopped
                display.progress(None)
                try:
                    done, _ = wait(  # type: ignore[no-untyped-call]
                        list(pending), timeout=0.1, return_when="FIRST_COMPLETED"
                    )
                except TimeoutError:
                    continue
                for future in done:
                    pending.discard(future)
                    self._finish(futures[future], future, display)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        finally:
            display.progress(None)

    def _finish(self, task: Any, future: Any, display: Any) -> None:
        import pickle

        try:
            record = future.result()
            # Let the cluster forget it now: a worker restarted for an overrun would
            # otherwise recompute every finished result it still held.
            future.release()
        except Exception as exc:  # the worker died under the task (KilledWorker), or similar
            task.finish(
                CODE_LOST,
                f"the Dask worker running it died: {type(exc).__name__}: {exc}",
                WorkerDiedError(f"task {task.id}: {type(exc).__name__}: {exc}"),
            )
            display.finished(task)
            return
        task.worker_id = record["pid"]
        task.started, task.finished = record["started"], record["finished"]
        task.stdout, task.stderr = record["stdout"], record["stderr"]
        code = record["code"]
        if code == CODE_OK:
            try:
                task.result = pickle.loads(record["payload"])
                task.finish(CODE_OK, "done")
            except Exception as exc:
                task.finish(
                    CODE_PICKLE,
                    f"the result cannot be loaded here: {exc}",
                    TaskPickleError(f"task {task.id}: the result cannot be loaded here: {exc}"),
                )
        elif code == CODE_ERROR:
            error, _ = load_error(record["payload"])
            task.finish(CODE_ERROR, error_message(error), error)
        elif code == CODE_TIMEOUT:
            limit = f"{task.finished - task.started:.3g} s"
            task.finish(
                CODE_TIMEOUT,
                f"timed out after {limit}; its Dask worker was restarted",
                TaskTimeoutError(f"task {task.id} ran longer than its time limit of {limit}"),
            )
            if record.get("address"):
                # The runaway thread ends only with its process: the nanny starts a new one.
                self.client.restart_workers([record["address"]])
        else:
            task.finish(
                CODE_PICKLE,
                str(record["payload"]),
                TaskPickleError(f"task {task.id}: {record['payload']}"),
            )
        display.finished(task)
