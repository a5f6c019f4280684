"""A memory cgroup of a job's own, where the machine lets this user make one: its limit is
then the system's to keep (the kernel reclaims, then kills inside the group only), not a
sample's once a second. cgroup v2 (a child of this process's group, where the memory
controller is delegated) or v1's memory hierarchy; anywhere else, ``make`` gives None and
the sampler keeps the limit.
"""

from __future__ import annotations

import os
from pathlib import Path

_V2_ROOT = Path("/sys/fs/cgroup")
_V1_ROOT = Path("/sys/fs/cgroup/memory")


def _own_groups() -> tuple[Path | None, Path | None]:
    """This process's cgroup v2 folder and v1 memory folder, where they exist."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = f.read(4096).splitlines()
    except OSError:
        return None, None
    v2 = v1 = None
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        rel = path.lstrip("/")
        if controllers == "" and (_V2_ROOT / "cgroup.controllers").exists():
            v2 = _V2_ROOT / rel
        elif "memory" in controllers.split(","):
            v1 = _V1_ROOT / rel
    return v2, v1


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


class MemoryCage:
    """One job's memory cgroup: made with its limit, joined by the job's kernel (what the
    kernel starts joins by itself), removed once the job has ended."""

    def __init__(self, folder: Path, v2: bool, limit: int) -> None:
        self.folder = folder
        self.v2 = v2
        self.limit = limit

    @classmethod
    def make(cls, name: str, limit: int) -> MemoryCage | None:
        """A new group named ``name`` limited to ``limit`` bytes, or None where the
        system does not let this user make one."""
        v2, v1 = _own_groups()
        for parent, is_v2 in ((v2, True), (v1, False)):
            if parent is None:
                continue
            try:
                if is_v2:
                    enabled = (parent / "cgroup.subtree_control").read_text().split()
                    if "memory" not in enabled:
                        continue  # not delegated to us; enabling it is not ours to do
                folder = parent / f"bgjobs-{name}"
                folder.mkdir()
            except OSError:
                continue
            try:
                if is_v2:
                    _write(folder / "memory.max", str(limit))
                    _write(folder / "memory.swap.max", "0")
                else:
                    _write(folder / "memory.limit_in_bytes", str(limit))
                    if (folder / "memory.memsw.limit_in_bytes").exists():
                        _write(folder / "memory.memsw.limit_in_bytes", str(limit))
            except OSError:
                try:
                    folder.rmdir()
                except OSError:
                    pass
                continue
            return cls(folder, is_v2, limit)
        return None

    def join(self, pids: list[int]) -> bool:
        """Move ``pids`` (the job's kernel and what it has started) into the group."""
        try:
            for pid in pids:
                _write(self.folder / "cgroup.procs", str(pid))
        except OSError:
            return False
        return True

    def oom_killed(self) -> bool:
        """Whether the system's OOM killer ended a process of the group (over its limit)."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            for line in (self.folder / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            return False
        return False

    def peak(self) -> int:
        """The most memory the group held (bytes; 0 where the system does not say)."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            return int((self.folder / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def remove(self) -> None:
        """Remove the group; what is still in it (a straggler of the job) goes to the
        parent group first, so the folder can go."""
        parent = self.folder.parent
        try:
            stragglers = (self.folder / "cgroup.procs").read_text().split()
        except OSError:
            stragglers = []
        for pid in stragglers:
            try:
                _write(parent / "cgroup.procs", pid)
            except OSError:
                pass
        try:
            os.rmdir(self.folder)
        except OSError:
            pass
