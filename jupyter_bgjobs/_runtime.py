"""Private runtime folders: where kernel sockets, connection files and shared-memory
snapshots live.

No name another local user can guess and pre-create: a per-user runtime folder
(``$XDG_RUNTIME_DIR``, else Jupyter's runtime directory) when there is one we own, else a
folder of this process with a random name. Every folder we use must be ours, a real folder
and closed to others (0700); a folder that is not is never used, whoever made it.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ._inside.procs import PID_MAX, identity, identity_alive


def owner_tag(pid: int | None = None) -> str:
    """This process (or its child ``pid``) as the owner of files that outlive it if it is
    killed: its pid namespace (processes of other containers may share the folder), its
    pid, and its start time (a later process given the same pid is not its owner)."""
    return identity(pid)


def short_owner_tag() -> str:
    """``owner_tag()`` without the start time, for names that must stay short (a Unix
    socket's path holds about 100 bytes): litter, swept once its pid has ended."""
    tag = owner_tag()
    return tag.rsplit(".", 1)[0] if tag.count(".") == 2 else tag


def owner_gone(tag: str) -> bool:
    """Whether the owner named by ``owner_tag()`` has ended, or its pid now belongs to
    another process; never for another namespace's, which cannot be seen from here."""
    return identity_alive(tag) is False


def sweep_litter(folder: str | Path, name: re.Pattern[str]) -> None:
    """Remove the files in ``folder`` whose names match ``name`` (with an ``owner`` group
    holding an ``owner_tag()``) and whose owner has ended."""
    gone: dict[str, bool] = {}
    for entry in Path(folder).iterdir():
        m = name.match(entry.name)
        if not m:
            continue
        if m["owner"] not in gone:
            gone[m["owner"]] = owner_gone(m["owner"])
        if gone[m["owner"]]:
            try:
                entry.unlink()
            except OSError:
                pass


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie does not); a number no pid can be, never."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has ended; only its parent has not looked yet
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# A Unix socket path is limited to about 100 bytes; ours add about 40 to the folder.
_MAX_SOCKET_DIR = 60
_lock = threading.Lock()
_made: dict[str, str] = {}
_OWN_DIR = re.compile(r"^bgjobs-(?P<owner>\d+\.\d+(?:\.\d+)?)-[A-Za-z0-9_]+$")


def is_private(path: str | Path) -> bool:
    """A real folder (no symlink) of this user that nobody else can enter or write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _ensure(path: Path) -> Path | None:
    try:
        path.mkdir(mode=0o700, parents=False, exist_ok=True)
    except OSError:
        return None
    return path if is_private(path) else None


def _per_user_base() -> Path | None:
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and is_private(xdg):
        return _ensure(Path(xdg) / "jupyter-bgjobs")
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    except Exception:
        return None
    if not is_private(runtime):
        return None
    return _ensure(runtime / "bgjobs")


def _own_folder(kind: str, parent: str) -> str:
    """A folder of this process under ``parent`` with a random name, removed at exit;
    those of owners that were killed are removed by the next process that makes one."""
    sweep_dead_owners(parent)
    path = tempfile.mkdtemp(prefix=f"bgjobs-{owner_tag()}-", dir=parent)
    os.chmod(path, 0o700)
    atexit.register(shutil.rmtree, path, True)
    return path


def sockets_dir() -> str:
    """The folder for kernel sockets and connection files of this process's kernels."""
    with _lock:
        if "sockets" not in _made:
            base = _per_user_base()
            if base is not None and len(str(base)) <= _MAX_SOCKET_DIR:
                _made["sockets"] = str(base)
            else:
                _made["sockets"] = _own_folder("sockets", tempfile.gettempdir())
        return _made["sockets"]


def shm_dir() -> str | None:
    """A folder in shared memory for snapshot files, or None where there is none."""
    with _lock:
        if "shm" not in _made:
            if not os.path.isdir("/dev/shm"):
                return None
            try:
                _made["shm"] = _own_folder("shm", "/dev/shm")
            except OSError:
                return None
        return _made["shm"]


def job_shm_dir(job_id: str) -> str | None:
    """A shared-memory folder for one detached job (its seed, its results at first),
    private, with a random name: it outlives the process that makes it.

    Who holds it is written in it (``hand_job_shm``): this process while it prepares the
    job, then the job's host, which removes it."""
    if not os.path.isdir("/dev/shm"):
        return None
    try:
        path = tempfile.mkdtemp(prefix=f"{JOB_SHM_PREFIX}{job_id}-", dir="/dev/shm")
    except OSError:
        return None
    try:
        os.chmod(path, 0o700)
        hand_job_shm(path, owner=owner_tag())
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        return None
    return path


# The name of a detached job's shared-memory folder starts with this and its job's id.
# Older versions named theirs ``bgjobs-job-...`` and swept every one whose job their own
# store did not have, those of other stores too: they never match this name.
JOB_SHM_PREFIX = "bgjobs-detached-"
# The file of a detached job's shared-memory folder that says who holds the folder.
_HOLDER = ".holder"
# A job's shared-memory folder without a holder yet is being made: left alone this long.
_FRESH = 60.0


def hand_job_shm(path: str, *, owner: str = "", entry: str = "") -> None:
    """Say who holds a detached job's shared-memory folder from now on: a process (its
    ``owner_tag()``), while that lives; or a store entry (its folder), while it is there,
    for results that stay in shared memory. Replaced whole, never half written."""
    holder = {"owner": owner} if owner else {"entry": entry}
    tmp = os.path.join(path, f"{_HOLDER}.{os.getpid()}.{threading.get_ident()}")
    write_private(Path(tmp), json.dumps(holder))
    try:
        os.replace(tmp, os.path.join(path, _HOLDER))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def job_shm_holder(path: str) -> dict[str, str] | None:
    """Who holds a detached job's shared-memory folder, as ``hand_job_shm`` wrote it."""
    try:
        with open(os.path.join(path, _HOLDER), encoding="utf-8") as fh:
            holder = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict):
        return None
    return {k: v for k, v in holder.items() if k in ("owner", "entry") and isinstance(v, str)}


def _job_shm_abandoned(path: str) -> bool:
    """Whether nobody holds a detached job's shared-memory folder any more. /dev/shm is
    the machine's: processes of other stores (another ``JUPYTER_BGJOBS_DIR`` or root)
    sweep it too, so a folder is judged by what it says of its holder, never by whether
    the sweeper's own store knows the job."""
    holder = job_shm_holder(path)
    if holder and holder.get("owner"):
        return owner_gone(holder["owner"])
    if holder and holder.get("entry"):
        return not os.path.isdir(holder["entry"])
    try:  # no holder: its maker is writing it, or ended before it could
        return time.time() - os.lstat(path).st_mtime > _FRESH
    except OSError:
        return False


def sweep_dead_owners(parent: str) -> None:
    """Remove our folders under ``parent`` whose owning process has ended, and detached
    jobs' folders that nobody holds any more."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        m = _OWN_DIR.match(name)
        if m and owner_gone(m["owner"]) and is_private(path):
            shutil.rmtree(path, ignore_errors=True)
        if _JOB_DIR.match(name) and is_private(path) and _job_shm_abandoned(path):
            # Its host ended without removing it (killed), or its entry was pruned.
            shutil.rmtree(path, ignore_errors=True)


_JOB_DIR = re.compile(rf"^{JOB_SHM_PREFIX}[0-9a-f]{{8}}-[A-Za-z0-9_]+$")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def open_log(path: Path) -> Any:
    """A job's log, opened for appending; created readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


class JobLog:
    """A job's output log, appended to, that never fails the job: what the disk refuses
    (full, or over quota) is dropped and counted, and ``on_fault`` is told once, with
    why, so the job's record can say its log is incomplete. Writes go straight to the
    file: a buffer that failed to flush would fail every later write too."""

    def __init__(self, path: Path, on_fault: Any) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        self.on_fault = on_fault
        self.lost = 0

    def write(self, text: str) -> int:
        data = memoryview(text.encode("utf-8", errors="replace"))
        while data:
            try:
                n = os.write(self.fd, data)
            except OSError as exc:
                first = not self.lost
                self.lost += len(data)
                if first:
                    self.on_fault(exc)
                break
            data = data[n:]
        return len(text)

    def flush(self) -> None:
        """Nothing is held back: every write has gone to the file already."""

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> JobLog:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
