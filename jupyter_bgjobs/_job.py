"""Job: the handle of one job, read by the notebook while its driver moves it on."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _checks
from ._config import settings
from ._errors import (
    JobCancelledError,
    JobError,
    JobFailedError,
    JobTimeoutError,
    KernelDiedError,
    WaitTimeout,
)
from ._outputs import OutputTail, Tailed, output_text
from ._spec import JobSpec

if TYPE_CHECKING:
    from ._backends.base import KernelBackend
from ._states import (
    CANCELLED,
    DIED,
    FAILED,
    FINAL_STATES,
    MAX_HISTORY,
    PENDING,
    TIMED_OUT,
    ErrorInfo,
    RowClock,
    event_of,
    history_entry,
    now,
    transition,
)


class Job(Tailed, RowClock):
    """One piece of code running, or done running, in its own kernel.

    Read ``state``, ``progress``, ``section``, ``output`` and, once it has ended,
    ``results``, ``error`` and ``report``. ``wait()`` blocks until it ends (and merges its
    results), ``cancel()`` stops it.
    """

    def __init__(
        self,
        spec: JobSpec,
        manager: Any,
        *,
        folder: Path | None = None,
        token: str | None = None,
        detached: bool = False,
    ) -> None:
        # A detached job's host takes over the folder (and the token) its notebook made.
        self.id = folder.name if folder is not None else uuid.uuid4().hex[:8]
        self.detached = detached
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
        self.submitted = now()
        # The story of the job: every transition, with its time and, for an end, its reason.
        self.history: list[dict[str, str]] = [
            {"event": "submit", "state": PENDING, "at": self.submitted.isoformat(), "reason": ""}
        ]
        self.started: dt.datetime | None = None
        self.finished: dt.datetime | None = None
        self._t_started: float | None = None
        self._t_finished: float | None = None
        self.first_statement_at: float | None = None
        self.error: ErrorInfo | None = None
        self.exit_code: int | None = None
        self.reason = ""
        # Set when the disk refused some of the job's output: the log lacks it, and why.
        self.log_note = ""
        self.skipped: list[dict[str, str]] = []
        self.shipped: list[str] = []
        self.mutated: list[str] = []
        # Names the job was given and deleted: deleted in the notebook at merge too.
        self.deleted: list[str] = []
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
        if folder is None:
            folder = settings.job_root() / self.id
            folder.mkdir(mode=0o700)
        self.folder = folder
        self.log_path = self.folder / "output.log"
        self._kernel: KernelBackend | None = None
        # A job loads only what its parent wrote for it: snapshots carry this token.
        self._token = token or secrets.token_hex(16)
        self._files: list[str] = []
        # The seed, when it travels over the kernel protocol: one buffer (a mapped file
        # for a detached job's host), let go once sent.
        self._seed_blob: Any = None
        self._results_lost = False  # the job ran, but its results could not come back
        self._environ: dict[str, str] = {}
        self._awaits = False
        # A detached job's results as its host recorded them (never loaded there).
        self._kept: dict[str, Any] | None = None
        self._unsaved: list[Callable[[], None]] = []
        # A detached job's own shared-memory folder ("" where there is none).
        self._shm_dir: str | None = None
        self._result_paths: list[str] = []
        # Libraries a cold kernel imports before the job (a detached job's host sets it).
        self._preimport: list[str] = []
        # Keeps the job's state record current (the manager or the host sets it).
        self._writer: Any = None

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
    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:  # a row or record writer must not stop the driver
                pass

    def _set(self, **changes: Any) -> None:
        event = ""
        if "_state" in changes:
            event = event_of(transition(self._state, changes["_state"]))
        with self._cond:
            for key, value in changes.items():
                setattr(self, key, value)
            if event:
                state = self._state
                why = self.reason if state in FINAL_STATES else ""
                self.history = [*self.history, history_entry(event, state, why)][:MAX_HISTORY]
            self._cond.notify_all()
        self._notify()

    def _add_output(self, out: dict[str, Any], log: Any) -> None:
        self._tail.add(out)
        with self._cond:
            self._cond.notify_all()
        self._notify()
        log.write(output_text(out))
        log.flush()
