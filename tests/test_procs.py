"""The processes we start (``_procs``): their own group, ended with a grace and then killed,
what they started ended too, how they ended in words, and children that end themselves when
their parent dies. Real processes throughout; no sleeps as synchronisation: each child says
when it is ready on a pipe, and what cannot say so is polled against a deadline."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from cells import notebook

import jupyter_bgjobs as bj
from jupyter_bgjobs import _states
from jupyter_bgjobs._inside import call as inside_call
from jupyter_bgjobs._inside import procs as _procs

INSIDE = str(Path(_procs.__file__).parent)
PYTHON = sys.executable


def python(source: str) -> subprocess.Popen[bytes]:
    """``python -c source`` started by _procs, its stdout a pipe it says "ready" on."""
    return _procs.start([PYTHON, "-c", textwrap.dedent(source)], stdout=subprocess.PIPE)


def read_line(proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """The next line the process writes on its stdout, waited for up to ``timeout``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no line from pid {proc.pid} within {timeout} s (so far {line!r})"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 1)
            assert chunk, f"pid {proc.pid} closed its stdout before a whole line: {line!r}"
            line += chunk
    return line.decode().strip()


def gone(pid: int, timeout: float = 10) -> bool:
    """True once the process no longer runs (a zombie nobody has reaped yet counts as
    gone), polled up to ``timeout`` seconds: it is not our child to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)  # polling a process that is not ours to wait on


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever is left of them is ended after it."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        _procs.end(proc, grace=0)
        if proc.stdout is not None:
            proc.stdout.close()


IGNORES_TERM = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(300)
"""


def test_a_process_starts_in_a_group_and_session_of_its_own(
    started: list[subprocess.Popen[bytes]],
) -> None:
    proc = python("print('ready', flush=True); import time; time.sleep(300)")
    started.append(proc)
    assert read_line(proc) == "ready"
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    assert os.getsid(proc.pid) == proc.pid
    assert _procs.group_alive(proc.pid)


def test_end_sends_sigterm_first_and_reaps(started: list[subprocess.Popen[bytes]]) -> None:
    proc = _procs.start(["sleep", "300"])
    started.append(proc)
    t0 = time.monotonic()
    assert _procs.end(proc, grace=30) == -signal.SIGTERM
    assert time.monotonic() - t0 < 10, "a process that goes on SIGTERM is not kept to the grace"
    assert proc.returncode == -signal.SIGTERM
    assert not _procs.group_alive(proc.pid)


def test_one_that_ignores_sigterm_is_killed_after_the_grace(
    started: list[subprocess.Popen[bytes]],
) -> None:
    proc = python(IGNORES_TERM)
    started.append(proc)
    assert read_line(proc) == "ready"
    t0 = time.monotonic()
    assert _procs.end(proc, grace=0.3) == -signal.SIGKILL
    assert time.monotonic() - t0 >= 0.3
    assert _procs.death_reason(proc.returncode, "it") == "it was killed by SIGKILL (exit code -9)"


def test_grace_zero_kills_at_once(started: list[subprocess.Popen[bytes]]) -> None:
    proc = python(IGNORES_TERM)
    started.append(proc)
    assert read_line(proc) == "ready"
    assert _procs.end(proc, grace=0) == -signal.SIGKILL


@pytest.mark.parametrize("grandchild_ignores_term", [False, True], ids=["sleeps", "ignores_term"])
def test_what_it_started_in_its_group_ends_too(
    started: list[subprocess.Popen[bytes]], grandchild_ignores_term: bool
) -> None:
    grandchild = IGNORES_TERM if grandchild_ignores_term else "print('ready', flush=True)\n"
    proc = python(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {textwrap.dedent(grandchild)!r}
                                  + "import time; time.sleep(300)"], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\\n"
        print(child.pid, flush=True)
        time.sleep(300)
        """
    )
    started.append(proc)
    pid = int(read_line(proc))
    assert os.getpgid(pid) == proc.pid
    # The leader goes on SIGTERM; a grandchild that ignores it is killed after the grace.
    assert _procs.end(proc, grace=0.5) == -signal.SIGTERM
    assert gone(pid), "a process of the group outlived end()"
    assert not _procs.group_alive(proc.pid)


def test_end_of_a_process_that_ended_already_ends_what_it_left(
    started: list[subprocess.Popen[bytes]],
) -> None:
    proc = python(
        """
        import subprocess
        child = subprocess.Popen(["sleep", "300"])
        print(child.pid, flush=True)
        """
    )
    started.append(proc)
    pid = int(read_line(proc))
    assert _procs.reap(proc, 30) == 0
    assert _procs.group_alive(proc.pid), "its child is still in the group"
    assert _procs.end(proc) == 0
    assert gone(pid)


@pytest.mark.parametrize(
    ("source", "code", "outcome", "words"),
    [
        ("import os; os._exit(3)", 3, 3, "the process exited with code 3"),
        ("pass", 0, 0, "the process exited with code 0"),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            -9,
            137,
            "the process was killed by SIGKILL (exit code -9)",
        ),
        ("import ctypes; ctypes.string_at(0)", -11, 139, "the process was killed by SIGSEGV"),
    ],
    ids=["exit3", "exit0", "sigkill", "segfault"],
)
def test_how_it_ended_as_a_code_and_in_words(
    started: list[subprocess.Popen[bytes]], source: str, code: int, outcome: int, words: str
) -> None:
    proc = _procs.start([PYTHON, "-c", source])
    started.append(proc)
    assert _procs.reap(proc, 30) == code
    assert _procs.status_code(code) == outcome
    assert _procs.death_reason(code, "the process").startswith(words)


def test_words_and_codes_without_a_process() -> None:
    assert _procs.death_reason(None) == "its kernel process ended"
    assert _procs.death_reason(-11, "the worker process", with_code=False) == (
        "the worker process was killed by SIGSEGV"
    )
    assert _procs.death_reason(-200, "it") == "it was killed by signal 200 (exit code -200)"
    assert (_procs.CODE_OK, _procs.CODE_ERROR, _procs.CODE_PICKLE) == (0, 1, 2)
    assert (_procs.CODE_TIMEOUT, _procs.CODE_CANCELLED) == (124, 130)
    assert _procs.status_code(-signal.SIGINT) == _procs.CODE_CANCELLED
    # The Queue's codes are these, not copies of them.
    from jupyter_bgjobs import _queue

    assert _queue.CODE_TIMEOUT is _procs.CODE_TIMEOUT and _queue.CODE_OK is _procs.CODE_OK


def test_signals_to_what_is_gone_or_not_a_process_are_refused() -> None:
    proc = _procs.start(["true"])
    assert _procs.reap(proc, 30) == 0
    assert not _procs.group_alive(proc.pid)
    assert _procs.signal_group(proc.pid, signal.SIGTERM) is False
    # 0 and -1 would signal our own group or every process we may signal: never.
    for pid in (None, 0, -1):
        assert _procs.signal_group(pid, 0) is False
        assert _procs.signal_process(pid, 0) is False


def test_reap_with_a_timeout_leaves_a_running_process(
    started: list[subprocess.Popen[bytes]],
) -> None:
    proc = _procs.start(["sleep", "300"])
    started.append(proc)
    assert _procs.reap(proc, 0.05) is None
    assert proc.poll() is None


WATCHER = """
    import os, sys, time
    sys.path.insert(0, {inside!r})
    if {polling!r}:
        del os.pidfd_open  # the fallback for systems without pidfds: getppid, polled
    import procs
    procs.watch_parent(os.getppid())
    print("ready", flush=True)
    time.sleep(300)
"""


@pytest.mark.parametrize("polling", [False, True], ids=["pidfd", "polling"])
def test_a_child_whose_parent_is_killed_ends_itself(
    started: list[subprocess.Popen[bytes]], polling: bool
) -> None:
    watcher = textwrap.dedent(WATCHER).format(inside=INSIDE, polling=polling)
    middle = python(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {watcher!r}], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\\n"
        print(child.pid, flush=True)
        time.sleep(300)
        """
    )
    started.append(middle)  # its group holds the watcher too: ended after the test anyway
    pid = int(read_line(middle))
    assert not gone(pid, timeout=0), "the watcher ends only with its parent"
    t0 = time.monotonic()
    os.kill(middle.pid, signal.SIGKILL)  # the parent alone, not its group
    assert gone(pid), "a child whose parent was killed did not end itself"
    if not polling:
        assert time.monotonic() - t0 < 5


def test_a_child_started_by_a_parent_that_is_already_gone_ends_at_once() -> None:
    watcher = _procs.start(
        [
            PYTHON,
            "-c",
            f"import sys; sys.path.insert(0, {INSIDE!r}); import procs, time;"
            "procs.watch_parent(1); time.sleep(300)",  # pid 1 is not its parent
        ]
    )
    try:
        assert _procs.reap(watcher, 30) == 1
    finally:
        _procs.end(watcher, grace=0)


def test_no_watch_for_a_detached_child() -> None:
    assert _procs.watch_parent(0) is None


HEAVY = ("pandas", "IPython", "ipykernel", "jupyter_client", "jupyter_bgjobs", "numpy")


def test_children_stay_light_and_leave_no_trace_of_their_folder() -> None:
    ns = notebook(
        f"""
        import sys
        def imported():
            heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
            ours = [m for m in ("procs", "outcome", "worker", "call") if m in sys.modules]
            return heavy, ours, [p for p in sys.path if p.rstrip("/").endswith("_inside")]
        """
    )
    q = bj.Queue(workers=1)
    q.add(ns["imported"], id="worker")
    df = q.run(message="none").set_index("task_id")
    assert df.loc["worker", "result"] == ([], [], [])
    assert bj.bg(ns["imported"]).result(30) == ([], [], [])


def test_the_call_states_the_supervisor_writes_are_the_states_words() -> None:
    assert inside_call.CANCELLED == _states.CANCELLED
    assert inside_call.TIMED_OUT == _states.TIMED_OUT
