"""What is imported ahead of a job: in warm kernels, the slow libraries the notebook has
imported, the installed modules its names come from, and those a submitted job's code
imports; in the notebook, the data libraries that job's results will bring."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

# Libraries slow to import that a job is likely to need when the notebook has them.
HEAVY = ("numpy", "pandas", "scipy", "sklearn", "matplotlib", "polars", "pyarrow", "torch")


def heavy_imports() -> list[str]:
    """The slow-to-import libraries this process has imported: warm kernels import them too."""
    return [m for m in HEAVY if m in sys.modules]


# Modules seen in the notebook, by name: whether they are installed ones (site-packages
# or the standard library), which a warm kernel may import ahead of a job.
_installed: dict[str, bool] = {}


def _is_installed(name: str) -> bool:
    """Whether the module ``name`` is an installed one, imported or not (a top-level name is
    found without importing anything)."""
    known = _installed.get(name)
    if known is None:
        import sysconfig

        module = sys.modules.get(name)
        where = getattr(module, "__file__", None)
        if module is None and "." not in name:
            import importlib.util

            try:
                where = getattr(importlib.util.find_spec(name), "origin", None)
            except (ImportError, ValueError):
                where = None
        roots = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib", "stdlib")}
        known = bool(where) and any(
            r and os.path.abspath(str(where)).startswith(os.path.abspath(r) + os.sep) for r in roots
        )
        _installed[name] = known
    return known


def notebook_imports(ns: dict[str, Any] | None = None) -> list[str]:
    """What the notebook has imported that a job's kernel would import again: the slow
    libraries, and the installed modules its names hold or come from (``np``, ``plt``, a
    class from ``sklearn``). The notebook's own modules are left out: a job imports them
    with the notebook's path, which a warm kernel has not."""
    found = dict.fromkeys(heavy_imports())
    for value in list((ns or {}).values()):
        try:
            if isinstance(value, types.ModuleType):
                name = value.__name__
            elif isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
                name = value.__module__
            else:
                continue
        except Exception:  # an object whose attributes raise is nothing to import
            continue
        if (
            isinstance(name, str)
            and name in sys.modules
            and name.split(".")[0] not in _NOT_AHEAD
            and _is_installed(name)
        ):
            found[name] = None
    return list(found)[:_MOST_AHEAD]


def code_imports(source: str) -> list[str]:
    """The installed modules a job's code imports as it runs from top to bottom (not what
    its functions import when called): its kernel imports them, then the notebook does
    when the names come back."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    found: dict[str, None] = {}
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            if isinstance(node, ast.stmt) and not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            ):
                todo.extend(n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt))
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in _NOT_AHEAD and _is_installed(top):
                found[name] = None
    return list(found)[:_MOST_AHEAD]


def import_ahead(modules: list[str]) -> None:
    """Import, in a thread of this process, the data libraries among ``modules`` that it
    has not: a job's results bring them, and their import (a quarter of a second for
    pandas) is then done while the job runs instead of after it. Libraries that hook into
    the shell or a display as they import (matplotlib's pyplot) wait for the results."""
    todo = [m for m in modules if m.split(".")[0] in _DATA_LIBRARIES and m not in sys.modules]
    if todo:
        import threading

        threading.Thread(target=_import_all, args=(todo,), name="bgjobs-ahead", daemon=True).start()


def _import_all(modules: list[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException:  # the results say it, if they bring it: not this thread
            pass


_DATA_LIBRARIES = frozenset(("numpy", "pandas", "scipy", "sklearn", "polars", "pyarrow"))

# Never imported ahead: the kernel's own, and ours.
_NOT_AHEAD = frozenset(("__main__", "builtins", "IPython", "ipykernel", "jupyter_bgjobs"))
_MOST_AHEAD = 200
