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
from .._journal import stored_outputs

_ID = r"(?P<job_id>[0-9a-f]{8})"
# How often the event stream looks at the records, and the longest output tail it serves.
_EVENT_PERIOD = 0.5
_TAIL = 256 * 1024


def _jobs() -> list[Any]:
    from .._recorded import recorded_jobs

    return recorded_jobs()


def _log_file(job: Any) -> Path:
    return Path(job.log_path or job.folder / "output.log")


def _find(job_id: str) -> Any:
    for job in _jobs():
        if job.id == job_id:
            return job
    raise web.HTTPError(404, f"no job {job_id}")


def _relative(path: Any, root: str) -> str | None:
    """A notebook's path as the IDE names it (relative to the server's root), if under it."""
    if not isinstance(path, str) or not path:
        return None
    if not os.path.isabs(path):
        return path
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return None
    return None if rel.startswith("..") else rel.replace(os.sep, "/")


def summary(job: Any, root: str) -> dict[str, Any]:
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
        "notebook_path": _relative(record.get("notebook"), root),
        "kind": job.kind,
        "detached": bool(job.detached),
        "reason": job.reason,
        "report": job.report if job.done else "",
    }


# What an ended job's row is read from. It changes only when one of these files does, and
# reading a row whole (its record, its damage check, its report: dozens of files) for every
# job, every half second, for every open page, is most of the server's work.
_ROW_FILES = (
    "spec.json",
    "state.json",
    "host.json",
    "results.json",
    "results.pkl",
    "results.snap",
    "status.json",
)
_ended_rows: dict[str, tuple[tuple[tuple[int, int, int], ...], dict[str, Any]]] = {}


def _stamp(folder: Path) -> tuple[tuple[int, int, int], ...]:
    out = []
    for name in _ROW_FILES:
        try:
            st = os.stat(folder / name)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0, -1))
    return tuple(out)


def row(job: Any, root: str) -> dict[str, Any]:
    """``summary(job, root)``, read again only when its files changed once it has ended."""
    stamp = _stamp(job.folder)
    kept = _ended_rows.get(job.id)
    if kept is not None and kept[0] == stamp:
        return kept[1]
    fresh = summary(job, root)
    if fresh["state"] in _store.DONE_STATES:
        _ended_rows[job.id] = (stamp, fresh)
    else:
        _ended_rows.pop(job.id, None)
    return fresh


# What the IDE needs of a job's spec to run it again.
_RERUN_KEYS = ("code", "name", "env", "results", "timeout", "kernel", "workdir", "script")


class _Handler(APIHandler):
    @property
    def root(self) -> str:
        return os.path.expanduser(str(self.settings.get("server_root_dir") or os.getcwd()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # One line that says what is wrong, as JSON, like jupyter_server's own API.
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or str(exc or self._reason)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "reason": self._reason}))


class JobsHandler(_Handler):
    @web.authenticated
    def get(self) -> None:
        # The root lets the IDE give a notebook's kernel a script's absolute path.
        jobs = [row(j, self.root) for j in _jobs()]
        self.finish(json.dumps({"jobs": jobs, "root": self.root}))

    @web.authenticated
    def post(self) -> None:
        """Start a detached job: a script, ``{"path": ...}`` (under the server's root or
        absolute), or code, ``{"code": ...}`` (an editor's selection, a rerun); with
        ``name``, ``timeout``, ``kernel``, ``workdir`` (relative to the root)."""
        from .._jobs import run_cell, run_script

        body = self.get_json_body() or {}
        if not isinstance(body, dict) or not (
            isinstance(body.get("path"), str) or isinstance(body.get("code"), str)
        ):
            raise web.HTTPError(
                400, "the body must be a JSON object with a 'path' or a 'code' string"
            )
        root = Path(self.root)
        workdir = body.get("workdir") or None
        if isinstance(workdir, str) and not os.path.isabs(workdir):
            workdir = str(root / workdir)
        options: dict[str, Any] = {
            "name": body.get("name") or None,
            "workdir": workdir,
            "timeout": body.get("timeout") or None,
            "kernel": body.get("kernel") or None,
            "detach": True,
        }
        try:
            if isinstance(body.get("path"), str):
                path = Path(body["path"])
                job = run_script(path if path.is_absolute() else root / path, **options)
            else:
                # The server has no notebook: the code gets no variables and keeps its
                # results in the store, for %bgjob_attach.
                job = run_cell(body["code"], env="none", results="none", **options)
        except BgJobError as exc:
            raise web.HTTPError(400, str(exc)) from None
        self.set_status(201)
        self.finish(json.dumps(summary(job, self.root)))


class JobHandler(_Handler):
    @web.authenticated
    def get(self, job_id: str) -> None:
        job = _find(job_id)
        outputs = stored_outputs(job.folder, _log_file(job), _TAIL)
        spec = job._spec()
        self.finish(
            json.dumps(
                {
                    **summary(job, self.root),
                    "record": job._record(),
                    "outputs": outputs,
                    "spec": {k: spec.get(k) for k in _RERUN_KEYS},
                },
                default=str,
            )
        )

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
        path = _log_file(job)
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
        # APIHandler would call it JSON.
        self.finish(data, set_content_type="text/plain; charset=utf-8")


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
    def _rows(self) -> dict[str, str]:
        """Every job's row, encoded."""
        rows = {}
        for job in _jobs():
            try:
                rows[job.id] = json.dumps(row(job, self.root))
            except (OSError, ValueError):  # removed while read: gone from the next look
                continue
        for gone in set(_ended_rows) - set(rows):
            _ended_rows.pop(gone, None)
        return rows

    @web.authenticated
    async def get(self) -> None:
        """Server-sent events: ``data: {"jobs": [...changed...], "removed": [...]}`` each
        time records change; a comment line every few seconds keeps proxies open."""
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        seen: dict[str, str] = {}
        quiet = 0
        sent = False
        try:
            while True:
                rows = self._rows()
                changed = [r for k, r in rows.items() if seen.get(k) != r]
                removed = [k for k in seen if k not in rows]
                # The first event lists every job (none too): a reconnected page drops
                # the rows that went while it was away.
                if changed or removed or not sent:
                    sent = True
                    event = f'{{"jobs": [{", ".join(changed)}], "removed": {json.dumps(removed)}}}'
                    self.write(f"data: {event}\n\n")
                    await self.flush()
                    quiet = 0
                elif (quiet := quiet + 1) * _EVENT_PERIOD >= 15:
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    quiet = 0
                seen = rows
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
