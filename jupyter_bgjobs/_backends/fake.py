"""A fake kernel backend: it replays a script of kernel messages, for unit tests of the
driver in milliseconds.

No real part can reach these cases cheaply or on cue: a kernel that dies at a chosen
statement with a chosen signal, one that ignores an interrupt, a timeout, a stream of
result chunks. A ``FakeKernel`` plays them the way a kernel with the job runner loaded
does: the run call's iopub messages (``busy``, the runner's private-MIME events ``plan``,
``stmt``, ``progress``, ``status``, ``chunk``, ``end``, the job's own output, ``idle``),
shaped like jupyter_client's, in the order of its script. It records what it was asked to
execute, interrupt and kill. Real kernels stay the integration tests.

    kernel = FakeKernel([plan(2), stmt(0, 2, "Load"), stream("hi\\n"), stmt(1, 2), end(done=2)])
    pool = FakePool(kernel)           # a KernelSource: Driver(..., kernels=pool)

Script steps: a message (``stream``, ``display``, ``error``, any ``event``), ``end(...)``
(the runner's last event; given ``values``, it first sends them as results, by the
transport the run call's spec asks for), ``hang(...)`` (the job's code runs until
interrupted, or for ever) and ``die(...)`` (the kernel process ends).
"""

from __future__ import annotations

import ast
import collections
import datetime as dt
import json
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._inside.kernel.chunks import Outbox
from .._inside.kernel.wire import (
    EVENT_MIME,
    encode,
    pick_path,
    write_somewhere,
)

if TYPE_CHECKING:
    from .base import KernelBackend, KernelSource


# -- script steps ---------------------------------------------------------------------------
@dataclass
class Message:
    """One iopub message of the run call."""

    msg_type: str
    content: dict[str, Any]


@dataclass
class End:
    """The runner's ``end`` event. ``values``: results sent before it (stream chunks or
    a snapshot file, as the run call's spec asks); ``results``: the event's results field
    as given (None: none at all, as from a runner that saved nothing)."""

    status: str = "ok"
    done: int = 0
    total: int = 0
    error: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    results: dict[str, Any] | None = None


@dataclass
class Hang:
    """The job's code runs until interrupted: ``honour`` raises KeyboardInterrupt in it
    (an ``end`` event with status "interrupted"); otherwise the interrupt is ignored and
    only ``kill`` ends it."""

    honour: bool = True


@dataclass
class Die:
    """The kernel process ends here: with ``exit_code``, or killed by ``signal``."""

    exit_code: int | None = None
    signal: int | None = None
    stderr: str = ""


Step = Message | End | Hang | Die


def event(kind: str, **fields: Any) -> Message:
    """One of the runner's events, as its ``emit`` publishes it."""
    payload = {"type": kind, "t": _now(), **fields}
    return Message(
        "display_data", {"data": {EVENT_MIME: payload, "text/plain": ""}, "metadata": {}}
    )


def plan(
    total: int, sections: list[str] | None = None, skipped: list[Any] | None = None
) -> Message:
    return event(
        "plan",
        total=total,
        sections=sections or [""] * total,
        skipped=skipped or [],
        t_start=_now(),
    )


def stmt(index: int, total: int, section: str = "", line: int = 1) -> Message:
    return event("stmt", index=index, total=total, section=section, line=line)


def progress(units: int, total: int | None = None) -> Message:
    return event("progress", units=units, total=total)


def status(text: str) -> Message:
    return event("status", text=text)


def stream(text: str, name: str = "stdout") -> Message:
    return Message("stream", {"name": name, "text": text})


def display(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> Message:
    return Message("display_data", {"data": data, "metadata": metadata or {}})


def error(ename: str, evalue: str, traceback: list[str] | None = None) -> Message:
    tb = traceback if traceback is not None else [f"{ename}: {evalue}"]
    return Message("error", {"ename": ename, "evalue": evalue, "traceback": tb})


def end(
    status: str = "ok",
    done: int = 0,
    total: int | None = None,
    error: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    results: dict[str, Any] | None = None,
) -> End:
    return End(status, done, done if total is None else total, error, values, results)


def hang(honour: bool = True) -> Hang:
    return Hang(honour)


def die(exit_code: int | None = None, signal: int | None = None, stderr: str = "") -> Die:
    return Die(exit_code, signal, stderr)


def _now() -> float:
    return time.time()


# -- the kernel -----------------------------------------------------------------------------
@dataclass
class Request:
    """One execute request the fake received."""

    code: str
    silent: bool
    metadata: dict[str, Any]
    msg_id: str


@dataclass
class _Run:
    """The run call in progress: where it is in the script."""

    msg_id: str
    spec: dict[str, Any]
    steps: collections.deque[Step]
    index: int = 0
    total: int = 0
    hung: Hang | None = None
    done: bool = False


class FakeKernel:
    """A kernel with the runner "loaded" that plays ``steps`` for the run call.

    Records: ``requests`` (every execute request), ``spec`` (the run call's spec),
    ``received`` (the seed's chunks, as bytes), ``interrupts``, ``kills``,
    ``shutdowns``. ``hung`` is set once the script reaches a ``hang`` step.
    """

    pid: int | None = None

    def __init__(self, steps: list[Step] | None = None, stderr: str = "") -> None:
        self.script: list[Step] = list(steps or [])
        self.requests: list[Request] = []
        self.spec: dict[str, Any] | None = None
        self.received: list[bytes] = []
        self._outbox: dict[str, Outbox] = {}
        self.interrupts = 0
        self.kills = 0
        self.shutdowns: list[bool] = []
        self.hung = threading.Event()
        self.launch_env: dict[str, str] = {}
        self._stderr = stderr
        self._code: int | None = None
        self._dead = False
        self._out: collections.deque[dict[str, Any]] = collections.deque()
        self._run: _Run | None = None
        self._cond = threading.Condition()
        self._session = uuid.uuid4().hex

    # -- the interface ----------------------------------------------------------------------
    def execute(
        self,
        code: str,
        silent: bool = False,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> str:
        msg_id = uuid.uuid4().hex
        with self._cond:
            self.requests.append(Request(code, silent, dict(metadata or {}), msg_id))
            if self._dead:
                return msg_id
            self._send(msg_id, "status", {"execution_state": "busy"})
            entry = _entry(code)
            if entry in ("run", "run_async"):
                self.spec = _argument(code)
                self._run = _Run(msg_id, self.spec, collections.deque(self.script))
                self._cond.notify_all()
                return msg_id
            if entry == "receive":
                self.received.append(b"".join(bytes(b) for b in buffers or []))
            elif entry == "send_out":
                key, seqs = _arguments(code)
                for seq in seqs:
                    self._event(
                        msg_id, "chunk", buffers=self._outbox[key].piece(seq), key=key, seq=seq
                    )
            elif entry == "resend":
                for name in json.loads(_argument_text(code))["paths"]:
                    error = "the fake kernel holds no values"
                    self._event(msg_id, "resent", name=name, error=error)
            self._send(msg_id, "status", {"execution_state": "idle"})
            self._cond.notify_all()
        return msg_id

    def iopub(self, timeout: float) -> dict[str, Any] | None:
        with self._cond:
            self._advance()
            if not self._out:
                self._cond.wait(timeout)
                self._advance()
            return self._out.popleft() if self._out else None

    def alive(self) -> bool:
        return not self._dead

    def exit_code(self) -> int | None:
        return self._code

    def interrupt(self) -> None:
        with self._cond:
            self.interrupts += 1
            run = self._run
            if self._dead or run is None or run.hung is None or not run.hung.honour:
                return
            # KeyboardInterrupt in the job's code: the runner shows it and reports the end.
            run.hung = None
            run.steps.clear()
            shown = error("KeyboardInterrupt", "")
            self._send(run.msg_id, shown.msg_type, shown.content)
            run.steps.append(End("interrupted", run.index, run.total))
            self._cond.notify_all()

    def kill(self) -> None:
        with self._cond:
            self.kills += 1
            self._die(-signal.SIGKILL)

    def shutdown(self, now: bool = False) -> None:
        with self._cond:
            self.shutdowns.append(now)
            if not self._dead:
                self._die(0)

    def stderr_tail(self, limit: int = 2000) -> str:
        return self._stderr[-limit:].strip()

    # -- what the fake tells about itself ------------------------------------------------------
    @property
    def executed(self) -> list[str]:
        """The code of every execute request, in order."""
        return [r.code for r in self.requests]

    @property
    def killed(self) -> bool:
        return self.kills > 0

    # -- playing the script --------------------------------------------------------------------
    def _advance(self) -> None:
        """Play steps up to the next message (or a hang, or the kernel's death)."""
        run = self._run
        while run is not None and not self._out and not run.done and run.hung is None:
            if self._dead:
                return
            if not run.steps:
                run.done = True
                self._send(run.msg_id, "status", {"execution_state": "idle"})
                return
            step = run.steps.popleft()
            if isinstance(step, Message):
                self._play_message(run, step)
            elif isinstance(step, End):
                self._play_end(run, step)
            elif isinstance(step, Hang):
                run.hung = step
                self.hung.set()
            else:
                if step.stderr:
                    self._stderr = step.stderr
                self._die(-step.signal if step.signal else step.exit_code)

    def _play_message(self, run: _Run, step: Message) -> None:
        event_ = step.content.get("data", {}).get(EVENT_MIME)
        if event_ is not None and event_.get("type") == "plan":
            run.total = int(event_["total"])
        if event_ is not None and event_.get("type") == "stmt":
            run.index = int(event_["index"])
        self._send(run.msg_id, step.msg_type, step.content)

    def _play_end(self, run: _Run, step: End) -> None:
        results = step.results
        if step.values is not None:
            results = self._send_results(run, step.values)
        fields: dict[str, Any] = {
            "status": step.status,
            "done": step.done,
            "total": step.total,
            "error": step.error,
            "code_done": _now(),
        }
        if results is not None:
            fields["results"] = results
        self._event(run.msg_id, "end", **fields)

    def _send_results(self, run: _Run, values: dict[str, Any]) -> dict[str, Any]:
        """The results as the runner saves them: chunk events, or a snapshot file."""
        out = run.spec.get("results") or {}
        parts, skipped, info = encode(values, run.spec["token"])
        result: dict[str, Any] = {
            "names": sorted(set(info["pickled"]) | set(info["dill"])),
            "mutated": [],
            "modules": {},
            "skipped": skipped,
            "nbytes": info["nbytes"],
        }
        if out.get("transport") == "stream":
            box = self._outbox[run.spec["token"]] = Outbox(parts)
            result.update(transport="stream", **box.described())
        else:
            paths = out["paths"]
            path, pieces = write_somewhere(paths, pick_path(paths, info["nbytes"]), parts)
            result.update(transport="file", path=path, pieces=pieces)
        return result

    def _die(self, code: int | None) -> None:
        self._dead = True
        self._code = code
        self._cond.notify_all()

    def _event(
        self, parent: str, kind: str, buffers: list[Any] | None = None, **fields: Any
    ) -> None:
        self._send(parent, "display_data", event(kind, **fields).content, buffers)

    def _send(
        self,
        parent: str,
        msg_type: str,
        content: dict[str, Any],
        buffers: list[Any] | None = None,
    ) -> None:
        header = {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": self._session,
            "username": "fake",
            "version": "5.3",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        self._out.append(
            {
                "header": header,
                "msg_id": header["msg_id"],
                "msg_type": msg_type,
                "parent_header": {"msg_id": parent, "msg_type": "execute_request"},
                "metadata": {},
                "content": content,
                "buffers": list(buffers or []),
            }
        )


def _entry(code: str) -> str:
    """Which runner entry point ``code`` calls (``run``, ``receive``, ...), or ""."""
    marker = "__import__('_bgjobs_runner')."
    if marker not in code:
        return ""
    return code.split(marker, 1)[1].split("(", 1)[0]


def _arguments(code: str) -> list[Any]:
    """The literal arguments of the entry point's call."""
    call = code.split("__import__('_bgjobs_runner').", 1)[1]
    tree = ast.parse(call, mode="eval").body
    assert isinstance(tree, ast.Call)
    return [ast.literal_eval(arg) for arg in tree.args]


def _argument_text(code: str) -> str:
    """The first argument of the entry point's call: a string literal."""
    return str(_arguments(code)[0])


def _argument(code: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(_argument_text(code))
    return spec


class FakePool:
    """A ``KernelSource`` handing out the given kernels in order (a fresh, empty-scripted
    ``FakeKernel`` when they run out); records the kernelspec names asked for."""

    def __init__(self, *kernels: FakeKernel) -> None:
        self.kernels = collections.deque(kernels)
        self.asked: list[str | None] = []
        self.closed = False

    def acquire(self, kernel_name: str | None = None) -> FakeKernel:
        self.asked.append(kernel_name)
        return self.kernels.popleft() if self.kernels else FakeKernel()

    # What JobManager also asks of its pool.
    def refill(self) -> None:
        pass

    def idle_count(self) -> int:
        return len(self.kernels)

    def wait_warm(self, timeout: float = 60.0) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


if TYPE_CHECKING:  # mypy holds both to the driver's interface
    _kernel: type[KernelBackend] = FakeKernel
    _source: type[KernelSource] = FakePool
