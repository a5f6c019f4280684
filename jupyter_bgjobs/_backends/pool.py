"""A pool of warm local kernels: started ahead of the jobs, forked from a template that has
imported what the notebook imports and what the jobs about to run import, refilled in the
background as jobs take them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._inside.template import RUNNER
from .ahead import HEAVY, heavy_imports
from .base import KernelSource, take_idle
from .local import LocalKernel, _kernel_log_dir, runner_boot_code
from .template import Template, TemplateUnavailable

# How long a job waits for a kernel the pool is starting before it checks again.
_START_TIMEOUT = 60.0
# Threads starting kernels at once when jobs come faster than one thread starts them.
_HURRIED = 2


class KernelPool:
    """Pre-started kernels of the default kernelspec, refilled in the background."""

    def __init__(self, size: int = 1, kernel_name: str = "python3", fork: bool = True) -> None:
        self.size = size
        self.kernel_name = kernel_name
        self._idle: list[LocalKernel] = []
        # Threads starting kernels for the pool, each one at a time, until it is full.
        self._fillers = 0
        self._lock = threading.Lock()
        # Told when a kernel started for the pool is ready (or failed to start).
        self._ready = threading.Condition(self._lock)
        self._closed = False
        self._threads: list[threading.Thread] = []
        # What warm kernels import ahead of a job: what the notebook has imported, and what
        # the jobs submitted since import.
        self.wanted: list[str] = []
        # The template new kernels are forked from, made on first need; modules whose
        # import starts a thread stay out of it (a fork copies one thread only).
        self.fork = fork
        self._template: Template | None = None
        self._template_lock = threading.Lock()
        self._template_failed = False
        self._unforkable: set[str] = set()

    def acquire(self, kernel_name: str | None = None) -> LocalKernel:
        """A ready kernel: a warm one when there is one for this kernelspec, else a new one."""
        name = kernel_name or self.kernel_name
        kernel = None
        if name == self.kernel_name:
            kernel = take_idle(self._lock, self._idle, LocalKernel.alive)
            if kernel is None:
                self.refill(hurry=True)
                kernel = self._take_or_wait()
        self.refill()
        if kernel is not None:
            with kernel.busy:  # an import under way finishes first: the job needs it too
                return kernel
        # A pool of none (a detached job's host) starts its one kernel without a template.
        forking = self.fork and self.size > 0 and name == self.kernel_name
        return LocalKernel(name).start(template_for=self._template_for if forking else None)

    def _take_or_wait(self) -> LocalKernel | None:
        """An idle kernel; when there is none but one is starting, that one (started before
        this job came, it is ready before one started now)."""
        while True:
            kernel = take_idle(self._lock, self._idle, LocalKernel.alive)
            if kernel is not None:
                return kernel
            with self._lock:
                if self._closed or not self._fillers:
                    return None
                if not self._idle:
                    self._ready.wait(_START_TIMEOUT)

    def follow(self, modules: list[str]) -> None:
        """The notebook has imported ``modules`` (all it has, as it is now): kernels started
        from now on import them ahead of a job, and idle ones that lack them are replaced
        or import them, in the background."""
        self._want(list(modules))

    def expect(self, modules: list[str]) -> None:
        """A job about to run imports ``modules``, which its results bring to the notebook:
        the next jobs' kernels have them as the notebook will, imported once in the
        template rather than in each."""
        with self._lock:
            wanted = list(dict.fromkeys([*self.wanted, *modules]))
        self._want(wanted)

    def _want(self, modules: list[str]) -> None:
        with self._lock:
            if self._closed or modules == self.wanted:
                return
            self.wanted = modules
            template = self._template
            lacking = [(k, set(modules) - k.imported) for k in self._idle]
        forkable = [m for m in modules if m not in self._unforkable]
        if template is not None:
            try:  # queued: the next fork has them, the notebook does not wait
                template.preimport(forkable, wait=False)
            except TemplateUnavailable:
                template = None
        forking = template is not None and template.alive() and not template.spoiled
        retire, top_up = [], []
        for kernel, missing in lacking:
            if not missing:
                continue
            # A slow library is imported once, in the template, and the kernel that lacks
            # it makes way for one forked after: that costs a fraction of the import in
            # each idle kernel, on a machine whose cores the jobs need. What is quick to
            # import (or the template cannot have) the kernel imports itself.
            slow = any(m.split(".")[0] in HEAVY for m in missing)
            if forking and slow and missing <= set(forkable):
                retire.append(kernel)
            else:
                top_up.append(kernel)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            for kernel in retire:
                if kernel in self._idle:
                    self._idle.remove(kernel)
                    self._background(kernel.shutdown, True)
            for kernel in top_up:
                if kernel in self._idle:
                    self._background(self._top_up, kernel, modules)
        if retire:
            self.refill()

    def _background(self, target: Callable[..., object], *args: object) -> None:
        """Run ``target(*args)`` in a thread the pool joins when it closes (under its lock)."""
        t = threading.Thread(target=target, args=args, name="bgjobs-pool", daemon=True)
        self._threads.append(t)
        t.start()

    def _template_for(self, cmd: list[str], env: dict[str, str]) -> Template | None:
        """The template to fork a kernel of ``cmd`` from: the pool's, made (or made anew
        without the module that spoiled it) when needed; None to start the usual way."""
        wanted = [m for m in dict.fromkeys([*heavy_imports(), *self.wanted])]
        with self._template_lock:
            template = self._template
            if template is not None and template.alive() and not template.spoiled:
                if template.python != cmd[0]:
                    return None
                try:  # asked before the fork: the kernel has them from the template
                    template.preimport([m for m in wanted if m not in self._unforkable], False)
                except TemplateUnavailable:
                    pass
                return template
            if template is not None:
                if template.spoiled == RUNNER:
                    self._template_failed = True
                elif template.spoiled:
                    self._unforkable.add(template.spoiled)
                template.close()
                self._template = None
            if self._template_failed or self._closed:
                return None
            template = None
            try:
                template = Template(cmd[0], env, _kernel_log_dir())
                template.boot(runner_boot_code())
                template.preimport([m for m in wanted if m not in self._unforkable])
            except (TemplateUnavailable, OSError):
                # A Python that cannot run it (too old, no ipykernel): never again here.
                self._template_failed = True
                if template is not None:
                    template.close()
                return None
            self._template = template
            return template

    def _top_up(self, kernel: LocalKernel, modules: list[str]) -> None:
        with kernel.busy:
            try:
                kernel.preimport(modules)
            except Exception:  # a kernel that cannot import is still a kernel
                pass

    def refill(self, hurry: bool = False) -> None:
        """Start kernels until the pool is full: one after another in one thread, or in
        two at once when a job found the pool empty (``hurry``)."""
        with self._lock:
            if self._closed or len(self._idle) >= self.size:
                return
            if self._fillers >= (_HURRIED if hurry else 1):
                return
            self._fillers += 1
            self._threads = [t for t in self._threads if t.is_alive()]
            self._background(self._fill)

    def _fill(self) -> None:
        # One kernel's start at a time while a kernel is ready for the next job: it leaves
        # the other cores to the jobs running (two starting at once on a machine of two
        # cores slowed a job's own code by a tenth). Two when jobs come faster than that.
        while True:
            with self._lock:
                if self._closed or len(self._idle) + self._fillers - 1 >= self.size:
                    self._fillers -= 1
                    self._ready.notify_all()
                    return
            kernel: LocalKernel | None = None
            try:
                kernel = LocalKernel(self.kernel_name).start(
                    template_for=self._template_for if self.fork else None
                )
            except Exception:
                kernel = None
            if kernel is not None:
                self._top_up(kernel, list(dict.fromkeys([*heavy_imports(), *self.wanted])))
            with self._lock:
                failed = kernel is None
                if kernel is not None and not self._closed:
                    self._idle.append(kernel)
                    kernel = None
                if failed:
                    # A kernel that cannot start now: the next job starts its own, and says
                    # why if it cannot either; the pool tries again when a job takes one.
                    self._fillers -= 1
                self._ready.notify_all()
            if kernel is not None:
                kernel.shutdown(now=True)
            if failed:
                return

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def wait_warm(self, timeout: float = 60.0) -> bool:
        """Block until the pool holds ``size`` ready kernels (benchmarks and tests use it)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._threads)
            if not any(t.is_alive() for t in threads) or time.monotonic() >= deadline:
                break
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        return self.idle_count() >= self.size

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            threads = list(self._threads)
            self._ready.notify_all()
        for kernel in idle:
            kernel.shutdown(now=True)
        for t in threads:
            t.join(30)
        with self._template_lock:
            template, self._template = self._template, None
        if template is not None:
            template.close()


if TYPE_CHECKING:  # mypy holds it to the driver's interface
    _source: type[KernelSource] = KernelPool
