"""The job runner: code that runs inside a job's kernel.

The notebook side talks to it through ``run(spec_json)`` (``run_async`` for top-level
``await``), ``receive`` for the seed's chunks sent over the kernel protocol, ``send_out`` and
``drop_out`` for results fetched over it, and ``resend`` for results that could not all be
loaded at once; the runner reports back through display_data messages of a private MIME
type (``wire.EVENT_MIME``) on the kernel's iopub channel, in order with the job's own
output: ``plan``, ``stmt``, ``progress``, ``status``, ``resent`` and, last, ``end``
(``chunk`` events, with binary buffers, answer ``send_out``).

Sent to the kernel as source (see ``_backends.local.runner_boot_code``) and registered
there as ``_bgjobs_runner``, so it imports nothing outside this package and only the
standard library at import time (cloudpickle and dill when a snapshot needs them).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any

from .arena import _Arena, _Fingerprints
from .cell import bound_names, ends_with_semicolon, missing_name, name_hint, notebook_view, plan
from .checkpoint import Checkpoints, restore
from .chunks import Inbox, Outbox

# ``warm`` too: the code that loads the runner calls it there, ahead of any job.
from .console import Flow, _bound_stream, _no_keyboard, _restore_io, own_usage, warm  # noqa: F401
from .wire import (
    EVENT_MIME,
    SnapshotError,
    _map_fixed,
    decode,
    encode,
    is_internal_name,
    load_file,
    pick_path,
    piece_paths,
    unlink_quietly,
    write_somewhere,
)

_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect into every kernel

_INBOX: dict[str, Inbox] = {}
# Results waiting to be fetched over the kernel protocol, by key (the job's token, or
# token/name for one sent again on its own).
_OUTBOX: dict[str, Outbox] = {}


def receive(token: str) -> None:
    """Take one chunk of the seed, sent over the kernel protocol as the binary buffers of
    this very request (its metadata ``bgjobs_seed`` says which chunk of how many bytes):
    the data never passes through IPython's input transformation or parser."""
    ip = _get_ipython()
    parent = ip.kernel.get_parent("shell") if ip is not None else {}
    info = parent.get("metadata", {}).get("bgjobs_seed") or {}
    box = _INBOX.get(token)
    if box is None or box.nbytes != info["nbytes"]:
        box = _INBOX[token] = Inbox(int(info["nbytes"]), int(info["chunk"]))
    box.put(int(info["seq"]), parent.get("buffers") or [])


def send_out(key: str, seqs: list[int]) -> None:
    """Publish chunks ``seqs`` of the results waiting under ``key``, each as the binary
    buffers of one message on iopub; the notebook asks for a few at a time, so a slow link
    never has more than those in flight."""
    box = _OUTBOX[key]
    for seq in seqs:
        _publish({"type": "chunk", "key": key, "seq": seq}, box.piece(seq))


def drop_out(key: str) -> None:
    """The notebook has the results under ``key``: let them go."""
    _OUTBOX.pop(key, None)


def _offer(key: str, parts: list[Any]) -> dict[str, Any]:
    """Hold ``parts`` under ``key`` for the notebook to fetch; what it needs to do so."""
    box = _OUTBOX[key] = Outbox(parts)
    return box.described()


def _event_data(payload: dict[str, Any]) -> dict[str, Any]:
    """A runner event as display data: the notebook's side reads it; a front end shows
    nothing."""
    return {EVENT_MIME: payload, "text/plain": ""}


def _publish(payload: dict[str, Any], buffers: list[Any]) -> None:
    """An event with binary buffers, through the kernel's display publisher's session so it
    carries the current request as its parent like any display output."""
    ip = _get_ipython()
    pub = ip.display_pub
    content = {"data": _event_data(payload), "metadata": {}, "transient": {}}
    msg = pub.session.msg("display_data", content, parent=pub.parent_header)
    pub.session.send(pub.pub_socket, msg, ident=pub.topic, buffers=buffers)


class _Runner:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ip = _get_ipython()
        self.ns: dict[str, Any] = self.ip.user_ns if self.ip is not None else _main_ns()
        self.fingerprints: dict[str, Any] = {}
        self.seeded_ids: dict[str, int] = {}
        self.prints = _Fingerprints()
        self.t_start = time.time()
        self.arena: _Arena | None = None
        self.status = "ok"
        self.error: dict[str, Any] | None = None
        self.done = 0
        self.total = 0
        self.before: dict[str, int] | None = None
        self.nodes: list[ast.stmt] = []
        self.kernel_ids: dict[str, int] = {}
        self.skipped_in: list[dict[str, str]] = []
        self._saved_io: tuple[Any, ...] | None = None
        self._bounded: list[Callable[[], None]] = []
        self._flow: Flow | None = None
        self._unview: Callable[[], None] | None = None
        where = spec.get("checkpoint")
        self.checkpoints = Checkpoints(where, spec["token"], self.emit, _publish) if where else None

    def emit(self, kind: str, **fields: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            # What the job printed goes before the event. A kernel's stream says whether
            # it holds any: an empty flush still waits for the kernel's output thread, a
            # millisecond per event that a job of short statements pays many times over.
            if not getattr(stream, "_flush_pending", True):
                continue
            try:
                stream.flush()
            except Exception:
                pass
        payload = {"type": kind, "t": time.time(), **fields}
        if self.ip is not None:
            from IPython.display import publish_display_data

            publish_display_data(_event_data(payload))
        else:
            print(json.dumps(payload), file=sys.__stdout__, flush=True)

    def run(self) -> None:
        """Run the job's statements in order, as a cell of this kernel would."""
        steps = self._begin()
        for i, code in steps:
            try:
                exec(code, self.ns)
            except BaseException as exc:  # the job's exception is its result
                if self._stopped_by(exc):
                    break
            self.done = i + 1
        self._end()

    async def run_async(self) -> None:
        """The same, for a job with top-level ``await``: this kernel's event loop runs it,
        as IPython's autoawait does for a cell."""
        steps = self._begin(flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for i, code in steps:
            try:
                if code.co_flags & _CO_COROUTINE:
                    await eval(code, self.ns)
                else:
                    exec(code, self.ns)
            except BaseException as exc:
                if self._stopped_by(exc):
                    break
            self.done = i + 1
        self._end()

    def _begin(self, flags: int = 0) -> Iterator[tuple[int, types.CodeType]]:
        """Set the job up and yield its compiled statements one by one, each announced to
        the parent first; a fault while setting up is reported as the job's error."""
        try:
            self._enter_context()
            # What the kernel had of its own (ipykernel's ``open``, say): never the job's.
            self.kernel_ids = {k: id(v) for k, v in self.ns.items()}
            skipped_in = self._seed()
            self.skipped_in = skipped_in
            self.before = {k: id(v) for k, v in self.ns.items()}
            self._load_over("after")  # what the jobs it waited for made
            start = self._load_over("resume")
            self.done = start
            self.arena = self._start_arena()
            source = self.spec["code"]
            if self.ip is not None:
                source = self.ip.transform_cell(source)
            steps = plan(source)
            self.nodes = [node for node, _ in steps]
            quiet = ends_with_semicolon(source)
            self.total = len(steps)
            filename = self._register_source(source)
            self.emit(
                "plan",
                total=self.total,
                sections=[s for _, s in steps],
                skipped=skipped_in,
                t_start=self.t_start,
                start=start,
            )
        except BaseException as exc:
            self._stopped_by(exc)
            return
        for i, (node, section) in enumerate(steps):
            if i < start:
                continue  # done by the job this one resumes: its checkpoint holds them
            if self.checkpoints is not None and i > start and section != steps[i - 1][1]:
                # The statements before this one ran, so the section before it is complete.
                self.checkpoints.take(self, i, steps)
            self.emit(
                "stmt",
                index=i,
                total=self.total,
                section=section,
                line=node.lineno,
                usage=own_usage(every=1.0),
            )
            try:
                # The last expression's value is shown, as in a cell, unless a trailing
                # semicolon hides it, as in a cell.
                if i == self.total - 1 and isinstance(node, ast.Expr) and not quiet:
                    code = compile(ast.Interactive([node]), filename, "single", flags)
                else:
                    code = compile(ast.Module([node], []), filename, "exec", flags)
            except BaseException as exc:
                self._stopped_by(exc)
                return
            yield i, code

    def _load_over(self, key: str) -> int:
        """Load over the seed what ``key`` names: the values the jobs it waited for made
        (``after``), or the checkpoint a resumed job goes on from (``resume``); the
        statement to start at."""
        given = self.spec.get(key)
        if not given:
            return 0
        data = None
        if given.get("transport") == "stream":
            box = _INBOX.pop(given["key"], None)
            if box is None:
                raise SnapshotError(f"the {key} snapshot never arrived over the kernel protocol")
            data = box.check(given["sha256"])
        return restore(self, given, data)

    def changes(self) -> tuple[list[str], list[str]]:
        """The names the job has bound or rebound, or changed in place of those it was
        given; and those it was given and has deleted."""
        before = self.before or {}
        # A name its statements bound counts even when it holds the very object it was
        # given: `total = 45` where the notebook had 45 (one shared small int) was bound.
        bound = bound_names(self.nodes[: self.done])
        changed = [
            k
            for k, v in list(self.ns.items())
            if not is_internal_name(k) and (before.get(k) != id(v) or k in bound)
        ]
        mutated = [
            k
            for k, v in list(self.ns.items())
            if k in self.seeded_ids
            and k not in bound
            and self.seeded_ids[k] == id(v)
            and before.get(k) == id(v)
            and self.prints.changed(self.fingerprints.get(k), v)
        ]
        deleted = sorted(k for k in self.seeded_ids if k not in self.ns)
        return changed + mutated, deleted

    def _stopped_by(self, exc: BaseException) -> bool:
        """Record how ``exc`` ends the job; False for a ``SystemExit(0)``, which does not."""
        if isinstance(exc, KeyboardInterrupt):
            self.status = "interrupted"
            self._show_exception()
            return True
        if isinstance(exc, SystemExit) and not exc.code:
            return False
        self.status = "error"
        self.error = self._show_exception()
        return True

    def _end(self) -> None:
        self._leave_context()
        code_done = time.time()
        results: dict[str, Any] = {}
        if self.before is not None:
            try:
                results = self._save_results(self.before)
            except BaseException as exc:
                if self.arena is not None:
                    self.arena.discard()
                results = {
                    "names": [],
                    "modules": {},
                    "skipped": [
                        {"name": "*", "type": "results", "reason": f"{type(exc).__name__}: {exc}"}
                    ],
                }
        self.emit(
            "end",
            status=self.status,
            done=self.done,
            total=self.total,
            error=self.error,
            results=results,
            code_done=code_done,
            usage=own_usage(),
        )

    def _enter_context(self) -> None:
        """What the cell would see in the notebook: its working directory, its import path
        and its environment as they were when the job was submitted; and no keyboard."""
        spec = self.spec
        if spec.get("workdir"):
            os.chdir(spec["workdir"])
        context = spec.get("context") or {}
        for key in context.get("unset") or ():
            os.environ.pop(key, None)
        os.environ.update(context.get("set") or {})
        os.environ.update(spec.get("env_vars") or {})
        notebook_path = context.get("sys_path")
        if notebook_path is not None:
            if context.get("prefix") == sys.prefix:
                # The same environment: the notebook's path exactly, in its order.
                own = [p for p in sys.path if p not in notebook_path]
                sys.path[:] = list(notebook_path) + own
            else:
                # Another environment: only the folders the notebook added, never its
                # site-packages, which belong to another Python.
                sys.path[:0] = [p for p in context.get("added_path") or () if p not in sys.path]
        elif spec.get("workdir") and spec["workdir"] not in sys.path:
            sys.path.insert(0, spec["workdir"])
        self._saved_io = _no_keyboard()
        if self.ip is not None and spec.get("notebook_rows"):
            self._unview = notebook_view(self.ip, spec["notebook_rows"])
        flow = spec.get("flow")
        self._flow = Flow(flow["path"], int(flow["window"])) if flow else None
        self._bounded = [_bound_stream(s, self._flow) for s in (sys.stdout, sys.stderr)]

    def _leave_context(self) -> None:
        if self._unview is not None:
            self._unview()
            self._unview = None
        if self._flow is not None:
            self._flow.close()
            self._flow = None
        for undo in self._bounded:
            undo()
        self._bounded = []
        if self._saved_io is not None:
            _restore_io(self._saved_io)
            self._saved_io = None

    def _show_exception(self) -> dict[str, Any]:
        etype, value, tb = sys.exc_info()
        # A name a library evaluated from a string (pandas' eval and query) misses as the
        # interpreter's names do, but its error carries the name only in its message.
        missing = (value.name or missing_name(value)) if isinstance(value, NameError) else None
        if missing and value is not None:
            hint = name_hint(self.spec, self.skipped_in, missing)
            if hint:
                value.args = (f"{value.args[0] if value.args else missing}: {hint}",)
        elif (
            type(value) is KeyError
            and len(value.args) == 1
            and isinstance(value.args[0], str)
            and value.args[0] not in self.ns
            and value.args[0] in set(self.spec.get("notebook_names") or ())
        ):
            # globals()["x"]: the same miss as a NameError, in another form.
            key = value.args[0]
            note = (
                f"{key!r} is a name in the notebook that this job was not given; if the code "
                f"reads it through globals() or vars(), start the job with --env {key} "
                "(or --env all)"
            )
            # The job has failed on it: what it says now is for the user, not for code.
            value.args = (f"{key!r}: {note}",)
        # Drop the runner's own frames: the user sees their code only.
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        if self.ip is not None:
            stb = self.ip.InteractiveTB.structured_traceback(etype, value, tb)
            self.ip._showtraceback(etype, value, stb)
        else:
            stb = traceback.format_exception(etype, value, tb)
            sys.stderr.write("".join(stb))
        return {
            "ename": getattr(etype, "__name__", str(etype)),
            "evalue": str(value),
            "traceback": list(stb),
        }

    def _register_source(self, source: str) -> str:
        name = self.spec.get("filename") or f"<bgjob {self.spec.get('name', '')}>"
        if self.ip is not None and not self.spec.get("filename"):
            try:
                return str(self.ip.compile.cache(source))
            except Exception:
                pass
        import linecache

        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        return name

    def _seed(self) -> list[dict[str, str]]:
        import importlib

        skipped: list[dict[str, str]] = []
        for name, (module, qualname) in (self.spec.get("imports") or {}).items():
            try:
                value: Any = importlib.import_module(module)
                for part in qualname.split(".") if qualname else ():
                    value = getattr(value, part)
                self.ns[name] = value
            except Exception as exc:  # reported to the parent, the job goes on
                what = f"{module}.{qualname}" if qualname else module
                skipped.append(
                    {
                        "name": name,
                        "type": "import",
                        "reason": f"import of {what} failed: {type(exc).__name__}: {exc}",
                    }
                )
        seed = self.spec.get("seed")
        if seed:
            token = self.spec["token"]
            if seed["transport"] == "stream":
                box = _INBOX.pop(token, None)
                if box is None:
                    raise SnapshotError("the seed never arrived over the kernel protocol")
                data = box.check(seed["sha256"])
                values = decode(data, token)
            else:
                pieces = seed.get("pieces", 1)
                try:
                    values = load_file(seed["path"], token, pieces)
                finally:
                    # Kept for the next attempt of a job that may be retried; its driver
                    # removes it at the job's end.
                    for path in piece_paths(seed["path"], pieces) if not seed.get("keep") else ():
                        unlink_quietly(path)
            self.ns.update(values)
            for key, value in values.items():
                self.seeded_ids[key] = id(value)
                self.fingerprints[key] = self.prints.take(value)
        if self.spec.get("script_file"):
            self.ns["__file__"] = self.spec["script_file"]
        # A sweep's run: the names it sets (``--over``), as the notebook's would be.
        self.ns.update(self.spec.get("params") or {})
        return skipped

    def _start_arena(self) -> _Arena | None:
        out = self.spec.get("results") or {}
        paths = out.get("paths") or []
        # Only for shared memory (the last candidate is the job's folder on disk), and
        # only where the pieces can be mapped back.
        if (
            out.get("transport") != "file"
            or not out.get("arena")
            or len(paths) < 2
            or _map_fixed() is None
        ):
            return None
        return _Arena(paths[0])

    def _save_results(self, before: dict[str, int]) -> dict[str, Any]:
        out = self.spec.get("results")
        if not out:
            return {"names": [], "modules": {}, "skipped": []}
        names, deleted = self.changes()
        mutated = [k for k in names if k in self.seeded_ids and before.get(k) == id(self.ns[k])]
        modules = {
            k: self.ns[k].__name__ for k in names if isinstance(self.ns[k], types.ModuleType)
        }
        values = {k: self.ns[k] for k in names if k not in modules}
        result_t0 = time.time()
        arena, self.arena = self.arena, None
        prepared = arena.stop() if arena is not None else 0
        parts, skipped, info = encode(values, self.spec["token"])
        travelled = sorted(set(info["pickled"]) | set(info["dill"]))
        result: dict[str, Any] = {
            "names": travelled,
            "mutated": sorted(set(mutated) & set(travelled)),
            "deleted": deleted,
            "modules": modules,
            "skipped": skipped,
            "nbytes": info["nbytes"],
            "t_compared": result_t0,
        }
        if not travelled or out.get("transport") == "stream":
            if arena is not None:
                arena.discard()
        if not travelled:
            return result
        if out.get("transport") == "stream":
            # Views of the job's values, fetched by the notebook once the job has ended.
            result.update(transport="stream", **_offer(self.spec["token"], parts))
        else:
            reserved = sum(arena.sizes) if arena is not None and prepared else 0
            path = pick_path(out["paths"], info["nbytes"], reserved)
            if arena is not None and (not prepared or path != out["paths"][0]):
                arena.discard()
                prepared = 0
            result["t_encoded"] = time.time()
            path, pieces = write_somewhere(out["paths"], path, parts, prepared)
            result.update(transport="file", path=path, pieces=pieces, t_written=time.time())
        return result


def resend(request_json: str) -> None:
    """Send each result on its own (a file, or results to fetch over the kernel protocol):
    the parent could not load them all at once."""
    request = json.loads(request_json)
    token = request["token"]
    runner = _Runner({"token": token})
    for name, candidates in request["paths"].items():
        if name not in runner.ns:
            runner.emit("resent", name=name, error="the job no longer holds it")
            continue
        try:
            parts, skipped, info = encode({name: runner.ns[name]}, token)
            if skipped:
                raise SnapshotError(skipped[0]["reason"])
            if request.get("transport") == "stream":
                key = f"{token}/{name}"
                runner.emit("resent", name=name, key=key, **_offer(key, parts))
                continue
            path, pieces = write_somewhere(candidates, pick_path(candidates, info["nbytes"]), parts)
            runner.emit("resent", name=name, path=path, pieces=pieces)
        except Exception as exc:
            runner.emit("resent", name=name, error=f"{type(exc).__name__}: {exc}")


CURRENT: _Runner | None = None
_last_progress = 0.0


def report_progress(units: int, total: int | None = None) -> None:
    """Inside a job: set the job's progress to ``units`` (of ``total``) for its row."""
    global _last_progress
    if CURRENT is None:
        raise RuntimeError("not inside a job")
    now = time.monotonic()
    # Tight loops call this often; the row needs at most ~20 updates a second.
    if total is None or units < total:
        if now - _last_progress < 0.05:
            return
    _last_progress = now
    CURRENT.emit("progress", units=units, total=total)


def report_status(text: str) -> None:
    """Inside a job: set the job's status text."""
    if CURRENT is None:
        raise RuntimeError("not inside a job")
    CURRENT.emit("status", text=text)


def _get_ipython() -> Any:
    try:
        from IPython import get_ipython

        return get_ipython()
    except ImportError:
        return None


def _main_ns() -> dict[str, Any]:
    import __main__

    ns: dict[str, Any] = __main__.__dict__
    return ns


def run(spec_json: str) -> None:
    """Run one job described by ``spec_json``; never raises."""
    global CURRENT
    CURRENT = _Runner(json.loads(spec_json))
    try:
        CURRENT.run()
    finally:
        CURRENT = None


async def run_async(spec_json: str) -> None:
    """``run`` for a job whose code uses top-level ``await``; the kernel awaits it."""
    global CURRENT
    CURRENT = _Runner(json.loads(spec_json))
    try:
        await CURRENT.run_async()
    finally:
        CURRENT = None
