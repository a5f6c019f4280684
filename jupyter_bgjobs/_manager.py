"""The process-wide registry of jobs: the warm pools (local, and on the default gateway),
concurrency slots, submitting (the snapshot out, the runner's spec), the merge queue, and
shutdown."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _context, _snapshot, _store
from ._backends.ahead import heavy_imports
from ._backends.gateway import gateway_settings
from ._backends.gateway_pool import GatewayPool, Reaper, start_kernel
from ._backends.pool import KernelPool
from ._backends.providers import provider_for
from ._config import on_change, settings
from ._driver import Driver
from ._errors import JobSpecError, JobStateError
from ._job import Job, Run, run_of
from ._results import remove_snapshot
from ._resume import checkpoint_of, for_runner
from ._runtime import job_shm_dir, open_log
from ._spec import JobSpec, parse_after, transformed
from ._state_record import RecordWriter, launched_record
from ._states import FAILED, SUCCEEDED
from ._waits import Wait, binds_of, listed, waiting_words, waits_for


class JobManager:
    """The process-wide registry of jobs and the threads that drive them."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._lock = threading.RLock()
        self._slots = threading.Condition(self._lock)
        self._running = 0
        self._threads: dict[str, threading.Thread] = {}
        self._pool: KernelPool | None = None
        self._gateway_pool: GatewayPool | None = None
        # Lists every gateway kernel this process holds for its jobs, pooled or not, so
        # that none outlives a notebook kernel that was killed.
        self.reaper = Reaper()
        self._unmerged: list[Run] = []
        self._listeners: list[Callable[[Job], Any]] = []
        self.submit_hooks: list[Callable[[Job], Any]] = []

    # -- pool -------------------------------------------------------------------------
    def pool(self) -> KernelPool:
        with self._lock:
            if self._pool is None:
                self._pool = KernelPool(settings.pool_size, settings.kernel, settings.pool_fork)
                self._pool.refill()
            pool = self._pool
        # Where the local pool starts warming, the gateway's does too.
        self.gateway_pool()
        return pool

    def follow_imports(self, modules: list[str]) -> None:
        """The notebook's imports as they are now: the warm kernels import them too."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            pool.follow(modules)

    def resize_pool(self) -> None:
        with self._lock:
            pool = self._pool
            self._pool = None
        if pool is not None:
            pool.close()
        self.pool()

    def gateway_pool(self) -> GatewayPool | None:
        """The warm kernels on the default gateway, made (and warming) on first use; None
        when ``gateway_pool_size`` is 0 or there is no default gateway."""
        with self._lock:
            if self._gateway_pool is None and settings.gateway_pool_size > 0:
                url, token = gateway_settings(None)
                if url:
                    self._gateway_pool = GatewayPool(
                        url, token, settings.gateway_pool_size, settings.kernel, self.reaper
                    )
                    self._gateway_pool.refill()
            return self._gateway_pool

    def reset_gateway_pool(self) -> None:
        """Close the gateway pool and make it anew from the settings, unless they are the
        ones it has."""
        url, token = gateway_settings(None)
        with self._lock:
            pool = self._gateway_pool
            if (
                pool is not None
                and pool.size == settings.gateway_pool_size
                and pool.fits(url, token, settings.kernel)
            ):
                return
            self._gateway_pool = None
        if pool is not None:
            pool.close()
        self.gateway_pool()

    def gateway_kernel(self, url: str, token: str, kernel_name: str, env: dict[str, str]) -> Any:
        """A started kernel on a gateway for an attached job: a pooled one when the job
        fits the pool (its gateway, its kernelspec, no kernel variables), else a new one.
        The reaper lists it until the job's driver shuts it down."""
        pool = self.gateway_pool()
        if pool is not None and not env and pool.fits(url, token, kernel_name):
            return pool.acquire()
        return start_kernel(self.reaper, url, token, kernel_name, env)

    # -- registry -------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        with self._lock:
            return [r.job for r in self._runs.values()]

    def get(self, name_or_id: str) -> Job:
        with self._lock:
            if name_or_id in self._runs:
                return self._runs[name_or_id].job
            named = [r.job for r in self._runs.values() if r.job.name == name_or_id]
        if not named:
            raise JobSpecError(
                f"no job named {name_or_id!r}; jupyter_bgjobs.jobs() lists the jobs there are"
            )
        return named[-1]

    def unique_name(self, name: str) -> str:
        """``name``, or ``name-2``... when a running job of this process, or a detached one
        this notebook started (from this kernel or an earlier one), has it."""
        from ._stored import running_names_of_this_notebook

        with self._lock:
            busy = {r.job.name for r in self._runs.values() if not r.job.done}
        busy |= running_names_of_this_notebook()
        if name not in busy:
            return name
        n = 2
        while f"{name}-{n}" in busy:
            n += 1
        return f"{name}-{n}"

    def _name_apart(self, spec: JobSpec) -> None:
        """A name no running job of this process has: ``fit-2`` beside a running ``fit``."""
        base = spec.name
        unique = self.unique_name(base)
        if unique != base:
            print(f"jupyter_bgjobs: a job named {base!r} is still running; this one is {unique!r}")
        spec.name = unique
        spec.results_name = unique.replace("-", "_") + "_results"

    def add_listener(self, fn: Callable[[Job], Any]) -> None:
        self._listeners.append(fn)

    # -- submitting -------------------------------------------------------------------------
    def submit(self, spec: JobSpec, ns: dict[str, Any] | None = None) -> Job:
        """Start ``spec`` as a job of this process, driven by a thread of its own."""
        run, runner_spec = self.prepare(spec, ns)
        self.start(run, runner_spec)
        return run.job

    def prepare(
        self, spec: JobSpec, ns: dict[str, Any] | None, *, detached: bool = False
    ) -> tuple[Run, dict[str, Any]]:
        """Make the job's folder, its seed and its spec: everything but the driving, which
        is this process's (``start``) or, detached, a host process's (``run_here``)."""
        self._name_apart(spec)
        source = transformed(spec.code)
        # Before anything is made: an --after name no job has is a one-line error.
        waits = self._waits_of(spec, source)
        folder = _store.new_entry("start a detached job") if detached else None
        run = Run(spec, self, folder=folder, detached=detached)
        run.waits, run.binds = waits, binds_of(spec, source)
        run.job.waits_for = [w.words() for w in waits]
        run.job.waits_for_ids = [w.job.id for w in waits]
        try:
            runner_spec = self._write_job(run, spec, ns, source)
        except BaseException:
            self.discard(run)
            raise
        return run, runner_spec

    def _waits_of(self, spec: JobSpec, source: str) -> list[Wait]:
        """The jobs a job of ``spec`` waits for: those ``--after`` names, and the jobs of
        this process whose results are not in the notebook yet (running, or ended and
        waiting for a cell's end to merge) that bind a name it reads."""
        explicit, implicit = parse_after(spec.after)
        with self._lock:
            unfinished = [(r.job, r.binds) for r in self._runs.values() if not r.merged]
        return waits_for(source, explicit, implicit, unfinished, self._named)

    def _named(self, name: str) -> Any:
        """The job ``--after NAME`` means: the latest of this process with that name, else
        a detached one of the store."""
        try:
            return self.get(name)
        except JobSpecError:
            from ._detached import find

            return find(name)

    def namespace(self) -> dict[str, Any]:
        """The notebook's namespace, which jobs of this process are seeded from."""
        from ._merge import target_namespace

        return target_namespace()

    def unfinished(self) -> list[tuple[Job, set[str]]]:
        """The jobs of this process that have not ended, each with the names it binds."""
        with self._lock:
            return [(r.job, set(r.binds)) for r in self._runs.values() if not r.job.done]

    def discard(self, run: Run) -> None:
        """Remove what ``prepare`` made for a job that will not start: its seed, its
        shared-memory folder and, detached, its folder in the store."""
        import shutil

        if run.job.detached:
            shutil.rmtree(run.job.folder, ignore_errors=True)
            if run.shm_dir:
                shutil.rmtree(run.shm_dir, ignore_errors=True)
        for path in run.files:
            remove_snapshot(path)

    def _write_job(
        self, run: Run, spec: JobSpec, ns: dict[str, Any] | None, source: str
    ) -> dict[str, Any]:
        job = run.job
        if ns is not None:
            run.ns_ids = {k: id(v) for k, v in ns.items()}
        # A kernel that shares no files with us (a gateway's): everything travels over its
        # protocol.
        run.provider = provider_for(spec, self)
        remote = not run.provider.shares_files
        transport = "stream" if settings.transport == "stream" or remote else "file"
        # What the notebook's environment is now, not when a warm kernel was started.
        run.environ = dict(os.environ)
        run.awaits = _context.awaits(source)
        seed = self._write_seed(run, spec, ns, source, transport)
        unshipped = _snapshot.unshipped_names(ns, job.shipped) if ns else []
        seed_spec: dict[str, Any] | None = None
        if seed is not None and (seed.path or seed.streamed):
            seed_spec = {
                "transport": transport,
                "path": seed.path,
                "pieces": seed.pieces,
                "nbytes": seed.nbytes,
                # Kept for the next attempt of a job that may be retried.
                "keep": spec.retries > 0,
            }
        if job.detached:
            # Shared memory first, for speed; the host moves them into the job's folder
            # once they are written, where they wait for whoever attaches them.
            result_paths = _paths_apart(run, "results")
            run.result_paths = list(result_paths)
        else:
            result_paths = _snapshot.snapshot_paths(str(job.folder), job.id, "results")
            run.files.extend(result_paths)
        runner_spec = {
            "job_id": job.id,
            "name": job.name,
            "code": spec.code,
            "filename": spec.script_path,
            "script_file": spec.script_path,
            "workdir": spec.workdir,
            "token": run.token,
            "seed": seed_spec,
            "imports": seed.imports if seed else {},
            "import_origins": _snapshot.import_origins(seed.imports) if seed else {},
            "not_shipped": seed.skipped if seed else [],
            "notebook_names": unshipped,
            "notebook_rows": _snapshot.who_rows(ns or {}, unshipped, source),
            "context": {} if remote else (spec.import_context or _context.import_context()),
            "results": {
                "transport": transport,
                "paths": result_paths,
                "arena": settings.results_arena,
            },
            "env_vars": spec.env_vars,
            "params": spec.params,
        }
        if spec.checkpoint:
            # Into the job's own folder, which outlives this kernel and a reboot; a kernel
            # that shares no files with us sends it here instead.
            where = str(checkpoint_of(job.folder))
            runner_spec["checkpoint"] = {"transport": "stream" if remote else "file", "path": where}
        if spec.resume:
            runner_spec["resume"] = for_runner(spec.resume, run.token, remote)
        # The code is stored once, in a file of its own: records stay small, and every
        # reader of the record (the IDE's list, the CLI) reads none of it.
        described = spec.to_json()
        _store.write_bytes(job.folder / _store.CODE_FILE, described.pop("code").encode())
        record = {
            "kind": "job",
            "id": job.id,
            "name": job.name,
            "detached": job.detached,
            "submitted": job.submitted.isoformat(),
            "shipped": job.shipped,
            "not_shipped": [s for s in job.skipped if s.get("direction") == "in"],
            "awaits": run.awaits,
            "waits": listed(run.waits),
            **described,
            "code_file": _store.CODE_FILE,
        }
        if job.detached:
            # What the host needs to drive the job: the runner's spec (its code is the
            # job's, read by the host) and the token that opens the results. The file
            # is its owner's only.
            record.update(
                token=run.token,
                runner={k: v for k, v in runner_spec.items() if k != "code"},
                seed_files=list(run.files),
                shm_dir=run.shm_dir or None,
                # The slow libraries this notebook has: its host's cold kernel imports
                # them before the job, as a warm kernel here would have.
                preimport=heavy_imports(),
            )
        _store.write_json(job.folder / "spec.json", record)
        run.writer = RecordWriter(job, record=launched_record if job.detached else None)
        run.listeners.append(run.writer)
        run.writer.write()
        return runner_spec

    def _write_seed(
        self,
        run: Run,
        spec: JobSpec,
        ns: dict[str, Any] | None,
        source: str,
        transport: str,
    ) -> _snapshot.Snapshot | None:
        if ns is None or spec.env == "none":
            return None
        names = _snapshot.select_names(ns, spec.env, source)
        job = run.job
        if job.detached:
            # Not in this process's shared-memory folder, which goes when this process
            # does: a detached job's seed must wait for its kernel even then.
            paths = _paths_apart(run, "seed")
        else:
            paths = _snapshot.snapshot_paths(str(job.folder), job.id, "seed")
        run.files.extend(paths)  # before writing: an interrupted write is cleaned too
        job.timings["snapshot_started"] = time.time()
        # A detached job's host sends its seed: it waits in the job's folder, binary.
        stream_file = job.folder / "seed.stream" if job.detached else None
        seed = _snapshot.write_snapshot(ns, names, run.token, paths, transport, stream_file)
        job.shipped = seed.shipped
        job.skipped.extend(dict(s, direction="in") for s in seed.skipped)
        run.seed_blob = seed.blob
        job.timings["snapshot_written"] = time.time()
        return seed

    def start(self, run: Run, runner_spec: dict[str, Any]) -> None:
        """Drive ``run`` from a thread of this process."""
        job = run.job
        run.listeners.extend(self._listeners)
        if run.waits:
            # Waiting from the moment it is made: its row says so before the cell ends.
            run.waiting(waiting_words(run.waits))
        with self._lock:
            self._runs[job.id] = run
            driver = Driver(run, self, runner_spec)
            thread = threading.Thread(target=driver.drive, name=f"bgjob-{job.name}", daemon=True)
            self._threads[job.id] = thread
        self.pool()
        thread.start()
        for hook in list(self.submit_hooks):
            hook(job)

    def run_here(self, run: Run, runner_spec: dict[str, Any]) -> None:
        """Drive ``run`` in the calling thread (a detached job's host does)."""
        with self._lock:
            self._runs[run.job.id] = run
        Driver(run, self, runner_spec).drive()

    def take_slot(self, cancelled: threading.Event) -> bool:
        """Wait for one of ``max_concurrent`` slots; False if cancelled meanwhile."""
        with self._slots:
            while self._running >= max(1, settings.max_concurrent) and not cancelled.is_set():
                self._slots.wait(0.5)
            if cancelled.is_set():
                return False
            self._running += 1
            return True

    def release_slot(self) -> None:
        with self._slots:
            self._running -= 1
            self._slots.notify_all()

    def join_worker(self, job: Job, timeout: float = 30) -> None:
        thread = self._threads.get(job.id)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def finish(self, run: Run, state: str) -> None:
        """End ``run`` in ``state``: its merge waits for the notebook (or there is none,
        and its report is written now), then its done callbacks run."""
        job = run.job
        mergeable = state == SUCCEEDED or (state == FAILED and job.spec.on_failure == "merge")
        if job.spec.results == "none" or run.values is None or not mergeable:
            run.merged = True
        with self._lock:
            if not run.merged:
                self._unmerged.append(run)
        report = ""
        if run.merged:
            from ._merge import Outcome, report_line

            report = report_line(Outcome.of_run(run, ended=state), state=state)
        run.end(state, report)
        if job.spec.notify:
            from ._notify import tell_end

            why = job.reason or (f"{job.error.ename}: {job.error.evalue}" if job.error else "")
            tell_end(
                job.spec.notify, job.name, state, job.elapsed, job.resources, why, job.log_path
            )
        callbacks = run.take_callbacks()
        try:
            for fn in callbacks:
                try:
                    fn(job)
                except Exception as exc:  # a user callback must not kill the driver
                    try:
                        with open_log(job.log_path) as log:
                            log.write(f"\n[jupyter_bgjobs: done callback {fn!r} raised {exc!r}]\n")
                    except OSError:  # a full or read-only disk: the note is lost, not the job
                        pass
        finally:
            run.settle(True)

    # -- merging -------------------------------------------------------------------------
    def merge(self, job: Job, ns: dict[str, Any] | None = None) -> str:
        """Merge one finished job's results into ``ns`` (the notebook's namespace)."""
        from ._merge import Outcome, merge_results, target_namespace

        run = run_of(job)
        with self._lock:
            if run.merged or not job.done:
                return ""
            run.merged = True
            if run in self._unmerged:
                self._unmerged.remove(run)
        report = merge_results(Outcome.of_run(run), ns if ns is not None else target_namespace())
        run.tell(report=report)
        return report

    def merge_ready(self, ns: dict[str, Any] | None = None) -> list[tuple[Job, str]]:
        """Merge every finished job not merged yet, in the order they finished; each job
        with its report."""
        with self._lock:
            ready = [r.job for r in self._unmerged if r.job.done]
        merged = [(job, self.merge(job, ns)) for job in ready]
        return [(job, report) for job, report in merged if report]

    # -- ending -------------------------------------------------------------------------
    def shutdown(self, announce: bool = False, stream: Any = None, reason: str = "") -> list[Job]:
        """Cancel running jobs (their records say ``reason``), end the pool, and join
        every driver thread."""
        with self._lock:
            runs = [r for r in self._runs.values() if not r.job.done]
        active = [r.job for r in runs]
        for run in runs:
            if reason and not run.job.reason:
                run.tell(reason=reason)
        if announce and active:
            names = ", ".join(
                f"{j.name} ({j.state} {j.progress[0]}/{j.progress[1]})" for j in active
            )
            print(
                f"jupyter_bgjobs: ending {len(active)} running job(s): {names}",
                flush=True,
                file=stream or sys.stdout,
            )
        for run in runs:
            run.cancel_asked.set()
        saved_grace = settings.cancel_grace
        for job in active:
            self.join_worker(job, timeout=saved_grace + 15)
        with self._lock:
            pool, self._pool = self._pool, None
            gateway_pool, self._gateway_pool = self._gateway_pool, None
        if pool is not None:
            pool.close()
        if gateway_pool is not None:
            gateway_pool.close()
        for thread in list(self._threads.values()):
            thread.join(30)
        # Whatever the drivers did not end (a thread that did not stop) the reaper ends.
        self.reaper.close()
        return active

    def remove(self, job: Job) -> None:
        """Forget a finished job (its log stays on disk); a running job stays."""
        if not job.done:
            raise JobStateError(
                f"job {job.name!r} is still {job.state}; cancel() it before removing it"
            )
        run = run_of(job)
        with self._lock:
            self._runs.pop(job.id, None)
            if run in self._unmerged:
                self._unmerged.remove(run)
        for path in run.files:
            remove_snapshot(path)

    def forget_finished(self) -> None:
        with self._lock:
            for key in [k for k, r in self._runs.items() if r.job.done]:
                del self._runs[key]
                self._threads.pop(key, None)


def _paths_apart(run: Run, what: str) -> list[str]:
    """Where a detached job's seed or results may go: a shared-memory folder of the job's
    own (not this process's, which goes when this process does; the job's host removes
    it), else the job's folder."""
    paths = [str(run.job.folder / f"{what}.snap")]
    if run.shm_dir is None:
        run.shm_dir = job_shm_dir(run.job.id) or ""
    if run.shm_dir:
        paths.insert(0, os.path.join(run.shm_dir, f"{what}.snap"))
    return paths


# The one manager of this process: every attached job is in it.
manager = JobManager()


def _on_settings(changed: set[str]) -> None:
    if changed & {"pool_size", "pool_fork", "kernel"}:
        manager.resize_pool()
    if changed & {"gateway_pool_size", "gateway", "gateway_token", "kernel"}:
        manager.reset_gateway_pool()


on_change.append(_on_settings)
