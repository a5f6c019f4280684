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
from typing import Any

from ._errors import JobSpecError
from ._inside.kernel.cell import bound_names as kernel_bound_names
from ._snapshot import magic_names
from ._states import SUCCEEDED, label


def bound_names(source: str) -> set[str]:
    """The names a cell binds in the notebook's namespace, statically: its top-level
    assignments (in loops, ``with`` and ``try`` too), imports, function and class names;
    never the names inside a function, a class or a comprehension (the job's kernel reads
    its statements the same way: ``cell.bound_names``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return kernel_bound_names(tree.body)


def binds_of(spec: Any, source: str) -> set[str]:
    """The names of the notebook a job of ``spec`` will bind when its results merge: what
    its code binds (``--results globals``), its ``NAME_results`` (``object``), or none."""
    if spec.results == "globals":
        return bound_names(source)
    return {spec.results_name} if spec.results == "object" else set()


def read_names(source: str) -> set[str]:
    """The names of the notebook a cell reads before it binds them itself, statement by
    statement: a cell that imports ``time`` and then calls ``time.sleep`` reads no
    ``time`` of the notebook's; ``df = df.dropna()`` reads ``df``. A function's body counts
    where the function is defined, less its parameters and its own names; a
    comprehension's, less its loop variables."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    reads: set[str] = set()
    bound: set[str] = set()
    for statement in tree.body:
        reads |= _reads(statement, frozenset()) - bound
        bound |= kernel_bound_names([statement])
    return reads


def _reads(node: ast.AST, local: frozenset[str]) -> set[str]:
    """What ``node`` reads of the namespace outside the scopes it makes (``local``: the
    names of the scopes it is inside of)."""
    out: set[str] = set()
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, (ast.Load, ast.Del)) and node.id not in local:
            out.add(node.id)
        return out
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return set(node.names)
    if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        if node.target.id not in local:
            out.add(node.target.id)
    if isinstance(node, ast.Call):
        out |= magic_names(node)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        # Defaults, annotations and decorators are read where the function is made; its
        # body where it runs, with its parameters and its own names its own.
        args = node.args
        outer: list[ast.AST] = [*args.defaults, *(d for d in args.kw_defaults if d)]
        if not isinstance(node, ast.Lambda):
            outer += [*node.decorator_list, *(a.annotation for a in _params(args) if a.annotation)]
        for child in outer:
            out |= _reads(child, local)
        body = node.body if isinstance(node.body, list) else [node.body]
        own = {a.arg for a in _params(args)} | kernel_bound_names(
            [b for b in body if isinstance(b, ast.stmt)]
        )
        for child in body:
            out |= _reads(child, local | own)
        return out
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        gens = node.generators
        out |= _reads(gens[0].iter, local)  # read where the comprehension is
        own = {n.id for g in gens for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        parts: list[ast.AST] = [*(g.iter for g in gens[1:]), *(i for g in gens for i in g.ifs)]
        parts += [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        for child in parts:
            out |= _reads(child, local | own)
        return out
    if isinstance(node, ast.ExceptHandler) and node.name:
        local = local | {node.name}  # bound by the handler for its body
    for child in ast.iter_child_nodes(node):
        out |= _reads(child, local)
    return out


def _params(args: ast.arguments) -> list[ast.arg]:
    extra = [a for a in (args.vararg, args.kwarg) if a is not None]
    return [*args.posonlyargs, *args.args, *args.kwonlyargs, *extra]


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


def overlay_file(values: dict[str, Any], token: str, path: str) -> list[Any]:
    """Write ``values`` at ``path`` for the waiting job's kernel to load over its seed
    (modules by name); what could not be written (to be listed as not shipped)."""
    from types import ModuleType

    from ._inside.kernel.wire import encode, write_whole

    modules = {k: v.__name__ for k, v in values.items() if isinstance(v, ModuleType)}
    note = {"changed": [], "deleted": [], "modules": modules}
    rest = {k: v for k, v in values.items() if k not in modules}
    parts, skipped, _ = encode(rest, token, note=note)
    write_whole(path, parts)
    return skipped
