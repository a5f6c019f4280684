"""Jobs that wait for the jobs whose results they read.

The notebook is the graph: a new job reads names (``--env auto`` knows which, statically),
and each job of this process that has not ended binds names (its top-level assignments,
imports and definitions). A new job that reads a name an unfinished job binds waits for
that job (its implicit wait), as it does for the jobs ``--after`` names (its explicit
waits; ``--after none`` turns the implicit ones off). A job can only wait for jobs that
exist already, so there are no cycles.

The waiting is done by the waiting job's driver, before it takes a slot: until every job it
waits for has ended. Then it starts with the names those jobs made (their values, as they
will merge into the notebook), or, if one of them did not succeed, it ends ``cancelled``
saying which and why: it never runs on stale data.
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import JobSpecError
from ._snapshot import free_names
from ._states import SUCCEEDED, label


def bound_names(source: str) -> set[str]:
    """The names a cell binds in the notebook's namespace, statically: its top-level
    assignments (in loops, ``with`` and ``try`` too), imports, function and class names;
    never the names inside a function, a class or a comprehension."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    out: set[str] = set()
    _stores(tree, out)
    return out


_OWN_SCOPE = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _stores(node: ast.AST, out: set[str]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(child.name)
        elif isinstance(child, _OWN_SCOPE):
            continue
        elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
            out.add(child.id)
        elif isinstance(child, ast.alias) and child.name != "*":
            out.add(child.asname or child.name.split(".")[0])
        elif isinstance(child, ast.ExceptHandler) and child.name:
            out.add(child.name)
            _stores(child, out)
        else:
            _stores(child, out)


def binds_of(spec: Any, source: str) -> set[str]:
    """The names of the notebook a job of ``spec`` will bind when its results merge: what
    its code binds (``--results globals``), its ``NAME_results`` (``object``), or none."""
    if spec.results == "globals":
        return bound_names(source)
    return {spec.results_name} if spec.results == "object" else set()


def read_names(source: str) -> set[str]:
    """The names a cell reads before it binds them itself, statement by statement: a
    cell that imports ``time`` and then calls ``time.sleep`` reads no ``time`` of the
    notebook's; ``df = df.dropna()`` reads ``df``. A function's body counts where the
    function is defined."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    reads: set[str] = set()
    bound: set[str] = set()
    for statement in tree.body:
        reads |= free_names(ast.unparse(statement)) - bound
        _stores(ast.Module([statement], []), bound)
    return reads


@dataclass
class Wait:
    """One job a new job waits for, and why: the names of it the new job reads (none for a
    wait ``--after`` asked for whatever the names)."""

    job: Any
    names: list[str] = field(default_factory=list)

    def words(self) -> str:
        """``fit (df, model)``, or ``fit``."""
        return f"{self.job.name} ({', '.join(self.names)})" if self.names else self.job.name


def waits_for(
    source: str,
    explicit: list[str],
    implicit: bool,
    unfinished: list[tuple[Any, set[str]]],
    find: Any,
) -> list[Wait]:
    """The jobs a new job of ``source`` waits for: those ``explicit`` names (found by
    ``find``; a name no job has is a ``JobSpecError``), then, when ``implicit``, each of
    ``unfinished`` (a job and the names it binds) that binds a name ``source`` reads."""
    waits: list[Wait] = []
    for name in explicit:
        job = find(name)
        if job is None:
            raise JobSpecError(
                f"--after {name}: no job named {name!r} to wait for; a job waits only for "
                "jobs that exist already (jupyter_bgjobs.jobs() lists them)"
            )
        if all(w.job.id != job.id for w in waits):
            waits.append(Wait(job))
    if implicit:
        reads = read_names(source)
        for job, binds in unfinished:
            shared = sorted(reads & binds)
            if not shared:
                continue
            known = next((w for w in waits if w.job.id == job.id), None)
            if known is None:
                waits.append(Wait(job, shared))
            else:
                known.names = shared
    return waits


def waiting_words(waits: list[Wait]) -> str:
    """A waiting job's status: "waiting for fit (df), clean"."""
    return f"waiting for {', '.join(w.words() for w in waits)}"


def wait_out(waits: list[Wait], cancelled: Any, poll: float = 0.2) -> str:
    """Wait until every job of ``waits`` has ended; "" when each succeeded, else why the
    waiting job does not run (``cancelled`` set meanwhile says so too)."""
    for wait in waits:
        job = wait.job
        cond = getattr(job, "_cond", None)
        while not job.done:
            if cancelled.is_set():
                return f"cancelled while waiting for {wait.words()}"
            if cond is not None:
                with cond:
                    cond.wait_for(lambda j=job: j.done or cancelled.is_set(), poll)
            else:
                time.sleep(poll)  # a job of another process: its record is read again
        if job.state != SUCCEEDED:
            why = job.reason or (f"{job.error.ename}: {job.error.evalue}" if job.error else "")
            return f"{job.name} {label(job.state)}" + (f": {why}" if why else "")
    return ""


def values_of(waits: list[Wait]) -> dict[str, Any]:
    """The values the jobs waited for made of the names the waiting job reads, as they
    come into the notebook (a job of another process gives none: its results are
    attached from the store)."""
    import types

    values: dict[str, Any] = {}
    for wait in waits:
        run = getattr(wait.job, "_run", None)
        made = getattr(run, "values", None) or {}
        spec = getattr(wait.job, "spec", None)
        for name in wait.names:
            if spec is not None and spec.results == "object" and name == spec.results_name:
                values[name] = types.SimpleNamespace(**made)  # what merges as that name
            elif name in made:
                values[name] = made[name]
    return values


def listed(waits: list[Wait]) -> list[dict[str, Any]]:
    """The waits as a detached job's spec keeps them, for its host."""
    return [{"id": w.job.id, "name": w.job.name, "names": list(w.names)} for w in waits]


def overlay_file(values: dict[str, Any], token: str, folder: Path) -> tuple[str, list[Any]]:
    """Write ``values`` for the waiting job's kernel to load over its seed (modules by
    name); the file, and what could not be written (to be listed as not shipped)."""
    from types import ModuleType

    from ._inside.kernel.checkpoint import write_whole
    from ._inside.kernel.wire import encode

    modules = {k: v.__name__ for k, v in values.items() if isinstance(v, ModuleType)}
    note = {"changed": [], "deleted": [], "modules": modules}
    rest = {k: v for k, v in values.items() if k not in modules}
    parts, skipped, _ = encode(rest, token, note=note)
    path = str(folder / "after.snap")
    write_whole(path, parts)
    return path, skipped
