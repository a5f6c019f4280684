"""The processes we start, and the outcome codes of what runs in them.

One implementation for both sides of the boundary: the notebook side uses it as
``jupyter_bgjobs._procs`` (a Queue's workers, a ``bg()`` call's child), and a process that
starts processes of its own (a detached call's supervisor) or watches the one that started
it (a worker, a call's child) imports it from here, without the package.

- ``start``: a process in a session, so a process group, of its own: ending the group ends
  what it started too.
- ``end``: SIGTERM to the group, a grace period, SIGKILL to what is left, then reap it.
- ``signal_group`` / ``signal_process``: one signal, to a process that may be gone already.
- ``status_code`` and ``death_reason``: how a process ended, as a code and in words.
- ``watch_parent``: in a child, end this process as soon as its parent is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

# subprocess is imported when a process is started: a worker that only watches its parent
# starts without it.
if TYPE_CHECKING:
    import subprocess

# What became of a function call run in another process, as a shell would say it: a Queue
# row's ``code``, the first byte of a bg() call's result file. One list, for both.
CODE_OK = 0  # the function returned
CODE_ERROR = 1  # the function raised
CODE_PICKLE = 2  # the function, its arguments or its result cannot be pickled
CODE_TIMEOUT = 124  # it ran past its time limit (timeout(1)'s code)
CODE_SIGNAL = 128  # + N: its process was killed by signal N (137 SIGKILL, 139 SIGSEGV)
CODE_CANCELLED = 130  # the user stopped it (128 + SIGINT)
CODE_LOST = 255  # its process ended, or stopped answering, without a word why

# The exit status of a child that ended itself because its parent was gone: nobody is left
# to read it, but it is not a success.
_ORPHANED = 1


def start(
    argv: Sequence[str],
    *,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    pass_fds: Sequence[int] = (),
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with no stdin, in a session and process group of its own (its pid is
    the group's id), so that ``end`` and ``signal_group`` reach what it starts too.
    ``stdout`` and ``stderr`` (a file, an fd or ``subprocess.PIPE``) default to /dev/null."""
    import subprocess

    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=subprocess.DEVNULL if stderr is None else stderr,
        pass_fds=tuple(pass_fds),
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def signal_group(pgid: int | None, signum: int) -> bool:
    """Send ``signum`` to a process group; False when it is gone (or was never ours)."""
    if pgid is None or pgid <= 0:  # killpg(0) would signal our own group
        return False
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_process(pid: int | None, signum: int) -> bool:
    """Send ``signum`` to one process; False when it is gone (or was never ours)."""
    if pid is None or pid <= 0:  # kill(0) and kill(-1) would reach far more than one
        return False
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    """True while a process of the group still runs. Zombies do not count: an orphan that
    ended waits for a reaper that, in a container, may never come."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _runs_in_group(pgid)


def _runs_in_group(pgid: int) -> bool:
    """Whether a process of the group is not a zombie (from /proc; without it, any is)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # ended meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def end(proc: subprocess.Popen[Any], grace: float = 3.0) -> int:
    """End a process started by ``start`` and everything in its group, and reap it.

    SIGTERM to the group, then up to ``grace`` seconds for the whole group to go; SIGKILL
    to whatever is left (at once with ``grace=0``). Returns its exit status (negative: the
    signal that ended it). Safe on a process that has ended already: what it left in its
    group is ended too.
    """
    pgid = proc.pid
    if grace > 0 and signal_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + grace
        pause = 0.001
        while True:
            if proc.poll() is not None and not group_alive(pgid):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)
    signal_group(pgid, signal.SIGKILL)
    return proc.wait()


def reap(proc: subprocess.Popen[Any], timeout: float | None = None) -> int | None:
    """Wait for the process to end and collect its status; None if ``timeout`` passes."""
    import subprocess

    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def status_code(returncode: int) -> int:
    """The outcome code of an exit status: 128 + N for signal N, else the exit code."""
    return CODE_SIGNAL - returncode if returncode < 0 else returncode


def death_reason(code: int | None, what: str = "its kernel", *, with_code: bool = True) -> str:
    """How a process ended, in words, from its exit status (negative: the signal that ended
    it): ``its kernel was killed by SIGSEGV (exit code -11)``, ``... exited with code 3``.
    ``with_code=False`` leaves out the exit code after a signal's name."""
    if code is None:
        return f"{what} process ended"
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        tail = f" (exit code {code})" if with_code else ""
        return f"{what} was killed by {sig}{tail}"
    return f"{what} exited with code {code}"


def watch_parent(parent: int) -> threading.Thread | None:
    """In a child: end this process as soon as ``parent`` (the pid of the process that
    started it) is gone, even in the middle of a task. Returns the watching thread, or None
    when ``parent`` is 0 or less (a detached child: nothing to watch)."""
    if parent <= 0:
        return None
    thread = threading.Thread(target=_watch, args=(parent,), name="bgjobs-parent", daemon=True)
    thread.start()
    return thread


def _watch(parent: int) -> None:
    fd = _pidfd(parent)
    # Checked after the pidfd is open: if it is still our parent, the pidfd is of it.
    if os.getppid() != parent:
        os._exit(_ORPHANED)
    if fd is not None:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():  # readable once the parent has ended
            pass
        os._exit(_ORPHANED)
    while os.getppid() == parent:  # without pidfds: polled, within half a second
        time.sleep(0.5)
    os._exit(_ORPHANED)


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def leave_script_folder(names: Sequence[str]) -> None:
    """For a module of this folder run as a script, once it has imported its siblings by
    their bare names: take the folder off ``sys.path`` and those names out of
    ``sys.modules``, so the user's code imports its own ``procs`` or ``outcome`` (a PyPI
    package's name), never ours."""
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [p for p in sys.path if not p or os.path.realpath(p) != here]
    for name in names:
        sys.modules.pop(name, None)
