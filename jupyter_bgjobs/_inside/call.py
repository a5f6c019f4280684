"""The process side of ``bg()``: run one pickled call, or supervise one that is detached.

Started as a script, not with ``-m``, so a call starts without importing the package and
IPython:

- ``python _inside/call.py run FOLDER PARENT`` loads ``FOLDER/call.pkl``, calls it and writes
  ``FOLDER/result.pkl``; its stdout and stderr are files in FOLDER, so it never blocks on a
  full pipe. With PARENT > 0 it ends itself when that process is gone.
- ``python _inside/call.py supervise FOLDER TIMEOUT`` (a detached call, in its own session) runs
  the call as a child, enforces the timeout, and records how the child ended in
  ``FOLDER/status.json``, which nobody else can do once the caller is gone.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
from typing import Any

if __package__:
    from . import outcome, procs
else:  # run as a script: this folder is sys.path[0] (see __init__)
    import outcome  # type: ignore[no-redef]
    import procs  # type: ignore[no-redef]

    procs.leave_script_folder(("outcome", "procs"))

# How a call ended when not by itself, as status.json's ``ended_by``: the words of the
# call's states of the same names in jupyter_bgjobs._states (a test holds them equal),
# which this process does not import.
CANCELLED, TIMED_OUT, INTERRUPTED = "cancelled", "timed_out", "interrupted"


def _write_atomic(path: str, *parts: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    # 0600 whatever the umask: a call's folder is its owner's alone.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        for part in parts:
            fh.write(part)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run(folder: str, parent: int) -> None:
    procs.watch_parent(parent)

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
    if source is not None:
        outcome.refile(fun, *source)
    started = time.time()
    code, payload = outcome.run_one(fun, args, kwargs)
    sys.stdout.flush()
    sys.stderr.flush()
    body = payload.encode() if isinstance(payload, str) else payload
    # One byte of outcome (CODE_OK value, CODE_ERROR exception, CODE_PICKLE unpicklable
    # value), then its pickle or, for CODE_PICKLE, the reason in words.
    _write_atomic(os.path.join(folder, "result.pkl"), bytes([code]), body)
    _write_atomic(
        os.path.join(folder, "times.json"),
        json.dumps({"started": started, "finished": time.time()}).encode(),
    )


class _Usage:
    """What a detached call's process (and what it started) uses, sampled each second by
    its supervisor into ``usage.json``, as a job's driver samples its kernel."""

    def __init__(self, pid: int, path: str) -> None:
        self.path = path
        self.peak = 0
        try:
            import psutil

            self.root: Any = psutil.Process(pid)
        except Exception:  # no psutil here: the call runs unsampled
            self.root = None

    def sample(self) -> None:
        if self.root is None:
            return
        try:
            tree = [self.root, *self.root.children(recursive=True)]
            rss = seconds = 0.0
            for proc in tree:
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                seconds += times.user + times.system
        except Exception:  # it ended between two calls: the next sample, or none
            return
        self.peak = max(self.peak, int(rss))
        figures = {"rss": int(rss), "peak": self.peak, "cpu_seconds": round(seconds, 2)}
        _write_atomic(self.path, json.dumps({"resources": figures}).encode())


def supervise(folder: str, timeout: float) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    out = open(os.open(os.path.join(folder, "stdout"), flags, 0o600), "ab")
    err = open(os.open(os.path.join(folder, "stderr"), flags, 0o600), "ab")
    child = procs.start(
        [sys.executable, __file__, "run", folder, "0"], stdout=out, stderr=err, cwd=os.getcwd()
    )
    _write_atomic(
        os.path.join(folder, "pid.json"),
        json.dumps(
            {
                "pid": child.pid,
                "supervisor": os.getpid(),
                "pid_id": procs.identity(child.pid),
                "supervisor_id": procs.identity(),
            }
        ).encode(),
    )
    ended_by = ""

    def forward(signum: int, _frame: Any) -> None:
        nonlocal ended_by
        if signum == signal.SIGTERM:
            ended_by = CANCELLED
            procs.signal_group(child.pid, signal.SIGKILL)
        else:
            ended_by = INTERRUPTED
            procs.signal_group(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    deadline = time.monotonic() + timeout if timeout > 0 else None
    usage = _Usage(child.pid, os.path.join(folder, "usage.json"))
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        code = procs.reap(child, 1.0 if left is None else max(0.0, min(1.0, left)))
        if code is not None:
            break
        if deadline is not None and time.monotonic() >= deadline:
            ended_by = TIMED_OUT
            code = procs.end(child, grace=0)
            break
        usage.sample()
    status = {"returncode": code, "ended_by": ended_by, "ended": time.time()}
    _write_atomic(os.path.join(folder, "status.json"), json.dumps(status).encode())


if __name__ == "__main__":
    mode, where = sys.argv[1], sys.argv[2]
    if mode == "run":
        run(where, int(sys.argv[3]))
    else:
        supervise(where, float(sys.argv[3]))
