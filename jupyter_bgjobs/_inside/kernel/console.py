"""A job's console: no keyboard (stdin, input() and getpass() fail at once, saying why),
output streams that never make one huge message, what the kernel says it uses, and what
a kernel pays once, when the runner is loaded.

Runs inside the job's kernel (sent as source); standard library only.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .arena import _fingerprint_pickler, _pagemap_readable


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


class Flow:
    """Credit for output: the notebook's driver counts the characters of output it has
    taken (a counter in a file of the job's folder) and the job waits while more than
    ``window`` characters it wrote are not taken yet. However busy the notebook is, no
    more than that is ever queued towards it, and nothing is dropped on the way.

    A driver that stops counting (gone, or stuck) for ``stall`` seconds ends the waiting:
    the job is never held up for good by its notebook."""

    def __init__(self, path: str, window: int, stall: float = 10.0) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.window = window
        self.stall = stall
        self.sent = 0
        self.off = False

    def taken(self) -> int:
        raw = os.pread(self.fd, 8, 0)
        return int.from_bytes(raw, "little") if len(raw) == 8 else 0

    def wait(self) -> None:
        if self.off:
            return
        taken, since = self.taken(), time.monotonic()
        while self.sent - taken > self.window:
            time.sleep(0.002)
            now_taken = self.taken()
            if now_taken != taken:
                taken, since = now_taken, time.monotonic()
            elif time.monotonic() - since > self.stall:
                self.off = True
                return

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _bound_stream(stream: Any, flow: Flow | None = None) -> Callable[[], None]:
    """Split large writes to ``stream`` and flush every ``_MESSAGE_CHARS`` (waiting for
    ``flow``'s credit then); returns the undo. The stream's own ``write`` is kept, so
    ``isinstance`` checks still hold."""
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
            if flow is not None:
                flow.sent += n
            return write(text) or n
        for start in range(0, n, _MESSAGE_CHARS):
            piece = text[start : start + _MESSAGE_CHARS]
            write(piece)
            flush()
            if flow is not None:
                # Counted piece by piece: a huge line is let through as it is taken.
                flow.sent += len(piece)
                flow.wait()
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


_last_usage = [0.0]


def own_usage(every: float = 0.0) -> dict[str, float]:
    """What this kernel uses, as it says of itself (a gateway's kernel is not a process
    the notebook's machine can see): resident memory now and at most (bytes), and CPU
    seconds. Empty where the system does not say, and within ``every`` seconds of the last
    time it was asked (the statement loop asks at most once a second)."""
    now = time.monotonic()
    if now - _last_usage[0] < every:
        return {}
    _last_usage[0] = now
    try:
        import resource

        used = resource.getrusage(resource.RUSAGE_SELF)
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read(64).split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError):
        return {}
    return {
        "rss": rss,
        # ru_maxrss is in kilobytes on Linux.
        "peak": max(rss, used.ru_maxrss * 1024),
        "cpu_seconds": round(used.ru_utime + used.ru_stime, 2),
    }


def warm() -> None:
    """Pay, when the runner is loaded (ahead of any job, and in a template once for all its
    kernels), what a job would pay on its first snapshot and its first statement:
    cloudpickle's import and the picklers made on it, the module that reads the kernel's
    usage. A kernel without cloudpickle finds that out at the job."""
    _pagemap_readable()
    try:
        _fingerprint_pickler()
    except ImportError:
        pass
    own_usage()  # its first call imports the module that says it
