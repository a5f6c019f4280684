"""What warm kernels import ahead of a job: the slow libraries the notebook has imported,
and the installed modules its names come from."""

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
    known = _installed.get(name)
    if known is None:
        import sysconfig

        module = sys.modules.get(name)
        where = getattr(module, "__file__", None)
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


# Never imported ahead: the kernel's own, and ours.
_NOT_AHEAD = frozenset(("__main__", "builtins", "IPython", "ipykernel", "jupyter_bgjobs"))
_MOST_AHEAD = 200
