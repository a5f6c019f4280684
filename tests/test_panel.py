"""The Jobs panel's widgets, checked in a real kernel through their comm messages."""

from __future__ import annotations

import datetime as dt
import html
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cells import FrontEnd, execute


class Kernel(FrontEnd):
    """A notebook kernel driven like a front end: it sees every iopub message."""

    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, dict[str, Any]] = {}
        self.updates: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.displays: list[dict[str, Any]] = []

    def _record(self, msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "comm_open" and content.get("target_name") == "jupyter.widget":
            self.models[content["comm_id"]] = dict(content["data"]["state"])
        elif kind == "comm_msg" and content["data"].get("method") == "update":
            state = content["data"]["state"]
            self.models.setdefault(content["comm_id"], {}).update(state)
            # The kernel's send time: a stalled reader must not bunch the updates up.
            sent = msg["header"]["date"].timestamp()
            self.updates.setdefault(content["comm_id"], []).append((sent, state))
        elif kind in ("display_data", "update_display_data"):
            self.displays.append(content)

    def run(self, code: str, timeout: float = 120) -> str:
        """Execute ``code``; record every message until its idle; return its stdout."""
        return execute(self.kc, code, timeout, seen=self._record)

    def until(self, check: Callable[[], bool], timeout: float = 30) -> None:
        """Read what the kernel sends on its own (widget updates from its threads) until
        ``check()`` holds, as a front end would see them arrive."""
        deadline = time.monotonic() + timeout
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the widgets never reached the expected state")
            try:
                self._record(self.kc.get_iopub_msg(timeout=left))
            except queue.Empty:
                continue

    def has_row(self, job: str) -> bool:
        """Whether every widget of a job's row has arrived (they come one comm at a time)."""
        try:
            self.row_models(job)
        except (StopIteration, KeyError, ValueError):
            return False
        return True

    def row_models(self, job: str) -> dict[str, str]:
        """The comm ids of one job's row: its title, state, bar and buttons."""
        title = next(
            k
            for k, s in self.models.items()
            if s.get("_model_name") == "HTMLModel" and s.get("value") == f"<b>{job}</b>"
        )
        header = next(
            k
            for k, s in self.models.items()
            if s.get("_model_name") == "HBoxModel" and f"IPY_MODEL_{title}" in s.get("children", [])
        )
        children = [c.removeprefix("IPY_MODEL_") for c in self.models[header]["children"]]
        found = {"title": title}
        for cid in children:
            s = self.models[cid]
            if s.get("_model_name") == "IntProgressModel":
                found["bar"] = cid
            elif s.get("_model_name") == "ButtonModel":
                found[s["description"].lower()] = cid
            elif s.get("_model_name") == "ToggleButtonModel":
                found["output"] = cid
        found["state"] = children[0]
        found["said"] = children[4]
        row = next(
            k
            for k, s in self.models.items()
            if s.get("_model_name") == "VBoxModel"
            and s.get("children", [None])[0] == f"IPY_MODEL_{header}"
        )
        detail = self.models[row]["children"][1].removeprefix("IPY_MODEL_")
        report, out, log = (c.removeprefix("IPY_MODEL_") for c in self.models[detail]["children"])
        found.update(report=report, view=out, log=log, row=row)
        return found

    def set(self, comm_id: str, **state: Any) -> None:
        """What a browser sends when the user changes a widget's value."""
        content = {
            "comm_id": comm_id,
            "data": {"method": "update", "state": state, "buffer_paths": []},
        }
        self.kc.shell_channel.send(self.kc.session.msg("comm_msg", content))

    def row_text(self, ids: dict[str, str]) -> str:
        """Every HTML text of a row's header, as the browser shows them side by side."""
        header = next(
            s
            for s in self.models.values()
            if s.get("_model_name") == "HBoxModel"
            and f"IPY_MODEL_{ids['title']}" in s.get("children", [])
        )
        parts = [self.models[c.removeprefix("IPY_MODEL_")] for c in header["children"]]
        return " ".join(p.get("value", "") for p in parts if p.get("_model_name") == "HTMLModel")

    def ended(self, name: str, words: str, style: str, tasks: int | None = None) -> dict[str, str]:
        """The row called ``name`` once it shows ``words`` and its bar ``style``; with
        ``tasks``, its bar is full at that many."""
        self.until(lambda: self.has_row(html.escape(name)))
        ids = self.row_models(html.escape(name))
        bar = self.models[ids["bar"]]
        # The status text is the last field of a row's refresh.
        self.until(lambda: words in self.row_text(ids) and bar.get("bar_style") == style)
        if tasks is not None:
            assert (bar["value"], bar["max"]) == (tasks, tasks)
        return ids

    def plain_texts(self) -> list[str]:
        """The plain-text forms of the widgets shown so far, as a front end without widgets
        shows them."""
        return [
            d["data"].get("text/plain", "")
            for d in self.displays
            if "application/vnd.jupyter.widget-view+json" in d.get("data", {})
        ]

    def shown(self, comm_id: str) -> bool:
        """Whether a widget is visible: its Layout model's ``display`` is not ``none``."""
        layout = self.models[comm_id]["layout"].removeprefix("IPY_MODEL_")
        return self.models[layout].get("display") != "none"

    def click(self, comm_id: str) -> None:
        """What a browser sends when a button is clicked."""
        content = {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}
        msg = self.kc.session.msg("comm_msg", content)
        self.kc.shell_channel.send(msg)


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    k.run("%load_ext jupyter_bgjobs")
    yield k
    k.close()


def test_a_row_advances_to_succeeded_through_widget_state(kernel: Kernel) -> None:
    code = "\n".join(["%%bgjob many"] + ["__import__('time').sleep(0.005)"] * 300)
    kernel.run(code)
    kernel.run("from jupyter_bgjobs import get_job\nget_job('many').wait(120)")
    ids = kernel.row_models("many")
    bar = kernel.models[ids["bar"]]
    # A row is refreshed field by field; the bar's style is sent after its value.
    kernel.until(lambda: bar.get("bar_style") == "success")
    assert (bar["value"], bar["max"]) == (300, 300)
    assert "succeeded" in kernel.models[ids["state"]]["value"]
    # What its kernel held at most, as its sampler saw it.
    kernel.until(lambda: "peak " in kernel.models[ids["said"]]["value"])
    # Coalesced: far fewer updates than the 300 statements, and at most ~10 a second.
    stamps = [t for t, s in kernel.updates[ids["bar"]] if "value" in s]
    assert len(stamps) < 100
    span = max(stamps[-1] - stamps[0], 0.1)
    assert len(stamps) <= 10 * span + 3
    # The row under the cell carries a plain-text form for front ends without widgets.
    assert any(t.startswith("✔ many  succeeded  300/300") for t in kernel.plain_texts())


def test_stop_button_cancels_and_remove_appears(kernel: Kernel) -> None:
    kernel.run("%%bgjob endless\nimport time\nwhile True: time.sleep(0.05)")
    kernel.run(
        "job = get_job('endless')\n"
        "with job._cond:\n    job._cond.wait_for(lambda: job.state == 'running', 60)"
    )
    ids = kernel.row_models("endless")
    kernel.until(lambda: kernel.shown(ids["stop"]))
    assert not kernel.shown(ids["remove"])
    kernel.click(ids["stop"])
    state = kernel.run("print(get_job('endless').wait(60).state)")
    assert state.strip() == "cancelled"
    kernel.until(lambda: "cancelled" in kernel.models[ids["state"]]["value"])
    kernel.until(lambda: kernel.shown(ids["remove"]))
    assert not kernel.shown(ids["stop"])


def test_panel_lists_every_job_with_a_summary(kernel: Kernel) -> None:
    kernel.run("%bgjobs")
    summary = [
        s["value"]
        for s in kernel.models.values()
        if s.get("_model_name") == "HTMLModel" and "<b>Jobs</b>" in s.get("value", "")
    ]
    # This kernel's two jobs, and the store's detached ones that other tests left.
    done = int(summary[-1].split(" done")[0].rsplit("· ", 1)[1]) if summary else 0
    assert summary and "0 running" in summary[-1] and done >= 2
    texts = [
        d["data"]["text/plain"]
        for d in kernel.displays
        if d.get("data", {}).get("text/plain", "").startswith("name")
    ]
    assert texts and "many" in texts[-1] and "endless" in texts[-1]


def test_progress_rows_and_tqdm_in_the_notebook(kernel: Kernel) -> None:
    kernel.run(
        "import jupyter_bgjobs as bj\n"
        "with bj.add_job('manual', progress_units=5, auto_remove=False) as p:\n"
        "    p.set_progress(5)\n"
        "for _ in bj.tqdm(range(4), desc='loop', mininterval=0): pass"
    )
    kernel.until(lambda: kernel.has_row("manual"))
    ids = kernel.row_models("manual")
    bar = kernel.models[ids["bar"]]
    # The bar's style is sent after its value within one refresh.
    kernel.until(lambda: bar.get("bar_style") == "success")
    assert (bar["value"], bar["max"]) == (5, 5)
    assert "succeeded" in kernel.models[ids["state"]]["value"]


def test_a_flood_of_output_stays_bounded_and_the_full_log_opens(kernel: Kernel) -> None:
    kernel.run("%%bgjob flood\nfor i in range(50_000):\n    print('line', i)")
    kernel.run("get_job('flood').wait(120)")
    ids = kernel.row_models("flood")
    kernel.set(ids["output"], value=True)

    def view_text() -> str:
        return "".join(o.get("text", "") for o in kernel.models[ids["view"]].get("outputs", []))

    # The view shows the newest output, not all of it: the browser gets a bounded tail.
    kernel.until(lambda: "line 49999\n" in view_text())
    assert "line 0\n" not in view_text()
    assert len(view_text()) <= 300_000
    # "Full log" reads the whole log from disk, first line to last.
    kernel.click(ids["log"])
    kernel.until(lambda: view_text().startswith("["))
    text = view_text()
    assert "line 0\n" in text and "line 49999\n" in text
    assert text.split("\n", 1)[0].endswith("bytes]")


def test_the_output_view_follows_a_running_job_and_remove_takes_the_row_away(
    kernel: Kernel, tmp_path: Any
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    wait = "while not os.path.exists({!r}): time.sleep(0.01)"
    kernel.run(
        "%%bgjob chatty\nimport os, time\nprint('first line', flush=True)\n"
        + wait.format(str(first))
        + "\nprint('second line', flush=True)\n"
        + wait.format(str(second))
    )
    kernel.until(lambda: kernel.has_row("chatty"))
    ids = kernel.row_models("chatty")
    kernel.set(ids["output"], value=True)

    def view_text() -> str:
        return "".join(o.get("text", "") for o in kernel.models[ids["view"]].get("outputs", []))

    kernel.until(lambda: "first line" in view_text())
    first.touch()
    # Appended to the same stream output: the view still gets it while the job runs.
    kernel.until(lambda: "second line" in view_text())
    assert kernel.run("print(get_job('chatty').state)").strip() == "running"
    second.touch()
    kernel.run("get_job('chatty').wait(60)")
    kernel.until(lambda: kernel.shown(ids["remove"]))
    assert kernel.shown(ids["row"])
    kernel.click(ids["remove"])
    # The row under the cell is the same widget: it goes there too.
    kernel.until(lambda: not kernel.shown(ids["row"]))


def test_a_started_queue_is_one_row_with_done_over_total(kernel: Kernel) -> None:
    kernel.run(
        "from jupyter_bgjobs import Queue\n"
        "q = Queue(workers=2)\n"
        "for i in range(40):\n    q.add(abs, args=(-i,))\n"
        "q.start()\n"
        "None"
    )
    ids = kernel.ended(
        "queue: 40 × abs", "Queue complete: 40 of 40 tasks done", "success", tasks=40
    )
    assert "40/40" in kernel.row_text(ids)
    assert kernel.run("print(q.wait()['result'].sum())").strip() == str(sum(range(40)))


VIEW = "application/vnd.jupyter.widget-view+json"
JOB_MIME = "application/vnd.jupyter-bgjobs.job+json"


def test_a_cells_row_names_its_job_for_the_ide_and_a_progress_row_does_not(
    kernel: Kernel,
) -> None:
    kernel.run("%%bgjob mimed\nanswer = 6 * 7")
    kernel.until(lambda: kernel.has_row("mimed"))
    # If the job has ended by then, the cell first prints its merge report: the id is last.
    said = kernel.run("from jupyter_bgjobs import get_job\nprint(get_job('mimed').id)")
    job_id = said.strip().splitlines()[-1]
    ids = kernel.row_models("mimed")

    def shown(row: str) -> list[dict[str, Any]]:
        """The bundles of a row under a cell: its display, then each update of it."""
        return [
            d["data"] for d in kernel.displays if d["data"].get(VIEW, {}).get("model_id") == row
        ]

    # The row under the cell: the widget, its text for front ends without widgets, and
    # the job the IDE reads from the store (the same id get_job gives).
    first = shown(ids["row"])[0]
    assert {VIEW, "text/plain", JOB_MIME} <= set(first)
    assert first["text/plain"].split()[1] == "mimed"
    assert first[JOB_MIME]["id"] == job_id and first[JOB_MIME]["name"] == "mimed"
    assert first[JOB_MIME]["state"] in ("pending", "starting", "running", "succeeded")
    kernel.run("get_job('mimed').wait(120)")
    kernel.until(lambda: shown(ids["row"])[-1][JOB_MIME]["state"] == "succeeded")
    last = shown(ids["row"])[-1][JOB_MIME]
    assert {k: last[k] for k in ("id", "name", "state")} == {
        "id": job_id,
        "name": "mimed",
        "state": "succeeded",
    }
    # When it was shown: the IDE says "starting" only of a row shown a moment ago.
    assert dt.datetime.fromisoformat(last["shown"]) <= dt.datetime.now().astimezone()
    # Without widgets, the status line carries the job too.
    kernel.run(
        "from jupyter_bgjobs._display import StatusLine\nStatusLine(get_job('mimed')).show()"
    )
    line = next(d["data"] for d in reversed(kernel.displays) if "text/html" in d["data"])
    assert line["text/plain"].split()[1] == "mimed" and "mimed" in line["text/html"]
    assert {k: line[JOB_MIME][k] for k in ("id", "name", "state")} == {
        "id": job_id,
        "name": "mimed",
        "state": "succeeded",
    }
    # A progress row of add_job has no record in the store: no job for the IDE to read.
    kernel.run(
        "import jupyter_bgjobs as bj\n"
        "plain = bj.add_job('plain_row', progress_units=2, auto_remove=False)\n"
        "plain.set_state('running')"
    )
    kernel.until(lambda: kernel.has_row("plain_row"))
    plain = kernel.row_models("plain_row")["row"]
    kernel.until(lambda: len(shown(plain)) >= 2)  # shown, then updated as it runs
    kernel.run("plain.set_state('succeeded')")
    kernel.until(lambda: "succeeded" in shown(plain)[-1]["text/plain"])
    assert all(VIEW in d and "text/plain" in d and JOB_MIME not in d for d in shown(plain))


def test_a_jobs_report_is_in_its_own_row_not_in_the_next_cell(kernel: Kernel) -> None:
    """A finished job's results merge at the next cell's start; its report is shown in the
    job's own row (and ``job.report``), never printed into that neighbouring cell."""
    kernel.run("%%bgjob own_report\nvalue = 41 + 1")
    kernel.until(lambda: kernel.has_row("own_report"))
    kernel.run(
        "import time\nfrom jupyter_bgjobs import get_job\n"
        "while not get_job('own_report').done:\n    time.sleep(0.02)"
    )
    said = kernel.run("print(value)")
    assert said.strip() == "42", said
    assert "merged value" in kernel.run("print(get_job('own_report').report)")
    ids = kernel.row_models("own_report")
    kernel.until(lambda: "merged value" in kernel.row_text(ids))


def test_resume_on_a_failed_row_goes_on_from_its_checkpoint(kernel: Kernel, tmp_path: Any) -> None:
    ready = tmp_path / "ready"
    ran = tmp_path / "ran.txt"
    kernel.run(
        "%%bgjob wresume --checkpoint\nimport os\n# Load ----\n"
        f"open({str(ran)!r}, 'a').write('Load ')\nvals = [1, 2]\n# Sum ----\n"
        f"if not os.path.exists({str(ready)!r}):\n    raise ValueError('not ready')\n"
        "summed = sum(vals)\n"
    )
    kernel.run("from jupyter_bgjobs import get_job\nget_job('wresume').wait(60)")
    ids = kernel.row_models("wresume")
    kernel.until(lambda: kernel.shown(ids["resume"]))
    ready.touch()
    kernel.click(ids["resume"])
    # The click is handled before the next request: the newest job of the name resumed.
    out = kernel.run("again = get_job('wresume').wait(60)\nprint(again.state, summed)")
    assert out.splitlines()[-1].split() == ["succeeded", "3"]
    assert "resumed from section Sum" in out
    assert ran.read_text() == "Load "  # Load did not run again
