"""The store of detached jobs and calls: one folder each, in the per-user data directory.

Every writer owns its folder (a fresh random id), and every file that changes is replaced
whole by an atomic rename, so any number of notebooks, terminals and job hosts can read and
write the store at once without a lock and without a reader seeing half a file.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ._config import settings
from ._errors import JobSpecError, StoreError

DONE_STATES = ("succeeded", "failed", "cancelled", "timed_out", "died")
# An entry whose spec.json or state.json cannot be read: listed, never run, prunable.
DAMAGED = "damaged"
# A folder that records nothing readable yet may be one being made right now (its spec is
# written just after its folder): younger than this, prune leaves it alone.
FRESH = 60.0


def _job_root_path() -> Path:
    """Where ``settings.job_root()`` is, found without creating or changing anything, so
    that reading a read-only store writes nothing."""
    if settings.root:
        base = Path(settings.root)
    elif os.environ.get("JUPYTER_BGJOBS_DIR"):
        base = Path(os.environ["JUPYTER_BGJOBS_DIR"])
    else:
        from jupyter_core.paths import jupyter_data_dir

        base = Path(jupyter_data_dir()) / "bgjobs"
    return base / "jobs"


def store_path() -> Path:
    """``<job root>/detached``, whether or not it exists; for readers."""
    return _job_root_path() / "detached"


def store_root() -> Path:
    """``<job root>/detached``, created if need be; for writers. Raises ``StoreError``
    when it cannot be made or is read-only."""
    try:
        root = settings.job_root() / "detached"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(root.stat().st_mode)
        if mode & 0o077:  # made by hand, or by an older version: no one else's to read
            os.chmod(root, mode & 0o700)
    except OSError as exc:
        raise _write_error(store_path(), "make the job store", exc) from None
    return root


def new_entry(doing: str) -> Path:
    """A new, empty folder of the store (0700) with a fresh random id, for a writer;
    ``StoreError`` (naming the folder and the fix) when the store cannot be written."""
    import uuid

    store = store_root()
    require_writable(store, doing)
    folder = store / uuid.uuid4().hex[:8]
    try:
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)  # whatever the umask
    except OSError as exc:
        raise _write_error(store, doing, exc) from None
    return folder


def read_only_reason(folder: Path) -> str:
    """Why nothing may be written in ``folder`` (an entry of the store, or the store), or "".

    The mode bits count as well as the file system: root may write anywhere, but a folder
    its owner made read-only is treated as read-only for everyone, root included.
    """
    # The folder written in, and the one holding it: an entry inside a read-only store is
    # read-only too.
    for f in (folder, folder.parent):
        try:
            mode = os.stat(f).st_mode
            flags = os.statvfs(f).f_flag
        except OSError:
            continue
        if flags & os.ST_RDONLY:
            return f"{f} is on a read-only file system"
        if not mode & stat.S_IWUSR:
            return f"{f} is read-only"
    return ""


def _fix(folder: Path) -> str:
    return (
        f"make it writable (chmod u+w {folder}) or point JUPYTER_BGJOBS_DIR (or "
        "configure(root=...)) at a writable folder"
    )


def require_writable(folder: Path, doing: str) -> None:
    """Raise ``StoreError`` naming the folder and the fix when ``folder`` is read-only."""
    why = read_only_reason(folder)
    if why:
        where = Path(why.split(" is ", 1)[0])
        raise StoreError(f"cannot {doing}: {why}; {_fix(where)}")


def _write_error(folder: Path, doing: str, exc: OSError) -> StoreError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "on a read-only file system" if exc.errno == errno.EROFS else "read-only"
        where = Path(exc.filename).parent if exc.filename else folder
        return StoreError(f"cannot {doing}: {where} is {what}; {_fix(where)}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"cannot {doing}: no space left for {folder}; free some space "
            "(bgjobs prune removes finished jobs)"
        )
    return StoreError(f"cannot {doing} in {folder}: {exc.strerror or exc}")


def open_private(path: Path) -> Any:
    """A new file at ``path`` for writing in binary, readable by its owner only (0600)
    whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def write_with(path: Path, writer: Callable[[IO[bytes]], Any], doing: str = "") -> None:
    """Replace ``path`` whole with what ``writer(file)`` writes, 0600: readers see the old
    file or the new one. Raises ``StoreError`` (naming the folder and the fix) when it
    cannot be written; whatever ``writer`` raises passes, and leaves nothing behind."""
    doing = doing or f"write {path.name}"
    require_writable(path.parent, doing)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open_private(tmp) as fh:
            writer(fh)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, StoreError):
            raise _write_error(path.parent, doing, exc) from None
        raise


def write_bytes(path: Path, data: bytes, doing: str = "") -> None:
    """``write_with`` for bytes at hand."""
    write_with(path, lambda fh: fh.write(data), doing)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` whole: readers see the old file or the new one, never a mix."""
    write_bytes(path, json.dumps(data, indent=1, default=str).encode())


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_json(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The object in ``path`` and "", or None and what is wrong with it."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None, f"{path.name}: missing"
    except OSError as exc:
        return None, f"{path.name}: cannot be read ({exc.strerror or exc})"
    if not text.strip():
        return None, f"{path.name}: empty"
    try:
        data = json.loads(text)
    except ValueError:
        return None, f"{path.name}: not valid JSON (truncated?)"
    if not isinstance(data, dict):
        return None, f"{path.name}: not a JSON object"
    return data, ""


# What each field may hold; a field of another type makes the entry damaged.
_Schema = dict[str, tuple[type, ...]]
_NUM = (int, float)
_SPEC: _Schema = {
    "kind": (str,),
    "name": (str,),
    "id": (str,),
    "submitted": (str,),
    "job_kind": (str,),
    "code": (str,),
    "kernel": (str, type(None)),
    "timeout": (int, float, type(None)),
    "workdir": (str, type(None)),
    "script": (str, type(None)),
    "results_name": (str, type(None)),
    "detached": (bool,),
    "not_shipped": (list,),
    "cwd": (str,),
}
_STATE: _Schema = {
    "state": (str,),
    "progress": (list,),
    "section": (str,),
    "status": (str,),
    "started": (str, type(None)),
    "finished": (str, type(None)),
    "finished_ts": (int, float, type(None)),
    "elapsed": (int, float, type(None)),
    "error": (list, type(None)),
    "reason": (str,),
    "exit_code": (int, type(None)),
    "log_path": (str, type(None)),
    "host_pid": (int, type(None)),
    "kernel_pid": (int, type(None)),
    "skipped": (list,),
}
_STATUS: _Schema = {"returncode": (int, type(None)), "ended_by": (str,), "ended": (int, float)}
_HOST: _Schema = {"pid": (int,)}
_RESULTS: _Schema = {"names": (list,), "not_saved": (list,)}


def _wrong_fields(name: str, data: dict[str, Any], schema: _Schema) -> str:
    for key, types_ in schema.items():
        if key not in data:
            continue
        value = data[key]
        # bool is an int to Python, never to a record.
        if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
            return f"{name}: {key!r} is {type(value).__name__} {value!r:.40}, not {_names(types_)}"
    return ""


def _names(types_: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types_)


def _iso(value: Any) -> bool:
    try:
        dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


def check_spec(folder: Path, spec: dict[str, Any]) -> str:
    """What is wrong with an entry's spec, or ""."""
    problem = _wrong_fields("spec.json", spec, _SPEC)
    if problem:
        return problem
    for key in ("kind", "name", "id", "submitted"):
        if not spec.get(key):
            return f"spec.json: no {key!r}"
    if spec["kind"] not in ("job", "call"):
        return f"spec.json: kind {spec['kind']!r:.40} is neither job nor call"
    if spec["id"] != folder.name:
        return f"spec.json: id {spec['id']!r:.40} is not its folder's name"
    if not _iso(spec["submitted"]):
        return f"spec.json: 'submitted' {spec['submitted']!r:.40} is not a time"
    if spec["kind"] == "job" and not isinstance(spec.get("code"), str):
        return "spec.json: no 'code'"
    return ""


def check_state(record: dict[str, Any]) -> str:
    """What is wrong with a job's state.json, or ""."""
    problem = _wrong_fields("state.json", record, _STATE)
    if problem:
        return problem
    progress = record.get("progress", [0, 0])
    if len(progress) != 2 or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in progress
    ):
        return f"state.json: 'progress' {progress!r:.40} is not [done, total]"
    error = record.get("error")
    if error is not None and (len(error) != 3 or not isinstance(error[2], list)):
        return "state.json: 'error' is not [ename, evalue, traceback]"
    for key in ("started", "finished"):
        if record.get(key) is not None and not _iso(record[key]):
            return f"state.json: {key!r} {record[key]!r:.40} is not a time"
    return ""


def _check_pickle(path: Path, skip: int = 0) -> str:
    """A cheap look at a pickle file's first and last bytes: garbage and truncation show
    without loading it (which may be large, or need modules not imported here)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(skip + 2)
            fh.seek(0, os.SEEK_END)
            if fh.tell() <= skip + 2:
                return f"{path.name}: truncated"
            fh.seek(-1, os.SEEK_END)
            tail = fh.read(1)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror or exc})"
    if skip and head[:1] == b"\x02":  # a call's result that could not be pickled: text
        return ""
    if skip and head[:1] not in (b"\x00", b"\x01"):
        return f"{path.name}: not a result file"
    if head[skip : skip + 1] != b"\x80" or tail != b".":
        return f"{path.name}: not a complete pickle (truncated or overwritten?)"
    return ""


def damage(folder: Path) -> str:
    """What makes a store entry unreadable, or "" for a sound one."""
    spec, problem = load_json(folder / "spec.json")
    if spec is None:
        return problem
    problem = check_spec(folder, spec)
    if problem:
        return problem
    if spec["kind"] == "call":
        for name, schema in (("status.json", _STATUS), ("pid.json", {})):
            data, problem = load_json(folder / name)
            if data is None and not problem.endswith("missing"):
                return problem
            if data is not None and schema and _wrong_fields(name, data, schema):
                return _wrong_fields(name, data, schema)
        return _check_pickle(folder / "result.pkl", skip=1)
    checks: list[tuple[str, _Schema]] = [
        ("state.json", _STATE),
        ("host.json", _HOST),
        ("results.json", _RESULTS),
    ]
    for name, schema in checks:
        data, problem = load_json(folder / name)
        if data is None:
            if problem.endswith("missing"):
                continue
            return problem
        problem = check_state(data) if name == "state.json" else _wrong_fields(name, data, schema)
        if problem:
            return problem
    return _check_pickle(folder / "results.pkl") or _check_snapshot(folder / "results.snap")


def _check_snapshot(path: Path) -> str:
    """A cheap look at a results snapshot: its header, and a size that holds it."""
    from ._inside.kernel.wire import MAGIC

    try:
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC) + 4)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror or exc})"
    if not head.startswith(MAGIC) or len(head) < len(MAGIC) + 4:
        return f"{path.name}: not a complete results file (truncated or overwritten?)"
    return ""


def _entry_folders() -> Iterator[Path]:
    """The store's folders; a symlink is no entry of ours and is never followed."""
    try:
        found = list(os.scandir(store_path()))
    except OSError:
        return
    for entry in found:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                yield Path(entry.path)
        except OSError:
            continue


def newest_mtime(folder: Path) -> float:
    """The latest change to ``folder`` or a file directly in it (not following links)."""
    try:
        newest = folder.lstat().st_mtime
    except OSError:
        return 0.0
    try:
        for entry in os.scandir(folder):
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
            except OSError:
                continue
    except OSError:
        pass
    return newest


def _being_made(folder: Path) -> bool:
    """A young folder without a spec: its spec is about to be written. (A spec that is
    there is whole, being written by a rename: if it cannot be read it is damaged.)"""
    return not (folder / "spec.json").exists() and time.time() - newest_mtime(folder) < FRESH


def entries() -> list[Path]:
    """Every folder of the store, damaged ones included, oldest first."""
    found = []
    for folder in _entry_folders():
        spec = read_json(folder / "spec.json")
        if spec is None and _being_made(folder):
            continue
        submitted = spec.get("submitted") if spec else None
        if not isinstance(submitted, str) or not _iso(submitted):
            submitted = dt.datetime.fromtimestamp(newest_mtime(folder)).astimezone().isoformat()
        found.append((_sort_key(submitted), folder.name, folder))
    return [f for _, _, f in sorted(found)]


def _sort_key(submitted: str) -> float:
    try:
        return dt.datetime.fromisoformat(submitted).timestamp()
    except (ValueError, OverflowError, OSError):
        return 0.0


def find(name_or_id: str) -> Path | None:
    """The folder of the detached job or call with that id, else the newest sound one with
    that name, else the newest damaged one with it (so a damaged entry never hides a sound
    one, yet is found to say what is wrong with it)."""
    sound = damaged = None
    for folder in entries():
        if folder.name == name_or_id:
            return folder
        spec = read_json(folder / "spec.json") or {}
        if spec.get("name") == name_or_id:
            if damage(folder):
                damaged = folder
            else:
                sound = folder
    return sound or damaged


def owner_tag() -> str:
    """This process as the owner of files that outlive it if it is killed: its pid, after
    its pid namespace, since processes of other containers may share the folder."""
    return f"{_pid_namespace()}.{os.getpid()}"


def owner_gone(tag: str) -> bool:
    """Whether the owner named by ``owner_tag()`` has ended; never for another namespace's."""
    namespace, _, pid = tag.partition(".")
    return namespace == _pid_namespace() and pid.isdigit() and not pid_alive(int(pid))


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


def _pid_namespace() -> str:
    try:
        return "".join(c for c in os.readlink("/proc/self/ns/pid") if c.isdigit()) or "0"
    except OSError:
        return "0"


def pid_alive(pid: int | None) -> bool:
    if not pid:
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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(value: Any) -> float:
    """Seconds from a number of seconds, a timedelta, or text like ``'7d'``, ``'12h'``."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise JobSpecError(
        f"older_than must be seconds, a timedelta, or text like '7d', '12h', '30m'; got {value!r}"
    )


def folder_size(folder: Path) -> int:
    total = 0
    for base, _dirs, files in os.walk(folder):  # never into a linked folder
        for name in files:
            try:
                st = os.lstat(os.path.join(base, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def tighten(folder: Path) -> None:
    """Make everything under ``folder`` its owner's only: files 0600, folders 0700, whatever
    the umask of the process that made them. Links are left as they are."""
    if read_only_reason(folder):
        return
    for base, dirs, files in os.walk(folder):
        for name, want in [(d, 0o700) for d in dirs] + [(f, 0o600) for f in files]:
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != want:
                    os.chmod(path, want)
            except OSError:
                continue  # removed meanwhile, or not ours


def _paths_in_use() -> list[str]:
    """Every file any process we can see has open, and every process's working folder:
    a folder holding one of them belongs to something still running."""
    found: list[str] = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            found.append(os.readlink(f"/proc/{pid}/cwd"))
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    return found


def _in_use(folder: Path, paths: list[str]) -> bool:
    try:
        prefix = str(folder.resolve())
    except OSError:
        return True
    return any(p == prefix or p.startswith(prefix + "/") for p in paths)


def _live_here() -> set[str]:
    """The ids of this process's jobs that have not ended, and of all its attached calls:
    such a handle reads its state from its folder, and without it would take its call for
    one still running (and end it at exit)."""
    live: set[str] = set()
    jobs = sys.modules.get("jupyter_bgjobs._jobs")
    if jobs is not None:
        live.update(j.id for j in jobs.manager.jobs() if not j.done)
    calls = sys.modules.get("jupyter_bgjobs._calls")
    if calls is not None:
        live.update(c.id for c in calls.bg_calls() if not c.detached)
    return live


_ATTACHED_NAME = re.compile(r"^[0-9a-f]{8}$")


def _attached_end(folder: Path, now: float) -> float | None:
    """When the attached job or call of ``folder`` ended, judged from what it records;
    None while it may still run.

    A call records its parent (``pid.json``) and its end (``status.json``). A job records
    ``state.json`` with its owner (the notebook kernel, which ends its jobs with it) and,
    once it has ended, its state and finish time; a folder without one (made before jobs
    wrote it) has ended when nothing in it changed for long and nothing holds it open.
    """
    spec = read_json(folder / "spec.json")
    if spec is None:  # unreadable, or being made
        return None if _being_made(folder) else newest_mtime(folder)
    if spec.get("kind") == "call":
        status = read_json(folder / "status.json")
        if status is not None:
            ended = status.get("ended")
            return float(ended) if isinstance(ended, _NUM) else newest_mtime(folder)
        pids = read_json(folder / "pid.json") or {}
        for key in ("pid", "supervisor"):
            pid = pids.get(key)
            if isinstance(pid, int) and pid_alive(pid):
                return None
        age = newest_mtime(folder)
        return age if pids or now - age >= FRESH else None
    record = read_json(folder / "state.json")
    if record is None:
        age = newest_mtime(folder)
        return age if now - age >= FRESH else None
    if record.get("state") in DONE_STATES:
        ended = record.get("finished_ts")
        return float(ended) if isinstance(ended, _NUM) else newest_mtime(folder)
    owner = record.get("owner")
    owner_pid = record.get("owner_pid")
    if isinstance(owner, str) and owner:
        gone = owner_gone(owner)
    elif isinstance(owner_pid, int):
        gone = not pid_alive(owner_pid)
    else:
        gone = now - newest_mtime(folder) >= FRESH
    return newest_mtime(folder) if gone else None


def _detached_end(folder: Path) -> float | None:
    """When a store entry ended (damaged ones count as ended), or None while it runs."""
    from ._detached import describe

    info = describe(folder)
    if info["state"] == DAMAGED:
        host = read_json(folder / "host.json") or {}
        if isinstance(host.get("pid"), int) and pid_alive(host["pid"]):
            return None  # its host still runs, and may yet write a sound record
        return newest_mtime(folder)
    if info["state"] not in DONE_STATES:
        return None
    finished = info.get("finished_ts")
    return float(finished) if isinstance(finished, _NUM) else newest_mtime(folder)


def prune(older_than: Any = "7d") -> dict[str, Any]:
    """Remove the folders of jobs and calls that ended longer ago than ``older_than``: the
    store's detached ones (damaged entries count as ended) and the job root's attached
    ones (jobs of a notebook kernel, ``bg()`` calls).

    Returns what was removed and the space freed: ``{"removed": [names], "bytes": N}``,
    and under ``"kept"`` the ended ones that could not be removed, with why. Running ones
    are never touched; nor is anything a link leads to.
    """
    now = time.time()
    cutoff = now - parse_age(older_than)
    store = store_path()
    jobs = _job_root_path()
    for folder in (store, jobs):
        if folder.is_dir():
            require_writable(folder, "prune the job store")
    in_use = _paths_in_use()
    live = _live_here()
    removed: list[str] = []
    kept: list[str] = []
    freed = 0

    def remove(folder: Path, label: str, ended: float | None) -> None:
        nonlocal freed
        if ended is None or ended > cutoff or folder.name in live or _in_use(folder, in_use):
            return
        why = read_only_reason(folder)
        if why:
            kept.append(f"{label}: {why}")
            return
        size = folder_size(folder)
        _remove_job_shm(folder)
        _remove_tree(folder)
        if folder.exists():
            kept.append(f"{label}: could not be removed whole")
        else:
            removed.append(label)
            freed += size

    for folder in entries():
        spec = read_json(folder / "spec.json") or {}
        name = spec.get("name") if isinstance(spec.get("name"), str) else ""
        label = f"{name} ({folder.name})" if name else f"{folder.name} (damaged)"
        remove(folder, label, _detached_end(folder))
    try:
        attached = [
            Path(e.path)
            for e in os.scandir(jobs)
            if _ATTACHED_NAME.match(e.name) and e.is_dir(follow_symlinks=False)
        ]
    except OSError:
        attached = []
    for folder in attached:
        spec = read_json(folder / "spec.json") or {}
        name = spec.get("name") if isinstance(spec.get("name"), str) else folder.name
        remove(folder, f"{name} ({folder.name})", _attached_end(folder, now))
    return {"removed": removed, "bytes": freed, "kept": kept}


def _remove_job_shm(folder: Path) -> None:
    """A detached job's own shared-memory folder, named in its spec, goes with it."""
    from ._runtime import is_private

    shm = (read_json(folder / "spec.json") or {}).get("shm_dir")
    if (
        isinstance(shm, str)
        and Path(shm).name.startswith(f"bgjobs-job-{folder.name}-")
        and is_private(shm)
    ):
        shutil.rmtree(shm, ignore_errors=True)


def _remove_tree(folder: Path) -> None:
    """Remove ``folder`` and what is in it; a link inside is removed, never followed."""
    try:
        if folder.is_symlink() or not folder.is_dir():
            return
    except OSError:
        return
    if shutil.rmtree.avoids_symlink_attacks:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for base, dirs, files in os.walk(folder, topdown=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(base, d))]:
            try:
                os.unlink(os.path.join(base, name))
            except OSError:
                pass
        for name in dirs:
            try:
                os.rmdir(os.path.join(base, name))
            except OSError:
                pass
    try:
        os.rmdir(folder)
    except OSError:
        pass
