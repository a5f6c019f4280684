"""The store of detached jobs and calls: one folder each, in the per-user data directory.

Every writer owns its folder (a fresh random id), and every file that changes is replaced
whole by an atomic rename, so any number of notebooks, terminals and job hosts can read and
write the store at once without a lock and without a reader seeing half a file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ._config import settings
from ._errors import JobSpecError

DONE_STATES = ("succeeded", "failed", "cancelled", "timed_out", "died")


def store_root() -> Path:
    """``<job root>/detached``: under Jupyter's data directory unless configured."""
    root = settings.job_root() / "detached"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` whole: readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def entries() -> list[Path]:
    """Every folder of the store with a spec, oldest first."""
    found = []
    for folder in store_root().iterdir():
        spec = read_json(folder / "spec.json")
        if spec is not None:
            found.append((spec.get("submitted", ""), folder))
    return [f for _, f in sorted(found)]


def find(name_or_id: str) -> Path | None:
    """The folder of the newest detached job or call with that name, or with that id."""
    match = None
    for folder in entries():
        spec = read_json(folder / "spec.json") or {}
        if name_or_id in (spec.get("id"), spec.get("name")):
            match = folder
    return match


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
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def prune(older_than: Any = "7d") -> dict[str, Any]:
    """Remove detached jobs and calls that finished longer ago than ``older_than``.

    Returns what was removed and the space freed: ``{"removed": [names], "bytes": N}``.
    Running ones are never touched.
    """
    from ._detached import describe

    cutoff = time.time() - parse_age(older_than)
    removed: list[str] = []
    freed = 0
    for folder in entries():
        info = describe(folder)
        if info["state"] not in DONE_STATES:
            continue
        finished = info.get("finished_ts") or 0.0
        if finished and finished <= cutoff:
            size = folder_size(folder)
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(f"{info['name']} ({info['id']})")
                freed += size
    return {"removed": removed, "bytes": freed}
