"""Settings shared by the job manager, the magics and the API."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ._errors import JobSpecError


@dataclass
class Settings:
    """What ``jupyter_bgjobs.configure(...)`` changes."""

    # Two warm kernels: forked from the template, both cost less memory than one started
    # anew, and a notebook's quick cells rarely wait for a refill.
    pool_size: int = 2
    # Warm kernels are forked from a template that has imported what the notebook has.
    pool_fork: bool = True
    max_concurrent: int = os.cpu_count() or 1
    kernel: str = "python3"
    cancel_grace: float = 3.0
    output_tail: int = 1000
    # Characters of output a job keeps in memory; its log on disk keeps everything.
    output_tail_bytes: int = 4 << 20
    root: str = ""
    transport: str = "auto"
    results_arena: bool = True
    notify: bool = False
    gateway: str = ""
    # Kernels kept warm on the default gateway for jobs to take.
    gateway_pool_size: int = 0
    # Never shown: not in repr, logs, reports or job folders.
    gateway_token: str = field(default="", repr=False)
    # Sample what each job's kernel uses (memory, CPU) and each queue task's peak memory.
    sample_usage: bool = True
    # Bytes a job's kernel and its processes may use before the job is ended (0: none).
    memory_limit: int = 0
    # Where every job's end is told (Apprise URLs); they hold secrets: never shown.
    notify_targets: list[str] = field(default_factory=list, repr=False)
    # Every job saves its namespace where each of its sections completes (--checkpoint).
    checkpoint: bool = False

    def job_root_path(self) -> Path:
        """Where the job root is, found without creating or changing anything (so that
        reading a read-only store writes nothing). Raises ``StoreError`` when the store
        is not this user's alone (``_trust``): nothing in it is read then."""
        from ._trust import check_store

        base = self._store_base()
        check_store(base)
        return base / "jobs"

    def _store_base(self) -> Path:
        if self.root:
            base = Path(self.root)
        elif os.environ.get("JUPYTER_BGJOBS_DIR"):
            base = Path(os.environ["JUPYTER_BGJOBS_DIR"])
        else:
            from jupyter_core.paths import jupyter_data_dir

            base = Path(jupyter_data_dir()) / "bgjobs"
        return base

    def job_root(self) -> Path:
        """The per-user folder that holds one folder per job (created 0700); raises
        ``StoreError`` when the store is not this user's alone."""
        from ._trust import check_store, forget

        jobs = self.job_root_path()
        base = jobs.parent
        made = not jobs.is_dir()
        jobs.mkdir(parents=True, exist_ok=True, mode=0o700)
        for folder in (base, jobs):
            # Closed to others, but never made writable again: a store its owner made
            # read-only stays read-only.
            try:
                mode = folder.stat().st_mode & 0o777
                if mode & 0o077 and folder.lstat().st_uid == os.getuid():
                    os.chmod(folder, mode & 0o700)
            except OSError:
                pass
        if made:  # what was made just now, and by whom, is looked at again
            forget()
            check_store(base)
        return jobs


settings = Settings()


def configure(**changes: Any) -> Settings:
    """Change settings: ``pool_size``, ``pool_fork`` (fork warm kernels from a template
    process that has imported what the notebook imports; False starts each anew),
    ``max_concurrent``, ``kernel``, ``cancel_grace``,
    ``output_tail``, ``root``, ``transport`` (``auto``/``file``: snapshot
    files, in shared memory when there is room; ``stream``: over the kernel protocol),
    ``results_arena`` (while a job runs, make shared memory ready for its results),
    ``notify`` (a browser notification when a job ends), ``gateway`` (a Kernel or
    Enterprise Gateway URL for every job; default ``$JUPYTER_GATEWAY_URL`` when a job asks
    for a gateway), ``gateway_token`` (default ``$JUPYTER_GATEWAY_AUTH_TOKEN``) and
    ``gateway_pool_size`` (default 0: kernels kept started, refilled in the background, on
    the default gateway for jobs of the default kernelspec to take; they end with this
    kernel, killed included), ``memory_limit`` (every job's, as ``--memory-limit``: ``8G``,
    ``300MB``, or bytes; 0 for none), ``sample_usage`` (default True: what each job's
    kernel uses, sampled about once a second, and each queue task's peak memory; a memory
    limit needs it), ``notify`` (True: a browser notification when a job
    ends; a list of Apprise URLs, ``mailto://``, ``slack://``, ``json://``...: every job's
    end is told there, as ``--notify URL``), ``checkpoint`` (True: every job saves its
    namespace each time one of its sections completes, as ``--checkpoint``). Returns the
    settings in force."""
    known = {f.name for f in fields(Settings)}
    checked = {}
    for key, value in changes.items():
        if key == "notify" and not isinstance(value, bool):
            key = "notify_targets"  # notify=[URL, ...]: where every job's end is told
        if key not in known:
            raise JobSpecError(
                f"unknown setting {key!r}; known settings: {', '.join(sorted(known))}"
            )
        checked[key] = _checked(key, value)
    # All or nothing: one bad setting leaves every setting as it was.
    for key, value in checked.items():
        setattr(settings, key, value)
    for hook in list(on_change):
        hook(set(checked))
    return settings


# Called with the names of the settings that changed: the manager resizes its warm pools
# when ``pool_size`` or the gateway pool's settings change. Settings know nothing of the engine.
on_change: list[Callable[[set[str]], Any]] = []


# The whole numbers and the smallest value each numeric setting takes.
_NUMBERS: dict[str, tuple[bool, float, bool]] = {
    # name: (integer, minimum, strictly above the minimum)
    "pool_size": (True, 0, False),
    "gateway_pool_size": (True, 0, False),
    "max_concurrent": (True, 1, False),
    "cancel_grace": (False, 0, False),
    "output_tail": (True, 1, False),
    "output_tail_bytes": (True, 1024, False),
}


def _checked(key: str, value: Any) -> Any:
    from . import _checks

    current = getattr(settings, key)
    if key == "memory_limit":
        return _checks.memory("memory_limit", value)
    if key == "notify_targets":
        from ._notify import check_targets

        return check_targets("notify", value, browser=True)
    if key in _NUMBERS:
        integer, minimum, above = _NUMBERS[key]
        if isinstance(value, str):  # settings take numbers; text is for magics' options
            raise JobSpecError(f"{key} must be a number, not {value!r}")
        number = _checks.number(key, value, minimum=minimum, above=above, integer=integer)
        return int(number) if integer else number
    if isinstance(current, bool):
        return _checks.flag(key, value)
    if key == "root":
        if value == "":
            return ""
        # Absolute now: the store must not move when the notebook changes folder.
        return os.path.abspath(os.path.expanduser(_checks.path("root", value) or ""))
    if key == "transport":
        return _checks.choice("transport", value, ("auto", "file", "stream"))
    if key == "kernel":
        return _checks.kernelspec(_checks.text("kernel", value, example="'python3'") or "")
    if key == "gateway":
        url = _checks.text("gateway", value, example="'http://gateway:8888'") or ""
        return _checks.gateway_url(url) if url and url not in ("env", "default") else url
    return _checks.text(key, value)
