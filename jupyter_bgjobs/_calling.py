"""The notebook side of a function call run in another process, for the Queue and
``bg()`` alike: the checks of a call before anything is made for it, the cell lines that
travel with a notebook function, and the exception it raised, rebuilt here.
"""

from __future__ import annotations

import math
import os
import pickle
from typing import Any

from ._errors import JobFailedError, JobSpecError, RemoteTraceback, TaskError
from ._states import FAILED


def check_seconds(name: str, value: Any, *, none: str = "", zero: bool = False) -> None:
    """Reject a duration that is not a finite number of seconds > 0 (>= 0 with ``zero``);
    ``None`` too, unless ``none`` says what None means here."""
    if value is None and none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        kind = "a number of seconds >= 0" if zero else "a positive number of seconds"
        also = f", or None for {none}" if none else ""
        raise JobSpecError(f"{name} must be {kind}{also}, got {value!r}")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise JobSpecError(f"{name} must be True or False, got {value!r}")


def check_call(what: str, fun: Any, args: Any, kwargs: Any, example: str) -> None:
    """Reject a function call that cannot be made, before anything is created for it."""
    if not callable(fun):
        raise JobSpecError(
            f"{what} needs a function to call, got {type(fun).__name__} {fun!r:.40}: "
            f"pass the function itself, e.g. {example}"
        )
    if not isinstance(args, (tuple, list)):
        raise JobSpecError(
            f"args must be a tuple of positional arguments, got {type(args).__name__}: "
            "for one argument write args=(x,)"
        )
    if kwargs is not None and not (
        isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)
    ):
        raise JobSpecError(
            f"kwargs must be a dict of keyword arguments by name, got {kwargs!r:.60}: "
            "e.g. kwargs={'n': 3}"
        )


def cell_sources(fun: Any) -> tuple[str, Any] | None:
    """Where a function typed into a notebook cell came from, and the cell's lines: they
    exist only in this process's linecache, and cloudpickle renames the file of the code it
    sends, so the worker needs both to show the code in a traceback."""
    import linecache

    code = getattr(fun, "__code__", None)
    filename = getattr(code, "co_filename", None)
    if not filename:
        return None
    if os.path.exists(filename):
        return (str(filename), None)  # the other process reads the file itself
    entry = linecache.cache.get(filename)
    return None if entry is None else (str(filename), entry)


def load_error(payload: bytes) -> tuple[BaseException, str]:
    """The exception a task or call raised, from ``_inside.outcome.error_payload``, and its
    remote traceback text (also set as its ``__cause__``). One that cannot be rebuilt here
    becomes a ``JobFailedError`` with the same type name, message and traceback."""
    try:
        blob, text, meta = pickle.loads(payload)
    except Exception as load_exc:
        text = f"(the exception could not be loaded here: {load_exc})"
        exc: BaseException = TaskError(text)
        exc.__cause__ = RemoteTraceback(text)
        return exc, text
    loaded = None
    if blob is not None:
        try:
            loaded = pickle.loads(blob)
        except Exception:
            loaded = None  # e.g. its class is in a module this process cannot import
    if isinstance(loaded, BaseException):
        exc = loaded
    else:
        name, module, message = meta["type"], meta["module"], meta["message"]
        # Named as Python's traceback names it: with its module, unless built in or __main__.
        shown = name if module in ("builtins", "__main__") else f"{module}.{name}"
        exc = JobFailedError(
            f"{shown}: {message}" if message else shown,
            state=FAILED,
            ename=name,
            evalue=message,
            traceback=[text],
        )
    exc.__cause__ = RemoteTraceback(text)
    return exc, text


def error_message(error: BaseException) -> str:
    """A row's ``message`` for a task that raised: ``error: TypeName: text``."""
    if isinstance(error, JobFailedError) and error.ename:
        return f"error: {error}"  # a stand-in: its message starts with the type's name
    return f"error: {type(error).__name__}: {error}"
