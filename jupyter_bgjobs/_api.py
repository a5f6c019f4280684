"""The public job functions: ``run_cell``, ``run_script``, ``get_job``, ``jobs``, and the
one process-wide manager they share."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _checks, _launch, _store
from ._config import settings
from ._errors import BgJobError, JobSpecError, JobStateError, WaitTimeout
from ._inside.procs import death_reason as _death_reason
from ._job import Job
from ._manager import manager
from ._spec import JobSpec, build_spec, parse_kernel_env, script_name
from ._state_record import KERNEL_SHUT_DOWN
from ._states import FINAL_STATES, ErrorInfo

if TYPE_CHECKING:
    from ._detached import DetachedJob


@atexit.register
def _at_exit() -> None:
    # At interpreter exit a kernel's sys.stdout may no longer reach anyone: say it on the
    # process's own stderr, which the notebook server's log keeps.
    manager.shutdown(announce=True, stream=sys.__stderr__, reason=KERNEL_SHUT_DOWN)
    from ._notify import finish_sending

    # Ends told before the interpreter can no longer run the threads that tell them.
    finish_sending(30)


def make_spec(code: str, **options: Any) -> JobSpec:
    """Check every option and build a spec (the manager names it apart from the jobs
    still running as it takes it); raises JobSpecError naming the fix."""
    return build_spec(code, **options)


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
    on_failure: str = "merge",
    memory_limit: int | str | None = None,
    notify: list[str] | None = None,
    checkpoint: bool | None = None,
    retries: int = 0,
    retry_delay: float = 1.0,
    retry_on: str | list[str] | None = None,
    resume: bool = False,
    after: str | list[str] | None = None,
) -> Job | DetachedJob:
    """Run ``code`` (IPython syntax allowed) as a background job and return the Job at once.

    ``env``: ``auto`` ships the notebook names the code reads, ``all`` the whole namespace,
    ``none`` nothing, or ``"a,b,c"`` exactly those. ``results``: ``globals`` merges the names
    the job created or rebound into the notebook, ``object`` puts them in ``<name>_results``,
    ``none`` keeps them only in ``job.results``. ``detach=True`` runs it apart from this
    process: it outlives this kernel, and its results wait in the store for
    ``%bgjob_attach`` (a DetachedJob is returned). ``gateway``: run it on a Kernel or
    Enterprise Gateway (a URL; ``configure(gateway=...)`` sets a default), with
    ``kernel_env`` (``KERNEL_*`` variables) passed to the kernel it starts.
    ``on_failure``: ``merge`` (a failed job's names made before its error come back, as a
    cell that raises keeps them) or ``keep`` (they stay in ``job.results`` only).
    ``memory_limit``: ``"8G"``, ``"300MB"`` or bytes; a job whose kernel (with what it
    started) uses more ends ``failed`` with the reason (default ``configure(memory_limit=)``).
    ``notify``: Apprise URLs (``mailto://``, ``slack://``, ``json://``...) told of the job's
    end, beside those of ``configure(notify=[...])``. ``checkpoint=True`` saves the job's
    namespace each time one of its sections (``# Name ----``, ``# %% Name``) completes,
    so that ``job.resume()`` goes on from there (default ``configure(checkpoint=)``).
    ``retries``: resume a job that fails or dies this many times, the first after
    ``retry_delay`` seconds and each next after twice as long (``retry_on="timeout"``
    retries one that timed out too). ``resume=True`` (it needs ``name``): go on from the
    newest checkpoint of the last job of that name whose sections up to there are those
    of ``code``, unchanged. ``after``: ``"fit,clean"`` (or a list) waits for those jobs
    to end whatever the names; ``"none"``: no wait at all. Without it, the job waits for
    the jobs of this notebook not ended that bind a name it reads, and takes their values.
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
        on_failure=on_failure,
        workdir=workdir,
        gateway=gateway,
        kernel_env=kernel_env,
        memory_limit=memory_limit,
        notify=notify,
        checkpoint=checkpoint,
        retries=retries,
        retry_delay=retry_delay,
        retry_on=retry_on,
        after=after,
    )
    if _checks.flag("resume", resume):
        _resume_earlier(spec, name)
    if detach:
        return _launch.start(spec, target_namespace())
    return manager.submit(spec, target_namespace())


def _resume_earlier(spec: JobSpec, name: str | None) -> None:
    """``resume=True``: the job goes on from the newest checkpoint of the last job of its
    name that fits its code (or from the start, saying so, when there is none)."""
    from ._resume import fresh_start, resume_of, stored_spec

    if name is None:
        raise JobSpecError(
            "resume needs the job's name, to find the job it resumes: %%bgjob NAME --resume"
        )
    try:
        earlier = get_job(name)
    except JobSpecError:
        spec.resume = fresh_start(name)
        return
    if not earlier.done:
        raise JobStateError(
            f"job {name!r} is still {earlier.state}; wait for it or cancel it before resuming it"
        )
    if isinstance(earlier, Job):
        old, folder = earlier.spec, earlier.folder
    else:
        record = earlier.spec_record()
        folder = earlier.folder
        old = stored_spec(folder, record, _store.read_code(folder, record))
    spec.resume = resume_of(old, earlier.id, folder, spec.code)


def resume(name_or_id: str) -> Job | DetachedJob:
    """Resume the job with this id, or the latest job with this name (``get_job``): see
    ``Job.resume``. Returns the new job."""
    return get_job(name_or_id).resume()


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
    memory_limit: int | str | None = None,
    notify: list[str] | None = None,
    checkpoint: bool | None = None,
    retries: int = 0,
    retry_delay: float = 1.0,
    retry_on: str | list[str] | None = None,
    resume: bool = False,
    after: str | list[str] | None = None,
    _results: str | None = None,
) -> Job | DetachedJob:
    """Run a script as a background job (rstudioapi's jobRunScript) and return the Job.

    ``workdir`` defaults to the script's folder. ``import_env=True`` ships the notebook's
    whole namespace. ``export_env``: ``""`` keeps results in ``job.results`` only,
    ``"globals"`` merges them into the notebook, any other name makes a namespace of that
    name. ``detach``, ``gateway``, ``kernel_env``, ``memory_limit``, ``notify``,
    ``checkpoint``, ``retries``, ``retry_delay``, ``retry_on``, ``resume`` and ``after`` as for
    ``run_cell`` (a script's sections are its ``# Name ----`` and ``# %% Name`` lines).
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
        name=name if name is not None else script_name(script),
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
        memory_limit=memory_limit,
        notify=notify,
        checkpoint=checkpoint,
        retries=retries,
        retry_delay=retry_delay,
        retry_on=retry_on,
        after=after,
    )
    if results == "object" and export_env:
        spec.results_name = export_env
    if _checks.flag("resume", resume):
        _resume_earlier(spec, spec.name)
    if detach:
        return _launch.start(spec, target_namespace())
    return manager.submit(spec, target_namespace())


def get_job(name_or_id: str) -> Job | DetachedJob:
    """The job with this id, or the latest job with this name: one of this process, else
    a detached one from the store (started here before a restart, or elsewhere), else one
    an earlier kernel or another notebook ran, read from its record. A sweep of this
    process with that name (``%%bgjob fit --over ...``) comes first: its ``Sweep``."""
    _checks.text("name_or_id", name_or_id, example="'train'")
    from ._sweep import find as find_sweep

    swept = find_sweep(name_or_id)
    if swept is not None:
        return swept  # type: ignore[return-value]
    try:
        return manager.get(name_or_id)
    except JobSpecError:
        from ._detached import find
        from ._stored import find_recorded

        found = find(name_or_id) or find_recorded(name_or_id)
        if found is None:
            raise JobSpecError(
                f"no job named {name_or_id!r}, here, among the detached ones or in the "
                "records of other kernels; jupyter_bgjobs.jobs(all=True) and %bgjobs list "
                "the jobs there are"
            ) from None
        return found


def jobs(all: bool = False) -> list[Job | DetachedJob]:
    """Every job of this process, oldest first; ``all=True``: every job in the store,
    oldest first: this kernel's, earlier kernels' and other notebooks' (read from their
    records, ended ones with the reason), and the detached ones."""
    _checks.flag("all", all)
    mine: list[Job | DetachedJob] = list(manager.jobs())
    if not all:
        return mine
    from ._stored import recorded_jobs

    seen = {j.id for j in mine}
    others = [j for j in recorded_jobs() if j.id not in seen]
    return sorted([*mine, *others], key=_submitted)


def _submitted(job: Any) -> str:
    stamp = job.submitted
    return stamp if isinstance(stamp, str) else stamp.isoformat()


__all__ = [
    "FINAL_STATES",
    "BgJobError",
    "ErrorInfo",
    "Job",
    "JobSpec",
    "WaitTimeout",
    "_death_reason",
    "get_job",
    "jobs",
    "make_spec",
    "manager",
    "parse_kernel_env",
    "resume",
    "run_cell",
    "run_script",
]
