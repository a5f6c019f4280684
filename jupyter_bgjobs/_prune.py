"""Pruning: removing the folders of jobs and calls that ended long enough ago, detached
ones of the store and attached ones of the job root alike; never a running one, never a
folder in use, never what a link points to."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Any

from ._errors import JobSpecError
from ._runtime import owner_gone, pid_alive
from ._states import DAMAGED, ENDED_STATES
from ._store import (
    FRESH,
    NUMBERS,
    attached_folders,
    being_made,
    damage,
    entries,
    job_root_path,
    newest_mtime,
    read_json,
    read_only_reason,
    recorded_alive,
    require_writable,
    store_path,
)

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
    jobs = sys.modules.get("jupyter_bgjobs._api")
    if jobs is not None:
        live.update(j.id for j in jobs.manager.jobs() if not j.done)
    calls = sys.modules.get("jupyter_bgjobs._calls")
    if calls is not None:
        live.update(c.id for c in calls.bg_calls() if not c.detached)
    return live


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
        return None if being_made(folder) else newest_mtime(folder)
    if spec.get("kind") == "call":
        status = read_json(folder / "status.json")
        if status is not None:
            ended = status.get("ended")
            return float(ended) if isinstance(ended, NUMBERS) else newest_mtime(folder)
        pids = read_json(folder / "pid.json") or {}
        for key in ("pid", "supervisor"):
            if recorded_alive(pids, key):
                return None
        age = newest_mtime(folder)
        return age if pids or now - age >= FRESH else None
    record = read_json(folder / "state.json")
    if record is None:
        age = newest_mtime(folder)
        return age if now - age >= FRESH else None
    damaged = bool(damage(folder))
    if record.get("state") in ENDED_STATES and not damaged:
        ended = record.get("finished_ts")
        return float(ended) if isinstance(ended, NUMBERS) else newest_mtime(folder)
    # A record nobody can read counts as ended, as in the store, unless its owner lives.
    owner = record.get("owner")
    owner_pid = record.get("owner_pid")
    if isinstance(owner, str) and owner:
        gone = owner_gone(owner)
    elif isinstance(owner_pid, int):
        gone = not pid_alive(owner_pid)
    else:
        gone = damaged or now - newest_mtime(folder) >= FRESH
    return newest_mtime(folder) if gone else None


def _detached_end(folder: Path) -> float | None:
    """When a store entry ended (damaged ones count as ended), or None while it runs."""
    from ._stored import describe

    info = describe(folder)
    if info.state == DAMAGED:
        host = read_json(folder / "host.json") or {}
        if recorded_alive(host, "pid", heartbeat=folder / "host.json"):
            return None  # its host still runs, and may yet write a sound record
        return newest_mtime(folder)
    if info.state not in ENDED_STATES:
        return None
    finished = info.finished_ts
    return float(finished) if isinstance(finished, NUMBERS) else newest_mtime(folder)


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
    jobs = job_root_path()
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
    for folder in attached_folders():
        spec = read_json(folder / "spec.json") or {}
        name = spec.get("name") if isinstance(spec.get("name"), str) else folder.name
        remove(folder, f"{name} ({folder.name})", _attached_end(folder, now))
    return {"removed": removed, "bytes": freed, "kept": kept}


def _remove_job_shm(folder: Path) -> None:
    """A detached job's own shared-memory folder, named in its spec, goes with it."""
    from ._runtime import JOB_SHM_PREFIX, is_private

    shm = (read_json(folder / "spec.json") or {}).get("shm_dir")
    if (
        isinstance(shm, str)
        and Path(shm).name.startswith(
            (f"{JOB_SHM_PREFIX}{folder.name}-", f"bgjobs-job-{folder.name}-")  # or older
        )
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
