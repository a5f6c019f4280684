"""The process side of ``bg()``: run one pickled call, or supervise one that is detached.

Started as a script, not as ``-m jupyter_bgjobs...``, so a call starts without importing
the package and IPython:

- ``python _bgcall.py run FOLDER PARENT`` loads ``FOLDER/call.pkl``, calls it and writes
  ``FOLDER/result.pkl``; its stdout and stderr are files in FOLDER, so it never blocks on a
  full pipe. With PARENT > 0 it ends itself when that process is gone.
- ``python _bgcall.py supervise FOLDER TIMEOUT`` (a detached call, in its own session) runs
  the call as a child, enforces the timeout, and records how the child ended in
  ``FOLDER/status.json``, which nobody else can do once the caller is gone.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import Any


def _write_atomic(path: str, *parts: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    # 0600 whatever the umask: a call's folder is its owner's alone.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        for part in parts:
            fh.write(part)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _refile(fun: Any, source: Any) -> None:
    """Give a notebook function back its cell's name and lines, for tracebacks."""
    if source is None:
        return
    # This file runs as a script: its folder, the package's, is first on sys.path, so the
    # queue worker's helper loads without importing the package (and IPython).
    from _worker import _refile as refile

    refile(fun, *source)


def run(folder: str, parent: int) -> None:
    if parent > 0:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()

    shipped = os.path.join(folder, "call.pkl")
    try:
        with open(shipped, "rb") as fh:
            call = pickle.load(fh)
    finally:
        # Read once: the function and its arguments need not stay on disk.
        os.unlink(shipped)
    fun, args, kwargs, source = call["fun"], call["args"], call["kwargs"], call.get("source")
    for entry in reversed(call.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    _refile(fun, source)
    started = time.time()
    # The queue worker's own call-and-pickle: the same outcomes, the same tracebacks.
    from _worker import _run_one

    code, payload = _run_one(fun, args, kwargs)
    sys.stdout.flush()
    sys.stderr.flush()
    body = payload.encode() if isinstance(payload, str) else payload
    # One byte of outcome (0 value, 1 exception, 2 unpicklable value), then its pickle
    # or, for 2, the reason in words.
    _write_atomic(os.path.join(folder, "result.pkl"), bytes([code]), body)
    _write_atomic(
        os.path.join(folder, "times.json"),
        json.dumps({"started": started, "finished": time.time()}).encode(),
    )


def supervise(folder: str, timeout: float) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    out = open(os.open(os.path.join(folder, "stdout"), flags, 0o600), "ab")
    err = open(os.open(os.path.join(folder, "stderr"), flags, 0o600), "ab")
    child = subprocess.Popen(
        [sys.executable, __file__, "run", folder, "0"],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        start_new_session=True,
        cwd=os.getcwd(),
    )
    _write_atomic(
        os.path.join(folder, "pid.json"),
        json.dumps({"pid": child.pid, "supervisor": os.getpid()}).encode(),
    )
    ended_by = ""

    def forward(signum: int, _frame: Any) -> None:
        nonlocal ended_by
        if signum == signal.SIGTERM:
            ended_by = "cancelled"
            _kill(child.pid, signal.SIGKILL)
        else:
            ended_by = "interrupted"
            _kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        code = child.wait(timeout if timeout > 0 else None)
    except subprocess.TimeoutExpired:
        ended_by = "timed_out"
        _kill(child.pid, signal.SIGKILL)
        code = child.wait()
    status = {"returncode": code, "ended_by": ended_by, "ended": time.time()}
    _write_atomic(os.path.join(folder, "status.json"), json.dumps(status).encode())


def _kill(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    mode, where = sys.argv[1], sys.argv[2]
    if mode == "run":
        run(where, int(sys.argv[3]))
    else:
        supervise(where, float(sys.argv[3]))
