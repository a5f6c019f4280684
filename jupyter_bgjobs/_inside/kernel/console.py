"""A job's console: no keyboard (stdin, input() and getpass() fail at once, saying why)
and output streams that never make one huge message.

Runs inside the job's kernel (sent as source); standard library only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class NoStdinError(EOFError):
    """A background job read from stdin: it has no keyboard."""


_NO_KEYBOARD = (
    "{what}, but a background job has no keyboard to read from. Give the job "
    "the value instead: set it in a notebook variable before starting the job (it travels "
    "with --env auto or --env NAME), or put it in an environment variable or a file."
)


class _NoStdin:
    """``sys.stdin`` of a job: every read fails at once, saying why, instead of hanging."""

    closed = False
    encoding = "utf-8"
    errors = "strict"
    name = "<stdin>"
    mode = "r"
    newlines = None

    def _fail(self, *_: Any, **__: Any) -> Any:
        raise NoStdinError(_NO_KEYBOARD.format(what="the job read sys.stdin"))

    read = readline = readlines = read1 = readinto = __next__ = _fail

    @property
    def buffer(self) -> _NoStdin:
        # Binary readers (sys.stdin.buffer.read) fail the same way.
        return self

    def fileno(self) -> int:
        # The real descriptor 0 is /dev/null: a tty probe says "no", a raw read gets EOF.
        return 0

    def __iter__(self) -> _NoStdin:
        return self

    def __enter__(self) -> _NoStdin:
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def isatty(self) -> bool:
        return False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _no_input(prompt: Any = "", *_: Any, **__: Any) -> str:
    raise NoStdinError(_NO_KEYBOARD.format(what="input() was called"))


def _no_getpass(prompt: Any = "", *_: Any, **__: Any) -> str:
    raise NoStdinError(
        _NO_KEYBOARD.format(what="getpass() was called")
        + " For a secret, an environment variable set in the notebook is the usual way."
    )


def _no_keyboard() -> tuple[Any, ...]:
    """Make input(), getpass() and sys.stdin fail at once; returns what to put back."""
    import builtins
    import getpass

    saved = (builtins.input, getpass.getpass, sys.stdin)
    builtins.input = _no_input
    getpass.getpass = _no_getpass
    sys.stdin = _NoStdin()
    return saved


def _restore_io(saved: tuple[Any, ...]) -> None:
    import builtins
    import getpass

    builtins.input, getpass.getpass, sys.stdin = saved


# A job's print goes out in messages of at most about this many characters, however it
# writes: one huge line or a flood of small ones never makes one huge message.
_MESSAGE_CHARS = 1 << 18


def _bound_stream(stream: Any) -> Callable[[], None]:
    """Split large writes to ``stream`` and flush every ``_MESSAGE_CHARS``; returns the
    undo. The stream's own ``write`` is kept, so ``isinstance`` checks still hold."""
    write = getattr(stream, "write", None)
    flush = getattr(stream, "flush", None)
    if write is None or flush is None:
        return lambda: None
    pending = 0

    def bounded(text: str) -> int:
        nonlocal pending
        n = len(text)
        if pending + n < _MESSAGE_CHARS:
            pending += n
            return write(text) or n
        for start in range(0, n, _MESSAGE_CHARS):
            write(text[start : start + _MESSAGE_CHARS])
            flush()
        pending = 0
        return n

    try:
        stream.write = bounded
    except (AttributeError, TypeError):
        return lambda: None

    def undo() -> None:
        try:
            del stream.write
        except AttributeError:
            pass

    return undo
