"""Whether a folder or a file is ours to trust: the job store is read, and its results
unpickled, only when no other local user could have put anything in it, and a file of a
job's folder only when it is a regular file we wrote (``open_own``).

A store is trusted when its own folders are real folders of this user that nobody else
may write, and every folder above them is this user's or root's and closed to other
writers (or sticky, as ``/tmp`` is, where nobody may rename what another made). Anything
else (a store another user made first under ``/tmp``, a folder a group may write) is
refused with one line that says whose it is and what to do, before anything is read.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from ._errors import StoreError

# A store found trusted is not looked at again for this long: readers ask many times a
# second, and folders that are ours do not change hands by themselves.
_TRUSTED_FOR = 2.0
_checked: dict[str, float] = {}
_lock = threading.Lock()


def _who(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _fix(store: Path) -> str:
    return (
        f"remove {store} (as its owner, or root) or point JUPYTER_BGJOBS_DIR (or "
        "configure(root=...)) at a folder of your own"
    )


def check_store(store: Path) -> None:
    """Raise ``StoreError`` unless ``store`` (the folder holding the job root) and what is
    above it can be trusted; parts that do not exist yet are made by us later, 0700."""
    key = str(store)
    now = time.monotonic()
    with _lock:
        if now - _checked.get(key, -_TRUSTED_FOR) < _TRUSTED_FOR:
            return
    _check(store)
    with _lock:
        _checked[key] = now


def _check(store: Path) -> None:
    me = os.getuid()
    absolute = Path(os.path.abspath(store))
    # A link on the way is as good as the one who may change it: ours or root's.
    for part in [*reversed(absolute.parents), absolute]:
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            break
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (me, 0):
            raise StoreError(
                f"the job store {store} is reached through {part}, a link of "
                f"{_who(st.st_uid)} who may point it anywhere; {_fix(store)}"
            )
    real = Path(os.path.realpath(absolute))
    for part in reversed(real.parents):
        try:
            st = os.stat(part)
        except OSError:
            break
        open_to_others = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
        if st.st_uid not in (me, 0) or open_to_others:
            who = _who(st.st_uid) if st.st_uid not in (me, 0) else "another user"
            why = "owns it" if st.st_uid not in (me, 0) else "may write in it"
            raise StoreError(
                f"the job store {store} lies in {part}, which {who} {why}, so the store "
                f"could be swapped for theirs; {_fix(store)}"
            )
    for part in (real, real / "jobs", real / "jobs" / "detached"):
        check_own_folder(part, store)


def check_own_folder(folder: Path, store: Path) -> None:
    """Raise ``StoreError`` unless ``folder`` (if it exists) is a real folder of this user
    that nobody else may write."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"the job store {store} cannot be read ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"the job store's {folder} is not a folder; {_fix(store)}")
    if st.st_uid != os.getuid():
        raise StoreError(
            f"the job store's folder {folder} belongs to {_who(st.st_uid)}, not to you "
            f"({_who(os.getuid())}); another user may have made it to plant jobs and "
            f"results; {_fix(store)}"
        )
    if st.st_mode & 0o022:
        raise StoreError(
            f"the job store's folder {folder} may be written by others (mode "
            f"{stat.S_IMODE(st.st_mode):o}); close it (chmod go-w {folder}) or {_fix(store)}"
        )


# The most a record (a JSON file of a job's folder) holds; a larger one is damage. The
# code of a job lives in a file of its own, so records stay small whatever the code.
MAX_RECORD = 4 << 20
# The opening flags of every file read from the store: never through a link, and never
# waiting (a FIFO or a device put in place of a record would hang the reader for good).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class NotOurs(StoreError):
    """A file of a job's folder that is not one we wrote: a link, not a regular file, of
    another user, or larger than any we write. Its message says which."""


def open_own(path: Path) -> int:
    """A file descriptor of ``path`` for reading, if it is a regular file of this user
    that nobody else may write, opened without following a link and without blocking.
    Raises ``FileNotFoundError``, or ``NotOurs`` saying what it is instead."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotOurs(f"{path.name}: a link, not a file of the job's") from None
        if exc.errno == errno.ENXIO:  # a socket or FIFO without a writer
            raise NotOurs(f"{path.name}: not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        problem = ""
        if not stat.S_ISREG(st.st_mode):
            problem = f"{path.name}: not a regular file"
        elif st.st_uid != os.getuid():
            problem = f"{path.name}: belongs to uid {st.st_uid}, not to you"
        elif st.st_mode & 0o022:
            problem = f"{path.name}: may be written by others"
        elif st.st_nlink != 1:  # ours are written by rename: one name, in the job's folder
            problem = f"{path.name}: a hard link, not a file of the job's alone"
        if problem:
            raise NotOurs(problem)
        # Reads block as usual from here on (a regular file never waits for long).
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_own(path: Path, limit: int = MAX_RECORD) -> bytes:
    """The bytes of ``path`` (``open_own``'s checks), at most ``limit``; ``NotOurs``
    ("too large") for a larger file."""
    fd = open_own(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise NotOurs(f"{path.name}: too large ({size:,} bytes; at most {limit:,})")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew while read
        raise NotOurs(f"{path.name}: too large (over {limit:,} bytes)")
    return data


class _NotJSONNumber(ValueError):
    pass


def _no_constant(name: str) -> Any:
    # NaN and Infinity are Python's, not JSON's: a browser cannot parse a row holding one.
    raise _NotJSONNumber(name)


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e999: Infinity by another name
        raise _NotJSONNumber(f"{text[:20]} (Infinity)")
    return value


# How deep a record of ours nests, at the most (an error's traceback is three levels).
_MAX_DEPTH = 16


def _deeper_than(data: Any, limit: int) -> bool:
    todo: list[tuple[Any, int]] = [(data, 0)]
    while todo:
        value, depth = todo.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)
    return False


def read_json(path: Path) -> dict[str, Any] | None:
    """The object in ``path``, or None when it is missing or damaged (``load_json``)."""
    return load_json(path)[0]


def load_json(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The object in ``path`` and "", or None and what is wrong with it."""
    try:
        text = read_own(path)
    except FileNotFoundError:
        return None, f"{path.name}: missing"
    except NotOurs as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"{path.name}: cannot be read ({exc.strerror or exc})"
    if not text.strip():
        return None, f"{path.name}: empty"
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except _NotJSONNumber as exc:
        return None, f"{path.name}: holds {exc}, which JSON has not"
    except RecursionError:
        return None, f"{path.name}: nested too deep to be a record"
    except ValueError:
        return None, f"{path.name}: not valid JSON (truncated?)"
    if _deeper_than(data, _MAX_DEPTH):
        # Ours nest a few levels; a deep one would break whoever encodes it again.
        return None, f"{path.name}: nested too deep to be a record"
    if not isinstance(data, dict):
        return None, f"{path.name}: not a JSON object"
    return data, ""


def forget() -> None:
    """Look at every store again on the next read (a test changed a store's owner)."""
    with _lock:
        _checked.clear()
