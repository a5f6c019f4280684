"""A job as two objects: the ``Run`` its driver moves on, and the ``Job`` users hold.

The run is the engine's: its state changes only through named transitions (start, run,
progress, and an end: succeed, fail, cancel, time out, die), each told in the job's
history; it also keeps what the engine holds for the job (its kernel, its snapshot files,
the token that opens them, its results before they merge). The job is the handle: it
reads the run, waits for it, and asks it to stop. Nothing outside the engine holds a run.
"""

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
from ._handle import WholeJob
from ._outputs import OutputTail, Tailed, output_text
from ._spec import JobSpec

if TYPE_CHECKING:
    from ._backends.base import KernelBackend
    from ._backends.providers import Provider
from ._states import (
    CANCELLED,
    DIED,
    FAILED,
    FINAL_STATES,
    MAX_HISTORY,
    PENDING,
    RUNNING,
    STARTING,
    TIMED_OUT,
    WAITING,
    ErrorInfo,
    RowClock,
    TransitionError,
    event_of,
    history_entry,
    now,
    transition,
)

# The facts of a job its run may tell (besides its state and progress): what users read
# on the handle. Anything else is refused, so no caller can set a field by a typo.
_FACTS = frozenset(
    {
        "section",
        "status",
        "reason",
        "log_note",
        "error",
        "exit_code",
        "report",
        "first_statement_at",
        "results_lost",
        "resources",
        "usage",
        "checkpoint",
        "resumed",
    }
)


class Run(Tailed, RowClock):
    """The engine's side of one job: its state, moved on through named transitions only,
    and what the engine holds for it. ``job`` is the handle users get.

    The driver moves it (``start``, ``running``, ``advance``, ``end``); the manager, the
    loader of results and a detached job's host keep here what they hold for the job."""

    def __init__(
        self,
        spec: JobSpec,
        manager: Any,
        *,
        folder: Path | None = None,
        token: str | None = None,
        detached: bool = False,
    ) -> None:
        self.cond = threading.Condition()
        self.state = PENDING
        self._done = 0
        self._total = 0
        # Progress told by the job through the API (or a tqdm bar) wins over statements.
        self.custom_progress = False
        self.tqdm_progress = False
        self._t_started: float | None = None
        self._t_finished: float | None = None
        self._tail = OutputTail(settings.output_tail, settings.output_tail_bytes)
        self.cancel_asked = threading.Event()
        self.listeners: list[Callable[[Job], Any]] = []
        self.callbacks: list[Callable[[Job], Any]] = []
        # wait() returns once the done callbacks have run too, so what they did is seen;
        # a callback that itself waits is not held up by its own run.
        self.settled = False
        self.settling: int | None = None
        # The results, once loaded, and whether they have gone into the notebook.
        self.values: dict[str, Any] | None = None
        self.merged = False
        # The ids of the notebook's objects as the job started: a merge tells the
        # notebook's own changes since then from the job's.
        self.ns_ids: dict[str, int] = {}
        self.kernel: KernelBackend | None = None
        # A job loads only what its parent wrote for it: snapshots carry this token.
        self.token = token or secrets.token_hex(16)
        self.files: list[str] = []
        # The seed, when it travels over the kernel protocol: one buffer (a mapped file
        # for a detached job's host), let go once sent.
        self.seed_blob: Any = None
        self.results_lost = False  # the job ran, but its results could not come back
        self.environ: dict[str, str] = {}
        self.awaits = False
        # A detached job's results as its host recorded them (never loaded there), and
        # the writes of them the store refused so far.
        self.kept: dict[str, Any] | None = None
        self.unsaved: list[Callable[[], None]] = []
        # A detached job's own shared-memory folder ("" where there is none).
        self.shm_dir: str | None = None
        self.result_paths: list[str] = []
        # Libraries a cold kernel imports before the job (a detached job's host sets it).
        self.preimport: list[str] = []
        # Keeps the job's state record current (the manager or the host sets it).
        self.writer: Any = None
        # Where its kernel comes from (the warm pool, a gateway): chosen once, by whoever
        # makes the run (the manager, or a detached job's host).
        self.provider: Provider | None = None
        # The jobs it waits for before it starts (``_waits.Wait``), and the names its
        # code binds at its top level (what a later job reading them waits for).
        self.waits: list[Any] = []
        self.binds: set[str] = set()
        self.job = Job(self, spec, manager, folder=folder, detached=detached)

    # -- the named transitions ------------------------------------------------------------
    def start(self) -> None:
        """pending → starting: a slot is taken, the kernel is being acquired."""
        self._move(STARTING, started=now(), t_started=time.monotonic())

    def waiting(self, status: str) -> None:
        """pending → waiting: it waits for the jobs whose results it reads (``status``
        says which: "waiting for fit (df)")."""
        self._move(WAITING, status=status)

    def running(self) -> None:
        """starting → running: the code has been sent to the kernel."""
        self._move(RUNNING)

    def end(self, state: str, report: str = "") -> None:
        """Into a final state (succeed, fail, cancel, time out, die); its reason, told
        before with ``tell``, goes into the history with it."""
        if state not in FINAL_STATES:
            raise TransitionError(f"{state!r} is not an end")
        self._move(state, finished=now(), t_finished=time.monotonic(), report=report)

    def advance(
        self,
        units: int | None = None,
        total: int | None = None,
        *,
        custom: bool | None = None,
        tqdm: bool | None = None,
        **facts: Any,
    ) -> None:
        """Units done and in all (statements, or what the job reports), with any facts
        that came with them (the section)."""
        _only_facts(facts)
        changes: dict[str, Any] = dict(facts)
        for key, value in (
            ("units", units),
            ("total", total),
            ("custom_progress", custom),
            ("tqdm_progress", tqdm),
        ):
            if value is not None:
                changes[key] = value
        self._change(changes)

    def attempt_ended(self, state: str, reason: str) -> None:
        """An attempt of a job that is retried ended in ``state`` for ``reason``: told in
        its history (which attempt, how it ended, when); the job goes on with the next."""
        job = self.job
        with self.cond:
            entry = history_entry("retry", state, f"attempt {job.attempt}: {reason}")
            job.history = [*job.history, entry][:MAX_HISTORY]
            job.attempt += 1
            self.cond.notify_all()
        self._notify()

    def tell(self, **facts: Any) -> None:
        """Facts of the job that are no transition: its section, status, reason, error,
        exit code, the note of a log the disk refused, its merge report, whether its
        results were lost on the way back."""
        _only_facts(facts)
        self._change(facts)

    def settle(self, settled: bool) -> None:
        """The done callbacks are running (False) or have run (True)."""
        with self.cond:
            self.settling = None if settled else threading.get_ident()
            self.settled = settled
            self.cond.notify_all()

    def add_output(self, out: dict[str, Any], log: Any) -> None:
        """One output of the job: into the tail users read, and its log."""
        self._tail.add(out)
        with self.cond:
            self.cond.notify_all()
        self._notify()
        log.write(output_text(out))
        log.flush()

    def take_callbacks(self) -> list[Callable[[Job], Any]]:
        """The done callbacks, once: the job has ended and they are about to run."""
        with self.cond:
            callbacks, self.callbacks = self.callbacks, []
            self.settling = threading.get_ident()
        return callbacks

    # -- how a change is made and told ---------------------------------------------------
    def _move(self, target: str, **changes: Any) -> None:
        transition(self.state, target)  # TransitionError for one no table entry allows
        self._change({"state": target, **changes})

    def _change(self, changes: dict[str, Any]) -> None:
        job = self.job
        with self.cond:
            for key, value in changes.items():
                if key in _RUN_FIELDS:
                    setattr(self, _RUN_FIELDS[key], value)
                else:
                    setattr(job, key, value)
            if "state" in changes:
                state = self.state
                why = job.reason if state in FINAL_STATES else ""
                entry = history_entry(event_of(state), state, why)
                job.history = [*job.history, entry][:MAX_HISTORY]
            self.cond.notify_all()
        self._notify()

    def _notify(self) -> None:
        for listener in list(self.listeners):
            try:
                listener(self.job)
            except Exception:  # a row or record writer must not stop the driver
                pass


def _only_facts(facts: dict[str, Any]) -> None:
    unknown = set(facts) - _FACTS
    if unknown:
        raise TypeError(
            f"a run has no fact {sorted(unknown)}; its state moves by its transitions only"
        )


# What a change may set of the run itself, and the field that holds it.
_RUN_FIELDS = {
    "state": "state",
    "units": "_done",
    "total": "_total",
    "custom_progress": "custom_progress",
    "tqdm_progress": "tqdm_progress",
    "t_started": "_t_started",
    "t_finished": "_t_finished",
    "results_lost": "results_lost",
}


class Job(WholeJob):
    """One piece of code running, or done running, in its own kernel.

    Read ``state``, ``progress``, ``section``, ``output`` and, once it has ended,
    ``results``, ``error`` and ``report``. ``wait()`` blocks until it ends (and merges its
    results), ``cancel()`` stops it.
    """

    def __init__(
        self,
        run: Run,
        spec: JobSpec,
        manager: Any,
        *,
        folder: Path | None = None,
        detached: bool = False,
    ) -> None:
        # A detached job's host takes over the folder (and the token) its notebook made.
        self.id = folder.name if folder is not None else uuid.uuid4().hex[:8]
        self._run = run
        self._manager = manager
        self.detached = detached
        self.spec = spec
        self.name = spec.name
        self.section = ""
        self.status = ""
        self.submitted = now()
        # The story of the job: every transition, with its time and, for an end, its reason.
        self.history: list[dict[str, str]] = [
            {"event": "submit", "state": PENDING, "at": self.submitted.isoformat(), "reason": ""}
        ]
        self.started: dt.datetime | None = None
        self.finished: dt.datetime | None = None
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
        # What its kernel (and what that started) uses, sampled about once a second:
        # ``rss`` and ``peak`` (bytes), ``cpu`` (percent of one core), ``cpu_seconds``;
        # empty until sampled (a gateway's kernel is not sampled). ``usage``: the samples
        # for a plot, ``[seconds since start, rss, cpu]``, thinned as the job lives on.
        self.resources: dict[str, Any] = {}
        self.usage: list[list[float]] = []
        # Which attempt runs (a job with retries has up to ``spec.retries + 1``); its
        # newest checkpoint (section, statement, bytes, when); and, for a job that
        # resumes another (or an attempt that goes on from a checkpoint), where from.
        self.attempt = 1
        self.checkpoint: dict[str, Any] = {}
        self.resumed: str = str(spec.resume.get("note", "")) if spec.resume else ""
        # The jobs it waits for, in words ("fit (df)") and by id: set where it is made.
        self.waits_for: list[str] = []
        self.waits_for_ids: list[str] = []
        self.report = ""
        if folder is None:
            folder = settings.job_root() / self.id
            folder.mkdir(mode=0o700)
        self.folder = folder
        self.log_path = self.folder / "output.log"

    # -- what every row reads, of the run ------------------------------------------------
    @property
    def progress(self) -> tuple[int, int]:
        """(statements done, statements in all), or the units the job reports."""
        return self._run.progress

    @property
    def elapsed(self) -> float:
        """Seconds it has been running (0 before it starts)."""
        return self._run.elapsed

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """The tail of the outputs as nbformat output dicts, in order (bounded in size;
        ``log_path`` holds the whole output)."""
        return self._run.outputs

    @property
    def output_version(self) -> int:
        """Grows with every output sent, appended text included."""
        return self._run.output_version

    @property
    def output(self) -> str:
        """The tail as text (streams, and rich outputs' text form)."""
        return self._run.output

    @property
    def _cond(self) -> threading.Condition:
        # Tests and the magics' rows wait on it for a change of the job.
        return self._run.cond

    # -- reading -------------------------------------------------------------------
    @property
    def state(self) -> str:
        """One of pending, starting, running, succeeded, failed, cancelled, timed_out, died."""
        return self._run.state

    @property
    def done(self) -> bool:
        """True once the job has reached a final state."""
        return self._run.state in FINAL_STATES

    @property
    def merged(self) -> bool:
        """True once the job's results are in the notebook, or there is nothing to merge
        (False while a merge waits for the next cell)."""
        return self._run.merged

    @property
    def results(self) -> types.SimpleNamespace | None:
        """The names the job created or rebound, once it has ended (None before)."""
        values = self._run.values
        if not self.done or values is None:
            return None
        return types.SimpleNamespace(**values)

    @property
    def kernel_pid(self) -> int | None:
        """The pid of the job's kernel process while it has one."""
        kernel = self._run.kernel
        return kernel.pid if kernel is not None else None

    @property
    def can_stop(self) -> bool:
        """True: a job can always be asked to stop until it has ended."""
        return True

    @property
    def notebook(self) -> str | None:
        """The notebook that started the job, as its server named it (None outside one)."""
        return self._run.environ.get("JPY_SESSION_NAME") or None

    @property
    def started_from(self) -> tuple[str, str]:
        """The notebook and the id of its cell that started the job ("" where none)."""
        return (self.notebook or "", self.spec.cell_id)

    def exception(self) -> JobError | None:
        """The error matching how the job ended, or None if it succeeded or still runs."""
        state = self.state
        cls = {
            FAILED: JobFailedError,
            CANCELLED: JobCancelledError,
            TIMED_OUT: JobTimeoutError,
            DIED: KernelDiedError,
        }.get(state)
        if cls is None:
            return None
        err = self.error or ErrorInfo("", "", [])
        message = f"job {self.name!r} {state.replace('_', ' ')}"
        if self.reason:
            message += f": {self.reason}"
        elif err.ename:
            message += f": {err.ename}: {err.evalue}"
        return cls(
            message,
            job_name=self.name,
            state=state,
            ename=err.ename,
            evalue=err.evalue,
            traceback=err.traceback,
            output=self.output[-5000:],
        )

    def __repr__(self) -> str:
        done, total = self.progress
        return (
            f"<Job {self.name!r} id={self.id} {self.state} {done}/{total}"
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
        run = self._run
        with run.cond:
            if not run.cond.wait_for(
                lambda: self.done and (run.settled or run.settling == me), timeout=timeout
            ):
                raise WaitTimeout(
                    f"job {self.name!r} is still {self.state} after {timeout} s; "
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
        self._run.cancel_asked.set()
        return True

    def resume(self) -> Job:
        """Run the job again in a fresh kernel from where it stopped, and return the new
        job: from the first statement of the section it did not complete, with its
        namespace as its newest checkpoint (``--checkpoint``) kept it; from the start
        when it has none. Its report says which. For a job that ended failed, died,
        timed out or cancelled."""
        from ._resume import check_resumable, resume_spec

        check_resumable(self.name, self.state, self.done)
        spec = resume_spec(self.spec, self.id, self.folder)
        job: Job = self._manager.submit(spec, self._manager.namespace())
        return job

    def add_done_callback(self, fn: Callable[[Job], Any]) -> None:
        """Call ``fn(job)`` when the job ends (at once if it has), from a manager thread."""
        with self._run.cond:
            if not self.done:
                self._run.callbacks.append(fn)
                return
        fn(self)

    def forget(self) -> None:
        """Take the ended job out of this process's list (its log stays on disk)."""
        self._manager.remove(self)

    def on_change(self, fn: Callable[[Job], Any]) -> None:
        """Call ``fn(job)`` after every change of the job (state, progress, output), from
        the thread that made it; an exception it raises is ignored."""
        self._run.listeners.append(fn)


def run_of(job: Job) -> Run:
    """The run behind ``job``: for the engine (the manager merges and forgets through it)."""
    return job._run
