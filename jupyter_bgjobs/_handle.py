"""What every handle a row shows offers, typed once: a job of this process, a stored
job, a progress row. The widget panel, the text rows and the server read handles through
this and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Handle(Protocol):
    """A thing that runs, as every row reads it."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def done(self) -> bool: ...
    @property
    def progress(self) -> tuple[int, int]: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def section(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def report(self) -> str: ...
    @property
    def outputs(self) -> list[dict[str, Any]]: ...
    @property
    def output_version(self) -> int: ...
    @property
    def log_path(self) -> Path | None: ...
    # Its record's folder, where it has one in the store or the job root.
    @property
    def folder(self) -> Path | None: ...
    @property
    def can_stop(self) -> bool: ...
    # False while its results wait for the notebook's next cell.
    @property
    def merged(self) -> bool: ...
    # Succeeded with some of its units failed (a queue with failed tasks).
    @property
    def partial(self) -> bool: ...
    # Taken out of the panel by its owner, or to be once it has ended.
    @property
    def removed(self) -> bool: ...
    @property
    def auto_remove(self) -> bool: ...
    # What its process uses (``rss``, ``peak``, ``cpu``, ``cpu_seconds``; empty if unsampled).
    @property
    def resources(self) -> dict[str, Any]: ...
    # The notebook and the id of its cell that started it ("" for each it does not have).
    @property
    def started_from(self) -> tuple[str, str]: ...

    def cancel(self) -> bool: ...
    def on_change(self, fn: Callable[[Any], Any]) -> None: ...
    def forget(self) -> None: ...


class WholeJob:
    """What a job (not a progress row) says to every row: its statements do not fail one
    by one, and it stays listed until it is removed."""

    @property
    def partial(self) -> bool:
        """False: a job's statements do not fail one by one."""
        return False

    @property
    def removed(self) -> bool:
        """False: a job leaves a panel when it is forgotten or its entry pruned."""
        return False

    @property
    def auto_remove(self) -> bool:
        """False: an ended job stays listed until it is removed."""
        return False
