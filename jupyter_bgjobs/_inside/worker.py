"""A queue worker process: runs tasks one after another and sends each result back.

Started as a script (``python _inside/worker.py SOCK_FD SLOT_FD OUT_FD ERR_FD PARENT_PID``),
not with ``-m``, so a worker starts without importing the package and IPython.

Protocol over a socket pair, each message a 4-byte little-endian length and a pickle:
- parent -> worker: a pickled list of tasks ``(index, fun_key, fun_bytes | None, args_bytes)``;
  ``fun_bytes`` comes once per function and is cached under ``fun_key``; ``None`` ends the worker.
- worker -> parent: one pickled tuple per task ``(index, code, payload, stdout, stderr,
  started, finished, peak)``, ``peak`` the most memory the worker held during the task
  (bytes; None where the system cannot say); ``code`` CODE_OK with the pickled result,
  CODE_ERROR with the exception (``outcome.error_payload``), CODE_PICKLE with why it
  cannot be pickled.
The slot (16 bytes of a shared file) holds the running task's index and its start on the
monotonic clock, so the parent sees starts and overruns without a message per task.
A task's stdout and stderr go straight to two files of the pool (OUT_FD, ERR_FD), emptied
before a task once the one before it printed: when a worker is killed mid-task, what its
task printed until then is there for the parent to read.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import struct
import sys
import time
from typing import Any

if __package__:
    from . import outcome, procs
else:  # run as a script: this folder is sys.path[0] (see __init__)
    import outcome  # type: ignore[no-redef]
    import procs  # type: ignore[no-redef]

    procs.leave_script_folder(("outcome", "procs"))

SLOT = struct.Struct("<qd")
FRAME = struct.Struct("<I")


class _Capture(io.TextIOBase):
    """sys.stdout / sys.stderr during a task: every write goes to the file at once, unbuffered,
    since a buffer dies with a worker that is killed (SIGKILL, segfault, a time limit)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # Whether the file holds anything: a task that prints nothing costs no syscall.
        self.dirty = False
        # The same text kept here too: a task that ends well needs no read of the file.
        self.parts: list[str] = []

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        self.dirty = True
        self.parts.append(text)
        # surrogatepass: any str a task can print comes back unchanged, as from a StringIO.
        view = memoryview(text.encode("utf-8", "surrogatepass"))
        while view:
            view = view[os.write(self.fd, view) :]
        return len(text)

    def take(self) -> str:
        """Everything written since the file was last emptied."""
        return "".join(self.parts)

    def empty(self) -> None:
        os.ftruncate(self.fd, 0)
        self.dirty = False
        self.parts = []


def read_capture(fd: int) -> bytes:
    """The whole content of a capture file (also read by the parent after a worker died)."""
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


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


class _Peaks:
    """A task's own peak resident memory (Linux): the process's high-water mark (VmHWM)
    is started anew before each task (writing 5 to ``/proc/self/clear_refs``) and read
    after it. A task shorter than a millisecond reports the resident memory at its end
    (``statm``), a tenth of the cost, which a task that short cannot have exceeded much.
    The files stay open: a no-op task must not pay for opening them."""

    SHORT = 0.001

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        try:
            self.clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
            self.status = os.open("/proc/self/status", os.O_RDONLY)
            self.statm = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self.clear = -1

    def reset(self) -> bool:
        if self.clear < 0:
            return False
        try:
            os.write(self.clear, b"5")
        except OSError:
            return False
        return True

    def read(self, took: float) -> int | None:
        try:
            if took < self.SHORT:
                return int(os.pread(self.statm, 64, 0).split()[1]) * self.page
            text = os.pread(self.status, 4096, 0)
            at = text.index(b"VmHWM:")
            return int(text[at + 6 : text.index(b"kB", at)]) * 1024
        except (OSError, ValueError, IndexError):
            return None


def main() -> None:
    sock_fd, slot_fd, out_fd, err_fd, parent = (int(a) for a in sys.argv[1:6])
    procs.watch_parent(parent)
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

    # Each task's own peak memory, unless the notebook turned sampling off.
    peaks = _Peaks() if hello.get("peaks", True) else None

    send(b"ready")
    funs: dict[int, Any] = {}
    real_out, real_err = sys.stdout, sys.stderr
    out, err = _Capture(out_fd), _Capture(err_fd)
    while True:
        raw = read()
        if raw is None:
            return
        batch = pickle.loads(raw)
        if batch is None:
            return
        for index, key, fun_bytes, args_bytes in batch:
            # Emptied before the slot names the task: a death from here on finds only its own
            # output in the files.
            if out.dirty:
                out.empty()
            if err.dirty:
                err.empty()
            measured = peaks is not None and peaks.reset()
            started_wall = time.time()
            SLOT.pack_into(slot, 0, index, time.monotonic())
            sys.stdout, sys.stderr = out, err
            try:
                if fun_bytes is not None:
                    funs[key], source = pickle.loads(fun_bytes)
                    if source is not None:
                        outcome.refile(funs[key], *source)
                args, kwargs = pickle.loads(args_bytes)
                code, payload = outcome.run_one(funs[key], args, kwargs)
            except BaseException as exc:  # arguments that do not unpickle here
                code = procs.CODE_PICKLE
                payload = f"the task could not be loaded in the worker: {exc!r}"
            finally:
                sys.stdout, sys.stderr = real_out, real_err
                SLOT.pack_into(slot, 0, -1, 0.0)
            ended = time.time()
            message = (
                index,
                code,
                payload,
                out.take() if out.dirty else "",
                err.take() if err.dirty else "",
                started_wall,
                ended,
                peaks.read(ended - started_wall) if peaks is not None and measured else None,
            )
            send(pickle.dumps(message, protocol=5))


if __name__ == "__main__":
    main()
