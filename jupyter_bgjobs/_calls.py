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
from typing import IO, Any

from . import _checks, _store
from ._calling import cell_sources, check_call, check_flag, check_seconds, load_error
from ._config import settings
from ._errors import (
    JobCancelledError,
    JobFailedError,
    JobSpecError,
    JobStateError,
    JobTimeoutError,
    KernelDiedError,
    RemoteTraceback,
    WaitTimeout,
)
from ._inside import procs as _procs
from ._inside.call import INTERRUPTED
from ._inside.procs import CODE_ERROR, CODE_OK
from ._notify import check_targets, tell_end
from ._spec import JobSpec
from ._state_record import write_call_record
from ._states import CANCELLED, DIED, FAILED, RUNNING, SUCCEEDED, TIMED_OUT
from ._store import read_json, recorded_alive, store_root
from ._usage import sampler_for, size_text

_SCRIPT = str(Path(__file__).with_name("_inside") / "call.py")
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
        self._started: dt.datetime | None = None
        # What its process uses, as its watcher samples it (this process's attached call).
        self._sampled: tuple[dict[str, Any], list[list[float]]] | None = None
        # Its memory limit (bytes, 0: none) and where its end is told (secrets: never
        # written down or shown).
        self.memory_limit = 0
        self._notify: list[str] = []

    @property
    def resources(self) -> dict[str, Any]:
        """What the call's process (and what it started) used: ``rss``, ``peak``
        (bytes), ``cpu`` (percent of a core), ``cpu_seconds``, as for a job; sampled by the
        process that started an attached call, read from the record elsewhere."""
        return dict(self._usage()[0])

    @property
    def usage(self) -> list[list[float]]:
        """The samples of its life, ``[seconds since start, rss, cpu]``."""
        return [list(s) for s in self._usage()[1]]

    def _usage(self) -> tuple[dict[str, Any], list[list[float]]]:
        if self._sampled is not None:
            return self._sampled
        record = read_json(self.folder / "state.json") or {}
        if self.detached and not record.get("resources"):
            # Its supervisor samples a detached call; its record has them once settled.
            record = {**record, **(read_json(self.folder / "usage.json") or {})}
        found, samples = record.get("resources"), record.get("usage")
        return (
            found if isinstance(found, dict) else {},
            [s for s in samples if isinstance(s, list)] if isinstance(samples, list) else [],
        )

    @property
    def started(self) -> dt.datetime:
        """When the call was made: as its spec says (a handle of another process reads
        it there), else now, for a call being made."""
        if self._started is None:
            submitted = (read_json(self.folder / "spec.json") or {}).get("submitted")
            try:
                self._started = dt.datetime.fromisoformat(str(submitted))
            except ValueError:
                self._started = dt.datetime.now().astimezone()
        return self._started

    # -- state ------------------------------------------------------------------------
    def ended_status(self) -> dict[str, Any] | None:
        """How the call ended as its watcher recorded it (``status.json``); None before."""
        return read_json(self.folder / "status.json")

    def _load_outcome(self) -> tuple[str, Any, str] | None:
        if self._outcome is None and (self.folder / "result.pkl").exists():
            try:
                # Only a file we wrote is unpickled: ours, no link, nobody else's to write.
                data = _store.read_own(self.folder / "result.pkl", _store.MAX_CODE)
                code, body = data[0], memoryview(data)[1:]
                if code == CODE_OK:
                    self._outcome = ("ok", pickle.loads(body), "")
                elif code == CODE_ERROR:
                    exc, text = load_error(bytes(body))
                    self._outcome = ("error", exc, text)
                else:
                    self._outcome = ("unpicklable", None, bytes(body).decode())
            except Exception as exc:
                self._outcome = ("unloadable", None, f"the result cannot be loaded here: {exc}")
        return self._outcome

    @property
    def state(self) -> str:
        """running, succeeded, failed, timed_out, cancelled or died."""
        status = self.ended_status()
        if status is None:
            if self.detached and not self._supervisor_alive():
                return DIED
            return RUNNING
        ended_by = status.get("ended_by", "") or self._ended_by
        if ended_by == _OVER_LIMIT:
            return FAILED
        outcome = self._load_outcome()
        if ended_by in (TIMED_OUT, CANCELLED):
            return str(ended_by)
        if outcome is None:
            # An interrupt that lands before Python's own handler is set ends the process.
            return CANCELLED if ended_by == INTERRUPTED else DIED
        kind, value, _ = outcome
        if kind == "ok":
            return SUCCEEDED
        if isinstance(value, KeyboardInterrupt) and ended_by == INTERRUPTED:
            return CANCELLED
        return FAILED

    def _supervisor_alive(self) -> bool:
        """Whether the detached call's supervisor, as ``pid.json`` names it, still runs."""
        return recorded_alive(self.pids(), "supervisor") or (self.ended_status() is not None)

    @property
    def done(self) -> bool:
        return self.state != RUNNING

    def is_alive(self) -> bool:
        """True while the call's process runs."""
        return not self.done

    @property
    def exit_code(self) -> int | None:
        """The process's exit code (negative: the signal that ended it), once it ended."""
        status = self.ended_status()
        return None if status is None else status.get("returncode")

    @property
    def reason(self) -> str:
        """Why the call ended, in words."""
        state = self.state
        if state == RUNNING:
            return ""
        if state == DIED:
            code = self.exit_code
            if code is None:
                return "its supervisor ended without a word (machine restart or kill -9)"
            return _procs.death_reason(code, "the process")
        if state == TIMED_OUT:
            return "ran longer than its timeout"
        if state == CANCELLED:
            status = self.ended_status() or {}
            how = status.get("ended_by") or self._ended_by
            return "interrupted" if how == INTERRUPTED else "killed"
        status = self.ended_status() or {}
        if status.get("ended_by") == _OVER_LIMIT and isinstance(status.get("why"), str):
            return str(status["why"])
        outcome = self._load_outcome()
        if state == FAILED and outcome is not None:
            kind, value, text = outcome
            if kind == "error":
                if isinstance(value, JobFailedError) and value.ename:
                    return f"raised {value.ename}"  # stands in for one not rebuilt here
                return f"raised {type(value).__name__ if value is not None else 'an error'}"
            return text
        return "returned"

    # -- waiting and results -------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> BgCall:
        """Block until the process has ended; returns self. Raises ``WaitTimeout`` if
        ``timeout`` seconds pass first (the call goes on)."""
        check_seconds("timeout", timeout, none="no limit", zero=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._proc is not None:
            ended = self._ended.wait(timeout)
        else:
            # A detached call, or one of another process: its supervisor writes status.json.
            while not (ended := self.done):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        if not ended:
            raise WaitTimeout(
                f"call {self.name!r} is still running after {timeout} s; "
                "call .wait() again or .kill() it"
            )
        if self._proc is None:
            self.settle_record()
        return self

    def settle_record(self) -> None:
        """A detached call's supervisor records its end in status.json; the first reader
        that sees it ended brings state.json up to date for every other reader."""
        record = read_json(self.folder / "state.json") or {}
        if record.get("state") == RUNNING and self.done:
            write_call_record(self)

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value. Re-raises its exception (the remote traceback is
        the ``__cause__``; one that cannot be rebuilt here comes as a ``JobFailedError``
        with its type name and message); ``JobTimeoutError``, ``JobCancelledError`` or
        ``KernelDiedError`` when it did not finish."""
        state = self.wait(timeout).state
        if state == TIMED_OUT:
            raise JobTimeoutError(f"call {self.name!r} ran longer than its timeout")
        if state == CANCELLED:
            raise JobCancelledError(f"call {self.name!r} was {self.reason}")
        if state == DIED:
            raise KernelDiedError(f"call {self.name!r}: {self.reason}")
        if state == FAILED and (self.ended_status() or {}).get("ended_by") == _OVER_LIMIT:
            raise JobFailedError(f"call {self.name!r}: {self.reason}")
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
            with open(_store.open_own(self.folder / stream), "rb") as fh:
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
        self._ended_by = INTERRUPTED
        if self._proc is None:
            # The supervisor records the interruption, then passes it on; only the very
            # process recorded is signalled, never one that took its pid since.
            _procs.signal_identified(str(self.pids().get("supervisor_id", "")), signal.SIGINT)
            return
        if self._proc.poll() is None:  # a reaped child's pid may be another's now
            _procs.signal_group(self._child_pid(), signal.SIGINT)

    def kill(self) -> None:
        """End the process (and what it started) at once; state ``cancelled``."""
        if self.done:
            return
        self._ended_by = CANCELLED
        if self._proc is None:
            # The supervisor records the ending, then kills its child.
            _procs.signal_identified(str(self.pids().get("supervisor_id", "")), signal.SIGTERM)
            return
        if self._proc.poll() is None:
            _procs.signal_group(self._child_pid(), signal.SIGKILL)

    def pids(self) -> dict[str, Any]:
        """The call's process and its supervisor, with their identities (``pid.json``)."""
        return read_json(self.folder / "pid.json") or {}

    def _child_pid(self) -> int | None:
        pid = self.pid or self.pids().get("pid")
        return None if pid is None else int(pid)

    def _watch(self, proc: subprocess.Popen[bytes], timeout: float | None) -> None:
        """The parent's side of a call that is not detached: wait, time out (or stop when
        the IDE's Jobs pane asks, in the call's folder), record the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sampler = sampler_for(proc.pid, settings.sample_usage or bool(self.memory_limit))
        sampled_at = 0.0
        why = ""
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            code = _procs.reap(proc, 0.25 if left is None else max(0.0, min(0.25, left)))
            if code is not None:
                break
            if sampler is not None and time.monotonic() - sampled_at >= 1.0:
                sampled_at = time.monotonic()
                try:
                    self._sampled = (sampler.sample(), list(sampler.samples))
                except Exception:  # a sample that fails is skipped; the call goes on
                    continue
                write_call_record(self)
                rss = self._sampled[0]["rss"]
                if self.memory_limit and rss > self.memory_limit:
                    # Killed at once, as a job over its limit: what grows is the danger.
                    self._ended_by = _OVER_LIMIT
                    why = f"used {size_text(rss)}, over its {size_text(self.memory_limit)} limit"
                    code = _procs.end(proc, grace=0)
                    break
            if deadline is not None and time.monotonic() >= deadline:
                self._ended_by = TIMED_OUT
            elif os.path.lexists(self.folder / "cancel.json"):
                self._ended_by = CANCELLED
            else:
                continue
            code = _procs.end(proc, grace=0)
            break
        ended = time.time()
        status = {"returncode": code, "ended_by": self._ended_by, "ended": ended}
        _write_private_json(
            self.folder / "status.json", {**status, **({"why": why} if why else {})}
        )
        # The record is final before wait() returns: whoever waited reads the end there too.
        write_call_record(self)
        if self._notify:
            tell_end(
                self._notify,
                self.name,
                self.state,
                ended - self.started.timestamp(),
                self.resources,
                self.reason,
                self.folder / "stderr",
            )
        self._ended.set()

    def __repr__(self) -> str:
        return f"<BgCall {self.name} ({self.id}) {self.state}, pid {self.pid}>"


# How a call that passed its memory limit ended (status.json's ``ended_by``).
_OVER_LIMIT = "memory"


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


def _open_private(path: Path) -> IO[bytes]:
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
    memory_limit: int | str | None = None,
    notify: list[str] | None = None,
) -> BgCall:
    """Run ``fn(*args, **kwargs)`` in a separate process and return its handle at once.

    ``timeout`` seconds end it as ``timed_out``. A call that is not detached ends with
    this process (which says so at exit); ``detach=True`` lets it outlive this process:
    its output and result stay in the store, where ``bgjobs list`` and ``%bgjobs`` find it.
    ``memory_limit`` (``"2G"``, bytes) ends it ``failed`` when its process (and what that
    started) holds more; ``notify`` (Apprise URLs) tells its end there, as for a job. Both
    are for calls that are not detached (this process watches the call).
    """
    # Everything checked, and pickled, before the call's folder exists: bad input leaves
    # nothing behind.
    label = _checked_name(fn, args, kwargs, name, timeout, detach)
    limit = _checks.memory("memory_limit", memory_limit)
    targets = check_targets("notify", notify)
    if detach and (limit or targets):
        raise JobSpecError(
            "bg_call: memory_limit and notify are for calls that are not detached (this "
            "process watches them); run the work as a detached job (run_cell(..., "
            "detach=True)) for both"
        )
    data = _pickled_call(fn, args, kwargs)
    what = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}(...)"
    folder = _make_folder(label, data, timeout, detach, what)
    call = BgCall(folder, label, detach)
    call.memory_limit, call._notify = limit, targets
    # Handed to the child as its stdout and stderr; closed here once it has them.
    out = _open_private(folder / "stdout")
    err = _open_private(folder / "stderr")
    try:
        if detach:
            _start_detached(call, timeout, out, err)
        else:
            _start_attached(call, timeout, out, err)
    finally:
        out.close()
        err.close()
    with _lock:
        _registry[call.id] = call
    return call


def _checked_name(fn: Any, args: Any, kwargs: Any, name: Any, timeout: Any, detach: Any) -> str:
    """The call's name, once its arguments are known to be good; else a JobSpecError."""
    check_call("bg()", fn, args, kwargs, "bg(math.sqrt, 2)")
    check_seconds("timeout", timeout, none="no limit")
    if name is not None and not isinstance(name, str):
        raise JobSpecError(f"name must be a string, got {type(name).__name__}: e.g. name='train'")
    check_flag("detach", detach)
    label: str = name or str(getattr(fn, "__name__", "") or "call")
    return label if label.isidentifier() else f"call{next(_counter)}"


def _pickled_call(fn: Callable[..., Any], args: Any, kwargs: Any) -> bytes:
    import cloudpickle

    payload = {
        "fun": fn,
        "args": tuple(args),
        "kwargs": dict(kwargs or {}),
        "source": cell_sources(fn),
        "sys_path": [p for p in sys.path if p],
    }
    try:
        return bytes(cloudpickle.dumps(payload, protocol=5))
    except Exception as exc:
        raise JobSpecError(
            f"bg(): the function or its arguments cannot be pickled ({exc}); pass values "
            "that can travel to another process (no open files, locks or sockets)"
        ) from None


def _make_folder(name: str, data: bytes, timeout: float | None, detach: bool, what: str) -> Path:
    """The call's private folder: its spec (the jobs' one schema, kind ``call``) and what
    the child loads."""
    call_id = uuid.uuid4().hex[:8]
    folder = (store_root() if detach else settings.job_root()) / call_id
    folder.mkdir(mode=0o700)
    # The child removes it once loaded: the arguments need not outlive the call.
    _write_private(folder / "call.pkl", data)
    spec = JobSpec(code=what, name=name, kind="call", timeout=timeout, workdir=os.getcwd())
    _write_private_json(
        folder / "spec.json",
        {
            **spec.to_json(),
            "kind": "call",
            "id": call_id,
            "detached": detach,
            "submitted": dt.datetime.now().astimezone().isoformat(),
            "cwd": os.getcwd(),
        },
    )
    return folder


def _start_detached(call: BgCall, timeout: float | None, out: IO[bytes], err: IO[bytes]) -> None:
    """A supervisor in a session of its own runs the call, and records how it ended."""
    sup = _procs.start(
        [sys.executable, _SCRIPT, "supervise", str(call.folder), str(timeout or 0)],
        stdout=out,
        stderr=err,
    )
    # The supervisor records the child's pid; a detached handle reads it from there.
    deadline = time.monotonic() + 30
    while call.pid is None and time.monotonic() < deadline and sup.poll() is None:
        call.pid = call.pids().get("pid")
        if call.pid is None:
            time.sleep(0.005)
    _procs.reap_when_ended(sup)
    write_call_record(call)


def _start_attached(call: BgCall, timeout: float | None, out: IO[bytes], err: IO[bytes]) -> None:
    """The call's process, watched by a thread of this one, and ending with this one."""
    proc = _procs.start(
        [sys.executable, _SCRIPT, "run", str(call.folder), str(os.getpid())],
        stdout=out,
        stderr=err,
    )
    call._proc = proc
    call.pid = proc.pid
    _write_private_json(
        call.folder / "pid.json",
        {
            "pid": proc.pid,
            "supervisor": os.getpid(),
            "pid_id": _procs.identity(proc.pid),
            "supervisor_id": _procs.identity(),
        },
    )
    write_call_record(call)
    threading.Thread(
        target=call._watch, args=(proc, timeout), name=f"bg-{call.name}", daemon=True
    ).start()


def bg(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> BgCall:
    """Run ``fn(*args, **kwargs)`` in a separate process; returns its handle at once.

    ``bg_call`` takes the options (name, timeout, detach).
    """
    return bg_call(fn, args, kwargs)


def bg_calls() -> list[BgCall]:
    """Every call this process started, oldest first: the handles outlive their caller."""
    with _lock:
        return list(_registry.values())


@atexit.register
def _end_attached_calls() -> None:
    running = [c for c in bg_calls() if not c.detached and c._proc is not None and not c.done]
    for call in running:
        call._ended_by = CANCELLED
        _procs.signal_group(call.pid, signal.SIGKILL)
    if running:
        names = ", ".join(f"{c.name} (pid {c.pid})" for c in running)
        print(
            f"jupyter_bgjobs: ended {len(running)} background call(s) with this process: "
            f"{names}. Calls started with detach=True outlive it.",
            file=sys.__stderr__,
        )
