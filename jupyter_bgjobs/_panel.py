"""The Jobs panel: a row per job (state, progress, section, elapsed, Stop/Remove, output),
a summary bar across running jobs, in ipywidgets for JupyterLab, Notebook 7 and VS Code.

Rows change through widget state, coalesced: a listener marks a row dirty and one updater
thread refreshes dirty rows at most ten times a second, and ticks elapsed times once a
second. Nothing is printed from a thread. Each widget also carries a plain-text form, so a
front end without widgets (nbconvert, ``jupyter execute``) shows the status as text.
"""

from __future__ import annotations

import html
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ._display import attempt_text, job_mime, live_frontend, status_text
from ._handle import Handle
from ._merge import listed
from ._progress import ProgressJob
from ._states import FAILED, LOOKS, PARTIAL, colour_of, icon, label
from ._text import clock as clock_text
from ._text import count as count_text
from ._text import text_table as _aligned
from ._text import usage as usage_text

if TYPE_CHECKING:
    from ._detached import DetachedJob
    from ._job import Job

# A look, not a state: a progress row that succeeded with some units failed (a queue with
# failed tasks) reads apart from both an all-green success and an all-red failure.
_LOG_LIMIT = 20 << 20


def _look(job: Handle) -> str:
    """What a row shows as its state: the job's state, or ``partial``."""
    return PARTIAL if job.partial else job.state


def row_text(job: Handle) -> str:
    """A row as one line of plain text, for front ends without widgets."""
    look = _look(job)
    line = status_text(job, look)
    # A partial row says what went wrong, as its widget's status does.
    return line + (f"  ·  {job.status}" if look == PARTIAL and job.status else "")


def resumable(job: Handle) -> bool:
    """Whether a row offers Resume: a job of code (a cell, a script) that ended on its way
    (failed, died, timed out, cancelled), whose handle can resume it."""
    from ._resume import RESUMABLE

    kind = getattr(job, "kind", None) or getattr(getattr(job, "spec", None), "kind", "")
    return (
        job.done
        and job.state in RESUMABLE
        and kind in ("cell", "script")
        and hasattr(job, "resume")
    )


def widgets_available() -> bool:
    """Widgets are worth making: a kernel with a front end (ZMQ), not a terminal."""
    return live_frontend()


# How much of a job's output the row's Output view sends to the browser; "Full log" has it all.
_VIEW_LIMIT = 256 * 1024


def _recent(outputs: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The newest outputs that fit in the view's budget: a flood of output must not be
    sent to the browser again on every refresh."""
    kept: list[dict[str, Any]] = []
    size = 0
    for out in reversed(outputs):
        size += len(str(out.get("text", ""))) + sum(
            len(str(v)) for v in out.get("data", {}).values()
        )
        if kept and size > _VIEW_LIMIT:
            break
        kept.append(out)
    return tuple(reversed(kept))


def _version(job: Handle) -> int:
    return job.output_version


def _fit() -> W.Layout:
    """A button as wide as its label: fixed widths cut labels off in some front ends."""
    return W.Layout(width="auto", flex="0 0 auto")


class JobRow(W.VBox):  # type: ignore[misc]
    """One job's live row; the same widget shows under its cell and in the panel."""

    def __init__(self, job: Handle, notify: bool = False) -> None:
        self.job = job
        self.notify = notify
        self._lock = threading.Lock()
        self._last: tuple[Any, ...] = ()
        self._shown_outputs = -1
        self._notified = False
        self.icon = W.HTML(layout=W.Layout(width="8.5em", flex="0 0 auto"))
        self.title = W.HTML(
            f"<b>{html.escape(job.name)}</b>", layout=W.Layout(width="10em", flex="0 0 auto")
        )
        self.bar = W.IntProgress(
            min=0, max=1, value=0, layout=W.Layout(width="14em", flex="0 0 auto")
        )
        self.count = W.HTML(layout=W.Layout(width="5.5em", flex="0 0 auto"))
        # One line, cut with an ellipsis (the whole text in its tooltip): a narrow output
        # area must not wrap it word by word, and the buttons wrap below it, not clipped.
        self.text = W.HTML(layout=W.Layout(flex="1 1 10em", min_width="10em", overflow="hidden"))
        self.clock = W.HTML(layout=W.Layout(width="4.5em", flex="0 0 auto"))
        self.stop = W.Button(description="Stop", button_style="danger", icon="stop", layout=_fit())
        self.drop = W.Button(description="Remove", icon="times", layout=_fit())
        self.resume = W.Button(description="Resume", icon="repeat", layout=_fit())
        self.resume.on_click(lambda _: self._resume())
        self.toggle = W.ToggleButton(description="Output", icon="list", layout=_fit())
        self.stop.on_click(lambda _: self.job.cancel())
        self.drop.on_click(lambda _: remove_row(self))
        self.toggle.observe(lambda _: self.refresh(force=True), "value")
        self.report = W.HTML()
        self.log_button = W.Button(
            description="Full log",
            icon="file-text",
            layout=W.Layout(width="auto", align_self="flex-start"),
        )
        self.log_button.on_click(lambda _: self.open_log())
        self.out = W.Output(layout=W.Layout(max_height="24em", overflow="auto"))
        self.notice = W.Output(layout=W.Layout(display="none"))
        self.detail = W.VBox(
            [self.report, self.out, self.log_button],
            layout=W.Layout(display="none", padding="0 0 0 2em"),
        )
        header = W.HBox(
            [
                self.icon,
                self.title,
                self.bar,
                self.count,
                self.text,
                self.clock,
                self.stop,
                self.drop,
                self.resume,
                self.toggle,
            ],
            layout=W.Layout(align_items="center", flex_flow="row wrap"),
        )
        super().__init__([header, self.detail, self.notice])
        self.add_class("bgjobs-row")
        self.refresh(force=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = row_text(self.job)
            bundle.update(job_mime(self.job))
        return bundle

    def refresh(self, force: bool = False) -> None:
        """Bring the widgets in line with the job (only what changed is sent)."""
        job = self.job
        done, total = job.progress
        state = _look(job)
        key = (
            state,
            done,
            total,
            job.section,
            job.status,
            job.report,
            getattr(job, "attempt", 1),
            int(job.elapsed),
            self.toggle.value,
            _version(job),
            self.notify,
        )
        with self._lock:
            if key == self._last and not force:
                return
            self._last = key
        style = f"color:{colour_of(state)};white-space:nowrap"
        self.icon.value = f'<span style="{style}">{icon(state)} {label(state)}</span>'
        self.bar.max = max(total, 1)
        self.bar.value = min(done, max(total, 1)) if total else (1 if job.done else 0)
        self.bar.bar_style = LOOKS[state].bar if state in LOOKS else "info"
        self.count.value = count_text(done, total, job.state)
        words = [w for w in (attempt_text(job), job.section, job.status) if w]
        if job.done:
            if job.report:
                words = [job.report.split(": ", 1)[-1]]
            elif not job.merged:
                words = ["results merge before the next cell runs"]
        used = usage_text(job.resources, not job.done)
        if used:
            words.append(used)
        said = html.escape(" · ".join(words))
        self.text.value = (
            f'<div title="{said}" style="white-space:nowrap;overflow:hidden;'
            f'text-overflow:ellipsis">{said}</div>'
        )
        self.clock.value = clock_text(job.elapsed)
        stoppable = not job.done and job.can_stop
        self.stop.layout.display = "" if stoppable else "none"
        self.drop.layout.display = "" if job.done else "none"
        self.resume.layout.display = "" if resumable(job) else "none"
        self.detail.layout.display = "" if self.toggle.value else "none"
        if self.toggle.value:
            self._show_output()
        if job.done and self.notify and not self._notified:
            self._notified = True
            self._browser_notice()

    def _resume(self) -> None:
        """Resume the job from its newest checkpoint: the new job gets a row of its own;
        a refusal is said in this row."""
        from ._errors import BgJobError

        try:
            self.job.resume()  # type: ignore[attr-defined]
        except BgJobError as exc:
            self.report.value = html.escape(str(exc))
            self.toggle.value = True

    def _show_output(self) -> None:
        # By version, not by count: new text is often appended to the last output.
        version = _version(self.job)
        if version != self._shown_outputs:
            self._shown_outputs = version
            self.out.outputs = _recent(self.job.outputs)
        self.report.value = html.escape(self.job.report) if self.job.report else ""

    def open_log(self) -> None:
        """Show the whole log from disk (its last 20 MiB when it is larger)."""
        path = self.job.log_path
        if path is None:
            return
        from ._store import open_own

        try:
            fh = open(open_own(path), "rb")  # the job's own file: no link, no FIFO
        except OSError as exc:
            self.out.outputs = (
                {"output_type": "stream", "name": "stderr", "text": f"[{path}: {exc}]\n"},
            )
            return
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size > _LOG_LIMIT:
                fh.seek(size - _LOG_LIMIT)
            text = fh.read().decode("utf-8", errors="replace")
        head = f"[{path}: {size} bytes" + (", last 20 MiB]\n" if size > _LOG_LIMIT else "]\n")
        self.out.outputs = ({"output_type": "stream", "name": "stdout", "text": head + text},)
        self._shown_outputs = -1

    def _browser_notice(self) -> None:
        from IPython.display import Javascript

        state = _look(self.job).replace("_", " ")
        title = f"{self.job.name}: {state}"
        body = (self.job.report or "").split(": ", 1)[-1][:200] or (
            f"{state} after {clock_text(self.job.elapsed)}"
        )
        script = (
            "(function(t,b){if(!('Notification' in window))return;"
            "var go=function(){new Notification(t,{body:b});};"
            "if(Notification.permission==='granted'){go();}"
            "else if(Notification.permission!=='denied'){"
            "Notification.requestPermission().then(function(p){if(p==='granted')go();});}"
            f"}})({_js(title)},{_js(body)});"
        )
        self.notice.append_display_data(Javascript(script))


def _js(text: str) -> str:
    import json

    return json.dumps(text)


class JobsPanel(W.VBox):  # type: ignore[misc]
    """Every job of this notebook, with a summary bar across the running ones."""

    def __init__(self) -> None:
        self.summary = W.HTML()
        self.overall = W.IntProgress(
            min=0, max=1, value=0, bar_style="info", layout=W.Layout(width="20em")
        )
        self.rows = W.VBox()
        super().__init__(
            [W.HBox([self.summary, self.overall], layout=W.Layout(align_items="center")), self.rows]
        )
        self.add_class("bgjobs-panel")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = text_table([r.job for r in self.rows.children])
        return bundle

    def refresh(self) -> None:
        jobs = [r.job for r in self.rows.children]
        running = [j for j in jobs if not j.done]
        finished = [j for j in jobs if j.done]
        failed = [j for j in finished if j.state in ("failed", "died", "timed_out")]
        partial = [j for j in finished if _look(j) == PARTIAL]
        done_units = sum(j.progress[0] for j in running)
        total_units = sum(max(j.progress[1], 1) for j in running)
        self.overall.max = max(total_units, 1)
        self.overall.value = min(done_units, self.overall.max)
        self.overall.layout.display = "" if running else "none"
        parts = [f"<b>Jobs</b>: {len(running)} running", f"{len(finished)} done"]
        if failed:
            parts.append(f'<span style="color:{colour_of(FAILED)}">{len(failed)} failed</span>')
        if partial:
            colour = colour_of(PARTIAL)
            parts.append(f'<span style="color:{colour}">{len(partial)} partly failed</span>')
        if running:
            parts.append("running: " + html.escape(listed([j.name for j in running], 5)))
        self.summary.value = " · ".join(parts)


def text_table(rows: list[Any]) -> str:
    """The panel as plain text, for front ends without widgets and terminals."""
    if not rows:
        return "no jobs"
    header = ("name", "state", "progress", "section", "elapsed")
    body = [
        (
            j.name,
            _look(j),
            count_text(j.progress[0], j.progress[1], j.state) or "0/0",
            j.section or j.status,
            clock_text(j.elapsed),
        )
        for j in rows
    ]
    return _aligned(header, body)


# Seconds between two batches of widget updates: at most ~10 per second per row.
_PERIOD = 0.1


class _Updater:
    """The one thread that refreshes rows: dirty rows at most every 0.1 s, all running
    rows once a second (elapsed), then the summary."""

    def __init__(self) -> None:
        self.panel: JobsPanel | None = None
        self.rows: dict[str, JobRow] = {}
        self.dirty: set[str] = set()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopped = False

    def ensure_panel(self) -> JobsPanel:
        with self.cond:
            if self.panel is None:
                self.panel = JobsPanel()
            return self.panel

    def add(self, row: JobRow) -> None:
        panel = self.ensure_panel()
        with self.cond:
            self.rows[row.job.id] = row
            row.job.on_change(lambda job: self.mark(job.id))
            self.stopped = False
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="bgjobs-panel", daemon=True)
                self.thread.start()
        panel.rows.children = (*panel.rows.children, row)
        self.mark(row.job.id)

    def mark(self, job_id: str) -> None:
        with self.cond:
            self.dirty.add(job_id)
            self.cond.notify()

    def _run(self) -> None:
        last_tick = 0.0
        last_batch = 0.0
        while True:
            with self.cond:
                # However fast events arrive, a row is sent at most once per period:
                # notifications during the pause only add to the dirty set.
                deadline = last_batch + _PERIOD
                while not self.stopped and (now := time.monotonic()) < deadline:
                    self.cond.wait(deadline - now)
                while not self.stopped and not self.dirty:
                    left = 1.0 - (time.monotonic() - last_tick)
                    if left <= 0:
                        break
                    self.cond.wait(left)
                if self.stopped:
                    return
                dirty, self.dirty = self.dirty, set()
                rows = dict(self.rows)
            now = last_batch = time.monotonic()
            tick = now - last_tick >= 1.0
            if tick:
                last_tick = now
                dirty |= {k for k, r in rows.items() if not r.job.done}
            for key in dirty:
                row = rows.get(key)
                if row is None:
                    continue
                try:
                    row.refresh()
                    job = row.job
                    if job.removed or (job.done and job.auto_remove):
                        remove_row(row)
                except Exception:
                    pass
            if dirty and self.panel is not None:
                try:
                    self.panel.refresh()
                except Exception:
                    pass

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join(5)


updater = _Updater()


def row_for(job: Handle, notify: bool = False) -> JobRow:
    """The live row of ``job``, made on first use and added to the panel."""
    row = updater.rows.get(job.id)
    if row is None:
        row = JobRow(job, notify=notify)
        updater.add(row)
    elif notify and not row.notify:
        # The panel may have made the row first (at submit); --notify still holds.
        row.notify = True
        updater.mark(job.id)
    return row


def remove_row(row: JobRow) -> None:
    """Take a finished job's row out of the panel (and a finished job out of the list)."""
    if not row.job.done and not row.job.removed:
        return
    with updater.cond:
        updater.rows.pop(row.job.id, None)
    # The same widget is the row under the job's cell: hiding it takes it away there too.
    row.layout.display = "none"
    panel = updater.panel
    if panel is not None:
        panel.rows.children = tuple(r for r in panel.rows.children if r is not row)
        panel.refresh()
    row.job.forget()


def panel() -> JobsPanel:
    """The Jobs panel widget (every job of this notebook)."""
    from ._api import manager

    for job in manager.jobs():
        row_for(job)
    p = updater.ensure_panel()
    p.refresh()
    return p


def show_row(obj: Handle, notify: bool = False) -> JobRow:
    """Display ``obj``'s live row under the current cell.

    The widget updates itself; its plain-text form is refreshed at each change of state,
    so front ends without widgets still end on the outcome and the merge report.
    """
    from IPython.display import display

    row = row_for(obj, notify=notify)
    handle = display(row, display_id=True)
    last: list[tuple[str, str]] = [(obj.state, obj.report)]
    lock = threading.Lock()

    def on_change(o: Handle) -> None:
        # Two threads can report one change (the driver ends the job, the notebook merges
        # it): the text is rendered under the lock, so the last update sent is the latest.
        with lock:
            key = (o.state, o.report)
            if key != last[0]:
                last[0] = key
                handle.update(row)

    obj.on_change(on_change)
    return row


def on_submit(job: Handle) -> None:
    """Submit hook: once a panel exists, every new job gets a row in it."""
    if updater.panel is not None:
        row_for(job)


def on_new_handle(handle: ProgressJob) -> None:
    """A new ``add_job`` row: in the panel, and under the current cell if ``show``."""
    if not widgets_available():
        return
    if handle.show:
        show_row(handle)
    else:
        row_for(handle)


def _every_handle_is_one(job: Job, stored: DetachedJob, row: ProgressJob) -> list[Handle]:
    # Never called: the type checker holds each handle a row shows to the protocol here.
    return [job, stored, row]
