"""What a job inherits from the notebook besides its names: the import path and the
environment variables as they are at submission, and whether the code awaits."""

from __future__ import annotations

import ast
import os
import site
import sys
from typing import Any

# Variables that describe the kernel process itself, not the notebook's work: a job's
# kernel keeps its own.
_KERNEL_OWN = ("JPY_", "PYDEVD_", "IPYKERNEL_")
_CO_COROUTINE = 0x0080


def import_context() -> dict[str, Any]:
    """The notebook's ``sys.path`` now (relative entries made absolute against its working
    directory), its prefix, and the entries it added beyond its Python's own."""
    cwd = os.getcwd()
    path = [os.path.join(cwd, p) if p and not os.path.isabs(p) else p for p in sys.path]
    own = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    try:
        own.add(os.path.realpath(site.getusersitepackages()))
    except Exception:
        pass
    added = [
        p
        for p in path
        if p
        and not any(
            os.path.realpath(p) == o or os.path.realpath(p).startswith(o + os.sep) for o in own
        )
    ]
    return {"sys_path": path, "prefix": sys.prefix, "added_path": added}


def environ_changes(now: dict[str, str], launched: dict[str, str] | None) -> dict[str, Any]:
    """What the job's kernel must set and unset so its environment is the notebook's at
    submission: the changes since the kernel was launched from this process's environment
    (its kernelspec's own variables and the kernel's bookkeeping aside)."""
    if launched is None:
        return {}
    set_ = {k: v for k, v in now.items() if launched.get(k) != v and not k.startswith(_KERNEL_OWN)}
    unset = [k for k in launched if k not in now and not k.startswith(_KERNEL_OWN)]
    return {"set": set_, "unset": unset}


def awaits(source: str) -> bool:
    """Whether IPython-transformed ``source`` uses ``await``/``async for``/``async with``
    at top level (IPython's autoawait runs such a cell as a coroutine)."""
    try:
        code = compile(source, "<cell>", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return False
    return bool(code.co_flags & _CO_COROUTINE)
