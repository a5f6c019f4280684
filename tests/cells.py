"""Code made the way a notebook makes it, for tests of what travels to other processes."""

from __future__ import annotations

import itertools
import linecache
import textwrap
import time
from collections.abc import Callable
from typing import Any

import psutil

_CELLS = itertools.count(1)


def notebook(source: str) -> dict[str, Any]:
    """Run ``source`` as a notebook cell would: its functions and classes live in
    ``__main__`` (so they travel by value), and the cell's lines live only in this process's
    linecache, as IPython keeps them."""
    source = textwrap.dedent(source)
    filename = f"<cell-{next(_CELLS)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), ns)
    return ns


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on, for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gone(pid: int) -> bool:
    """Whether process ``pid`` no longer runs: a zombie nobody has reaped yet counts as
    gone. Read from the system, not from the package's own view of its processes."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


class FrontEnd:
    """A real kernel through jupyter_client, driven as a notebook's front end drives it."""

    def __init__(self) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel()
        self.kc = self.km.blocking_client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def execute(kc: Any, code: str, timeout: float = 120, seen: Any = None) -> str:
    """Run ``code`` on a kernel client as a cell; its stdout once the kernel is idle
    again. ``seen(msg)`` is given every iopub message read meanwhile (others' too); an
    error of the cell is raised with its traceback."""
    msg_id = kc.execute(code)
    out = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if seen is not None:
            seen(msg)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream" and content["name"] == "stdout":
            out.append(content["text"])
        elif kind == "error":
            raise AssertionError("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out)


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``check`` until it gives a true value, and return it; fail after ``timeout``
    seconds. For what another process (a kernel, a server, a gateway) does and tells no one."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"never happened within {timeout:g} s: {what}"
        time.sleep(0.02)  # polling a condition another process changes
    return found
