"""``bg(fn, ...)``: a function call in a separate process, with a handle (callr's ``r_bg``).

Handles live in a process-wide registry, not in the frame that made them: a call started
from a web request handler or a widget callback runs on after the request or the page is
gone, and ``bg_calls()`` finds it again. The call's output goes to files in its folder, so
the child never blocks on a full pipe; ``read_output()`` returns what is new since the
last read.
"""

from __future__ import annotations

import atexit
import datetime as dt
import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._config import settings
from ._errors import (
    JobCancelledError,
    JobFailedError,
    JobSpecError,
    JobStateError,
    JobTimeoutError,
    KernelDiedError,
    RemoteTraceback,
)
from ._store import pid_alive, read_json, store_root

_SCRIPT = str(Path(__file__).with_name("_bgcall.py"))
_registry: dict[str, BgCall] = {}
_lock = threading.Lock()
_counter = itertools.count(1)


class BgCall:
    """A function call running in its own process.

    ``state`` is ``running``, ``succeeded``, ``failed`` (the function raised),
    ``timed_out``, ``cancelled`` (``kill()`` or ``interrupt()``) or ``died`` (the process
    ended without a result: a crash, ``os._exit``, a signal from elsewhere).
    """

    def __init__(self, folder: Path, name: str, detached: bool) -> None:
        self.folder = folder
        self.id = folder.name
        self.name = name
        self.detached = detached
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ended = threading.Event()
        self._ended_by = ""
        self._offsets = {"stdout": 0, "stderr": 0}
        self._decoders: dict[str, Any] = {}
        self._outcome: tuple[str, Any, str] | None = None
        self.started = dt.datetime.now().astimezone()

    # -- state ------------------------------------------------------------------------
    def _status(self) -> dict[str, Any] | None:
        return read_json(self.folder / "status.json")

    def _load_outcome(self) -> tuple[str, Any, str] | None:
        if self._outcome is None and (self.folder / "result.pkl").exists():
            try:
                data = (self.folder / "result.pkl").read_bytes()
                code, body = data[0], memoryview(data)[1:]
                if code == 0:
                    self._outcome = ("ok", pickle.loads(body), "")
                elif code == 1:
                    from ._queue import _load_error

                    exc, text = _load_error(bytes(body))
                    self._outcome = ("error", exc, text)
                else:
                    self._outcome = ("unpicklable", None, bytes(body).decode())
            except Exception as exc:
                self._outcome = ("unloadable", None, f"the result cannot be loaded here: {exc}")
        return self._outcome

    @property
    def state(self) -> str:
        """running, succeeded, failed, timed_out, cancelled or died."""
        status = self._status()
        if status is None:
            if self.detached and not self._supervisor_alive():
                return "died"
            return "running"
        ended_by = status.get("ended_by", "") or self._ended_by
        outcome = self._load_outcome()
        if ended_by in ("timed_out", "cancelled"):
            return str(ended_by)
        if outcome is None:
            # An interrupt that lands before Python's own handler is set ends the process.
            return "cancelled" if ended_by == "interrupted" else "died"
        kind, value, _ = outcome
        if kind == "ok":
            return "succeeded"
        if isinstance(value, KeyboardInterrupt) and ended_by == "interrupted":
            return "cancelled"
        return "failed"

    def _supervisor_alive(self) -> bool:
        pids = read_json(self.folder / "pid.json") or {}
        return pid_alive(pids.get("supervisor")) or (self._status() is not None)

    @property
    def done(self) -> bool:
        return self.state != "running"

    def is_alive(self) -> bool:
        """True while the call's process runs."""
        return not self.done

    @property
    def exit_code(self) -> int | None:
        """The process's exit code (negative: the signal that ended it), once it ended."""
        status = self._status()
        return None if status is None else status.get("returncode")

    @property
    def reason(self) -> str:
        """Why the call ended, in words."""
        state = self.state
        if state == "running":
            return ""
        if state == "died":
            from ._jobs import _death_reason

            code = self.exit_code
            if code is None:
                return "its supervisor ended without a word (machine restart or kill -9)"
            return _death_reason(code, "the process")
        if state == "timed_out":
            return "ran longer than its timeout"
        if state == "cancelled":
            status = self._status() or {}
            how = status.get("ended_by") or self._ended_by
            return "interrupted" if how == "interrupted" else "killed"
        outcome = self._load_outcome()
        if state == "failed" and outcome is not None:
            kind, value, text = outcome
            if kind == "error":
                if isinstance(value, JobFailedError) and value.ename:
                    return f"raised {value.ename}"  # stands in for one not rebuilt here
                return f"raised {type(value).__name__ if value is not None else 'an error'}"
            return text
        return "returned"

    # -- waiting and results -------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> BgCall:
        """Block until the process has ended (or ``timeout`` seconds pass); returns self."""
        from ._queue import _check_seconds

        _check_seconds("timeout", timeout, none="no limit", zero=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._proc is not None:
            self._ended.wait(timeout)
        else:
            while not self.done:  # a detached call: its supervisor writes status.json
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        return self

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value. Re-raises its exception (the remote traceback is
        the ``__cause__``; one that cannot be rebuilt here comes as a ``JobFailedError``
        with its type name and message); ``JobTimeoutError``, ``JobCancelledError`` or
        ``KernelDiedError`` when it did not finish."""
        self.wait(timeout)
        state = self.state
        if state == "running":
            from ._jobs import WaitTimeout

            raise WaitTimeout(f"call {self.name!r} is still running after {timeout} s")
        if state == "timed_out":
            raise JobTimeoutError(f"call {self.name!r} ran longer than its timeout")
        if state == "cancelled":
            raise JobCancelledError(f"call {self.name!r} was {self.reason}")
        if state == "died":
            raise KernelDiedError(f"call {self.name!r}: {self.reason}")
        kind, value, text = self._load_outcome() or ("unloadable", None, "no result")
        if kind == "ok":
            return value
        if kind == "error":
            if not isinstance(value, BaseException):
                value = JobStateError(text.strip().splitlines()[-1] if text.strip() else "error")
            raise value from RemoteTraceback(text)
        raise JobStateError(f"call {self.name!r}: {text}")

    def read_output(self) -> str:
        """What the call printed on stdout since the last read."""
        return self._read("stdout")

    def read_error(self) -> str:
        """What the call printed on stderr since the last read."""
        return self._read("stderr")

    def _read(self, stream: str) -> str:
        import codecs

        try:
            with open(self.folder / stream, "rb") as fh:
                fh.seek(self._offsets[stream])
                data = fh.read()
        except FileNotFoundError:
            return ""
        self._offsets[stream] += len(data)
        decoder = self._decoders.setdefault(
            stream, codecs.getincrementaldecoder("utf-8")("replace")
        )
        return str(decoder.decode(data))

    # -- stopping -------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Send SIGINT: the function sees KeyboardInterrupt (state ``cancelled``)."""
        if self.done:
            return
        self._ended_by = "interrupted"
        if self._proc is None:
            # The supervisor records the interruption, then passes it on.
            pids = read_json(self.folder / "pid.json") or {}
            _signal_pid(pids.get("supervisor"), signal.SIGINT, group=False)
            return
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        """End the process (and what it started) at once; state ``cancelled``."""
        if self.done:
            return
        self._ended_by = "cancelled"
        if self._proc is None:
            pids = read_json(self.folder / "pid.json") or {}
            # The supervisor records the ending, then kills its child.
            _signal_pid(pids.get("supervisor"), signal.SIGTERM, group=False)
            return
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        pid = self.pid or (read_json(self.folder / "pid.json") or {}).get("pid")
        _signal_pid(pid, signum, group=True)

    def __repr__(self) -> str:
        return f"<BgCall {self.name} ({self.id}) {self.state}, pid {self.pid}>"


def _signal_pid(pid: int | None, signum: int, group: bool) -> None:
    if not pid:
        return
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _watch(call: BgCall, proc: subprocess.Popen[bytes], timeout: float | None) -> None:
    """The parent's side of a call that is not detached: wait, time out, record the end."""
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        call._ended_by = "timed_out"
        _signal_pid(proc.pid, signal.SIGKILL, group=True)
        code = proc.wait()
    _write_private_json(
        call.folder / "status.json",
        {"returncode": code, "ended_by": call._ended_by, "ended": time.time()},
    )
    call._ended.set()


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` whole with a file only its owner can read (a call's folder holds
    its arguments, output and result), whatever the umask."""
    import json

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    _write_private(tmp, json.dumps(data, indent=1, default=str).encode())
    os.replace(tmp, path)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as fh:
        fh.write(data)


def _open_private(path: Path) -> Any:
    """A new file for writing, mode 0600."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def bg_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    detach: bool = False,
) -> BgCall:
    """Run ``fn(*args, **kwargs)`` in a separate process and return its handle at once.

    ``timeout`` seconds end it as ``timed_out``. A call that is not detached ends with
    this process (which says so at exit); ``detach=True`` lets it outlive this process:
    its output and result stay in the store, where ``bgjobs list`` and ``%bgjobs`` find it.
    """
    import cloudpickle

    from ._queue import _cell_sources, _check_call, _check_flag, _check_seconds

    # Everything checked before the call's folder exists: bad input leaves nothing behind.
    _check_call("bg()", fn, args, kwargs, "bg(math.sqrt, 2)")
    _check_seconds("timeout", timeout, none="no limit")
    if name is not None and not isinstance(name, str):
        raise JobSpecError(f"name must be a string, got {type(name).__name__}: e.g. name='train'")
    _check_flag("detach", detach)
    label: str = name or str(getattr(fn, "__name__", "") or "call")
    if not label.isidentifier():
        label = f"call{next(_counter)}"
    name = label
    payload = {
        "fun": fn,
        "args": tuple(args),
        "kwargs": dict(kwargs or {}),
        "source": _cell_sources(fn),
        "sys_path": [p for p in sys.path if p],
    }
    try:
        data = cloudpickle.dumps(payload, protocol=5)
    except Exception as exc:
        raise JobSpecError(
            f"bg(): the function or its arguments cannot be pickled ({exc}); pass values "
            "that can travel to another process (no open files, locks or sockets)"
        ) from None
    call_id = uuid.uuid4().hex[:8]
    folder = (store_root() if detach else settings.job_root()) / call_id
    folder.mkdir(mode=0o700)
    # The child removes it once loaded: the arguments need not outlive the call.
    _write_private(folder / "call.pkl", data)
    call = BgCall(folder, label, detach)
    _write_private_json(
        folder / "spec.json",
        {
            "kind": "call",
            "name": name,
            "id": call_id,
            "detached": detach,
            "timeout": timeout,
            "submitted": dt.datetime.now().astimezone().isoformat(),
            "cwd": os.getcwd(),
        },
    )
    # Handed to the child as its stdout and stderr; closed here once it has them.
    out = _open_private(folder / "stdout")
    err = _open_private(folder / "stderr")
    try:
        if detach:
            sup = subprocess.Popen(
                [sys.executable, _SCRIPT, "supervise", str(folder), str(timeout or 0)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            # The supervisor records the child's pid; a detached handle reads it from there.
            deadline = time.monotonic() + 30
            while call.pid is None and time.monotonic() < deadline and sup.poll() is None:
                call.pid = (read_json(folder / "pid.json") or {}).get("pid")
                if call.pid is None:
                    time.sleep(0.005)
            _detached_supervisors.append(sup)
        else:
            proc = subprocess.Popen(
                [sys.executable, _SCRIPT, "run", str(folder), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            call._proc = proc
            call.pid = proc.pid
            _write_private_json(folder / "pid.json", {"pid": proc.pid, "supervisor": os.getpid()})
            threading.Thread(
                target=_watch, args=(call, proc, timeout), name=f"bg-{name}", daemon=True
            ).start()
    finally:
        out.close()
        err.close()
    with _lock:
        _registry[call.id] = call
    return call


def bg(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> BgCall:
    """Run ``fn(*args, **kwargs)`` in a separate process; returns its handle at once.

    ``bg_call`` takes the options (name, timeout, detach).
    """
    return bg_call(fn, args, kwargs)


def bg_calls() -> list[BgCall]:
    """Every call this process started, oldest first: the handles outlive their caller."""
    with _lock:
        return list(_registry.values())


# Detached supervisors are reaped when they end, without holding them up.
_detached_supervisors: list[subprocess.Popen[bytes]] = []


@atexit.register
def _end_attached_calls() -> None:
    running = [c for c in bg_calls() if not c.detached and c._proc is not None and not c.done]
    for call in running:
        call._ended_by = "cancelled"
        _signal_pid(call.pid, signal.SIGKILL, group=True)
    if running:
        names = ", ".join(f"{c.name} (pid {c.pid})" for c in running)
        print(
            f"jupyter_bgjobs: ended {len(running)} background call(s) with this process: "
            f"{names}. Calls started with detach=True outlive it.",
            file=sys.__stderr__,
        )
