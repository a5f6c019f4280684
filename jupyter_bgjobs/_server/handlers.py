"""REST handlers over the job store: thin, the store, the records and the watcher do the
work, off the event loop.

``GET jobs``, ``GET jobs/{id}`` (the record and the output tail as nbformat outputs),
``GET jobs/{id}/log`` (ranged, streamed), ``POST jobs/{id}/cancel``, ``POST jobs/{id}/resume``
(an ended job, from its newest checkpoint, as a detached job), ``DELETE jobs/{id}``
(an ended job), ``POST jobs`` (a detached job: a script under the server's root, or code),
``GET events`` (server-sent events: every change of any job's row, pushed).

Every method asks jupyter_server's Authorizer first, for the resource ``bgjobs``:
``read`` to list, show and read logs; ``write`` to start, resume, cancel and delete;
``execute`` too where code runs (starting or resuming a job), as the kernels API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.iostream import StreamClosedError

from .. import _store
from .._errors import BgJobError, StoreError
from .._journal import stored_outputs
from .._states import DAMAGED, ENDED_STATES
from .rows import KEEP_ALIVE, Rows, Watcher, handle, job_row, ordered, state_of

# The resource of every action on jobs, for Authorizers and JupyterHub's roles
# (``access:servers!...`` scopes reach it through the server's Authorizer).
RESOURCE = "bgjobs"

_ID = r"(?P<job_id>[0-9a-f]{8})"
# The longest output tail a job's detail serves, and the most code it returns for a rerun.
_TAIL = 256 * 1024
_DETAIL_CODE = 100 << 20
# A log is sent in pieces of this size, each read off the event loop.
_CHUNK = 256 * 1024
# The largest body ``POST jobs`` reads (tornado's own limit): code, not a data set.
_MAX_BODY = 100 << 20
# The fields ``POST jobs`` takes.
_FIELDS = (
    "path",
    "code",
    "name",
    "timeout",
    "kernel",
    "workdir",
    "memory_limit",
    "checkpoint",
    "retries",
    "after",
)
# What the IDE needs of a job's spec to run it again.
_RERUN_KEYS = (
    "code",
    "name",
    "env",
    "results",
    "timeout",
    "kernel",
    "workdir",
    "script",
    "memory_limit",
    "checkpoint",
    "retries",
    "after",
)

T = TypeVar("T")


def _fail(status: int, message: str) -> web.HTTPError:
    """An error answer of one line; a ``%`` in it (a path) is taken as it is."""
    return web.HTTPError(status, "%s", message)


def _store_status(exc: StoreError) -> int:
    """The status of a store that refused: read-only, full, or not the user's alone."""
    text = str(exc)
    if "read-only" in text:
        return 409
    if "no space" in text:
        return 507
    return 500


class _Handler(APIHandler):
    auth_resource = RESOURCE
    # A 416's Content-Range survives the clearing of headers an error answer does.
    _content_range = ""

    @property
    def root(self) -> str:
        """The server's root, as the contents API confines paths to it."""
        cm = self.settings.get("contents_manager")
        root = getattr(cm, "root_dir", None) or self.settings.get("server_root_dir")
        return os.path.realpath(os.path.expanduser(str(root or os.getcwd())))

    @property
    def allow_hidden(self) -> bool:
        cm = self.settings.get("contents_manager")
        return bool(getattr(cm, "allow_hidden", False))

    @property
    def rows(self) -> Rows:
        return _server_state(self.settings, self.root)[0]

    @property
    def watcher(self) -> Watcher:
        return _server_state(self.settings, self.root)[1]

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run store work in a thread: the event loop never waits on a file. A store that
        cannot be trusted or written answers with its one line."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, fn, *args)
        except StoreError as exc:
            raise _fail(_store_status(exc), str(exc)) from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # One line that says what is wrong, as JSON, like jupyter_server's own API.
        exc = kwargs.get("exc_info", (None, None, None))[1]
        get = getattr(exc, "get_message", None)
        message = (get() if get is not None else None) or str(exc or self._reason)
        if status_code == 416 and self._content_range:
            self.set_header("Content-Range", self._content_range)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "reason": self._reason}))


_STATE_KEY = "jupyter_bgjobs"


def _server_state(settings: dict[str, Any], root: str) -> tuple[Rows, Watcher]:
    """The server's one row cache and one watcher, made on first use."""
    state = settings.get(_STATE_KEY)
    if state is None:
        rows = Rows(root)
        state = settings[_STATE_KEY] = (rows, Watcher(rows))
    return cast("tuple[Rows, Watcher]", state)


def _folder_of(job_id: str) -> tuple[Path, bool]:
    """The folder of the job (or call, or progress row) with this id and whether it is
    detached; 404 for none. Only a real folder (no link) is a job's."""
    for folder, detached in (
        (_store.job_root_path() / job_id, False),
        (_store.store_path() / job_id, True),
    ):
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                continue
        except OSError:
            continue
        spec = _store.read_json(folder / "spec.json")
        if spec is None and _store.being_made(folder):
            break
        return folder, detached
    raise _fail(404, f"no job {job_id}")


def _find(job_id: str) -> Any:
    folder, detached = _folder_of(job_id)
    return handle(folder, detached)


class JobsHandler(_Handler):
    @web.authenticated
    @authorized(action="read", resource=RESOURCE)
    async def get(self) -> None:
        # The root lets the IDE give a notebook's kernel a script's absolute path.
        root = self.root

        def listing() -> str:
            jobs = ordered(r for r, _ in self.rows.read().values())
            return json.dumps({"jobs": jobs, "root": root}, default=str)

        self.finish(await self.off_loop(listing))

    @web.authenticated
    @authorized(action="write", resource=RESOURCE)
    @authorized(action="execute", resource=RESOURCE)
    async def post(self) -> None:
        """Start a detached job: a script, ``{"path": ...}`` (relative to the server's
        root, or absolute inside it), or code, ``{"code": ...}`` (an editor's selection, a
        rerun); with ``name``, ``timeout``, ``kernel``, ``workdir`` (inside the root),
        ``memory_limit`` (``"8G"`` or bytes), ``checkpoint``, ``retries`` and ``after``."""
        body = await self.off_loop(_body, self.request.body)  # maybe megabytes of code
        root, hidden = self.root, self.allow_hidden
        options: dict[str, Any] = {
            "name": _optional_text(body, "name"),
            "timeout": _timeout(body.get("timeout")),
            "kernel": _optional_text(body, "kernel"),
            "memory_limit": _memory(body.get("memory_limit")),
            # Checked where every job's options are (a bad one is a 400 naming it).
            "checkpoint": body.get("checkpoint"),
            "retries": 0 if body.get("retries") is None else body["retries"],
            "after": body.get("after"),
            "detach": True,
        }
        workdir = _optional_text(body, "workdir")
        if workdir:
            options["workdir"] = await self.off_loop(_confined, "workdir", workdir, root, hidden)
        elif body.get("code") is not None:
            options["workdir"] = root  # where the server's files are, never its own folder
        path = body.get("path")
        script = await self.off_loop(_confined, "path", path, root, hidden) if path else None
        job = await self.off_loop(_start, script, body.get("code"), options)
        self.set_status(201)
        self.finish(json.dumps(await self.off_loop(job_row, job.folder, True, root)))


def _body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request's body; 400 naming what is wrong with it."""
    if len(raw) > _MAX_BODY:
        raise _fail(413, f"the body is larger than {_MAX_BODY:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(400, "the body is not UTF-8 text; send a JSON object") from None
    try:
        body = json.loads(text) if text.strip() else None
    except (ValueError, RecursionError):
        raise _fail(400, "the body is not valid JSON; send a JSON object") from None
    if not isinstance(body, dict):
        raise _fail(400, "the body must be a JSON object with a 'path' or a 'code' string")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise _fail(
            400, f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(_FIELDS)}"
        )
    path, code = body.get("path"), body.get("code")
    if (path is None) == (code is None):
        raise _fail(400, "give either 'path' (a script) or 'code', not both or none")
    for key, value in (("path", path), ("code", code)):
        if value is not None and not (isinstance(value, str) and value):
            raise _fail(400, f"{key!r} must be a non-empty string")
    for key in _FIELDS:
        if isinstance(body.get(key), str):
            try:
                body[key].encode("utf-8")
            except UnicodeEncodeError:
                raise _fail(400, f"{key!r} holds a lone surrogate, which is no text") from None
    return body


def _optional_text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _fail(400, f"{key!r} must be a string or null, not {type(value).__name__}")
    if len(value) > _LONGEST_TEXT:
        raise _fail(400, f"{key!r} is longer than {_LONGEST_TEXT:,} characters")
    return value


# No name, kernelspec or folder of ours is longer.
_LONGEST_TEXT = 4096


def _memory(value: Any) -> int:
    """A memory limit (``"8G"``, ``"300MB"``, bytes), or 0 for none."""
    if value is None or value == "":
        return 0
    from .._checks import memory

    try:
        return memory("memory_limit", value)
    except BgJobError as exc:
        raise _fail(400, f"{exc} (or null for none)") from None


def _timeout(value: Any) -> float | None:
    """A positive number of seconds, or null for none; 0, [] or {} are refused, never
    taken for "no limit"."""
    if value is None:
        return None
    from .._checks import timeout

    try:
        return timeout("timeout", value)
    except BgJobError as exc:
        raise _fail(400, f"{exc} (or null for no limit)") from None


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") for p in parts)


def _confined(what: str, given: str, root: str, allow_hidden: bool) -> str:
    """``given`` (relative to ``root``, or absolute) as a real path inside ``root``, links
    resolved, as the contents API confines its paths; 400 naming the rule otherwise."""
    if "\0" in given:
        raise _fail(400, f"{what} {given!r:.80} holds a NUL character")
    if what == "path" and given.endswith(("/", os.sep)):
        raise _fail(400, f"path {given!r:.200} names a folder, not a script")
    candidate = Path(given) if os.path.isabs(given) else Path(root) / given
    real = os.path.realpath(candidate)
    try:
        inside = os.path.commonpath([real, root]) == root
    except ValueError:
        inside = False
    if not inside:
        raise _fail(
            400, f"{what} {given!r:.200} is outside the server's root; give a path inside it"
        )
    relative = Path(os.path.relpath(real, root)).parts
    # The path as asked, where it is written under the root (not through an alias of it).
    asked = Path(os.path.relpath(os.path.abspath(candidate), root)).parts
    if asked[:1] == ("..",):
        asked = ()
    if not allow_hidden and (_hidden(relative) or _hidden(asked)):
        raise _fail(
            400,
            f"{what} {given!r:.200} is or lies in a hidden file or folder, which the server "
            "does not serve (ContentsManager.allow_hidden)",
        )
    try:
        st = os.stat(real)
    except OSError:
        raise _fail(400, f"{what} {given!r:.200}: no such file or folder ({real})") from None
    if what == "workdir" and not stat.S_ISDIR(st.st_mode):
        raise _fail(400, f"workdir {given!r:.200} is not a folder")
    if what == "path":
        if not stat.S_ISREG(st.st_mode):
            raise _fail(400, f"path {given!r:.200} is not a regular file")
        if st.st_size > _MAX_BODY:
            raise _fail(400, f"path {given!r:.200} is larger than {_MAX_BODY:,} bytes")
        try:  # readable, and still a regular file when opened (never waiting on a FIFO)
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            is_file = stat.S_ISREG(os.fstat(fd).st_mode)
            os.close(fd)
        except OSError as exc:
            raise _fail(400, f"path {given!r:.200} cannot be read: {exc.strerror or exc}") from None
        if not is_file:
            raise _fail(400, f"path {given!r:.200} is not a regular file")
    return real


def _start(script: str | None, code: str | None, options: dict[str, Any]) -> Any:
    from .._api import run_cell, run_script

    try:
        if script is not None:
            return run_script(script, **options)
        # The server has no notebook: the code gets no variables and keeps its results
        # in the store, for %bgjob_attach.
        return run_cell(str(code), env="none", results="none", **options)
    except StoreError:
        raise
    except BgJobError as exc:
        raise _fail(400, str(exc)) from None
    except OSError as exc:  # the script went away, or cannot be read, meanwhile
        raise _fail(400, f"the job cannot be started: {exc}") from None


def _detail(job_id: str, root: str) -> dict[str, Any]:
    folder, detached = _folder_of(job_id)
    job = handle(folder, detached)
    with job.frozen():
        from .rows import damaged_row, summary

        log = job.log_path or folder / "output.log"
        outputs = stored_outputs(folder, log, _TAIL)
        try:
            log_bytes = os.lstat(log).st_size
        except OSError:
            log_bytes = 0
        spec = job.spec_record()
        rerun = {k: spec.get(k) for k in _RERUN_KEYS}
        try:
            rerun["code"] = _store.read_code(folder, spec, _DETAIL_CODE)
        except OSError:  # damaged, or more than a rerun can take
            rerun["code"] = None
        try:
            row, record = summary(job, root), job.record()
        except Exception as exc:  # odd in a way no check foresaw: shown as damaged
            row, record = damaged_row(job, exc), {}
        # How much of the log the outputs are: the detail says when they are its tail.
        shown = {"log_bytes": log_bytes, "shown_bytes": min(log_bytes, _TAIL)}
        return {**row, "record": record, "outputs": outputs, "spec": rerun, **shown}


class JobHandler(_Handler):
    @web.authenticated
    @authorized(action="read", resource=RESOURCE)
    async def get(self, job_id: str) -> None:
        root = self.root
        self.finish(await self.off_loop(lambda: json.dumps(_detail(job_id, root), default=str)))

    @web.authenticated
    @authorized(action="write", resource=RESOURCE)
    async def delete(self, job_id: str) -> None:
        await self.off_loop(_delete, job_id)
        self.set_status(204)
        self.finish()


def _delete(job_id: str) -> None:
    """Remove an ended (or damaged) job's folder; 409 saying why when it cannot be."""
    job = _find(job_id)
    state = state_of(job)
    if state not in (*ENDED_STATES, DAMAGED):
        raise _fail(409, f"job {job.name!r} is still {state}; cancel it first")
    why = _store.read_only_reason(job.folder)
    if why:
        raise _fail(409, f"job {job.name!r} cannot be removed: {why}")
    errors: list[str] = []

    def failed(_fn: Any, path: str, exc: Any) -> None:
        errors.append(f"{path}: {exc[1] if isinstance(exc, tuple) else exc}")

    # Python 3.12 renamed the hook (and warns on the old name).
    hook: dict[str, Any] = {"onexc" if sys.version_info >= (3, 12) else "onerror": failed}
    shutil.rmtree(job.folder, **hook)
    if errors or os.path.lexists(job.folder):
        first = errors[0] if errors else "it is still there"
        raise _fail(409, f"job {job.name!r} was not removed whole: {first}")


# ``Range: bytes=A-B``, ``bytes=A-`` or ``bytes=-N`` (one range; others are answered whole).
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
# Longer numbers than this are past any log's end.
_DIGITS = 18


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The first and last byte ``header`` asks for, None for the whole log; raises 416
    for a range the log cannot satisfy (past its end, or last before first)."""
    ranged = _RANGE.fullmatch(header.strip())
    if not ranged or not (ranged[1] or ranged[2]):
        return None
    huge = 10**_DIGITS

    def num(text: str) -> int:
        return huge if len(text) > _DIGITS else int(text)

    if ranged[1]:
        start = num(ranged[1])
        end = min(num(ranged[2]), size - 1) if ranged[2] else size - 1
        if ranged[2] and num(ranged[2]) < start:
            raise _Unsatisfiable(size, "the range ends before it starts")
    else:  # the last N bytes
        suffix = num(ranged[2])
        if suffix == 0:
            raise _Unsatisfiable(size, "the range asks for no bytes")
        start, end = max(0, size - suffix), size - 1
    if start >= size:
        raise _Unsatisfiable(size, "the range starts past the end of the log")
    return start, end


class _Unsatisfiable(web.HTTPError):
    def __init__(self, size: int, why: str) -> None:
        super().__init__(416, f"{why} ({size:,} bytes)")
        self.size = size


def _open_log(job_id: str) -> tuple[int, int]:
    """The job's log, opened inside its folder without following a link (a regular
    file of ours only): the descriptor and its size."""
    folder, _ = _folder_of(job_id)
    try:
        fd = _store.open_own(folder / "output.log")
    except FileNotFoundError:
        raise _fail(404, f"job {job_id} has no log yet") from None
    except _store.NotOurs as exc:
        raise _fail(404, f"job {job_id}'s log is not served: {exc}") from None
    return fd, os.fstat(fd).st_size


class LogHandler(_Handler):
    @web.authenticated
    @authorized(action="read", resource=RESOURCE)
    async def get(self, job_id: str) -> None:
        """The job's whole log, or the bytes ``Range: bytes=START-END`` asks for, sent in
        pieces as they are read."""
        fd, size = await self.off_loop(_open_log, job_id)
        try:
            try:
                asked = _byte_range(self.request.headers.get("Range", ""), size)
            except _Unsatisfiable as exc:
                self._content_range = f"bytes */{exc.size}"
                raise
            start, end = asked or (0, size - 1)
            if asked is not None:
                self.set_status(206)
                self.set_header("Content-Range", f"bytes {start}-{end}/{size}")
            # APIHandler would call it JSON. Sent in chunks without a length: a log cut
            # short while it is read ends the answer where it ends.
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            pos = start
            while pos <= end:
                piece = await self.off_loop(os.pread, fd, min(_CHUNK, end - pos + 1), pos)
                if not piece:  # the log was cut meanwhile: what is left is sent as is
                    break
                self.write(piece)
                pos += len(piece)
                try:
                    await self.flush()
                except StreamClosedError:
                    return
            self.finish()
        finally:
            os.close(fd)


def _cancel(job_id: str) -> dict[str, Any]:
    job = _find(job_id)
    state = state_of(job)
    if state in (*ENDED_STATES, DAMAGED):
        raise _fail(409, f"job {job.name!r} has already ended ({state})")
    if job.detached:
        # Its host reads why in the folder once it is told, by signal, to stop.
        with contextlib.suppress(OSError):
            _store.write_json(job.folder / "cancel.json", {"asked": True})
        if not job.cancel():
            raise _fail(
                409,
                f"job {job.name!r} cannot be stopped from here: its host is not the "
                "process its record names (ended, or its pid now belongs to another)",
            )
    else:
        # An attached job's driver, in its notebook's kernel, sees the request.
        try:
            _store.write_json(job.folder / "cancel.json", {"asked": True})
        except OSError as exc:
            raise _fail(409, f"job {job.name!r} cannot be asked to stop: {exc}") from None
    return {"id": job.id, "cancel": True}


class CancelHandler(_Handler):
    @web.authenticated
    @authorized(action="write", resource=RESOURCE)
    async def post(self, job_id: str) -> None:
        """Stop a job: a detached one's host is told (SIGTERM, only if it is still that
        very process); an attached one's driver sees the request in the job's folder."""
        answer = await self.off_loop(_cancel, job_id)
        self.set_status(202)
        self.finish(json.dumps(answer))


class EventsHandler(_Handler):
    _page: asyncio.Queue[str | None] | None = None

    def on_connection_close(self) -> None:
        # The page went away: its stream ends now, not at the next keep-alive.
        if self._page is not None:
            self._page.put_nowait(None)
        super().on_connection_close()

    @web.authenticated
    @authorized(action="read", resource=RESOURCE)
    async def get(self) -> None:
        """Server-sent events: ``data: {"jobs": [...changed...], "removed": [...]}`` each
        time rows change (the first lists every job); a comment line every few seconds
        keeps proxies open. One watcher reads the store for every page."""
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        watcher = self.watcher
        page = self._page = await watcher.subscribe()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(page.get(), KEEP_ALIVE)
                except asyncio.TimeoutError:
                    event = ": keep-alive\n\n"
                if event is None:  # let go: too slow to follow, or the server stops
                    break
                self.write(event)
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            watcher.unsubscribe(page)
        if not self._finished:
            self.finish()
