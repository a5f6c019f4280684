"""The processes we start: how their ends are told in words."""

from __future__ import annotations

import signal


def death_reason(code: int | None, what: str = "its kernel") -> str:
    """How a process ended, from its exit status (negative: the signal that ended it)."""
    if code is None:
        return f"{what} process ended"
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        return f"{what} was killed by {sig} (exit code {code})"
    return f"{what} exited with code {code}"
