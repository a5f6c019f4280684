"""The reaper of a notebook's gateway kernels: a child process that deletes them on the
gateway once the notebook's kernel is gone, however it went. A SIGKILLed kernel runs no
atexit hook, and a kernel left on a gateway runs (and, on Kubernetes, holds a pod) until
somebody deletes it.

Started as a script (``python _inside/reaper.py PARENT_PID``) in a session of its own, with
a pipe on its stdin and nothing else of its parent's. The parent writes one JSON object a
line:

- ``{"add": ID, "url": URL, "token": TOKEN}``: a kernel to delete if the parent goes;
- ``{"drop": ID}``: the kernel is no longer the reaper's (its owner shut it down);
- ``{"end": true}``: the parent is closing the reaper: delete what is listed, then exit.

End of input, or the end of the parent (watched apart: a process forked from the parent
may hold the pipe open after it), means ``end`` too. The token travels over the pipe,
never in argv, which ``ps`` shows to everyone. SIGINT is ignored: interrupting the
notebook must not end its reaper.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

if __package__:
    from . import procs
else:  # run as a script: this folder is sys.path[0] (see __init__)
    import procs  # type: ignore[no-redef]

    procs.leave_script_folder(("procs",))

DELETE_TIMEOUT = 10.0


def delete(url: str, token: str, kernel_id: str) -> None:
    """Ask the gateway to end one kernel; one that is gone already is fine. Two tries: a
    gateway busy ending many kernels at once may drop a connection."""
    path = f"{url}/api/kernels/{urllib.parse.quote(kernel_id, safe='')}"
    for _ in range(2):
        req = urllib.request.Request(path, method="DELETE")
        if token:
            req.add_header("Authorization", f"token {token}")
        try:
            urllib.request.urlopen(req, timeout=DELETE_TIMEOUT).close()
            return
        except urllib.error.HTTPError:
            return  # 404: gone already; anything else will not change on a retry
        except OSError:
            continue


def delete_all(kernels: dict[str, tuple[str, str]]) -> None:
    """Delete every listed kernel, all at once: the gateway ends each in its own time."""
    threads = [
        threading.Thread(target=delete, args=(url, token, kernel_id), daemon=True)
        for kernel_id, (url, token) in kernels.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DELETE_TIMEOUT * 2 + 5)


def take(line: bytes, kernels: dict[str, tuple[str, str]]) -> bool:
    """Apply one line of the parent's; False once it says ``end``."""
    try:
        order = json.loads(line)
    except ValueError:
        return True  # a torn line: the parent died mid-write
    if not isinstance(order, dict):
        return True
    if order.get("end"):
        return False
    if "add" in order:
        kernels[str(order["add"])] = (str(order.get("url", "")), str(order.get("token", "")))
    elif "drop" in order:
        kernels.pop(str(order["drop"]), None)
    return True


def serve(parent: int, fd: int) -> dict[str, tuple[str, str]]:
    """Read the parent's lines from ``fd`` until it ends them or goes; the kernels still
    listed then."""
    kernels: dict[str, tuple[str, str]] = {}
    pidfd = procs._pidfd(parent)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    buffer = b""
    # Checked after the pidfd is open: if it is still our parent, the pidfd is of it.
    going = os.getppid() != parent
    while True:
        if not going:
            ready = {f for f, _ in poller.poll(None if pidfd is not None else 500)}
            going = pidfd in ready or (pidfd is None and os.getppid() != parent)
            if fd not in ready and not going:
                continue
        if going:
            # What the parent wrote before it went still counts: read all there is.
            os.set_blocking(fd, False)
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            chunk = b""
        if not chunk:  # the end of input, or nothing more from a parent that is gone
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not take(line, kernels):
                return kernels
    if buffer:
        take(buffer, kernels)
    return kernels


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = int(argv[1]) if len(argv) > 1 else os.getppid()
    delete_all(serve(parent, sys.stdin.fileno()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
