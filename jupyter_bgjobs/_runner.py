"""Code that runs inside a job's kernel.

This module is sent to the job kernel as source text and executed there, so it imports
nothing from jupyter_bgjobs and only the standard library at import time (dill is imported
when a snapshot or results need it). The parent talks to it through one call,
``run(spec_json)``; the runner reports back through display_data messages of a private
MIME type on the kernel's iopub channel, in order with the job's own output.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
import traceback
import types
from typing import Any

EVENT_MIME = "application/vnd.jupyter-bgjobs.event+json"

_SECTION_R = re.compile(r"^\s*#+\s*(?P<name>[^#\s].*?)\s*-{4,}\s*$")
_SECTION_PY = re.compile(r"^\s*#\s*%%\s*(?P<name>.*?)\s*$")
_IPYTHON_NAME = re.compile(r"^(_+|_i+|_i?\d+|_[ido]h|_ih|_exit_code|In|Out|exit|quit|get_ipython)$")


def section_of(line: str) -> str | None:
    """The section a marker line opens, or None when the line is no marker."""
    m = _SECTION_R.match(line) or _SECTION_PY.match(line)
    if not m:
        return None
    return m.group("name").strip()


def is_internal_name(name: str) -> bool:
    """IPython's own names, dunders and ours: never shipped, never returned."""
    return (
        bool(_IPYTHON_NAME.match(name))
        or (name.startswith("__") and name.endswith("__"))
        or name.startswith("_bgjobs")
    )


def plan(source: str) -> list[tuple[ast.stmt, str]]:
    """Split transformed source into top-level statements, each with its section."""
    tree = ast.parse(source)
    lines = source.splitlines()
    markers: list[tuple[int, str]] = []
    for lineno, line in enumerate(lines, start=1):
        name = section_of(line)
        if name is not None:
            markers.append((lineno, name))
    out: list[tuple[ast.stmt, str]] = []
    current = ""
    mi = 0
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        while mi < len(markers) and markers[mi][0] < first:
            current = markers[mi][1]
            mi += 1
        out.append((node, current))
    return out


class _Runner:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ip = _get_ipython()
        self.ns: dict[str, Any] = self.ip.user_ns if self.ip is not None else _main_ns()

    def emit(self, kind: str, **fields: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        payload = {"type": kind, "t": time.time(), **fields}
        if self.ip is not None:
            from IPython.display import publish_display_data

            publish_display_data({EVENT_MIME: payload, "text/plain": ""})
        else:
            print(json.dumps(payload), file=sys.__stdout__, flush=True)

    def run(self) -> None:
        spec = self.spec
        status = "ok"
        error: dict[str, Any] | None = None
        done = 0
        total = 0
        before: dict[str, int] = {}
        try:
            if spec.get("workdir"):
                os.chdir(spec["workdir"])
            for key, value in (spec.get("env_vars") or {}).items():
                os.environ[key] = value
            if spec.get("workdir") and spec["workdir"] not in sys.path:
                sys.path.insert(0, spec["workdir"])
            skipped_in = self._seed()
            before = {k: id(v) for k, v in self.ns.items()}
            source = self.spec["code"]
            if self.ip is not None:
                source = self.ip.transform_cell(source)
            steps = plan(source)
            total = len(steps)
            filename = self._register_source(source)
            self.emit("plan", total=total, sections=[s for _, s in steps], skipped=skipped_in)
            for i, (node, section) in enumerate(steps):
                self.emit("stmt", index=i, total=total, section=section, line=node.lineno)
                interactive = i == total - 1 and isinstance(node, ast.Expr)
                if interactive:
                    code = compile(ast.Interactive([node]), filename, "single")
                else:
                    code = compile(ast.Module([node], []), filename, "exec")
                try:
                    exec(code, self.ns)
                except KeyboardInterrupt:
                    status = "interrupted"
                    self._show_exception()
                    break
                except BaseException as exc:  # the job's exception is the result
                    status = "error"
                    error = self._show_exception()
                    if isinstance(exc, SystemExit) and not exc.code:
                        status, error = "ok", None
                    break
                done = i + 1
        except KeyboardInterrupt:
            status = "interrupted"
        except BaseException:  # a runner fault is reported, never raised
            status = "error"
            error = self._show_exception()
        results = self._save_results(before) if before or total else {}
        self.emit("end", status=status, done=done, total=total, error=error, results=results)

    def _show_exception(self) -> dict[str, Any]:
        etype, value, tb = sys.exc_info()
        if isinstance(value, NameError) and value.name:
            why = {s["name"]: s for s in self.spec.get("not_shipped") or []}.get(value.name)
            if why is not None:
                value.args = (
                    f"{value.args[0] if value.args else value.name}: {value.name!r} was not "
                    f"shipped to this job ({why['type']}: {why['reason']})",
                )
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
        skipped: list[dict[str, str]] = []
        import importlib

        for name, (module, qualname) in (self.spec.get("imports") or {}).items():
            try:
                value: Any = importlib.import_module(module)
                for part in (qualname or "").split(".") if qualname else ():
                    value = getattr(value, part)
                self.ns[name] = value
            except Exception as exc:  # reported to the parent, the job goes on
                what = f"{module}.{qualname}" if qualname else module
                skipped.append(
                    {"name": name, "type": "import", "reason": f"import of {what} failed: {exc}"}
                )
        path = self.spec.get("seed_path")
        if path:
            import dill

            with open(path, "rb") as fh:
                values = dill.load(fh)
            self.ns.update(values)
        if self.spec.get("script_file"):
            self.ns["__file__"] = self.spec["script_file"]
        return skipped

    def _save_results(self, before: dict[str, int]) -> dict[str, Any]:
        path = self.spec.get("results_path")
        if not path:
            return {"names": [], "modules": {}, "skipped": []}
        changed = [
            k
            for k, v in list(self.ns.items())
            if not is_internal_name(k) and before.get(k) != id(v)
        ]
        modules = {
            k: self.ns[k].__name__ for k in changed if isinstance(self.ns[k], types.ModuleType)
        }
        values = {k: self.ns[k] for k in changed if k not in modules}
        skipped: list[dict[str, str]] = []
        try:
            import dill
        except ImportError as exc:
            return {
                "names": [],
                "modules": modules,
                "skipped": [
                    {
                        "name": k,
                        "type": type(v).__name__,
                        "reason": f"dill is not installed in the job's kernel: {exc}",
                    }
                    for k, v in values.items()
                ],
            }
        blob = _dumps_isolating(dill, values, skipped)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        return {
            "names": sorted(k for k in values if k not in {s["name"] for s in skipped}),
            "modules": modules,
            "skipped": skipped,
        }


def _dumps_isolating(dill: Any, values: dict[str, Any], skipped: list[dict[str, str]]) -> bytes:
    """Pickle ``values`` in one go (aliases stay aliases); drop whatever cannot pickle."""
    try:
        return bytes(dill.dumps(values, protocol=5, recurse=True))
    except Exception:
        pass
    for key in list(values):
        try:
            dill.dumps(values[key], protocol=5, recurse=True)
        except Exception as exc:
            skipped.append(
                {
                    "name": key,
                    "type": type(values[key]).__name__,
                    "reason": f"{type(exc).__name__}: {exc}",
                }
            )
            del values[key]
    return bytes(dill.dumps(values, protocol=5, recurse=True))


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
    _Runner(json.loads(spec_json)).run()
