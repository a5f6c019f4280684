"""Starting a detached job: written into the store (its spec, its seed), its host
process started in a session of its own, and what this process held handed over to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from . import _detached, _store
from ._config import settings
from ._detached import DetachedJob, notebook_ids, started_here
from ._errors import StoreError
from ._inside import procs as _procs
from ._job import Run
from ._notify import TARGETS_ENV
from ._spec import JobSpec


def start(spec: JobSpec, ns: dict[str, Any] | None) -> DetachedJob:
    """Write the job into the store (its spec, its seed) and start its host, in a session
    of its own; the host drives it with the same driver an attached job has.

    Raises ``StoreError`` (one line: the folder, and what to do) when the store cannot be
    written; nothing is left behind then."""
    from ._manager import manager

    run, _ = manager.prepare(spec, ns, detached=True)
    folder = run.job.folder
    env = dict(os.environ)
    token = settings.gateway_token
    if token:  # handed over in the host's environment only, never written down
        env["JUPYTER_GATEWAY_AUTH_TOKEN"] = token
    if spec.notify:  # secrets too: the same way, and the host takes them out at once
        env[TARGETS_ENV] = json.dumps(spec.notify)
    try:
        with _store.open_private(folder / "host.log") as log:
            host = _procs.start(
                [sys.executable, "-m", "jupyter_bgjobs._host", str(folder)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=spec.workdir or os.getcwd(),
                env=env,
            )
        _procs.reap_when_ended(host)  # reaped when it ends, whatever happens next here
        _store.write_json(
            folder / "host.json", {"pid": host.pid, "pid_id": _procs.identity(host.pid)}
        )
    except OSError as exc:
        manager.discard(run)
        if isinstance(exc, StoreError):
            raise
        raise _store.write_error(folder, "start a detached job", exc) from None
    _hand_over(run, host.pid)
    started = DetachedJob(folder)
    # This process knows which names it had when the job started: a later merge here can
    # tell the notebook's own changes from the job's, as for an attached job.
    notebook_ids[started.id] = run.ns_ids
    started_here[started.id] = started
    return started


def _hand_over(run: Run, host_pid: int) -> None:
    """From its start on, the job's host holds the seed and the job's shared-memory
    folder: it removes the seed once the kernel has loaded it, and the folder once the job
    has ended. This process keeps nothing of them to remove, at its exit or ever."""
    from ._runtime import hand_job_shm, owner_tag

    if run.shm_dir:
        try:
            hand_job_shm(run.shm_dir, owner=owner_tag(host_pid))
        except OSError:
            pass  # gone already (the host has ended), or no room: the host takes it too
    run.files = []
    run.shm_dir = ""


def resume_stored(job: Any, ns: dict[str, Any] | None) -> Any:
    """Resume a job read from the store (a ``DetachedJob``): detached for a detached job,
    else a job of this process; ``ns`` as ``DetachedJob.resume`` says."""
    from . import _store
    from ._resume import check_resumable, resume_spec, stored_spec

    check_resumable(job.name, job.state, job.done)
    record = job.spec_record()
    spec = stored_spec(job.folder, record, _store.read_code(job.folder, record))
    spec = resume_spec(spec, job.id, job.folder)
    if ns is None and _in_kernel():
        from ._merge import target_namespace

        ns = target_namespace()
    if job.detached:
        return start(spec, ns)
    from ._manager import manager

    return manager.submit(spec, ns)


def _in_kernel() -> bool:
    """Whether this process is a notebook's kernel (not the command line)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


# A stored job's handle resumes through here: starting a job is this layer's.
_detached.resumer.append(resume_stored)
