"""The processes we start, and the outcome codes of what runs in them.

One implementation for both sides of the boundary: the notebook side imports it as
``jupyter_bgjobs._inside.procs`` (a Queue's workers, a ``bg()`` call's child, kernels), and
a process that starts processes of its own (a detached call's supervisor) or watches the
one that started it (a worker, a call's child) imports it by its bare name, without the
package.

- ``start``: a process in a session, so a process group, of its own: ending the group ends
  what it started too.
- ``end``: SIGTERM to the group, a grace period, SIGKILL to what is left, then reap it.
- ``signal_group`` / ``signal_process``: one signal, to a process that may be gone already.
- ``identity`` / ``identity_alive`` / ``signal_identified``: a process as a record names it
  (pid namespace, pid, start time), so a pid reused by another process is never mistaken
  for ours, nor signalled.
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


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command's name, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return stat[stat.rfind(b")") + 2 :].split()


def pid_namespace() -> str:
    """This process's pid namespace, as a number ("0" where it cannot be read)."""
    try:
        return "".join(c for c in os.readlink("/proc/self/ns/pid") if c.isdigit()) or "0"
    except OSError:
        return "0"


def _start_time(pid: int) -> str:
    """When ``pid`` started, in clock ticks since boot ("" where /proc cannot tell)."""
    fields = _stat_fields(pid)
    # starttime is the 22nd field of stat, the 20th after the command's name.
    return fields[19].decode() if fields is not None and len(fields) > 19 else ""


def identity(pid: int | None = None) -> str:
    """A process (this one by default) as records name it: ``NAMESPACE.PID.START``. The
    start time tells this process from a later one that was given the same pid."""
    own = os.getpid()
    pid = pid or own
    if pid == own and own in _OWN:  # asked on every record written: read once
        return _OWN[own]
    start = _start_time(pid)
    tag = f"{pid_namespace()}.{pid}" + (f".{start}" if start else "")
    if pid == own:
        _OWN[own] = tag
    return tag


# This process's identity, once read, by its pid: a forked child reads its own.
_OWN: dict[int, str] = {}


def parse_identity(tag: str) -> tuple[str, int, str] | None:
    """``(namespace, pid, start)`` of an ``identity()``; None for anything else. Tags
    written before start times were recorded have no start ("")."""
    parts = tag.split(".") if isinstance(tag, str) else []
    if len(parts) not in (2, 3) or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    if len(parts[1]) > 7 or not 0 < int(parts[1]) <= PID_MAX:
        return None
    return (parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "")


# No pid is larger (Linux's PID_MAX_LIMIT): a record naming a larger one names no process.
PID_MAX = 4_194_304


# What ``identity_alive`` answers for a process of another pid namespace: it cannot be seen.
UNKNOWN = None


def identity_alive(tag: str) -> bool | None:
    """Whether the process ``tag`` names still runs: True, False (ended, a zombie, or its
    pid now held by another process), or None when it lives in another pid namespace (a
    container of its own) and cannot be seen from here."""
    parsed = parse_identity(tag)
    if parsed is None:
        return False
    namespace, pid, start = parsed
    if namespace != pid_namespace():
        return UNKNOWN
    fields = _stat_fields(pid)
    if fields is None:
        try:  # no /proc: only the pid can be asked
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not start
    if fields[0] == b"Z":  # ended; only its parent has not looked yet
        return False
    return not start or (len(fields) > 19 and fields[19].decode() == start)


def signal_identified(tag: str, signum: int) -> bool:
    """Send ``signum`` to the process ``tag`` names, only if it is that very process (pid
    and start time match in this namespace); False otherwise. A pidfd holds the process
    between the check and the signal, so a pid reused meanwhile is not reached either."""
    parsed = parse_identity(tag)
    # Without a start time a pid cannot be told from a later one; only where the system
    # has no /proc to tell start times at all is the pid taken as it is.
    if parsed is None or (not parsed[2] and os.path.isdir("/proc/self")):
        return False
    pid = parsed[1]
    opener = getattr(os, "pidfd_open", None)
    sender = getattr(signal, "pidfd_send_signal", None)
    fd = None
    if opener is not None and sender is not None:
        try:
            fd = opener(pid)
        except ProcessLookupError:
            return False
        except OSError:  # no pidfds here (an old kernel, a seccomp profile): check, then kill
            fd = None
    try:
        if identity_alive(tag) is not True:
            return False
        if fd is not None and sender is not None:
            try:
                sender(fd, signum)
            except OSError:
                return False
            return True
        return signal_process(pid, signum)
    finally:
        if fd is not None:
            os.close(fd)


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
        fields = _stat_fields(int(name))
        if fields is None:
            continue  # ended meanwhile
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


def reap_when_ended(proc: subprocess.Popen[Any]) -> None:
    """Collect the exit status of a process that outlives its starter's interest in it
    (a detached job's host, a detached call's supervisor) as soon as it ends, so a
    long-lived starter (the server, a notebook kernel) keeps no zombie of it."""
    threading.Thread(target=proc.wait, name=f"bgjobs-reap-{proc.pid}", daemon=True).start()


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
