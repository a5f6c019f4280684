"""A queue worker process: runs tasks one after another and sends each result back.

Started as a script (``python _worker.py SOCK_FD SLOT_FD PARENT_PID``), not as
``-m jupyter_bgjobs._worker``, so a worker starts without importing the package and IPython.

Protocol over a socket pair, each message a 4-byte little-endian length and a pickle:
- parent -> worker: a pickled list of tasks ``(index, fun_key, fun_bytes | None, args_bytes)``;
  ``fun_bytes`` comes once per function and is cached under ``fun_key``; ``None`` ends the worker.
- worker -> parent: one pickled tuple per task ``(index, code, payload, stdout, stderr,
  started, finished)``; ``code`` 0 with the pickled result, 1 with the pickled exception and
  its traceback text, 2 when the result cannot be pickled.
The slot (16 bytes of a shared file) holds the running task's index and its start on the
monotonic clock, so the parent sees starts and overruns without a message per task.
"""

from __future__ import annotations

import io
import linecache
import os
import pickle
import socket
import struct
import sys
import threading
import time
import traceback
import types
from typing import Any

SLOT = struct.Struct("<qd")
FRAME = struct.Struct("<I")
# Results of these types are pickled by the standard pickler, which is faster than
# cloudpickle; anything else (notebook classes, functions) goes through cloudpickle.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def _watch_parent(parent: int) -> None:
    """End this worker when the process that started it is gone, even mid-task."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


class _Capture(io.StringIO):
    """sys.stdout / sys.stderr during one task."""

    def isatty(self) -> bool:
        return False


def _refile(fun: Any, filename: str, entry: Any) -> None:
    """Give a notebook function back its cell's name and lines, for tracebacks."""

    def refile(code: types.CodeType) -> types.CodeType:
        consts = tuple(refile(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
        return code.replace(co_filename=filename, co_consts=consts)

    try:
        fun.__code__ = refile(fun.__code__)
        if entry is not None:
            linecache.cache[filename] = entry
    except (AttributeError, TypeError, ValueError):
        pass


def _run_one(fun: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, Any]:
    import cloudpickle

    try:
        value = fun(*args, **kwargs)
    except BaseException as exc:  # the task's exception is its result
        # From the task's own frame down: this module's frame is no part of the story.
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        try:
            payload = cloudpickle.dumps((exc, text), protocol=5)
        except Exception:
            payload = pickle.dumps((None, text), protocol=5)
        return 1, payload
    try:
        if type(value) in _PLAIN:
            return 0, pickle.dumps(value, protocol=5)
        return 0, cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        return 2, f"the result ({type(value).__name__}) cannot be pickled: {exc}"


def _reader(sock: socket.socket) -> Any:
    stream = sock.makefile("rb", buffering=1 << 16)

    def read() -> bytes | None:
        head = stream.read(FRAME.size)
        if len(head) < FRAME.size:
            return None
        (size,) = FRAME.unpack(head)
        body = stream.read(size)
        return body if len(body) == size else None

    return read


def main() -> None:
    sock_fd, slot_fd, parent = (int(a) for a in sys.argv[1:4])
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    import mmap

    slot = mmap.mmap(slot_fd, SLOT.size)
    sock = socket.socket(fileno=sock_fd)
    read = _reader(sock)

    def send(data: bytes) -> None:
        sock.sendall(FRAME.pack(len(data)) + data)

    first = read()
    if first is None:
        return
    hello = pickle.loads(first)
    for entry in reversed(hello["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if hello.get("cwd"):
        try:
            os.chdir(hello["cwd"])
        except OSError:
            pass
    import cloudpickle  # noqa: F401 - imported once here, not during the first task

    send(b"ready")
    funs: dict[int, Any] = {}
    real_out, real_err = sys.stdout, sys.stderr
    while True:
        raw = read()
        if raw is None:
            return
        batch = pickle.loads(raw)
        if batch is None:
            return
        for index, key, fun_bytes, args_bytes in batch:
            out, err = _Capture(), _Capture()
            started_wall = time.time()
            SLOT.pack_into(slot, 0, index, time.monotonic())
            sys.stdout, sys.stderr = out, err
            try:
                if fun_bytes is not None:
                    funs[key], source = pickle.loads(fun_bytes)
                    if source is not None:
                        _refile(funs[key], *source)
                args, kwargs = pickle.loads(args_bytes)
                code, payload = _run_one(funs[key], args, kwargs)
            except BaseException as exc:  # arguments that do not unpickle here
                code, payload = 2, f"the task could not be loaded in the worker: {exc!r}"
            finally:
                sys.stdout, sys.stderr = real_out, real_err
                SLOT.pack_into(slot, 0, -1, 0.0)
            message = (
                index,
                code,
                payload,
                out.getvalue(),
                err.getvalue(),
                started_wall,
                time.time(),
            )
            send(pickle.dumps(message, protocol=5))


if __name__ == "__main__":
    main()
