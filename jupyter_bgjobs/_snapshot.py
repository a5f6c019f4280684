"""Choosing which notebook names a job gets, and writing them for the job's kernel."""

from __future__ import annotations

import ast
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any

from ._runner import is_internal_name


@dataclass
class Snapshot:
    """What was shipped to a job, and what was not (with the reason)."""

    shipped: list[str] = field(default_factory=list)
    imports: dict[str, list[str | None]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    path: str | None = None
    nbytes: int = 0


def free_names(source: str) -> set[str]:
    """Names a piece of code reads that it may not define itself (statically)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Load, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _code_names(code: types.CodeType, out: set[str]) -> None:
    out.update(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_names(const, out)


def _reached_names(value: Any) -> set[str]:
    """Global names a notebook-defined function or class refers to."""
    out: set[str] = set()
    if isinstance(value, types.FunctionType):
        _code_names(value.__code__, out)
    elif isinstance(value, type):
        for attr in vars(value).values():
            fn = getattr(attr, "__func__", attr)
            if isinstance(fn, types.FunctionType):
                _code_names(fn.__code__, out)
    return out


def select_names(ns: dict[str, Any], mode: str, source: str) -> list[str]:
    """The names of ``ns`` to ship for ``--env mode``."""
    if mode == "none":
        return []
    if mode == "all":
        wanted = set(ns)
    elif mode == "auto":
        wanted = free_names(source) & set(ns)
        todo = list(wanted)
        while todo:
            for name in _reached_names(ns[todo.pop()]) & set(ns):
                if name not in wanted:
                    wanted.add(name)
                    todo.append(name)
    else:
        wanted = {n.strip() for n in mode.split(",") if n.strip()}
    return sorted(n for n in wanted if n in ns and not is_internal_name(n) and not _is_ours(ns[n]))


def _is_ours(value: Any) -> bool:
    mod = getattr(type(value), "__module__", "") or ""
    return mod.split(".")[0] == "jupyter_bgjobs" or value is sys.modules.get("jupyter_bgjobs")


def _import_ref(value: Any) -> list[str | None] | None:
    """How the job can re-import ``value`` instead of unpickling it, if it can."""
    if isinstance(value, types.ModuleType):
        return [value.__name__, None]
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    if not isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return None
    mod = sys.modules.get(module)
    target: Any = mod
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return [module, qualname] if target is value else None


def write_snapshot(ns: dict[str, Any], names: list[str], path: str) -> Snapshot:
    """Pickle ``names`` of ``ns`` into ``path`` (0600); unpicklables are skipped and listed."""
    import dill

    snap = Snapshot()
    values: dict[str, Any] = {}
    for name in names:
        ref = _import_ref(ns[name])
        if ref is not None:
            snap.imports[name] = ref
        else:
            values[name] = ns[name]
    if values:
        try:
            blob = dill.dumps(values, protocol=5, recurse=True)
        except Exception:
            for name in list(values):
                try:
                    dill.dumps(values[name], protocol=5, recurse=True)
                except Exception as exc:  # any pickling failure means "skip it"
                    snap.skipped.append(
                        {
                            "name": name,
                            "type": type(values[name]).__name__,
                            "reason": f"{type(exc).__name__}: {exc}",
                        }
                    )
                    del values[name]
            blob = dill.dumps(values, protocol=5, recurse=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        snap.path = path
        snap.nbytes = len(blob)
    snap.shipped = sorted(values) + sorted(snap.imports)
    return snap
