"""Choosing which notebook names a job gets, and writing them for the job's kernel."""

from __future__ import annotations

import ast
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._inside.kernel.chunks import join_parts
from ._inside.kernel.wire import (
    encode,
    is_internal_name,
    pick_path,
    write_somewhere,
)
from ._runtime import shm_dir
from ._store import owner_tag, write_with


@dataclass
class Snapshot:
    """What was shipped to a job, and what was not (with the reason)."""

    shipped: list[str] = field(default_factory=list)
    imports: dict[str, list[str | None]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    path: str | None = None
    pieces: int = 1
    nbytes: int = 0
    # The snapshot in one buffer, when it travels over the kernel protocol (or, for a
    # detached job, in the file its host sends it from: ``streamed``).
    blob: bytearray | None = None
    streamed: bool = False


def free_names(source: str, depth: int = 0) -> set[str]:
    """Names a piece of code reads that it may not define itself (statically), those the
    arguments of IPython's code-running magics read included (``%timeit f(x)`` reads
    ``f`` and ``x``, though IPython's transformation made it a string)."""
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
        elif isinstance(node, ast.Call) and depth < _MAGIC_DEPTH:
            names |= _magic_names(node, depth)
    return names


def magic_names(call: ast.Call) -> set[str]:
    """The names the Python of a code-running magic reads, when ``call`` is the call
    IPython's transformation made of one (else none)."""
    return _magic_names(call, 0)


# Magics whose argument (after its options) is Python the magic runs in the namespace.
_CODE_MAGICS = frozenset(("time", "timeit", "prun", "debug", "capture"))
# Magics nest (``%%time`` around ``%timeit``) only so deep.
_MAGIC_DEPTH = 4


def _magic_names(call: ast.Call, depth: int) -> set[str]:
    """The names read by the Python in a ``get_ipython().run_line_magic(...)`` or
    ``run_cell_magic(...)`` call IPython's transformation made of a magic."""
    func = call.func
    if not (
        isinstance(func, ast.Attribute)
        and func.attr in ("run_line_magic", "run_cell_magic")
        and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args)
        and len(call.args) in (2, 3)
    ):
        return set()
    magic, line = call.args[0].value, call.args[1].value  # type: ignore[attr-defined]
    body = call.args[2].value if len(call.args) == 3 else None  # type: ignore[attr-defined]
    names: set[str] = set()
    if magic == "run":
        return _run_names(line, depth)
    if magic not in _CODE_MAGICS:
        return names
    if line.strip():
        names |= free_names(_code_after_options(line), depth + 1)
    if body is not None:
        from ._spec import transformed

        names |= free_names(transformed(body), depth + 1)
    return names


def _code_after_options(line: str) -> str:
    """``-n 10 -r 3 f(x)`` -> ``f(x)``: the longest tail of the words that is Python."""
    words = line.split(" ")
    for i in range(len(words)):
        tail = " ".join(words[i:]).strip()
        if not tail:
            break
        if i and not words[i - 1].startswith("-") and not _option_value(words, i - 1):
            break  # code never follows a word that is neither an option nor its value
        try:
            ast.parse(tail)
        except SyntaxError:
            continue
        if not tail.startswith("-") or i == len(words) - 1:
            return tail
    return ""


def _option_value(words: list[str], i: int) -> bool:
    """Whether ``words[i]`` is the value of the option before it (``-n 10``)."""
    return i > 0 and words[i - 1].startswith("-") and len(words[i - 1]) == 2


def _run_names(line: str, depth: int) -> set[str]:
    """``%run -i script.py``: the script runs in the notebook's namespace and reads from
    it what it does not define."""
    words = line.split()
    if "-i" not in words:
        return set()
    scripts = [w for w in words if not w.startswith("-")]
    if not scripts:
        return set()
    try:
        with open(os.path.expanduser(scripts[0]), encoding="utf-8") as fh:
            source = fh.read(4 << 20)
    except (OSError, ValueError):
        return set()
    return free_names(source, depth + 1)


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
    hidden = _ipython_hidden()
    return sorted(
        n
        for n in wanted
        if n in ns
        and not is_internal_name(n)
        and not _is_ours(ns[n])
        and not (n in hidden and hidden[n] is ns[n])
    )


def _ipython_hidden() -> dict[str, Any]:
    """What IPython itself put into the user namespace (``open``, ``In``, ...)."""
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        return {}
    hidden: dict[str, Any] = getattr(ip, "user_ns_hidden", None) or {}
    return hidden


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


def import_origins(imports: dict[str, list[str | None]]) -> dict[str, str]:
    """Where the notebook found each module it re-imports in the job, for error messages."""
    out: dict[str, str] = {}
    for name, (module, _) in imports.items():
        path = getattr(sys.modules.get(module or ""), "__file__", None)
        if path:
            out[name] = str(path)
    return out


def unshipped_names(ns: dict[str, Any], shipped: list[str], limit: int = 5000) -> list[str]:
    """The notebook's own names the job was not given: a NameError for one of them says
    how to ship it."""
    sent = set(shipped)
    hidden = _ipython_hidden()
    names = [
        n
        for n in ns
        if n not in sent
        and n.isidentifier()
        and not is_internal_name(n)
        and not (n in hidden and hidden[n] is ns[n])
    ]
    return names[:limit]


# A job's code that lists the notebook's names: `%who`, `%whos`, `%who_ls`, as written or
# as IPython has transformed them.
_LISTS_NAMES = re.compile(r"%who|run_line_magic\(\s*['\"]who")


def who_rows(ns: dict[str, Any], names: list[str], source: str) -> dict[str, dict[str, Any]]:
    """For a job that runs ``%who``/``%whos``: how IPython's ``%whos`` would describe each
    of the notebook's names the job was not given (type; length of a list, dict or tuple;
    shape of an array or frame; else its text as ``%whos`` cuts it), so the job lists
    them as the notebook would. Empty for any other job: nothing is computed then."""
    if not _LISTS_NAMES.search(source):
        return {}
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        value = ns.get(name)
        kind = type(value).__name__
        row: dict[str, Any] = {"type": kind}
        try:
            if kind in ("dict", "list", "tuple"):
                row["len"] = len(value)  # type: ignore[arg-type]
            elif kind == "ndarray":
                row.update(
                    shape=list(value.shape),  # type: ignore[union-attr]
                    size=int(value.size),  # type: ignore[union-attr]
                    itemsize=int(value.itemsize),  # type: ignore[union-attr]
                    dtype=str(value.dtype),  # type: ignore[union-attr]
                )
            elif kind in ("DataFrame", "Series"):
                row["shape"] = list(value.shape)  # type: ignore[union-attr]
            else:
                text = str(value).replace("\n", "\\n")
                # %whos shows the first and last 25 characters of a long text.
                row["str"] = text if len(text) < 50 else text[:25] + text[-25:]
        except Exception:
            row["str"] = f"<object with id {id(value)} (str() failed)>"
        rows[name] = row
    return rows


def snapshot_paths(folder: str, job_id: str, what: str) -> list[str]:
    """Where a snapshot file may go: shared memory first, the job's own folder last."""
    paths = [os.path.join(folder, f"{what}.snap")]
    shm = shm_dir()
    if shm:
        # The owner first, so a later process can tell litter from live files.
        paths.insert(0, os.path.join(shm, f"p{owner_tag()}-{job_id}-{what}.snap"))
    return paths


def write_snapshot(
    ns: dict[str, Any],
    names: list[str],
    token: str,
    paths: list[str],
    transport: str,
    stream_file: Path | None = None,
) -> Snapshot:
    """Serialize ``names`` of ``ns`` for a job; unpicklables are skipped and listed.

    ``transport`` "file" writes one file (shared memory when it has room); "stream" keeps
    it in one buffer, to send in binary chunks over the kernel protocol, or writes it to
    ``stream_file``, for a detached job's host to send.
    """
    snap = Snapshot()
    values: dict[str, Any] = {}
    for name in names:
        ref = _import_ref(ns[name])
        if ref is not None:
            snap.imports[name] = ref
        else:
            values[name] = ns[name]
    if values:
        parts, skipped, info = encode(values, token)
        snap.skipped = skipped
        snap.nbytes = info["nbytes"]
        values = {k: v for k, v in values.items() if k in set(info["pickled"]) | set(info["dill"])}
        if transport == "stream" and stream_file is not None:
            # Written as it is taken: the file is the one copy of it.
            write_with(stream_file, lambda fh: [fh.write(p) for p in parts], "keep the job's seed")
            snap.streamed = True
        elif transport == "stream":
            snap.blob = join_parts(parts)
            snap.streamed = True
        else:
            snap.path, snap.pieces = write_somewhere(paths, pick_path(paths, info["nbytes"]), parts)
    snap.shipped = sorted(values) + sorted(snap.imports)
    return snap
