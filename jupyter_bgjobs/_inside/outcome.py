"""One function call in the process that runs it, and its outcome as bytes for the parent:
shared by the queue worker and a ``bg()`` call's child, so both give the same outcomes and
the same tracebacks.
"""

from __future__ import annotations

import linecache
import pickle
import traceback
import types
from typing import Any

if __package__:
    from .procs import CODE_ERROR, CODE_OK, CODE_PICKLE
else:  # imported by a script of this folder, by its bare name (see __init__)
    from procs import CODE_ERROR, CODE_OK, CODE_PICKLE  # type: ignore[no-redef]

# Results of these types are pickled by the standard pickler, which is faster than
# cloudpickle; anything else (notebook classes, functions) goes through cloudpickle.
PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def refile(fun: Any, filename: str, entry: Any) -> None:
    """Give a notebook function back its cell's name and lines, for tracebacks."""

    def refile_code(code: types.CodeType) -> types.CodeType:
        consts = tuple(
            refile_code(c) if isinstance(c, types.CodeType) else c for c in code.co_consts
        )
        return code.replace(co_filename=filename, co_consts=consts)

    try:
        fun.__code__ = refile_code(fun.__code__)
        if entry is not None:
            linecache.cache[filename] = entry
    except (AttributeError, TypeError, ValueError):
        pass


def run_one(fun: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, Any]:
    """Call ``fun``; ``(CODE_OK, result pickle)``, ``(CODE_ERROR, error_payload)``, or
    ``(CODE_PICKLE, why in words)`` when the result cannot be pickled."""
    import cloudpickle

    try:
        value = fun(*args, **kwargs)
    except BaseException as exc:  # the task's exception is its result
        # From the task's own frame down: this module's frame is no part of the story.
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        return CODE_ERROR, error_payload(exc, text)
    try:
        if type(value) in PLAIN:
            return CODE_OK, pickle.dumps(value, protocol=5)
        return CODE_OK, cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        return CODE_PICKLE, f"the result ({type(value).__name__}) cannot be pickled: {exc}"


def error_payload(exc: BaseException, text: str) -> bytes:
    """A task's exception for the parent: ``(exception pickle or None, traceback text,
    {type, module, message})``, the outer tuple of plain values only.

    The exception's own pickle is sent only if it loads again here: one whose ``__init__``
    takes other arguments than its ``args`` does not. Its type, module and message always
    travel as plain values, so the parent can stand in for an exception it cannot rebuild
    (that one, or one whose class lives in a module only this process can import).
    """
    import cloudpickle

    kind = type(exc)
    try:
        message = str(exc)
    except Exception:
        message = f"<{kind.__qualname__} whose str() failed>"
    meta = {"type": kind.__qualname__, "module": kind.__module__, "message": message}
    blob: bytes | None
    try:
        blob = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(blob)
    except Exception:
        blob = None
    return pickle.dumps((blob, text, meta), protocol=5)
