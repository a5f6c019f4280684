"""``POST jobs/{id}/resume``: an ended job resumed from its newest checkpoint, as a
detached job of the server (for a job whose notebook is not open; an open notebook's
kernel resumes its own jobs with ``%bgjob_resume``)."""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from .. import _store
from .._errors import BgJobError, StoreError
from .handlers import RESOURCE, _confined, _fail, _folder_of, _Handler
from .rows import handle, job_row, state_of


def _resume(job_id: str, root: str, allow_hidden: bool) -> Any:
    from .._errors import JobStateError
    from .._launch import start
    from .._resume import check_resumable, resume_spec, stored_spec

    folder, detached = _folder_of(job_id)
    record = _store.read_json(folder / "spec.json") or {}
    if record.get("kind") != "job":
        raise _fail(409, f"{job_id} is not a job (a call or a progress row): nothing to resume")
    job = handle(folder, detached)
    try:
        check_resumable(job.name, state_of(job), job.done)
        spec = stored_spec(folder, record, _store.read_code(folder, record))
    except (JobStateError, BgJobError) as exc:
        raise _fail(409, str(exc)) from None
    if spec.workdir:  # the server starts jobs inside its root only, as POST jobs does
        spec.workdir = _confined("workdir", spec.workdir, root, allow_hidden)
    if spec.script_path:
        spec.script_path = _confined("path", spec.script_path, root, allow_hidden)
    try:
        # The server has no notebook: a detached job, its results kept in the store.
        return start(resume_spec(spec, job.id, folder), None)
    except StoreError:
        raise
    except BgJobError as exc:
        raise _fail(400, str(exc)) from None


class ResumeHandler(_Handler):
    @web.authenticated
    @authorized(action="write", resource=RESOURCE)
    @authorized(action="execute", resource=RESOURCE)
    async def post(self, job_id: str) -> None:
        """Resume an ended job (failed, died, timed out, cancelled) as a detached job
        from its newest checkpoint: for a job whose notebook is not open."""
        root, hidden = self.root, self.allow_hidden
        job = await self.off_loop(_resume, job_id, root, hidden)
        self.set_status(201)
        self.finish(json.dumps(await self.off_loop(job_row, job.folder, True, root)))
