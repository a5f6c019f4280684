"""The interface between the driver and a job's kernel, whatever runs it.

A backend is a kernel with the job runner already loaded (``_bgjobs_runner`` in its
``sys.modules``). The driver sends it code (``execute``), reads what it reports
(``iopub``), watches it (``alive``, ``exit_code``) and stops it (``interrupt``, then
``kill`` after the grace period); ``shutdown`` ends it once the job is over. It never
needs to know which backend it has.

Two members are optional, read with ``getattr``: ``launch_env`` (the environment a local
kernel was started with, so a job can apply the notebook's changes since) and
``death_reason()`` (a remote kernel's own words for how it was lost; otherwise the
driver tells the end from ``exit_code()``).

Implementations: ``local.LocalKernel``, ``gateway.GatewayKernel``, ``fake.FakeKernel``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar


class KernelBackend(Protocol):
    """One kernel a job runs in."""

    @property
    def pid(self) -> int | None:
        """The kernel's process id when it runs on this machine, else None."""

    def execute(
        self,
        code: str,
        silent: bool = False,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> str:
        """Send an execute request (no history, no stdin, stop on error) and return its
        msg_id; the request's iopub messages carry it as their parent's msg_id (and their
        binary ``buffers``, a list, empty for most). ``metadata`` and ``buffers`` ride in
        the request (the seed's chunks do)."""

    def iopub(self, timeout: float) -> dict[str, Any] | None:
        """The next iopub message (a dict with ``msg_type``, ``content``,
        ``parent_header``, ...), or None when none came within ``timeout`` seconds."""

    def alive(self) -> bool:
        """Whether the kernel still runs; False once it died or was killed."""

    def exit_code(self) -> int | None:
        """How the kernel's process ended (negative: the signal), None while it runs or
        when the backend cannot tell."""

    def interrupt(self) -> None:
        """Ask the running code to stop (SIGINT: a KeyboardInterrupt in the job)."""

    def kill(self) -> None:
        """End the kernel at once, without asking; tolerant of one already gone."""

    def shutdown(self, now: bool = False) -> None:
        """End the kernel and free what it holds; idempotent, tolerant of a dead kernel."""

    def stderr_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` characters the kernel process wrote to its own stderr (a
        segfault's report), or "" when there is none to read."""


class KernelSource(Protocol):
    """Where a driver gets its kernel: the warm pool, or a test's fake."""

    def acquire(self, kernel_name: str | None = None) -> KernelBackend:
        """A ready kernel of the kernelspec ``kernel_name`` (None: the default one)."""


K = TypeVar("K", bound=KernelBackend)


def take_idle(lock: threading.Lock, idle: list[K], usable: Callable[[K], bool]) -> K | None:
    """The first of a pool's ``idle`` kernels that is still ``usable``; those found not to
    be are shut down on the way. The check runs outside ``lock``: it may ask a gateway."""
    while True:
        with lock:
            if not idle:
                return None
            candidate = idle.pop(0)
        if usable(candidate):
            return candidate
        candidate.shutdown(now=True)
