"""How a cell is read in a job's kernel, as IPython reads it in the notebook: its top-level
statements with their sections, whether a trailing semicolon hides its value, the name a
library's NameError is about, and what ``%who`` and ``%whos`` list."""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
import types
from collections.abc import Callable
from typing import Any

_SECTION_R = re.compile(r"^\s*#+\s*(?P<name>[^#\s].*?)\s*-{4,}\s*$")
_SECTION_PY = re.compile(r"^\s*#\s*%%\s*(?P<name>.*?)\s*$")


def section_of(line: str) -> str | None:
    """The section a marker line opens, or None when the line is no marker."""
    m = _SECTION_R.match(line) or _SECTION_PY.match(line)
    if not m:
        return None
    return m.group("name").strip()


_MISSING = re.compile(r"(?:name|variable) '([A-Za-z_][A-Za-z0-9_]*)' is not defined")


def missing_name(exc: BaseException) -> str | None:
    """The name a NameError made by a library (pandas' eval and query) is about: it says
    so only in its message."""
    found = _MISSING.search(str(exc))
    return found[1] if found else None


def ends_with_semicolon(source: str) -> bool:
    """Whether the cell's last token (comments aside) is a ``;``: IPython then shows no
    value for its last expression."""
    last = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type not in _NOT_CODE:
                last = tok
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.type == tokenize.OP and last.string == ";"


def bound_names(nodes: list[ast.stmt]) -> set[str]:
    """The names statements bind where they run (assignments, imports, definitions, loop,
    ``with``, ``except`` and walrus targets), not those bound inside the functions,
    classes, lambdas and comprehensions they make."""
    found: set[str] = set()
    todo: list[ast.AST] = list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
            continue
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp)):
            continue
        if isinstance(node, ast.GeneratorExp):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            found.add(node.name)  # bound for the handler's body (and unbound after it)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(
                (alias.asname or alias.name.split(".")[0])
                for alias in node.names
                if alias.name != "*"
            )
        todo.extend(ast.iter_child_nodes(node))
    return found


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


# Tokens that say nothing of the code: where the last real one is, is what counts.
_NOT_CODE = frozenset(
    (
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.ENDMARKER,
        tokenize.INDENT,
        tokenize.DEDENT,
    )
)


def name_hint(spec: dict[str, Any], skipped_in: list[dict[str, str]], name: str) -> str:
    """Why a name the job misses is missing, when the notebook has it, and the fix."""
    failed = {s["name"]: s for s in skipped_in}.get(name)
    if failed is not None:
        module = (spec.get("imports") or {}).get(name, [name])[0]
        origin = (spec.get("import_origins") or {}).get(name)
        where = f" (the notebook has it from {origin})" if origin else ""
        return (
            f"the notebook's {name!r} is the module {module}{where}, which this job could "
            f"not import: {failed['reason'].split(': ', 1)[-1]}. The job imports with the "
            "notebook's sys.path as it was when the job started: put the module's folder on "
            "sys.path in the notebook first, or install the module in the job's kernel"
        )
    why = {s["name"]: s for s in spec.get("not_shipped") or []}.get(name)
    if why is not None:
        return f"{name!r} was not shipped to this job ({why['type']}: {why['reason']})"
    if name in set(spec.get("notebook_names") or ()):
        return (
            f"the notebook has {name!r}, but this job was not given it (--env auto ships "
            "only the names it can see the code read; eval() and globals() hide them): "
            f"start the job with --env {name} (or env={name!r}), or --env all"
        )
    return ""


# The magics that list the notebook's names.
_WHO_MAGICS = ("who", "whos", "who_ls")


def notebook_view(ip: Any, rows: dict[str, dict[str, Any]]) -> Callable[[], None]:
    """Make ``%who``, ``%whos`` and ``%who_ls`` list what they would in the notebook: its
    names the job was not given (``rows``, described there: type, length, shape, text)
    beside the job's own. IPython's own code lists them, from a namespace where each
    notebook-only name is a stand-in that describes itself as the notebook's value did.
    Returns what puts the kernel's own magics back."""
    from IPython.core.magics.namespace import NamespaceMagics

    standins = {name: _standin(row) for name, row in rows.items()}

    class _View:
        who_ls = NamespaceMagics.who_ls
        who = NamespaceMagics.who
        whos = NamespaceMagics.whos

        def __init__(self) -> None:
            merged = dict(standins)
            merged.update(ip.user_ns)  # the job's names, and its values, come first
            self.shell = types.SimpleNamespace(user_ns=merged, user_ns_hidden=ip.user_ns_hidden)

    line = ip.magics_manager.magics["line"]
    saved = {name: line.get(name) for name in _WHO_MAGICS}
    for name in _WHO_MAGICS:
        line[name] = functools.partial(_listed, name, _View)

    def undo() -> None:
        for name, magic in saved.items():
            if magic is None:
                line.pop(name, None)
            else:
                line[name] = magic

    return undo


def _listed(name: str, view: Callable[[], Any], parameter_s: str = "") -> Any:
    return getattr(view(), name)(parameter_s)


def _standin(row: dict[str, Any]) -> Any:
    text = str(row.get("str", ""))
    attrs: dict[str, Any] = {
        "__str__": lambda self: text,
        "__repr__": lambda self: text,
        "__module__": "notebook",
    }
    if "len" in row:
        size = int(row["len"])
        attrs["__len__"] = lambda self: size
    if "shape" in row:
        attrs["shape"] = tuple(row["shape"])
    for key in ("size", "itemsize", "dtype"):
        if key in row:
            attrs[key] = row[key]
    return type(str(row.get("type", "object")), (), attrs)()
