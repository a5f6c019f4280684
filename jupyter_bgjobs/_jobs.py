"""Jobs: their state machine, the process-wide manager, and the public job functions."""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import json
import os
import re
import secrets
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import _checks, _context, _snapshot
from ._config import settings
from ._display import RowClock
from ._errors import (
    BgJobError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobSpecError,
    JobStateError,
    JobTimeoutError,
    KernelDiedError,
)
from ._kernels import KernelPool, LocalKernel
from ._outputs import OutputTail, output_text
from ._runner import (
    EVENT_MIME,
    MAX_PIECES,
    SnapshotError,
    decode,
    load_file,
    piece_paths,
    take_stream,
)

PENDING, STARTING, RUNNING = "pending", "starting", "running"
SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED = (
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "died",
)
STATES = (PENDING, STARTING, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, DIED})
RESULT_MODES = ("globals", "object", "none")
CONFLICT_MODES = ("keep", "overwrite")


class ErrorInfo(NamedTuple):
    """The exception a job's code raised, as its kernel reported it."""

    ename: str
    evalue: str
    traceback: list[str]


class WaitTimeout(JobStateError, TimeoutError):
    """``Job.wait(timeout)`` returned before the job ended."""


@dataclass
class JobSpec:
    """Everything needed to run one job; built by ``run_cell``/``run_script`` and the magics."""

    code: str
    name: str
    kind: str = "cell"
    kernel: str | None = None
    timeout: float | None = None
    env: str = "none"
    results: str = "globals"
    on_conflict: str = "keep"
    workdir: str = ""
    script_path: str | None = None
    results_name: str = ""
    env_vars: dict[str, str] = field(default_factory=dict)
    gateway: str = ""
    kernel_env: dict[str, str] = field(default_factory=dict)


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


class Job(RowClock):
    """One piece of code running, or done running, in its own kernel.

    Read ``state``, ``progress``, ``section``, ``output`` and, once it has ended,
    ``results``, ``error`` and ``report``. ``wait()`` blocks until it ends (and merges its
    results), ``cancel()`` stops it.
    """

    def __init__(self, spec: JobSpec, manager: JobManager) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.spec = spec
        self.name = spec.name
        self._manager = manager
        self._cond = threading.Condition()
        self._state = PENDING
        self._done = 0
        self._total = 0
        self._custom_progress = False
        self._tqdm_progress = False
        self.section = ""
        self.status = ""
        self.submitted = _now()
        self.started: dt.datetime | None = None
        self.finished: dt.datetime | None = None
        self._t_started: float | None = None
        self._t_finished: float | None = None
        self.first_statement_at: float | None = None
        self.error: ErrorInfo | None = None
        self.exit_code: int | None = None
        self.reason = ""
        self.skipped: list[dict[str, str]] = []
        self.shipped: list[str] = []
        self.mutated: list[str] = []
        # Wall-clock stamps (time.time()) of the job's milestones, for benchmarks and logs.
        self.timings: dict[str, float] = {"submitted": time.time()}
        self.report = ""
        self._tail = OutputTail(settings.output_tail, settings.output_tail_bytes)
        self._values: dict[str, Any] | None = None
        self._merged = False
        self._ns_ids: dict[str, int] = {}
        self._cancel = threading.Event()
        self._callbacks: list[Callable[[Job], Any]] = []
        # wait() returns once the done callbacks have run too, so what they did is seen;
        # a callback that itself waits is not held up by its own run.
        self._settled = False
        self._settling: int | None = None
        self._listeners: list[Callable[[Job], Any]] = []
        self.folder = settings.job_root() / self.id
        self.folder.mkdir(mode=0o700)
        self.log_path = self.folder / "output.log"
        self._kernel: LocalKernel | None = None
        # A job loads only what its parent wrote for it: snapshots carry this token.
        self._token = secrets.token_hex(16)
        self._files: list[str] = []
        self._seed_chunks: list[str] = []
        self._stream = bytearray()
        self._environ: dict[str, str] = {}
        self._awaits = False

    # -- reading -------------------------------------------------------------------
    @property
    def state(self) -> str:
        """One of pending, starting, running, succeeded, failed, cancelled, timed_out, died."""
        return self._state

    @property
    def done(self) -> bool:
        """True once the job has reached a final state."""
        return self._state in FINAL_STATES

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """The tail of the job's outputs as nbformat output dicts, in order (bounded in
        size: ``log_path`` holds the whole output)."""
        return self._tail.items()

    @property
    def output_version(self) -> int:
        """Grows with every output the job sends, appended text included."""
        return self._tail.version

    @property
    def output(self) -> str:
        """The tail of the job's output as text (streams, and rich outputs' text form)."""
        return "".join(output_text(o) for o in self.outputs)

    @property
    def results(self) -> types.SimpleNamespace | None:
        """The names the job created or rebound, once it has ended (None before)."""
        if not self.done or self._values is None:
            return None
        return types.SimpleNamespace(**self._values)

    @property
    def kernel_pid(self) -> int | None:
        """The pid of the job's kernel process while it has one."""
        return self._kernel.pid if self._kernel is not None else None

    def exception(self) -> JobError | None:
        """The error matching how the job ended, or None if it succeeded or still runs."""
        cls = {
            FAILED: JobFailedError,
            CANCELLED: JobCancelledError,
            TIMED_OUT: JobTimeoutError,
            DIED: KernelDiedError,
        }.get(self._state)
        if cls is None:
            return None
        err = self.error or ErrorInfo("", "", [])
        message = f"job {self.name!r} {self._state.replace('_', ' ')}"
        if self.reason:
            message += f": {self.reason}"
        elif err.ename:
            message += f": {err.ename}: {err.evalue}"
        return cls(
            message,
            job_name=self.name,
            state=self._state,
            ename=err.ename,
            evalue=err.evalue,
            traceback=err.traceback,
            output=self.output[-5000:],
        )

    def __repr__(self) -> str:
        done, total = self.progress
        return (
            f"<Job {self.name!r} id={self.id} {self._state} {done}/{total}"
            f"{' [' + self.section + ']' if self.section else ''} {self.elapsed:.1f}s>"
        )

    # -- acting ----------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job ends, merge its results as configured, and return the job.

        Raises ``WaitTimeout`` if ``timeout`` seconds pass first (the job goes on).
        """
        if timeout is not None:
            timeout = _checks.number("timeout", timeout, unit="seconds")
        me = threading.get_ident()
        with self._cond:
            if not self._cond.wait_for(
                lambda: self.done and (self._settled or self._settling == me), timeout=timeout
            ):
                raise WaitTimeout(
                    f"job {self.name!r} is still {self._state} after {timeout} s; "
                    "call .wait() again or .cancel() it"
                )
        if threading.current_thread() is threading.main_thread():
            report = self._manager.merge(self)
            if report:
                print(report)
        return self

    def cancel(self) -> bool:
        """Stop the job: interrupt, then kill after a short grace. False if already ended."""
        if self.done:
            return False
        self._cancel.set()
        return True

    def add_done_callback(self, fn: Callable[[Job], Any]) -> None:
        """Call ``fn(job)`` when the job ends (at once if it has), from a manager thread."""
        with self._cond:
            if not self.done:
                self._callbacks.append(fn)
                return
        fn(self)

    # -- driven by the manager ---------------------------------------------------------
    def _set(self, **changes: Any) -> None:
        with self._cond:
            for key, value in changes.items():
                setattr(self, key, value)
            self._cond.notify_all()
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:
                pass

    def _add_output(self, out: dict[str, Any], log: Any) -> None:
        self._tail.add(out)
        with self._cond:
            self._cond.notify_all()
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:
                pass
        log.write(output_text(out))
        log.flush()


class JobManager:
    """The process-wide registry of jobs and the threads that drive them."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._slots = threading.Condition(self._lock)
        self._running = 0
        self._threads: dict[str, threading.Thread] = {}
        self._pool: KernelPool | None = None
        self._unmerged: list[Job] = []
        self._listeners: list[Callable[[Job], Any]] = []
        self.submit_hooks: list[Callable[[Job], Any]] = []

    # -- pool -------------------------------------------------------------------------
    def pool(self) -> KernelPool:
        with self._lock:
            if self._pool is None:
                self._pool = KernelPool(settings.pool_size, settings.kernel)
                self._pool.refill()
            return self._pool

    def resize_pool(self) -> None:
        with self._lock:
            pool = self._pool
            self._pool = None
        if pool is not None:
            pool.close()
        self.pool()

    # -- registry -------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def get(self, name_or_id: str) -> Job:
        with self._lock:
            if name_or_id in self._jobs:
                return self._jobs[name_or_id]
            named = [j for j in self._jobs.values() if j.name == name_or_id]
        if not named:
            raise JobSpecError(
                f"no job named {name_or_id!r}; jupyter_bgjobs.jobs() lists the jobs there are"
            )
        return named[-1]

    def unique_name(self, name: str) -> str:
        with self._lock:
            busy = {j.name for j in self._jobs.values() if not j.done}
        if name not in busy:
            return name
        n = 2
        while f"{name}-{n}" in busy:
            n += 1
        return f"{name}-{n}"

    def add_listener(self, fn: Callable[[Job], Any]) -> None:
        self._listeners.append(fn)

    # -- submitting -------------------------------------------------------------------------
    def submit(self, spec: JobSpec, ns: dict[str, Any] | None = None) -> Job:
        job = Job(spec, self)
        job._listeners.extend(self._listeners)
        if ns is not None:
            job._ns_ids = {k: id(v) for k, v in ns.items()}
        # A gateway's kernel shares no files with us: everything travels over its protocol.
        remote = bool(spec.gateway)
        transport = "stream" if settings.transport == "stream" or remote else "file"
        seed: _snapshot.Snapshot | None = None
        source = _transformed(spec.code)
        # What the notebook's environment is now, not when a warm kernel was started.
        job._environ = dict(os.environ)
        if ns is not None and spec.env != "none":
            names = _snapshot.select_names(ns, spec.env, source)
            paths = _snapshot.snapshot_paths(str(job.folder), job.id, "seed")
            job._files.extend(paths)  # before writing: an interrupted write is cleaned too
            seed = _snapshot.write_snapshot(ns, names, job._token, paths, transport)
            job.shipped = seed.shipped
            job.skipped.extend(dict(s, direction="in") for s in seed.skipped)
            job._seed_chunks = seed.chunks
            job.timings["snapshot_written"] = time.time()
        seed_spec: dict[str, Any] | None = None
        if seed is not None and (seed.path or seed.chunks):
            seed_spec = {
                "transport": transport,
                "path": seed.path,
                "pieces": seed.pieces,
                "sha256": seed.sha256,
                "nbytes": seed.nbytes,
            }
        job._awaits = _context.awaits(source)
        result_paths = _snapshot.snapshot_paths(str(job.folder), job.id, "results")
        job._files.extend(result_paths)
        runner_spec = {
            "job_id": job.id,
            "name": job.name,
            "code": spec.code,
            "filename": spec.script_path,
            "script_file": spec.script_path,
            "workdir": spec.workdir,
            "token": job._token,
            "seed": seed_spec,
            "imports": seed.imports if seed else {},
            "import_origins": _snapshot.import_origins(seed.imports) if seed else {},
            "not_shipped": seed.skipped if seed else [],
            "notebook_names": _snapshot.unshipped_names(ns, job.shipped) if ns else [],
            "context": {} if remote else _context.import_context(),
            "results": {
                "transport": transport,
                "paths": result_paths,
                "arena": settings.results_arena,
            },
            "env_vars": spec.env_vars,
        }
        _write_private(
            job.folder / "spec.json",
            json.dumps(
                {
                    "name": job.name,
                    "id": job.id,
                    "kind": spec.kind,
                    "kernel": spec.kernel,
                    "timeout": spec.timeout,
                    "workdir": spec.workdir,
                    "script": spec.script_path,
                    "gateway": spec.gateway,
                    "kernel_env": spec.kernel_env,
                    "submitted": job.submitted.isoformat(),
                    "shipped": job.shipped,
                },
                indent=1,
            ),
        )
        with self._lock:
            self._jobs[job.id] = job
            thread = threading.Thread(
                target=self._drive, args=(job, runner_spec), name=f"bgjob-{job.name}", daemon=True
            )
            self._threads[job.id] = thread
        self.pool()
        thread.start()
        for hook in list(self.submit_hooks):
            hook(job)
        return job

    def join_worker(self, job: Job, timeout: float = 30) -> None:
        thread = self._threads.get(job.id)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- driving one job -------------------------------------------------------------------------
    def _drive(self, job: Job, runner_spec: dict[str, Any]) -> None:
        with _open_log(job.log_path) as log:
            try:
                self._drive_inner(job, runner_spec, log)
            except BaseException as exc:  # a driver fault ends the job, visibly
                job._set(reason=f"internal error in jupyter_bgjobs: {type(exc).__name__}: {exc}")
                self._finish(job, FAILED)
            finally:
                for path in job._files:
                    _remove(path)
                kernel = job._kernel
                if kernel is not None:
                    # The runner has written everything before its end event. A graceful
                    # shutdown request can leave ipykernel hung in zmq's context teardown,
                    # an orphan if this process dies meanwhile; killing the process group
                    # cannot hang, and it also ends whatever the job left running.
                    kernel.shutdown(now=True)

    def _drive_inner(self, job: Job, runner_spec: dict[str, Any], log: Any) -> None:
        with self._slots:
            while self._running >= max(1, settings.max_concurrent) and not job._cancel.is_set():
                self._slots.wait(0.5)
            if job._cancel.is_set():
                job._set(reason="cancelled while pending")
                self._finish(job, CANCELLED)
                return
            self._running += 1
        try:
            self._run_in_kernel(job, runner_spec, log)
        finally:
            with self._slots:
                self._running -= 1
                self._slots.notify_all()

    def _run_in_kernel(self, job: Job, runner_spec: dict[str, Any], log: Any) -> None:
        job._set(_state=STARTING, started=_now(), _t_started=time.monotonic())
        try:
            kernel = self._kernel_for(job)
        except BgJobError as exc:
            job._set(reason=str(exc))
            self._finish(job, FAILED)
            return
        job._kernel = kernel
        if job._cancel.is_set():
            job._set(reason="cancelled while starting")
            self._finish(job, CANCELLED)
            return
        for seq, chunk in enumerate(job._seed_chunks):
            # Requests run in order: every chunk is in before the run call starts. The data
            # rides in the request's metadata; the code stays one short line.
            kernel.execute(
                f"__import__('_bgjobs_runner').receive({job._token!r}, {seq})",
                silent=True,
                metadata={"bgjobs_chunk": chunk},
            )
        job._seed_chunks = []
        if not job.spec.gateway:
            runner_spec["context"].update(
                _context.environ_changes(job._environ, getattr(kernel, "launch_env", None))
            )
        # Top-level await runs on the job kernel's loop, as IPython's autoawait runs a cell.
        entry = (
            "await __import__('_bgjobs_runner').run_async"
            if job._awaits
            else ("__import__('_bgjobs_runner').run")
        )
        call = f"{entry}({json.dumps(runner_spec)!r})"
        msg_id = kernel.execute(call)
        job._set(_state=RUNNING)
        deadline = (time.monotonic() + job.spec.timeout) if job.spec.timeout else None
        stop_reason = ""
        kill_at: float | None = None
        end: dict[str, Any] | None = None
        last_alive_check = time.monotonic()
        while True:
            msg = kernel.iopub(timeout=0.1)
            if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
                kind = msg["msg_type"]
                content = msg["content"]
                if kind == "status" and content.get("execution_state") == "idle":
                    break
                if kind in ("display_data", "update_display_data") and EVENT_MIME in content.get(
                    "data", {}
                ):
                    event = content["data"][EVENT_MIME]
                    if event.get("type") == "end":
                        end = event
                    self._on_event(job, event)
                elif kind == "stream":
                    job._add_output(
                        {"output_type": "stream", "name": content["name"], "text": content["text"]},
                        log,
                    )
                    if content["name"] == "stderr" and "%|" in content["text"]:
                        _tqdm_progress(job, content["text"])
                elif kind in ("display_data", "execute_result"):
                    out = {
                        "output_type": kind,
                        "data": content.get("data", {}),
                        "metadata": content.get("metadata", {}),
                    }
                    job._add_output(out, log)
                elif kind == "error":
                    job._add_output(
                        {
                            "output_type": "error",
                            "ename": content["ename"],
                            "evalue": content["evalue"],
                            "traceback": content["traceback"],
                        },
                        log,
                    )
            now = time.monotonic()
            if msg is None or now - last_alive_check > 0.25:
                last_alive_check = now
                if not kernel.alive():
                    code = kernel.exit_code()
                    self._drain(job, kernel, msg_id, log)
                    if stop_reason:
                        # We killed it after the grace period: the user's intent wins.
                        job._set(exit_code=code)
                        self._finish(job, CANCELLED if stop_reason == "cancel" else TIMED_OUT)
                    else:
                        remote_reason = getattr(kernel, "death_reason", None)
                        reason = remote_reason() if remote_reason else _death_reason(code)
                        tail = kernel.stderr_tail(600)
                        if tail:
                            job._add_output(
                                {"output_type": "stream", "name": "stderr", "text": tail + "\n"},
                                log,
                            )
                            last = tail.strip().splitlines()[0]
                            reason += f" ({last.strip()})" if "Fatal Python error" in last else ""
                        job._set(exit_code=code, reason=reason)
                        self._finish(job, DIED)
                    return
            if not stop_reason:
                if job._cancel.is_set():
                    stop_reason = "cancel"
                elif deadline is not None and now > deadline:
                    stop_reason = "timeout"
                    job._set(reason=f"ran past its timeout of {job.spec.timeout:g} s")
                if stop_reason:
                    kernel.interrupt()
                    kill_at = now + settings.cancel_grace
            elif kill_at is not None and now > kill_at:
                log.write(
                    f"\n[jupyter_bgjobs: no response to interrupt in "
                    f"{settings.cancel_grace:g} s; kernel killed]\n"
                )
                log.flush()
                kernel.kill()
                kill_at = None
        self._load_results(job, end, kernel)
        if stop_reason == "cancel":
            self._finish(job, CANCELLED)
        elif stop_reason == "timeout":
            self._finish(job, TIMED_OUT)
        elif end is None:
            job._set(reason="the job's kernel returned without reporting an outcome")
            self._finish(job, FAILED)
        elif end["status"] == "ok":
            self._finish(job, SUCCEEDED)
        elif end["status"] == "interrupted":
            job._set(reason="interrupted inside its kernel")
            self._finish(job, CANCELLED)
        else:
            self._finish(job, FAILED)

    def _kernel_for(self, job: Job) -> Any:
        """A warm local kernel, a new one, or one on the job's gateway."""
        if not job.spec.gateway:
            return self.pool().acquire(job.spec.kernel)
        from ._gateway import GatewayKernel, gateway_settings

        url, token = gateway_settings(job.spec.gateway)
        name = job.spec.kernel or settings.kernel
        return GatewayKernel(url, token, name, job.spec.kernel_env).start()

    def _drain(self, job: Job, kernel: LocalKernel, msg_id: str, log: Any) -> None:
        """Keep what a dying kernel managed to send before it went."""
        while True:
            msg = kernel.iopub(timeout=0.05)
            if msg is None:
                return
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                job._add_output(
                    {
                        "output_type": "stream",
                        "name": msg["content"]["name"],
                        "text": msg["content"]["text"],
                    },
                    log,
                )

    def _on_event(self, job: Job, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "plan":
            job.timings["seeded"] = event["t"]
            if "t_start" in event:
                job.timings["runner_started"] = event["t_start"]
            job.skipped.extend(dict(s, direction="in") for s in event.get("skipped", []))
            job._set(_total=event["total"])
        elif kind == "progress":
            total = event.get("total")
            job._set(
                _custom_progress=True,
                _tqdm_progress=False,
                _done=int(event["units"]),
                _total=int(total) if total is not None else job._total,
            )
        elif kind == "status":
            job._set(status=str(event["text"]))
        elif kind == "stmt":
            changes: dict[str, Any] = {"section": event["section"]}
            if not job._custom_progress:
                changes["_done"] = event["index"]
            if job.first_statement_at is None:
                changes["first_statement_at"] = event["t"]
                job.timings["first_statement"] = event["t"]
            job._set(**changes)
        elif kind == "chunk":
            if event["seq"] == 0:
                job._stream = bytearray()
            job._stream += base64.b64decode(event["data"])
        elif kind == "end":
            err = event.get("error")
            changes = {} if job._custom_progress else {"_done": event["done"]}
            if err:
                changes["error"] = ErrorInfo(err["ename"], err["evalue"], err["traceback"])
            job._set(**changes)

    def _load_one_by_one(
        self, job: Job, kernel: LocalKernel | None, names: list[str], first: Exception
    ) -> dict[str, Any]:
        """Ask the job's kernel, still alive, to send each result on its own, and load
        what can be loaded; each name that cannot says why."""
        values: dict[str, Any] = {}
        reasons = {name: f"could not be loaded here: {first}" for name in names}
        if kernel is not None and kernel.alive():
            paths = {
                n: _snapshot.snapshot_paths(str(job.folder), job.id, f"result-{i}")
                for i, n in enumerate(names)
            }
            for candidates in paths.values():
                job._files.extend(candidates)
            request = {"token": job._token, "paths": paths}
            msg_id = kernel.execute(
                f"__import__('_bgjobs_runner').resend({json.dumps(request)!r})", silent=True
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                msg = kernel.iopub(timeout=0.5)
                if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                    if not kernel.alive():
                        break
                    continue
                content = msg["content"]
                if msg["msg_type"] == "status" and content.get("execution_state") == "idle":
                    break
                event = content.get("data", {}).get(EVENT_MIME) if "data" in content else None
                if not event or event.get("type") != "resent":
                    continue
                name = event["name"]
                try:
                    if event.get("error"):
                        raise SnapshotError(event["error"])
                    values.update(load_file(event["path"], job._token, event.get("pieces", 1)))
                    reasons.pop(name, None)
                except Exception as exc:
                    reasons[name] = f"could not be loaded here: {type(exc).__name__}: {exc}"
        for name, reason in reasons.items():
            job.skipped.append({"name": name, "type": "?", "direction": "out", "reason": reason})
        return values

    def _load_results(
        self, job: Job, end: dict[str, Any] | None, kernel: LocalKernel | None = None
    ) -> None:
        if end is None:
            return
        info = end.get("results") or {}
        job.skipped.extend(dict(s, direction="out") for s in info.get("skipped", []))
        values: dict[str, Any] = {}
        job.mutated = list(info.get("mutated", []))
        if info.get("names"):
            try:
                if info.get("transport") == "stream":
                    data = take_stream(job._stream, info["sha256"], info["nbytes"])
                    values.update(decode(data, job._token))
                elif info.get("path") in job._files:
                    values.update(load_file(info["path"], job._token, info.get("pieces", 1)))
                    job.timings["results_mapped"] = time.time()
                else:
                    raise SnapshotError(f"results path {info.get('path')!r} is not this job's")
            except Exception as exc:  # one name that cannot load here must not sink the rest
                values.update(self._load_one_by_one(job, kernel, info["names"], exc))
        for name, module in (info.get("modules") or {}).items():
            import importlib

            if name in job._ns_ids and job._ns_ids[name] == id(sys.modules.get(module)):
                continue  # the notebook has that very module under that name: no result
            try:
                values[name] = importlib.import_module(module)
            except Exception as exc:
                job.skipped.append(
                    {
                        "name": name,
                        "type": "module",
                        "direction": "out",
                        "reason": f"import {module} failed here: {exc}",
                    }
                )
        job._values = values
        job.timings["code_done"] = end.get("code_done", 0.0)
        for key in ("t_compared", "t_encoded", "t_written"):
            if key in info:
                job.timings["results_" + key[2:]] = info[key]
        job.timings["end_received"] = time.time()
        job.timings["results_loaded"] = time.time()
        job._stream = bytearray()
        for path in job._files:
            _remove(path)

    def _finish(self, job: Job, state: str) -> None:
        if job.spec.results == "none" or job._values is None or state != SUCCEEDED:
            job._merged = True
        with self._lock:
            if not job._merged:
                self._unmerged.append(job)
        job._set(_t_finished=time.monotonic())
        report = ""
        if job._merged:
            from ._merge import report_line

            report = report_line(job, state=state)
        job._set(_state=state, finished=_now(), report=report)
        with job._cond:
            callbacks, job._callbacks = job._callbacks, []
            job._settling = threading.get_ident()
        try:
            for fn in callbacks:
                try:
                    fn(job)
                except Exception as exc:  # a user callback must not kill the driver
                    with _open_log(job.log_path) as log:
                        log.write(f"\n[jupyter_bgjobs: done callback {fn!r} raised {exc!r}]\n")
        finally:
            job._set(_settled=True, _settling=None)

    # -- merging -------------------------------------------------------------------------
    def merge(self, job: Job, ns: dict[str, Any] | None = None) -> str:
        """Merge one finished job's results into ``ns`` (the notebook's namespace)."""
        from ._merge import merge_results, target_namespace

        with self._lock:
            if job._merged or not job.done:
                return ""
            job._merged = True
            if job in self._unmerged:
                self._unmerged.remove(job)
        report = merge_results(job, ns if ns is not None else target_namespace())
        job._set(report=report)
        return report

    def merge_ready(self, ns: dict[str, Any] | None = None) -> list[str]:
        """Merge every finished job not merged yet, in the order they finished."""
        with self._lock:
            ready = [j for j in self._unmerged if j.done]
        return [r for r in (self.merge(j, ns) for j in ready) if r]

    # -- ending -------------------------------------------------------------------------
    def shutdown(self, announce: bool = False, stream: Any = None) -> list[Job]:
        """Cancel running jobs, end the pool, and join every driver thread."""
        active = [j for j in self.jobs() if not j.done]
        if announce and active:
            names = ", ".join(
                f"{j.name} ({j.state} {j.progress[0]}/{j.progress[1]})" for j in active
            )
            print(
                f"jupyter_bgjobs: ending {len(active)} running job(s): {names}",
                flush=True,
                file=stream or sys.stdout,
            )
        for job in active:
            job._cancel.set()
        saved_grace = settings.cancel_grace
        for job in active:
            self.join_worker(job, timeout=saved_grace + 15)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        for thread in list(self._threads.values()):
            thread.join(30)
        return active

    def remove(self, job: Job) -> None:
        """Forget a finished job (its log stays on disk); a running job stays."""
        if not job.done:
            raise JobStateError(
                f"job {job.name!r} is still {job.state}; cancel() it before removing it"
            )
        with self._lock:
            self._jobs.pop(job.id, None)
            if job in self._unmerged:
                self._unmerged.remove(job)
        for path in job._files:
            _remove(path)

    def forget_finished(self) -> None:
        with self._lock:
            for key in [k for k, j in self._jobs.items() if j.done]:
                del self._jobs[key]
                self._threads.pop(key, None)


_TQDM = re.compile(r"(\d+)/(\d+) \[")


def _tqdm_progress(job: Job, text: str) -> None:
    """A plain tqdm bar in a job (it redraws on stderr with \\r) drives the job's row,
    unless the job reports progress through the API."""
    if job._custom_progress and not job._tqdm_progress:
        return
    found = _TQDM.findall(text.rsplit("\r", 1)[-1]) or _TQDM.findall(text)
    if found:
        done, total = found[-1]
        job._set(_custom_progress=True, _tqdm_progress=True, _done=int(done), _total=int(total))


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _open_log(path: Path) -> Any:
    """A job's log, opened for appending; created readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


def _remove(path: str) -> None:
    for piece in piece_paths(path, MAX_PIECES):
        try:
            os.unlink(piece)
        except OSError:
            pass


def _death_reason(code: int | None, what: str = "its kernel") -> str:
    if code is None:
        return f"{what} process ended"
    if code < 0:
        import signal

        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        return f"{what} was killed by {sig} (exit code {code})"
    return f"{what} exited with code {code}"


def _transformed(code: str) -> str:
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return str(TransformerManager().transform_cell(code))
    except Exception:
        return code


manager = JobManager()


@atexit.register
def _at_exit() -> None:
    # At interpreter exit a kernel's sys.stdout may no longer reach anyone: say it on the
    # process's own stderr, which the notebook server's log keeps.
    manager.shutdown(announce=True, stream=sys.__stderr__)


# -- the public functions ---------------------------------------------------------------------
def _check_gateway(gateway: str | None) -> str:
    from ._config import settings

    _checks.text("gateway", gateway, optional=True, example="'http://gateway:8888'")
    url = gateway or settings.gateway
    if not url:
        return ""
    if url in ("env", "default"):
        url = os.environ.get("JUPYTER_GATEWAY_URL", "")
        if not url:
            raise JobSpecError(
                "--gateway env asks for $JUPYTER_GATEWAY_URL, which is not set; "
                "pass the gateway's URL instead"
            )
    return _checks.gateway_url(url)


def _check_kernel_env(env: dict[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    checked = _checks.str_mapping("kernel_env", env, example="{'KERNEL_NAMESPACE': 'team-a'}")
    for key, value in checked.items():
        if not key.startswith("KERNEL_") or not key.replace("_", "").isalnum():
            raise JobSpecError(
                f"kernel variable {key!r}: gateways pass only KERNEL_* variables to the "
                "kernels they start (KERNEL_NAMESPACE, KERNEL_CPUS, ...); name it KERNEL_..."
            )
        out[key] = str(value)
    return out


def _parse_kernel_env(items: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` strings from the magics' ``--kernel-env``."""
    env: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise JobSpecError(f"--kernel-env needs KEY=VALUE, got {item!r}")
        env[key.strip()] = value
    return env


def _check_name(name: str) -> str:
    _checks.text("name", name, example="'fit_model'")
    if not name.isidentifier():
        raise JobSpecError(
            f"job name {name!r} is not a Python identifier; use letters, digits and _ "
            "(for example 'fit_model')"
        )
    return name


def _check_env(env: str) -> str:
    _checks.text("env", env, example="'auto', 'all', 'none' or 'a,b'")
    if env in ("auto", "all", "none"):
        return env
    names = [n.strip() for n in env.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if not names or bad:
        raise JobSpecError(
            f"env must be auto, all, none or a comma-separated list of names, not {env!r}"
        )
    return ",".join(names)


_counter = 0
_counter_lock = threading.Lock()


def _default_name() -> str:
    global _counter
    with _counter_lock:
        _counter += 1
        return f"job{_counter}"


def make_spec(
    code: str,
    *,
    name: str | None,
    kind: str,
    kernel: str | None,
    timeout: float | None,
    env: str,
    results: str,
    on_conflict: str,
    workdir: str | None,
    script_path: str | None = None,
    gateway: str | None = None,
    kernel_env: dict[str, str] | None = None,
) -> JobSpec:
    """Check every option and build a spec; raises JobSpecError naming the fix."""
    _checks.text("code", code, example="'x = 1'")
    if name is not None:
        _check_name(name)
    checked_timeout = _checks.timeout("timeout", timeout)
    checked_env = _check_env(env)
    checked_results = _checks.choice("results", results, RESULT_MODES)
    checked_conflict = _checks.choice("on_conflict", on_conflict, CONFLICT_MODES)
    _checks.text("kernel", kernel, optional=True, example="'python3'")
    workdir = _checks.path("workdir", workdir, optional=True)
    url = _check_gateway(gateway)
    env_vars = _check_kernel_env(kernel_env)
    if url:
        # The remote kernel's folders are not ours: only an explicit workdir is used there.
        wd = workdir or ""
    else:
        wd = workdir or os.getcwd()
        if not os.path.isdir(wd):
            raise JobSpecError(f"working directory {wd!r} does not exist; pass an existing folder")
        _checks.kernelspec(kernel or settings.kernel)
    base = name if name is not None else _default_name()
    spec = JobSpec(
        code=code,
        name=base,
        kind=kind,
        kernel=kernel,
        timeout=checked_timeout,
        env=checked_env,
        results=checked_results,
        on_conflict=checked_conflict,
        workdir=(wd if url else os.path.abspath(wd)),
        script_path=script_path,
        gateway=url,
        kernel_env=env_vars,
    )
    unique = manager.unique_name(base)
    if unique != base:
        print(f"jupyter_bgjobs: a job named {base!r} is still running; this one is {unique!r}")
    spec.name = unique
    spec.results_name = unique.replace("-", "_") + "_results"
    return spec


def run_cell(
    code: str,
    name: str | None = None,
    *,
    kernel: str | None = None,
    timeout: float | None = None,
    env: str = "auto",
    results: str = "globals",
    on_conflict: str = "keep",
    workdir: str | None = None,
    detach: bool = False,
    gateway: str | None = None,
    kernel_env: dict[str, str] | None = None,
) -> Any:
    """Run ``code`` (IPython syntax allowed) as a background job and return the Job at once.

    ``env``: ``auto`` ships the notebook names the code reads, ``all`` the whole namespace,
    ``none`` nothing, or ``"a,b,c"`` exactly those. ``results``: ``globals`` merges the names
    the job created or rebound into the notebook, ``object`` puts them in ``<name>_results``,
    ``none`` keeps them only in ``job.results``. ``detach=True`` runs it apart from this
    process: it outlives this kernel, and its results wait in the store for
    ``%bgjob_attach`` (a DetachedJob is returned). ``gateway``: run it on a Kernel or
    Enterprise Gateway (a URL; ``configure(gateway=...)`` sets a default), with
    ``kernel_env`` (``KERNEL_*`` variables) passed to the kernel it starts.
    """
    from ._merge import target_namespace

    _checks.flag("detach", detach)
    spec = make_spec(
        code,
        name=name,
        kind="cell",
        kernel=kernel,
        timeout=timeout,
        env=env,
        results=results,
        on_conflict=on_conflict,
        workdir=workdir,
        gateway=gateway,
        kernel_env=kernel_env,
    )
    if detach:
        from ._detached import start

        return start(spec, target_namespace())
    return manager.submit(spec, target_namespace())


def run_script(
    path: str | os.PathLike[str],
    name: str | None = None,
    encoding: str = "utf-8",
    workdir: str | None = None,
    import_env: bool = False,
    export_env: str = "",
    *,
    kernel: str | None = None,
    timeout: float | None = None,
    detach: bool = False,
    gateway: str | None = None,
    kernel_env: dict[str, str] | None = None,
    _results: str | None = None,
) -> Any:
    """Run a script as a background job (rstudioapi's jobRunScript) and return the Job.

    ``workdir`` defaults to the script's folder. ``import_env=True`` ships the notebook's
    whole namespace. ``export_env``: ``""`` keeps results in ``job.results`` only,
    ``"globals"`` merges them into the notebook, any other name makes a namespace of that
    name. ``detach``, ``gateway`` and ``kernel_env`` as for ``run_cell``.
    """
    from ._merge import target_namespace

    script = Path(_checks.path("path", path) or "").expanduser()
    _checks.text("encoding", encoding, example="'utf-8'")
    _checks.flag("import_env", import_env)
    _checks.text("export_env", export_env, example="'', 'globals' or 'train_results'")
    _checks.flag("detach", detach)
    if not script.is_file():
        raise JobSpecError(f"no script at {str(script)!r}; check the path")
    try:
        code = script.read_text(encoding=encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise JobSpecError(
            f"cannot read {str(script)!r} as {encoding}: {exc}; pass encoding=..."
        ) from None
    if export_env not in ("", "globals") and not export_env.isidentifier():
        raise JobSpecError(f"export_env must be '', 'globals' or an identifier, not {export_env!r}")
    results = {"": "none", "globals": "globals"}.get(export_env, "object")
    # %bgjob_script's default, <script>_results, is decided here, before the job can end.
    results = _results or results
    spec = make_spec(
        code,
        name=name if name is not None else _script_name(script),
        kind="script",
        kernel=kernel,
        timeout=timeout,
        env="all" if import_env else "none",
        results=results,
        on_conflict="keep",
        workdir=workdir or ("" if (gateway or settings.gateway) else str(script.resolve().parent)),
        script_path=str(script.resolve()),
        gateway=gateway,
        kernel_env=kernel_env,
    )
    if results == "object" and export_env:
        spec.results_name = export_env
    if detach:
        from ._detached import start

        return start(spec, target_namespace())
    return manager.submit(spec, target_namespace())


def _script_name(script: Path) -> str:
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in script.stem)
    return stem if stem.isidentifier() else f"script_{stem}"


def get_job(name_or_id: str) -> Any:
    """The job with this id, or the latest job with this name: one of this process, else
    a detached one from the store (started here before a restart, or elsewhere)."""
    _checks.text("name_or_id", name_or_id, example="'train'")
    try:
        return manager.get(name_or_id)
    except JobSpecError:
        from ._detached import find

        found = find(name_or_id)
        if found is None:
            raise JobSpecError(
                f"no job named {name_or_id!r}, here or among the detached ones; "
                "jupyter_bgjobs.jobs() and %bgjobs list the jobs there are"
            ) from None
        return found


def jobs() -> list[Job]:
    """Every job of this process, oldest first."""
    return manager.jobs()


__all__ = [
    "BgJobError",
    "ErrorInfo",
    "Job",
    "JobSpec",
    "WaitTimeout",
    "get_job",
    "jobs",
    "manager",
    "run_cell",
    "run_script",
]
