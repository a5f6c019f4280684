"""Warm kernels on the default gateway, and the reaper that deletes this process's
gateway kernels when it dies.

``configure(gateway_pool_size=N)`` keeps N kernels started, with the job runner loaded,
on the default gateway (``configure(gateway=...)`` or ``$JUPYTER_GATEWAY_URL``): a job
takes one instead of waiting for the gateway to start a kernel (seconds on Kubernetes).
A kernel serves one job; the pool refills in the background.

A gateway kernel outlives the process that asked for it unless somebody deletes it. The
pool and the driver end theirs, and the manager's shutdown runs at exit; a SIGKILLed
notebook kernel runs nothing, so a child process (``_inside/reaper.py``) keeps the list of
the kernels this process holds and deletes those still listed once this process is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .base import take_idle
from .gateway import GatewayError, GatewayKernel

_REAPER = str(Path(__file__).resolve().parent.parent / "_inside" / "reaper.py")

# How often idle kernels are asked after: a gateway that culled one gets a new one.
CHECK_INTERVAL = 5.0
# The wait before a failed background start is tried again, doubling up to the most.
BACKOFF = 1.0
MAX_BACKOFF = 60.0
# A fresh check of a kernel being handed out: one GET, milliseconds on a near gateway.
CHECK_TIMEOUT = 2.0


def _order(order: dict[str, Any]) -> bytes:
    """One line of the reaper's input (see ``_inside/reaper.py``)."""
    return (json.dumps(order) + "\n").encode()


def _listing(kernel_id: str, url: str, token: str) -> bytes:
    return _order({"add": kernel_id, "url": url, "token": token})


class Reaper:
    """The child process that deletes the listed gateway kernels once this process is
    gone (killed included), or when ``close`` ends it. Started on the first ``add``; one
    that died is started again with the whole list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._kernels: dict[str, tuple[str, str]] = {}

    @property
    def pid(self) -> int | None:
        """The reaper process's id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def listed(self) -> set[str]:
        """The ids of the kernels the reaper would delete now."""
        with self._lock:
            return set(self._kernels)

    def add(self, url: str, token: str, kernel_id: str) -> None:
        """List a kernel: deleted if this process dies before it is dropped."""
        if not kernel_id:
            return
        with self._lock:
            self._kernels[kernel_id] = (url, token)
            self._send(_listing(kernel_id, url, token))

    def drop(self, kernel_id: str) -> None:
        """Unlist a kernel its owner has shut down."""
        with self._lock:
            if self._kernels.pop(kernel_id, None) is not None:
                self._send(_order({"drop": kernel_id}), start=False)

    def _send(self, line: bytes, start: bool = True) -> None:
        for _ in range(2):
            proc = self._proc
            if proc is None or proc.poll() is not None:
                if start:
                    self._start()  # a new reaper is given the whole list, this order's too
                return
            stdin: IO[bytes] | None = proc.stdin
            try:
                assert stdin is not None
                stdin.write(line)
                stdin.flush()
                return
            except (OSError, ValueError):
                # Gone meanwhile (never told to end: that would delete kernels in use);
                # the next try starts another.
                proc.kill()
                proc.wait()
                self._proc = None

    def _start(self) -> None:
        # Without a reaper, jobs still run: their kernels are deleted as before when they
        # end; only a notebook killed meanwhile would leave them.
        try:
            # Its own session: a notebook interrupt, sent to the kernel's process group,
            # does not reach it. Nothing of ours open but the pipe, and no cwd to hold.
            proc = subprocess.Popen(
                [sys.executable, _REAPER, str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        except OSError:
            return
        self._proc = proc
        assert proc.stdin is not None
        try:
            for kernel_id, (url, token) in self._kernels.items():
                proc.stdin.write(_listing(kernel_id, url, token))
            proc.stdin.flush()
        except OSError:
            pass  # ended at once: the next order starts another

    def _end(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Tell the reaper to finish (it deletes what it still lists), and reap it."""
        try:
            if proc.stdin is not None:
                proc.stdin.write(_order({"end": True}))
                proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._proc is proc:
            self._proc = None

    def close_if_idle(self, timeout: float = 30.0) -> None:
        """End the reaper when it lists no kernel: a later ``add`` starts another."""
        with self._lock:
            proc = self._proc
            if proc is None or self._kernels:
                return
            self._end(proc, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """End the reaper, which deletes the kernels still listed first."""
        with self._lock:
            proc = self._proc
            self._kernels.clear()
            if proc is not None:
                self._end(proc, timeout)


class ReapedKernel(GatewayKernel):
    """A gateway kernel its reaper lists from the moment the gateway names it until it is
    shut down."""

    def __init__(
        self,
        reaper: Reaper,
        url: str,
        token: str,
        kernel_name: str = "python3",
        env: dict[str, str] | None = None,
    ) -> None:
        self._reaper = reaper
        super().__init__(url, token, kernel_name, env)

    # Listed as soon as the gateway names it, before the runner loads: a notebook killed
    # during those seconds must not leave the kernel behind either.
    def _named(self) -> None:
        self._reaper.add(self.url, self._token, self.kernel_id)

    def shutdown(self, now: bool = False) -> None:
        try:
            super().shutdown(now)
        finally:
            self._reaper.drop(self.kernel_id)


def start_kernel(
    reaper: Reaper,
    url: str,
    token: str,
    kernel_name: str = "python3",
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> GatewayKernel:
    """A new kernel on the gateway, listed by ``reaper`` until it is shut down; raises
    ``KernelStartError`` or ``GatewayError`` as ``GatewayKernel`` does."""
    # A start that fails shuts the kernel down, which unlists it.
    return ReapedKernel(reaper, url, token, kernel_name, env).start(timeout)


class GatewayPool:
    """Pre-started kernels on one gateway for one kernelspec, refilled in the background.

    Each kernel serves one job: ``acquire`` hands it over, and the job's driver shuts it
    down. A background start that fails is retried with a growing wait (``last_error``
    says why); ``acquire`` on an empty pool starts a kernel there and then."""

    def __init__(
        self,
        url: str,
        token: str,
        size: int = 1,
        kernel_name: str = "python3",
        reaper: Reaper | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.size = size
        self.kernel_name = kernel_name
        self._token = token
        self._own_reaper = reaper is None
        self.reaper = reaper if reaper is not None else Reaper()
        self._idle: list[GatewayKernel] = []
        self._starting = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._watcher: threading.Thread | None = None
        self._failures = 0
        self._retry_at = 0.0
        self.last_error = ""  # why the last background start failed; "" once one works

    def fits(self, url: str, token: str, kernel_name: str) -> bool:
        """Whether a job for this gateway, token and kernelspec can take a pooled kernel."""
        return (url.rstrip("/"), token, kernel_name) == (self.url, self._token, self.kernel_name)

    # -- handing out ---------------------------------------------------------------------
    def acquire(self) -> GatewayKernel:
        """A ready kernel: an idle one the gateway still has, else one started now."""
        kernel = take_idle(self._lock, self._idle, self._usable)
        self.refill()
        if kernel is not None:
            return kernel
        return start_kernel(self.reaper, self.url, self._token, self.kernel_name)

    def _usable(self, kernel: GatewayKernel) -> bool:
        """Whether the gateway still has the kernel, asked now: ``alive()`` asks at most
        once a second, and a culled kernel given to a job would fail it."""
        if kernel.lost:
            return False
        try:
            return not kernel.check(CHECK_TIMEOUT)
        except GatewayError:
            # The gateway did not answer: a new kernel would not start either, and the job
            # tells the gateway's own words if the kernel is lost.
            return True

    # -- filling -------------------------------------------------------------------------
    def refill(self) -> None:
        """Start, in the background, as many kernels as the pool lacks (unless a failed
        start waits for its retry)."""
        with self._lock:
            if self._closed:
                return
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="bgjobs-gateway-pool", daemon=True
                )
                self._watcher.start()
            missing = self.size - len(self._idle) - self._starting
            if missing <= 0 or time.monotonic() < self._retry_at:
                return
            self._starting += missing
            self._threads = [t for t in self._threads if t.is_alive()]
            for _ in range(missing):
                t = threading.Thread(
                    target=self._start_one, name="bgjobs-gateway-pool", daemon=True
                )
                self._threads.append(t)
                t.start()

    def _start_one(self) -> None:
        kernel: GatewayKernel | None = None
        error = ""
        try:
            kernel = start_kernel(self.reaper, self.url, self._token, self.kernel_name)
        except Exception as exc:  # a background start must never raise into nowhere
            error = str(exc) or type(exc).__name__
        with self._lock:
            self._starting -= 1
            if kernel is None:
                self._failures += 1
                delay = min(MAX_BACKOFF, BACKOFF * 2 ** (self._failures - 1))
                self._retry_at = time.monotonic() + delay
                self.last_error = error
            else:
                self._failures = 0
                self._retry_at = 0.0
                self.last_error = ""
                if not self._closed:
                    self._idle.append(kernel)
                    kernel = None
            self._changed.notify_all()
        if kernel is not None:
            kernel.shutdown(now=True)

    def _watch(self) -> None:
        """Replace idle kernels the gateway has culled; retry failed starts when due."""
        while True:
            with self._lock:
                wait = CHECK_INTERVAL
                if self._retry_at:
                    wait = min(wait, max(0.05, self._retry_at - time.monotonic()))
            if self._stop.wait(wait):
                return
            with self._lock:
                idle = list(self._idle)
            for kernel in idle:
                if self._stop.is_set() or self._usable(kernel):
                    continue
                with self._lock:
                    if kernel not in self._idle:
                        continue  # taken meanwhile: its job will see
                    self._idle.remove(kernel)
                kernel.shutdown(now=True)
            self.refill()

    # -- looking -------------------------------------------------------------------------
    def idle_ids(self) -> list[str]:
        """The gateway's ids of the kernels waiting in the pool."""
        with self._lock:
            return [k.kernel_id for k in self._idle]

    def wait_warm(self, timeout: float = 60.0) -> bool:
        """Block until the pool holds ``size`` ready kernels (benchmarks and tests use it);
        False if it does not within ``timeout`` seconds."""
        with self._changed:
            return (
                self._changed.wait_for(
                    lambda: self._closed or len(self._idle) >= self.size, timeout
                )
                and not self._closed
            )

    # -- ending --------------------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> None:
        """End the idle kernels and wait for the background starts (whose kernels end as
        they come); kernels jobs took are theirs to end. The reaper goes when it lists
        nothing more."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            threads = list(self._threads)
            watcher = self._watcher
            self._changed.notify_all()
        self._stop.set()
        # Each DELETE waits for the gateway to end its kernel: all at once, not in turn.
        enders = [
            threading.Thread(target=k.shutdown, args=(True,), name="bgjobs-gateway-pool")
            for k in idle
        ]
        for t in enders:
            t.start()
        deadline = time.monotonic() + timeout
        for t in [*enders, *threads, *([watcher] if watcher else [])]:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._own_reaper:
            self.reaper.close(max(1.0, deadline - time.monotonic()))
        else:
            self.reaper.close_if_idle(max(1.0, deadline - time.monotonic()))
