"""A job's checkpoints and its next attempts, as its driver keeps them: a checkpoint
that arrives in chunks from a kernel that shares no files with us, the record of the
newest one, the checkpoint a resumed job goes on from sent to such a kernel, and the
retry of a job that failed or died (``--retries``) from its newest checkpoint."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ._errors import BgJobError
from ._job import Job, Run
from ._results import remove_snapshot
from ._resume import Incoming
from ._states import DIED, FAILED, error_reason
from ._stream import send_seed
from ._trust import NotOurs, open_own


class Attempts:
    """The part of a job's driver that checkpoints and retries (``_driver.Driver``)."""

    job: Job
    run: Run
    runner_spec: dict[str, Any]
    provider: Any
    log: Any
    kernel: Any
    cage: Any
    sampler: Any
    incoming: Incoming | None
    end: dict[str, Any] | None
    stop_reason: str
    kill_at: float | None
    msg_id: str

    def _retry(self, state: str) -> bool:
        """Whether the job goes on with another attempt after one that ended in
        ``state``; if so, the kernel of the last is ended, the wait before the next is
        waited (a cancel ends it), and the next resumes from the newest checkpoint."""
        job, run, spec = self.job, self.run, self.job.spec
        if not self._will_retry(state):
            return False
        delay = spec.retry_delay * 2 ** (job.attempt - 1)
        why = job.reason or error_reason(job.error)
        self.log.write(
            f"\n[jupyter_bgjobs: attempt {job.attempt} of {spec.retries + 1} "
            f"{state.replace('_', ' ')} ({why}); attempt {job.attempt + 1} in {delay:g} s]\n"
        )
        self.log.flush()
        run.attempt_ended(state, why)
        self._end_kernel()
        if run.cancel_asked.wait(delay):
            run.tell(reason="cancelled while waiting to retry")
            return False
        self._again()
        return True

    def _will_retry(self, state: str) -> bool:
        job, spec = self.job, self.job.spec
        return (
            job.attempt <= spec.retries
            and state in (FAILED, DIED, *spec.retry_on)
            and not self.run.cancel_asked.is_set()
            and not self.run.results_lost
            and self.stop_reason != "cancel"
        )

    def _end_kernel(self) -> None:
        if self.run.kernel is not None:
            self.run.kernel.shutdown(now=True)
            self.run.kernel = self.kernel = None
        if self.cage is not None:
            self.cage.remove()
            self.cage = None
        self.sampler = None

    def _again(self) -> None:
        """Ready for the next attempt: what the last left is gone, and it goes on from
        the newest checkpoint (its own, or one the job resumed from), else the start."""
        from ._resume import chain_of, choose, for_runner

        job, run, spec = self.job, self.run, self.runner_spec
        for path in (spec.get("results") or {}).get("paths") or ():
            remove_snapshot(path)
        self.end, self.stop_reason, self.kill_at, self.msg_id = None, "", None, ""
        run.tell(error=None, reason="", exit_code=None, status="")
        chosen = choose(job.name, job.spec.code, chain_of(job.spec, job.folder))
        spec["resume"] = for_runner(chosen.where(), run.token, not self.provider.shares_files)
        run.tell(resumed=f"attempt {job.attempt}: {chosen.note}")

    def _send_checkpoint(self) -> bool:
        """The checkpoint a resumed job goes on from, to a kernel that shares no files
        with us; False when it could not be sent (the job's reason says why)."""
        import mmap

        for key in ("after", "resume"):
            loaded = self.runner_spec.get(key) or {}
            if loaded.get("transport") != "stream" or not loaded.get("path"):
                continue
            try:
                fd = open_own(Path(loaded["path"]))
                try:
                    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as blob:
                        loaded["sha256"] = send_seed(self.kernel, loaded["key"], blob)
                finally:
                    os.close(fd)
            except (OSError, NotOurs, BgJobError) as exc:
                what = "checkpoint" if key == "resume" else "the values it waited for"
                self.run.tell(reason=f"its {what} could not be sent to its kernel: {exc}")
                return False
        return True

    def _checkpoint_part(self, event: dict[str, Any], buffers: list[Any]) -> None:
        """A chunk of a checkpoint from a kernel that shares no files with us, or the
        word that all its chunks were sent."""
        if self.incoming is None:
            self.incoming = Incoming(self.job.folder)
        try:
            if event["type"] == "checkpoint_chunk":
                self.incoming.chunk(event, buffers)
                return
            problem = self.incoming.sent(event)
        except (OSError, ValueError, KeyError) as exc:
            self.incoming.drop()
            problem = str(exc)
        if problem:
            self.log.write(f"\n[jupyter_bgjobs: a checkpoint did not arrive whole: {problem}]\n")
            self.log.flush()

    def _checkpointed(self, event: dict[str, Any]) -> None:
        """The kernel has saved (or could not save) a checkpoint: the record says where
        the job can resume from; what it could not keep is listed with what it skipped."""
        job, run = self.job, self.run
        if event.get("error"):
            self.log.write(
                f"\n[jupyter_bgjobs: no checkpoint after section {event.get('section')!r}: "
                f"{event['error']}]\n"
            )
            self.log.flush()
            return
        keys = ("section", "sections_done", "statement", "total", "nbytes", "names", "seconds")
        facts = {k: event[k] for k in keys if isinstance(event.get(k), int | float | str)}
        facts["at"] = event.get("t", time.time())
        facts["skipped"] = len(event.get("skipped") or [])
        known = {s["name"] for s in job.skipped if s.get("direction") == "checkpoint"}
        job.skipped.extend(
            dict(s, direction="checkpoint")
            for s in event.get("skipped") or []
            if s.get("name") not in known
        )
        run.tell(checkpoint=facts)
