"""The status line under a ``%%bgjob`` cell, and the ticker that keeps it current.

Updates go through a display handle (``update_display_data``), never through printing
from a thread. While jobs run, the ticker's updates also count as kernel activity, so
jupyter_server's idle culler leaves the notebook's kernel alone.
"""

from __future__ import annotations

import datetime as dt
import html
import threading
import time
from typing import TYPE_CHECKING, Any

from ._handle import Handle
from ._states import colour_of, icon, label
from ._text import clock as clock_text
from ._text import count as count_text

if TYPE_CHECKING:
    from ._api import Job

KEEPALIVE_ID = "jupyter-bgjobs-keepalive"
# The IDE's extension renders a job's row from this (the store has its true state, after
# the kernel is gone too); front ends without it fall back to the widget or the text.
JOB_MIME = "application/vnd.jupyter-bgjobs.job+json"


def job_mime(job: Handle) -> dict[str, Any]:
    """The IDE's form of ``job``'s row, for a job with a record in the store."""
    if job.folder is None:
        return {}
    # When the row was shown: a row shown a moment ago whose record is not in the store
    # yet says "starting", an older one "no longer in the job store".
    shown = dt.datetime.now().astimezone().isoformat()
    # The cell and notebook the job was started from: a front end shows the newest job of
    # that cell there (the notebook may have been reloaded without being saved).
    row = {"id": job.id, "name": job.name, "state": job.state, "shown": shown}
    row["notebook"], row["cell"] = job.started_from
    return {JOB_MIME: row}


def attempt_text(job: Handle) -> str:
    """``attempt 2 of 3`` for a job that is retried, past its first attempt."""
    attempt = getattr(job, "attempt", 1)
    attempts = getattr(job, "attempts", None)
    if attempts is None:
        spec = getattr(job, "spec", None)
        attempts = getattr(spec, "retries", 0) + 1
    return f"attempt {attempt} of {attempts}" if attempts > 1 and attempt > 1 else ""


def status_text(job: Handle, look: str | None = None) -> str:
    """The job's status line; ``look`` shows it in another state's icon and word (a
    panel row's ``partial``)."""
    done, total = job.progress
    look = look or job.state
    parts = [f"{icon(look)} {job.name}", label(look)]
    if total:
        parts.append(count_text(done, total, job.state))
    if job.section and not job.done:
        parts.append(f"[{job.section}]")
    attempt = attempt_text(job)
    if attempt:
        parts.append(f"({attempt})")
    parts.append(clock_text(job.elapsed))
    line = "  ".join(parts)
    if job.report:
        line += "  ·  " + job.report.split(": ", 1)[-1]
    elif job.done and not job.merged:
        line += "  ·  results merge before the next cell runs (or in job.wait())"
    return line


def live_frontend() -> bool:
    """True inside a kernel that has a front end (ZMQ), where display updates work."""
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class StatusLine:
    """A one-line, in-place status display for one job."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.handle: Any = None
        self._last = 0.0
        self._lock = threading.Lock()
        self.live = live_frontend()

    def _bundle(self) -> dict[str, str]:
        text = status_text(self.job)
        colour = colour_of(self.job.state)
        return {
            "text/plain": text,
            "text/html": f'<div style="font-family:monospace;color:{colour}">'
            f"{html.escape(text)}</div>",
            **job_mime(self.job),
        }

    def show(self) -> None:
        from IPython.display import display

        if self.live:
            self.handle = display(self._bundle(), raw=True, display_id=True)
        else:
            print(status_text(self.job))

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < 0.2:
                return
            self._last = now
        if self.handle is not None:
            with self._lock:
                self.handle.update(self._bundle(), raw=True)


class Ticker:
    """One thread that refreshes every live status line about once a second."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.lines: list[StatusLine] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, line: StatusLine | None) -> None:
        """Keep ``line`` current; with None, just make sure the ticker runs."""
        with self._lock:
            if line is not None:
                self.lines.append(line)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="bgjobs-ticker", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        from ._api import manager

        while not self._stop.wait(self.interval):
            with self._lock:
                lines = list(self.lines)
                # A finished job's line gets one last refresh here; its merge report later
                # arrives through the job's listener, from the cell that merges it.
                self.lines = [ln for ln in lines if not ln.job.done]
            for line in lines:
                try:
                    line.refresh(force=True)
                except Exception:
                    pass
            active = any(not j.done for j in manager.jobs())
            if active and not any(ln.handle for ln in lines):
                keepalive()
            if not active and not self.lines:
                with self._lock:
                    if not self.lines:
                        self._thread = None
                        return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def keepalive() -> None:
    """Publish an update for a display nobody shows: kernel activity without any output."""
    if not live_frontend():
        return
    from IPython.display import update_display

    try:
        update_display({"text/plain": ""}, raw=True, display_id=KEEPALIVE_ID)
    except Exception:
        pass


ticker = Ticker()


def ensure_ticker(job: Job) -> None:
    """Submit hook: in a kernel with a front end, keep it active while jobs run."""
    if live_frontend():
        ticker.add(None)
