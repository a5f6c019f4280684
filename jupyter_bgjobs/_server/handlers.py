"""REST handlers over the job store: thin, the store and the records do the work.

``GET jobs``, ``GET jobs/{id}`` (the record and the output tail as nbformat outputs),
``GET jobs/{id}/log`` (ranged), ``POST jobs/{id}/cancel``, ``DELETE jobs/{id}`` (an ended
job), ``POST jobs`` (a detached script job), ``GET events`` (server-sent events: every
change of any job's record, pushed; no polling per row in the browser).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.iostream import StreamClosedError

from .. import _store
from .._errors import BgJobError

_ID = r"(?P<job_id>[0-9a-f]{8})"
# How often the event stream looks at the records, and the longest output tail it serves.
_EVENT_PERIOD = 0.5
_TAIL = 256 * 1024


def _jobs() -> list[Any]:
    from .._detached import recorded_jobs

    return recorded_jobs()


def _find(job_id: str) -> Any:
    for job in _jobs():
        if job.id == job_id:
            return job
    raise web.HTTPError(404, f"no job {job_id}")


def summary(job: Any) -> dict[str, Any]:
    """What a row of the IDE's Jobs panel shows of a job."""
    record = job._record()
    done, total = job.progress
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "progress": [done, total],
        "section": job.section,
        "status": job.status,
        "started": record.get("started"),
        "finished": record.get("finished"),
        "elapsed": job.elapsed,
        "where": record.get("where") or "local",
        "notebook": record.get("notebook"),
        "detached": bool(job.detached),
        "reason": job.reason,
    }


class _Handler(APIHandler):
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # One line that says what is wrong, as JSON, like jupyter_server's own API.
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or str(exc or self._reason)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "reason": self._reason}))


class JobsHandler(_Handler):
    @web.authenticated
    def get(self) -> None:
        self.finish(json.dumps({"jobs": [summary(j) for j in _jobs()]}))

    @web.authenticated
    def post(self) -> None:
        """Start a detached script job: ``{"path": ..., "name", "timeout", "kernel",
        "workdir", "env": "none"|"all"}`` (a path under the server's root or absolute)."""
        from .._jobs import run_script

        body = self.get_json_body() or {}
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise web.HTTPError(400, "the body must be a JSON object with a 'path' string")
        root = Path(self.settings.get("server_root_dir", os.getcwd())).expanduser()
        path = Path(body["path"])
        if not path.is_absolute():
            path = root / path
        try:
            job = run_script(
                path,
                name=body.get("name"),
                workdir=body.get("workdir"),
                timeout=body.get("timeout"),
                kernel=body.get("kernel"),
                detach=True,
            )
        except BgJobError as exc:
            raise web.HTTPError(400, str(exc)) from None
        self.set_status(201)
        self.finish(json.dumps(summary(job)))


class JobHandler(_Handler):
    @web.authenticated
    def get(self, job_id: str) -> None:
        job = _find(job_id)
        text = job.output[-_TAIL:]
        outputs = [{"output_type": "stream", "name": "stdout", "text": text}] if text else []
        record = job._record()
        self.finish(json.dumps({**summary(job), "record": record, "outputs": outputs}))

    @web.authenticated
    def delete(self, job_id: str) -> None:
        job = _find(job_id)
        if not job.done:
            raise web.HTTPError(409, f"job {job.name!r} is still {job.state}; cancel it first")
        import shutil

        shutil.rmtree(job.folder, ignore_errors=True)
        self.set_status(204)
        self.finish()


class LogHandler(_Handler):
    @web.authenticated
    def get(self, job_id: str) -> None:
        """The job's whole log, or the bytes ``Range: bytes=START-END`` asks for."""
        job = _find(job_id)
        path = job.log_path or job.folder / "output.log"
        try:
            size = os.path.getsize(path)
        except OSError:
            raise web.HTTPError(404, f"job {job_id} has no log yet") from None
        start, end = 0, size - 1
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.request.headers.get("Range", ""))
        if ranged and (ranged[1] or ranged[2]):
            if ranged[1]:
                start = int(ranged[1])
                end = min(int(ranged[2]), size - 1) if ranged[2] else size - 1
            else:  # the last N bytes
                start = max(0, size - int(ranged[2]))
            if start >= size:
                self.set_header("Content-Range", f"bytes */{size}")
                raise web.HTTPError(416, "the range starts past the end of the log")
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{size}")
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(max(0, end - start + 1))
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(data)


class CancelHandler(_Handler):
    @web.authenticated
    def post(self, job_id: str) -> None:
        """Stop a job: a detached one's host is told (SIGTERM); an attached one's driver,
        in its notebook's kernel, sees the request in the job's folder."""
        job = _find(job_id)
        if job.done:
            raise web.HTTPError(409, f"job {job.name!r} has already ended ({job.state})")
        if job.detached:
            asked = job.cancel()
        else:
            _store.write_json(job.folder / "cancel.json", {"asked": True})
            asked = True
        self.set_status(202)
        self.finish(json.dumps({"id": job.id, "cancel": asked}))


class EventsHandler(_Handler):
    @web.authenticated
    async def get(self) -> None:
        """Server-sent events: ``data: {"jobs": [...changed...], "removed": [...]}`` each
        time records change; a comment line every few seconds keeps proxies open."""
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        seen: dict[str, str] = {}
        quiet = 0
        try:
            while True:
                now = {j.id: j for j in _jobs()}
                rows = {k: summary(j) for k, j in now.items()}
                changed = [r for k, r in rows.items() if seen.get(k) != json.dumps(r)]
                removed = [k for k in seen if k not in rows]
                if changed or removed:
                    self.write(f"data: {json.dumps({'jobs': changed, 'removed': removed})}\n\n")
                    await self.flush()
                    quiet = 0
                elif (quiet := quiet + 1) * _EVENT_PERIOD >= 15:
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    quiet = 0
                seen = {k: json.dumps(r) for k, r in rows.items()}
                await asyncio.sleep(_EVENT_PERIOD)
        except StreamClosedError:
            return


ROUTES: list[tuple[str, type[APIHandler]]] = [
    ("jobs", JobsHandler),
    (f"jobs/{_ID}", JobHandler),
    (f"jobs/{_ID}/log", LogHandler),
    (f"jobs/{_ID}/cancel", CancelHandler),
    ("events", EventsHandler),
]
