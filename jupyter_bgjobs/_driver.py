"""The driver of one job: it takes a slot and a kernel, sends the seed and the code, reads
what the kernel reports until the job ends (stopping it on cancel or timeout: interrupt,
grace, kill), and loads the results. One thread of the notebook's kernel per job."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from typing import Any, Protocol

from . import _context
from ._attempts import Attempts
from ._cgroup import MemoryCage
from ._config import settings
from ._errors import BgJobError
from ._inside.kernel.wire import (
    EVENT_MIME,
)
from ._inside.procs import death_reason
from ._job import Run
from ._journal import Journal
from ._results import keep_results, load_results, remove_snapshot
from ._resume import Incoming
from ._runtime import JobLog
from ._states import (
    CANCELLED,
    DIED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    WAITING,
    ErrorInfo,
    error_reason,
)
from ._stream import RUNNER, send_seed
from ._usage import Sampler, machine_memory, oom_kills, oom_logged, size_text


class Manager(Protocol):
    """What a driver needs of the manager that owns its job."""

    def take_slot(self, cancelled: threading.Event) -> bool: ...
    def release_slot(self) -> None: ...
    def pool(self) -> Any: ...
    def gateway_kernel(
        self, url: str, token: str, kernel_name: str, env: dict[str, str]
    ) -> Any: ...
    def finish(self, run: Run, state: str) -> None: ...


# Characters of output a job may have written that its notebook has not taken yet: 32
# messages of 256 KiB. Far below ZeroMQ's high-water marks, so nothing is ever dropped.
_FLOW_WINDOW = 8 << 20


class Driver(Attempts):
    """Moves one job from pending to its final state; ``run()`` is its thread's body.

    The job's kernel comes from the provider its run was given where the job was made
    (``_backends.providers``: the warm pool, the job's gateway, or a test's fake)."""

    def __init__(
        self,
        run: Run,
        manager: Manager,
        runner_spec: dict[str, Any],
    ) -> None:
        self.run = run
        self.job = job = run.job
        self.manager = manager
        self.runner_spec = runner_spec
        if run.provider is None:
            raise BgJobError(f"job {job.name!r} was made without a provider of kernels")
        # Where the job's kernel comes from, and what it can do: chosen once, with the run.
        self.provider = run.provider
        self.log: Any = None
        self.kernel: Any = None
        self.msg_id = ""
        self.end: dict[str, Any] | None = None
        self.stop_reason = ""
        self.kill_at: float | None = None
        self.flow_fd: int | None = None
        self.taken = 0
        self.journal = Journal(job.folder)
        # The sampler of what the job's kernel uses (a local kernel's; None elsewhere).
        self.sampler: Sampler | None = None
        self.sampled_at = 0.0
        # The job's own memory cgroup, where its memory limit is the system's to keep.
        self.cage: MemoryCage | None = None
        # A checkpoint on its way from a kernel that shares no files with us.
        self.incoming: Incoming | None = None

    def drive(self) -> None:
        """Move the job from pending to its final state (the body of its thread)."""
        job, run = self.job, self.run
        with JobLog(job.log_path, self._log_fault) as self.log:
            try:
                if self._wait_for_producers() and self._take_slot():
                    try:
                        self._run_in_kernel()
                    finally:
                        self.manager.release_slot()
            except BaseException as exc:  # a driver fault ends the job, visibly
                run.tell(reason=f"internal error in jupyter_bgjobs: {type(exc).__name__}: {exc}")
                self._finish(FAILED)
            finally:
                self._close_flow()
                self.journal.close()
                for path in run.files:
                    remove_snapshot(path)
                close = getattr(run.seed_blob, "close", None)
                if close is not None:
                    close()  # a seed kept for attempts that did not come
                run.seed_blob = None
                if run.kernel is not None:
                    # The runner has written everything before its end event. A graceful
                    # shutdown request can leave ipykernel hung in zmq's context teardown,
                    # an orphan if this process dies meanwhile; killing the process group
                    # cannot hang, and it also ends whatever the job left running.
                    run.kernel.shutdown(now=True)
                if self.cage is not None:
                    self.cage.remove()

    def _log_fault(self, exc: OSError) -> None:
        """The disk refused the job's output: the job goes on; its record says why its
        log is incomplete (the IDE's row shows it)."""
        import errno

        why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else str(exc)
        self.run.tell(log_note=f"its log is incomplete from here on: {why}")

    def _finish(self, state: str) -> None:
        self.manager.finish(self.run, state)

    def _wait_for_producers(self) -> bool:
        """Wait, holding no slot, for the jobs whose results this one reads; then go on
        with the names they made (False: one did not succeed, and this job is cancelled
        saying why, never run on stale data)."""
        from ._waits import values_of, wait_out, waiting_words

        run = self.run
        if not run.waits:
            return True
        if run.state != WAITING:  # a detached job's host: waiting from here
            run.waiting(waiting_words(run.waits))
        why = wait_out(run.waits, run.cancel_asked)
        if why:
            run.tell(reason=why, status="")
            self._finish(CANCELLED)
            return False
        run.tell(status="")
        values = values_of(run.waits)
        if values:
            self._overlay(values)
        return True

    def _overlay(self, values: dict[str, Any]) -> None:
        """The values the jobs waited for made, for the job's kernel to load over its
        seed: a file of the job's folder (sent from there to a kernel that shares none)."""
        from ._resume import for_runner
        from ._waits import overlay_file

        run = self.run
        path = str(self.job.folder / "after.snap")
        run.files.append(path)  # before it is written: an interrupted write is removed too
        skipped = overlay_file(values, run.token, path)
        where = {"path": path, "token": run.token}
        remote = not self.provider.shares_files
        self.runner_spec["after"] = for_runner(where, run.token, remote, "after")
        self.job.skipped.extend(dict(s, direction="in") for s in skipped)

    def _take_slot(self) -> bool:
        if self.manager.take_slot(self.run.cancel_asked):
            return True
        self.run.tell(reason="cancelled while pending")
        self._finish(CANCELLED)
        return False

    # -- starting -------------------------------------------------------------------------
    def _run_in_kernel(self) -> None:
        self.run.start()
        while True:
            state = self._attempt()
            if not self._retry(state):
                self._finish(state)
                return

    def _attempt(self) -> str:
        """One run of the job in a kernel of its own; the state it ends in."""
        job, run = self.job, self.run
        try:
            self.kernel = run.kernel = self.provider.kernel(job.detached)
            job.timings["kernel_ready"] = time.time()
        except BgJobError as exc:
            run.tell(reason=str(exc))
            return FAILED
        if run.cancel_asked.is_set():
            run.tell(reason="cancelled while starting")
            return CANCELLED
        self._limit_memory()
        if not self._send():
            return FAILED
        if run.state != RUNNING:
            run.running()
        if settings.sample_usage or self.job.spec.memory_limit:
            self._start_sampling()
        finished = self._pump()
        # Gone before the job's end is told: whoever waits finds the folder as it stays.
        self._close_flow()
        if self.incoming is not None:
            self.incoming.drop()  # a checkpoint cut off by the kernel's end is none
        if finished:
            return self._conclude()
        return self._on_death()

    def _send(self) -> bool:
        """The seed's chunks (if it travels over the protocol), then the run call; False
        when the seed could not be sent (the job's reason says why)."""
        run, kernel = self.run, self.kernel
        preimport = getattr(kernel, "preimport", None)
        if run.preimport and preimport is not None:
            preimport(run.preimport)
        if run.seed_blob is not None:
            # Every chunk is in (and acknowledged) before the run call is sent. A job
            # that may be retried keeps its seed for the next attempt.
            blob = run.seed_blob
            if not self.job.spec.retries:
                run.seed_blob = None
            try:
                # Hashed as it is sent, not in the notebook's thread that took it.
                self.runner_spec["seed"]["sha256"] = send_seed(kernel, run.token, blob)
            except BgJobError as exc:
                run.tell(reason=str(exc))
                return False
            finally:
                close = getattr(blob, "close", None)
                if close is not None and run.seed_blob is None:
                    close()  # a detached job's seed file, mapped
        if not self._send_checkpoint():
            return False
        if self.provider.shares_files:
            self.runner_spec["context"].update(
                _context.environ_changes(run.environ, getattr(kernel, "launch_env", None))
            )
            self._open_flow()
        # Top-level await runs on the job kernel's loop, as IPython's autoawait runs a cell.
        entry = f"await {RUNNER}.run_async" if run.awaits else f"{RUNNER}.run"
        self.msg_id = kernel.execute(f"{entry}({json.dumps(self.runner_spec)!r})")
        return True

    def _open_flow(self) -> None:
        """The counter of output taken, which the job's kernel waits on (local kernels
        share the job's folder; a gateway's kernel does not)."""
        path = self.job.folder / "flow"
        try:
            self.flow_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            os.pwrite(self.flow_fd, bytes(8), 0)
        except OSError:
            self.flow_fd = None
            return
        self.runner_spec["flow"] = {"path": str(path), "window": _FLOW_WINDOW}

    def _took(self, text: str) -> None:
        if self.flow_fd is None:
            return
        self.taken += len(text)
        try:
            os.pwrite(self.flow_fd, self.taken.to_bytes(8, "little"), 0)
        except OSError:
            pass

    def _close_flow(self) -> None:
        if self.flow_fd is not None:
            try:
                os.close(self.flow_fd)
                os.unlink(self.job.folder / "flow")
            except OSError:
                pass
            self.flow_fd = None

    # -- running ----------------------------------------------------------------------------
    def _pump(self) -> bool:
        """Read the kernel's messages until the run call is idle (True), or the kernel
        died (False)."""
        job, run, kernel = self.job, self.run, self.kernel
        deadline = (time.monotonic() + job.spec.timeout) if job.spec.timeout else None
        last_alive_check = time.monotonic()
        while True:
            msg = kernel.iopub(timeout=0.1)
            if msg is not None and msg["parent_header"].get("msg_id") == self.msg_id:
                if self._on_message(msg):
                    return True
            t = time.monotonic()
            if run.writer is not None:
                run.writer.flush()
            if msg is None or t - last_alive_check > 0.25:
                last_alive_check = t
                if not kernel.alive():
                    return False
                if (job.folder / "cancel.json").exists() and not run.cancel_asked.is_set():
                    # Asked from the Jobs pane: the server writes the request in its folder.
                    run.tell(reason=job.reason or "cancelled from the Jobs pane")
                    run.cancel_asked.set()
            if self.sampler is not None and t - self.sampled_at >= _SAMPLE_EVERY:
                self.sampled_at = t
                self._sample()
            self._stop_if_asked(t, deadline)

    # -- what it costs ----------------------------------------------------------------------
    def _limit_memory(self) -> None:
        """Put the job's kernel in a memory cgroup of its own, where the machine lets us
        make one; else its limit is kept by the sampler. Its log says which."""
        limit = self.job.spec.memory_limit
        pid = self.kernel.pid
        if not limit or not isinstance(pid, int) or not self.provider.shares_files:
            return
        cage = MemoryCage.make(self.job.id, limit)
        if cage is not None and not cage.join(_tree(pid)):
            cage.remove()
            cage = None
        self.cage = cage
        how = "a memory cgroup of its own" if cage else "sampling its memory every second"
        self.log.write(f"[jupyter_bgjobs: its {size_text(limit)} memory limit is kept by {how}]\n")
        self.log.flush()

    def _start_sampling(self) -> None:
        pid = self.kernel.pid
        if not isinstance(pid, int) or not self.provider.shares_files:
            return  # a gateway's kernel is not a process of this machine
        try:
            self.sampler = Sampler(pid)
        except Exception:  # psutil cannot see it: the job runs unsampled
            self.sampler = None
            return
        self.sampled_at = time.monotonic()
        self._sample()

    def _sample(self) -> None:
        sampler, run, limit = self.sampler, self.run, self.job.spec.memory_limit
        if sampler is None:
            return
        try:
            resources = sampler.sample()
        except Exception:  # a sample that fails is skipped, the job goes on
            return
        run.tell(resources=resources, usage=list(sampler.samples))
        if limit and self.cage is None and resources["rss"] > limit and not self.stop_reason:
            # Killed at once, not interrupted: memory that grows while a grace period
            # runs is what the limit is there to stop.
            self.stop_reason = "memory"
            run.tell(
                reason=f"used {size_text(resources['rss'])}, over its {size_text(limit)} limit"
            )
            self.log.write(f"\n[jupyter_bgjobs: {self.job.reason}; kernel killed]\n")
            self.log.flush()
            self.kernel.kill()

    def _on_message(self, msg: dict[str, Any]) -> bool:
        """Take one iopub message of the run call; True once the call is idle."""
        kind, content = msg["msg_type"], msg["content"]
        run, log = self.run, self.log
        if kind == "status":
            return bool(content.get("execution_state") == "idle")
        if kind in ("display_data", "update_display_data") and EVENT_MIME in content.get(
            "data", {}
        ):
            event = content["data"][EVENT_MIME]
            if event.get("type") == "end":
                self.end = event
            if str(event.get("type", "")).startswith("checkpoint_"):
                self._checkpoint_part(event, msg.get("buffers") or [])
            else:
                self._on_event(event)
        elif kind == "stream":
            out = {"output_type": "stream", "name": content["name"], "text": content["text"]}
            run.add_output(out, log)
            self._took(content["text"])
            if content["name"] == "stderr" and "%|" in content["text"]:
                _tqdm_progress(run, content["text"])
        elif kind in ("display_data", "execute_result"):
            data, metadata = content.get("data", {}), content.get("metadata", {})
            self._rich({"output_type": kind, "data": data, "metadata": metadata})
        elif kind == "error":
            error = {k: content[k] for k in ("ename", "evalue", "traceback")}
            self._rich({"output_type": "error", **error})
        return False

    def _rich(self, out: dict[str, Any]) -> None:
        # The journal keeps what the log has only as text, for the IDE's output view.
        # The file's size, not this handle's position: other handles append to the log
        # too (the record writer's notes), and a range must be where the text landed.
        self.log.flush()
        start = os.fstat(self.log.fileno()).st_size
        self.run.add_output(out, self.log)
        self.journal.add(out, start, os.fstat(self.log.fileno()).st_size)

    def _stop_if_asked(self, t: float, deadline: float | None) -> None:
        """Cancel or timeout: interrupt first, kill after ``cancel_grace``."""
        if not self.stop_reason:
            if self.run.cancel_asked.is_set():
                self.stop_reason = "cancel"
                if not self.job.reason and os.path.lexists(self.job.folder / "cancel.json"):
                    # Asked from the Jobs pane (a detached job's host was told by signal).
                    self.run.tell(reason="cancelled from the Jobs pane")
            elif deadline is not None and t > deadline:
                self.stop_reason = "timeout"
                self.run.tell(reason=f"ran past its timeout of {self.job.spec.timeout:g} s")
            if self.stop_reason:
                self.kernel.interrupt()
                self.kill_at = t + settings.cancel_grace
        elif self.kill_at is not None and t > self.kill_at:
            self.log.write(
                f"\n[jupyter_bgjobs: no response to interrupt in "
                f"{settings.cancel_grace:g} s; kernel killed]\n"
            )
            self.log.flush()
            self.kernel.kill()
            self.kill_at = None

    def _on_death(self) -> str:
        run, kernel = self.run, self.kernel
        code = kernel.exit_code()
        self._drain()
        self._close_flow()
        if self.stop_reason:
            # We killed it (over its memory limit, or after the grace period): the
            # user's intent wins.
            run.tell(exit_code=code)
            return _STOPPED[self.stop_reason]
        if self.cage is not None and self.cage.oom_killed():
            limit = size_text(self.cage.limit)
            run.tell(
                exit_code=code,
                reason=f"used all of its {limit} limit and asked for more "
                f"(its memory cgroup ended it; peak {size_text(self.cage.peak())})",
            )
            return FAILED
        remote_reason = getattr(kernel, "death_reason", None)
        reason = remote_reason() if remote_reason else death_reason(code)
        reason += self._killed_why(code)
        tail = kernel.stderr_tail(600)
        if tail:
            run.add_output(
                {"output_type": "stream", "name": "stderr", "text": tail + "\n"}, self.log
            )
            last = tail.strip().splitlines()[0]
            reason += f" ({last.strip()})" if "Fatal Python error" in last else ""
        run.tell(exit_code=code, reason=reason)
        return DIED

    def _reported(self, usage: dict[str, Any]) -> None:
        """What a kernel this machine cannot sample (a gateway's) says it uses, at each
        statement and at its end."""
        figures = {k: usage[k] for k in ("rss", "peak", "cpu_seconds") if k in usage}
        if not all(isinstance(v, int | float) for v in figures.values()) or not figures:
            return
        peak = max(figures.get("peak", 0), self.job.resources.get("peak", 0))
        self.run.tell(resources={**figures, "peak": peak})

    def _killed_why(self, code: int | None) -> str:
        """For a kernel killed by SIGKILL that no limit of ours ended: whether the
        system's OOM killer did it (when the system says), and how much memory it held."""
        if code not in (-9, 137) or self.sampler is None:
            return ""
        before, after = self.sampler.oom_kills_at_start, oom_kills()
        if oom_logged(self.sampler.root.pid):
            said = "; the system's OOM killer ended it (the kernel's log says so)"
        elif before is not None and after is not None and after > before:
            said = "; the system's OOM killer ended it (its memory cgroup's count says so)"
        else:
            said = ""
        total = machine_memory()
        peak = size_text(self.sampler.peak)
        of = f" of {size_text(total)} on this machine" if total else ""
        return f"{said}; its memory peaked at {peak}{of}"

    def _drain(self) -> None:
        """Keep what a dying kernel managed to send before it went."""
        while True:
            msg = self.kernel.iopub(timeout=0.05)
            if msg is None:
                return
            if msg["parent_header"].get("msg_id") == self.msg_id and msg["msg_type"] == "stream":
                content = msg["content"]
                self.run.add_output(
                    {"output_type": "stream", "name": content["name"], "text": content["text"]},
                    self.log,
                )
                self._took(content["text"])

    def _on_event(self, event: dict[str, Any]) -> None:
        job, run = self.job, self.run
        kind = event.get("type")
        if self.sampler is None and isinstance(event.get("usage"), dict):
            self._reported(event["usage"])
        if kind == "plan":
            job.timings["seeded"] = event["t"]
            if job.detached and not job.spec.retries:
                # The kernel has loaded the seed: its holder, the job's host, removes it now
                # (a detached job's files are its seed, the results are kept apart; one
                # that may be retried keeps it for the next attempt).
                for path in run.files:
                    remove_snapshot(path)
                run.files = []
            if "t_start" in event:
                job.timings["runner_started"] = event["t_start"]
            if job.attempt == 1:
                job.skipped.extend(dict(s, direction="in") for s in event.get("skipped", []))
            start = int(event.get("start") or 0)
            run.advance(None if run.custom_progress else start, event["total"])
        elif kind == "checkpoint":
            self._checkpointed(event)
        elif kind == "progress":
            total = event.get("total")
            run.advance(
                int(event["units"]),
                int(total) if total is not None else None,
                custom=True,
                tqdm=False,
            )
        elif kind == "status":
            run.tell(status=str(event["text"]))
        elif kind == "stmt":
            changes: dict[str, Any] = {"section": event["section"]}
            if not run.custom_progress:
                changes["units"] = event["index"]
            if job.first_statement_at is None:
                changes["first_statement_at"] = event["t"]
                job.timings["first_statement"] = event["t"]
            run.advance(**changes)
        elif kind == "end":
            err = event.get("error")
            changes = {} if run.custom_progress else {"units": event["done"]}
            if err:
                changes["error"] = ErrorInfo(err["ename"], err["evalue"], err["traceback"])
            run.advance(**changes)

    # -- ending -------------------------------------------------------------------------------
    def _conclude(self) -> str:
        job, run = self.job, self.run
        if self.stop_reason:
            state = _STOPPED[self.stop_reason]
        elif self.end is None:
            run.tell(reason="the job's kernel returned without reporting an outcome")
            state = FAILED
        elif self.end["status"] == "ok":
            state = SUCCEEDED
        elif self.end["status"] == "interrupted":
            run.tell(reason="interrupted inside its kernel")
            state = CANCELLED
        else:
            # Never a failure without a reason: the job's own error says it.
            run.tell(reason=job.reason or error_reason(job.error))
            state = FAILED
        if state != SUCCEEDED and self._will_retry(state):
            return state  # its next attempt makes the results: these are not loaded
        if job.detached:
            keep_results(run, self.end, self.kernel)
        else:
            load_results(run, self.end, self.kernel)
        return FAILED if state == SUCCEEDED and run.results_lost else state


def _tree(pid: int) -> list[int]:
    """``pid`` and every process it has started."""
    try:
        import psutil

        return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except Exception:
        return [pid]


_TQDM = re.compile(r"(\d+)/(\d+) \[")

# Seconds between two samples of what a job's kernel uses.
_SAMPLE_EVERY = 1.0

# How a job we stopped ends, by why we stopped it.
_STOPPED = {"cancel": CANCELLED, "timeout": TIMED_OUT, "memory": FAILED}


def _tqdm_progress(run: Run, text: str) -> None:
    """A plain tqdm bar in a job (it redraws on stderr with \\r) drives the job's row,
    unless the job reports progress through the API."""
    if run.custom_progress and not run.tqdm_progress:
        return
    found = _TQDM.findall(text.rsplit("\r", 1)[-1]) or _TQDM.findall(text)
    if found:
        done, total = found[-1]
        run.advance(int(done), int(total), custom=True, tqdm=True)
