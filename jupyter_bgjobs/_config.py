"""Settings shared by the job manager, the magics and the API."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ._errors import JobSpecError


@dataclass
class Settings:
    """What ``jupyter_bgjobs.configure(...)`` changes."""

    pool_size: int = 1
    max_concurrent: int = os.cpu_count() or 1
    kernel: str = "python3"
    cancel_grace: float = 3.0
    output_tail: int = 1000
    status_interval: float = 1.0
    root: str = ""
    transport: str = "auto"
    results_arena: bool = True
    notify: bool = False
    gateway: str = ""
    # Never shown: not in repr, logs, reports or job folders.
    gateway_token: str = field(default="", repr=False)

    def job_root(self) -> Path:
        """The per-user folder that holds one folder per job (created 0700)."""
        if self.root:
            base = Path(self.root)
        elif os.environ.get("JUPYTER_BGJOBS_DIR"):
            base = Path(os.environ["JUPYTER_BGJOBS_DIR"])
        else:
            from jupyter_core.paths import jupyter_data_dir

            base = Path(jupyter_data_dir()) / "bgjobs"
        jobs = base / "jobs"
        jobs.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(base, 0o700)
        os.chmod(jobs, 0o700)
        return jobs


settings = Settings()


def configure(**changes: Any) -> Settings:
    """Change settings: ``pool_size``, ``max_concurrent``, ``kernel``, ``cancel_grace``,
    ``output_tail``, ``status_interval``, ``root``, ``transport`` (``auto``/``file``: snapshot
    files, in shared memory when there is room; ``stream``: over the kernel protocol),
    ``results_arena`` (while a job runs, make shared memory ready for its results),
    ``notify`` (a browser notification when a job ends), ``gateway`` (a Kernel or
    Enterprise Gateway URL for every job; default ``$JUPYTER_GATEWAY_URL`` when a job asks
    for a gateway) and ``gateway_token`` (default ``$JUPYTER_GATEWAY_AUTH_TOKEN``).
    Returns the settings in force."""
    known = {f.name: f.type for f in fields(Settings)}
    for key, value in changes.items():
        if key not in known:
            raise JobSpecError(
                f"unknown setting {key!r}; known settings: {', '.join(sorted(known))}"
            )
        current = getattr(settings, key)
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise JobSpecError(f"setting {key!r} must be True or False, not {value!r}")
        elif isinstance(current, (int, float)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise JobSpecError(f"setting {key!r} must be a number >= 0, not {value!r}")
            value = type(current)(value)
        if key == "transport" and value not in ("auto", "file", "stream"):
            raise JobSpecError(f"transport must be auto, file or stream, not {value!r}")
        setattr(settings, key, value)
    if "pool_size" in changes:
        from ._jobs import manager

        manager.resize_pool()
    return settings
