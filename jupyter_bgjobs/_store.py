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
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ._config import settings
from ._errors import StoreError
from ._inside.procs import identity_alive
from ._record import JobRecord, is_time
from ._runtime import owner_gone, owner_tag, pid_alive, sweep_litter
from ._states import ENDED_STATES
from ._trust import MAX_RECORD, NotOurs, load_json, open_own, read_json, read_own

# A folder that records nothing readable yet may be one being made right now (its spec is
# written just after its folder): younger than this, prune leaves it alone.
FRESH = 60.0


# Kept here for readers: the store's names for what processes and files are ours.
__all__ = [
    "MAX_RECORD",
    "NotOurs",
    "load_json",
    "open_own",
    "owner_gone",
    "owner_tag",
    "pid_alive",
    "read_json",
    "read_own",
    "sweep_litter",
]


# A host in another pid namespace (another container sharing the store) cannot be seen
# from here: it is alive while it keeps touching its host.json, as it does this often.
HEARTBEAT = 10.0
_HEARTBEAT_STALE = 6 * HEARTBEAT


def recorded_alive(record: dict[str, Any], key: str, heartbeat: Path | None = None) -> bool:
    """Whether the process a record names under ``key`` (its pid) and ``KEY_id`` (its
    identity: namespace, pid, start time) still runs. A pid now held by another process
    is gone; one of another namespace is judged by ``heartbeat``'s age, if given. Records
    of older versions name a pid alone: it is asked as it is."""
    tag = record.get(f"{key}_id")
    if isinstance(tag, str) and tag:
        alive = identity_alive(tag)
        if alive is None:  # another container's: alive while its heartbeat is fresh
            if heartbeat is None:
                return True
            try:
                return time.time() - os.lstat(heartbeat).st_mtime < _HEARTBEAT_STALE
            except OSError:
                return False
        return alive
    pid = record.get(key)
    return isinstance(pid, int) and not isinstance(pid, bool) and pid_alive(pid)


def job_root_path() -> Path:
    """Where ``settings.job_root()`` is, found without creating or changing anything, so
    that reading a read-only store writes nothing."""
    return settings.job_root_path()


ATTACHED_NAME = re.compile(r"[0-9a-f]{8}")


def attached_folders() -> list[Path]:
    """The folders of attached jobs and calls under the job root (never through a link),
    in order of their ids. ``StoreError`` when the store is not this user's alone."""
    root = job_root_path()
    try:
        return sorted(
            Path(e.path)
            for e in os.scandir(root)
            if ATTACHED_NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
        )
    except OSError:
        return []


def store_path() -> Path:
    """``<job root>/detached``, whether or not it exists; for readers."""
    return job_root_path() / "detached"


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
        raise write_error(store_path(), "make the job store", exc) from None
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
        raise write_error(store, doing, exc) from None
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


def write_error(folder: Path, doing: str, exc: OSError) -> StoreError:
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
            raise write_error(path.parent, doing, exc) from None
        raise


def write_bytes(path: Path, data: bytes, doing: str = "") -> None:
    """``write_with`` for bytes at hand."""
    write_with(path, lambda fh: fh.write(data), doing)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` whole: readers see the old file or the new one, never a mix."""
    write_bytes(path, json.dumps(data, indent=1, default=str).encode())


# A job's code, beside its spec: stored once, read only by what runs or shows it.
CODE_FILE = "code.py"
# The most code a job may have (a script of that size is no script).
MAX_CODE = 256 << 20


def read_code(folder: Path, spec: dict[str, Any], limit: int = MAX_CODE) -> str | None:
    """A job's code, from its code file; None when there is none to read (``NotOurs``
    propagates for a file not ours)."""
    if spec.get("code_file") != CODE_FILE:
        return None
    try:
        return read_own(folder / CODE_FILE, limit).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None


# What each field may hold; a field of another type makes the entry damaged.
_Schema = dict[str, tuple[type, ...]]
NUMBERS = (int, float)
_SPEC: _Schema = {
    "env": (str,),
    "results": (str,),
    "on_conflict": (str,),
    "gateway": (str,),
    "kernel_env": (dict,),
    "env_vars": (dict,),
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
_STATUS: _Schema = {"returncode": (int, type(None)), "ended_by": (str,), "ended": (int, float)}
_HOST: _Schema = {"pid": (int,), "pid_id": (str,)}
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


def check_spec(folder: Path, spec: dict[str, Any]) -> str:
    """What is wrong with an entry's spec, or ""."""
    problem = _wrong_fields("spec.json", spec, _SPEC)
    if problem:
        return problem
    for key in ("kind", "name", "id", "submitted"):
        if not spec.get(key):
            return f"spec.json: no {key!r}"
    if spec["kind"] not in ("job", "call", "progress"):
        return f"spec.json: kind {spec['kind']!r:.40} is not job, call or progress"
    if spec["id"] != folder.name:
        return f"spec.json: id {spec['id']!r:.40} is not its folder's name"
    if not is_time(spec["submitted"]):
        return f"spec.json: 'submitted' {spec['submitted']!r:.40} is not a time"
    if spec["kind"] == "job" and spec.get("code_file") != CODE_FILE:
        return f"spec.json: no code file ({CODE_FILE})"
    if spec.get("code_file") == CODE_FILE:
        try:
            st = os.lstat(folder / CODE_FILE)
        except OSError:
            return f"{CODE_FILE}: missing"
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return f"{CODE_FILE}: not a file of the job's"
    return ""


def check_state(record: dict[str, Any]) -> str:
    """What is wrong with a job's state.json, or "" (the record's own check)."""
    return JobRecord.problem(record)


def _check_pickle(path: Path, skip: int = 0) -> str:
    """A cheap look at a pickle file's first and last bytes: garbage and truncation show
    without loading it (which may be large, or need modules not imported here)."""
    try:
        with os.fdopen(open_own(path), "rb") as fh:
            head = fh.read(skip + 2)
            fh.seek(0, os.SEEK_END)
            if fh.tell() <= skip + 2:
                return f"{path.name}: truncated"
            fh.seek(-1, os.SEEK_END)
            tail = fh.read(1)
    except FileNotFoundError:
        return ""
    except NotOurs as exc:
        return str(exc)
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror or exc})"
    if skip and head[:1] == b"\x02":  # a call's result that could not be pickled: text
        return ""
    if skip and head[:1] not in (b"\x00", b"\x01"):
        return f"{path.name}: not a result file"
    if head[skip : skip + 1] != b"\x80" or tail != b".":
        return f"{path.name}: not a complete pickle (truncated or overwritten?)"
    return ""


def list_field(value: Any) -> list[Any]:
    """A record's field as a list; [] for a field of another type (a damaged record)."""
    return value if isinstance(value, list) else []


def text_field(value: Any) -> str:
    """A record's field as text; "" for a field of another type (a damaged record)."""
    return value if isinstance(value, str) else ""


def damage(
    folder: Path, load: Callable[[Path], tuple[dict[str, Any] | None, str]] = load_json
) -> str:
    """What makes a store entry unreadable, or "" for a sound one. ``load`` reads its
    records (a reader that has read them already passes its own, so each file is opened
    once a look). A job's results are looked at only once its record says it has ended:
    a running job has none yet."""
    try:
        st = os.lstat(folder)
    except OSError as exc:
        return f"the folder cannot be read ({exc.strerror or exc})"
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        return "the folder is not its owner's alone (another user's, or writable by others)"
    spec, problem = load(folder / "spec.json")
    if spec is None:
        return problem
    problem = check_spec(folder, spec)
    if problem:
        return problem
    if spec["kind"] == "call":
        for name, schema in (("status.json", _STATUS), ("pid.json", {})):
            data, problem = load(folder / name)
            if data is None and not problem.endswith("missing"):
                return problem
            if data is not None and schema and _wrong_fields(name, data, schema):
                return _wrong_fields(name, data, schema)
        return _check_pickle(folder / "result.pkl", skip=1)
    checks: list[tuple[str, _Schema]] = [
        ("state.json", {}),
        ("host.json", _HOST),
        ("results.json", _RESULTS),
    ]
    ended = False
    for name, schema in checks:
        if name == "results.json" and not ended:
            break
        data, problem = load(folder / name)
        if data is None:
            if problem.endswith("missing"):
                continue
            return problem
        problem = check_state(data) if name == "state.json" else _wrong_fields(name, data, schema)
        if problem:
            return problem
        ended = ended or (name == "state.json" and data.get("state") in ENDED_STATES)
    if not ended:
        return ""
    return _check_snapshot(folder / "results.snap")


def _check_snapshot(path: Path) -> str:
    """A cheap look at a results snapshot: its header, and a size that holds it."""
    from ._inside.kernel.wire import MAGIC

    try:
        with os.fdopen(open_own(path), "rb") as fh:
            head = fh.read(len(MAGIC) + 4)
    except FileNotFoundError:
        return ""
    except NotOurs as exc:
        return str(exc)
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror or exc})"
    if not head.startswith(MAGIC) or len(head) < len(MAGIC) + 4:
        return f"{path.name}: not a complete results file (truncated or overwritten?)"
    return ""


def _entry_folders() -> Iterator[Path]:
    """The store's folders; a symlink is no entry of ours and is never followed.
    ``StoreError`` when the store is not this user's alone."""
    store = store_path()
    try:
        found = list(os.scandir(store))
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


def being_made(folder: Path) -> bool:
    """A young folder without a spec: its spec is about to be written. (A spec that is
    there is whole, being written by a rename: if it cannot be read it is damaged.)"""
    return not (folder / "spec.json").exists() and time.time() - newest_mtime(folder) < FRESH


def entries() -> list[Path]:
    """Every folder of the store, damaged ones included, oldest first."""
    found = []
    for folder in _entry_folders():
        spec = read_json(folder / "spec.json")
        if spec is None and being_made(folder):
            continue
        submitted = spec.get("submitted") if spec else None
        if not isinstance(submitted, str) or not is_time(submitted):
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
