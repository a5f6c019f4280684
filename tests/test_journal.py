"""A job's rich outputs on disk (``outputs.jsonl`` beside its log), read back in order.

The unit tests run the real driver over the fake kernel backend, so the log and the
journal are the files a job leaves; the last test runs a real job in a real kernel.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import test_driver_unit
from test_driver_unit import WAIT, submit

import jupyter_bgjobs as bj
from jupyter_bgjobs import _journal
from jupyter_bgjobs._backends import fake
from jupyter_bgjobs._backends.fake import FakeKernel
from jupyter_bgjobs._job import Job
from jupyter_bgjobs._journal import JOURNAL, stored_outputs
from jupyter_bgjobs._manager import JobManager

# The real manager of the driver tests, shut down after each test; bound by assignment so
# that the tests' parameters of the same name do not read as redefining an import.
mgr = test_driver_unit.mgr
WHOLE = 1 << 20  # a tail longer than any log here

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
FIGURE = {"image/png": PNG, "text/plain": "<Figure size 640x480 with 1 Axes>"}
TABLE = {"text/html": "<table><tr><td>1</td></tr></table>", "text/plain": "   a\n0  1"}


def run(mgr: JobManager, *steps: fake.Step) -> Job:
    """A job of the real manager and driver whose kernel replays ``steps``; ended."""
    script = [fake.plan(1), fake.stmt(0, 1), *steps]
    if not isinstance(steps[-1], fake.End):
        script.append(fake.end(done=1))
    job = submit(mgr, FakeKernel(script)).wait(WAIT)
    mgr.join_worker(job, WAIT)  # its driver has closed the log and the journal
    return job


def outputs(job: Job, tail: int = WHOLE) -> list[dict[str, Any]]:
    return stored_outputs(job.folder, job.log_path, tail)


def kinds(outs: list[dict[str, Any]]) -> list[str]:
    return [o["output_type"] for o in outs]


def stream_text(outs: list[dict[str, Any]]) -> str:
    return "".join(o["text"] for o in outs if o["output_type"] == "stream")


def journal_lines(job: Job) -> list[str]:
    return (job.folder / JOURNAL).read_text().splitlines()


def test_stream_text_and_rich_outputs_come_back_in_order(mgr: JobManager) -> None:
    tb = ["Traceback (most recent call last):", "ValueError: no fold 7"]
    err = {"ename": "ValueError", "evalue": "no fold 7", "traceback": tb}
    job = run(
        mgr,
        fake.stream("naïve start → fold 1\n"),
        fake.display(FIGURE),
        fake.stream("between the plot and the table\n", "stderr"),
        fake.Message("execute_result", {"data": TABLE, "metadata": {}}),
        fake.stream("after the table\n"),
        fake.error("ValueError", "no fold 7", tb),
        fake.end("error", done=0, total=1, error=err),
    )
    outs = outputs(job)
    assert kinds(outs) == ["stream", "display_data", "stream", "execute_result", "stream", "error"]
    assert [o["text"] for o in outs if o["output_type"] == "stream"] == [
        "naïve start → fold 1\n",
        "between the plot and the table\n",
        "after the table\n",
    ]
    assert outs[1]["data"] == FIGURE and outs[3]["data"] == TABLE
    assert outs[5]["ename"] == "ValueError" and outs[5]["traceback"] == tb
    # The log has every output's text form; read back, each appears once, as itself.
    log = job.log_path.read_text()
    assert FIGURE["text/plain"] in log and "ValueError: no fold 7" in log
    text = stream_text(outs)
    assert "Figure size" not in text and "0  1" not in text and "no fold 7" not in text


def test_a_job_with_only_text_has_no_journal_and_reads_as_its_log(mgr: JobManager) -> None:
    job = run(mgr, fake.stream("one\n"), fake.stream("two\n", "stderr"))
    assert not (job.folder / JOURNAL).exists()
    assert outputs(job) == [{"output_type": "stream", "name": "stdout", "text": "one\ntwo\n"}]


def test_damaged_and_half_written_journal_lines_are_skipped(mgr: JobManager) -> None:
    job = run(
        mgr,
        fake.stream("first\n"),
        fake.display(FIGURE),
        fake.stream("second\n"),
        fake.display(TABLE),
        fake.stream("third\n"),
        fake.display({"text/html": "<i>last</i>", "text/plain": "last one"}),
    )
    figure, table, last = journal_lines(job)
    # A line damaged on disk, one of the wrong shape, and the last one cut mid-write.
    damaged = table[: len(table) // 2] + "\x00\x00" + table[len(table) // 2 + 2 :]
    wrong = json.dumps({"at": "somewhere", "output": {"output_type": "display_data"}})
    (job.folder / JOURNAL).write_text(
        "\n".join([figure, damaged, wrong, "[1, 2]", last[: len(last) // 2]])
    )
    outs = outputs(job)
    assert kinds(outs) == ["stream", "display_data", "stream"]
    assert outs[1]["data"] == FIGURE
    # What the skipped lines held is still shown: their text form, from the log.
    assert outs[2]["text"] == "second\n" + TABLE["text/plain"] + "\nthird\nlast one\n"


def test_a_tail_shorter_than_the_log_drops_the_rich_outputs_before_it(mgr: JobManager) -> None:
    job = run(
        mgr,
        fake.stream("early line\n"),
        fake.display(FIGURE),
        fake.stream("x" * 999 + "\n"),
        fake.display(TABLE),
        fake.stream("late line\n"),
    )
    table_text = TABLE["text/plain"] + "\n"
    assert job.log_path.stat().st_size > 1000
    # The last 600 bytes: the end of the long line, the table, the late line.
    outs = outputs(job, tail=600)
    assert kinds(outs) == ["stream", "display_data", "stream"]
    assert outs[0]["text"] == "x" * (600 - len(table_text) - len("late line\n") - 1) + "\n"
    assert outs[1]["data"] == TABLE and outs[2]["text"] == "late line\n"
    # A tail that starts inside a rich output's text form shows the text it has of it.
    cut = len(table_text) // 2
    outs = outputs(job, tail=len(table_text) - cut + len("late line\n"))
    assert outs == [
        {"output_type": "stream", "name": "stdout", "text": table_text[cut:] + "late line\n"}
    ]


def test_the_journal_caps_stop_writing_say_so_and_readers_go_on(
    mgr: JobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = len(json.dumps({"at": [0, 0], "output": {"output_type": "display_data"}}))
    monkeypatch.setattr(_journal, "_MAX_ONE", one + 400)
    big = {"text/html": "<p>" + "y" * 1000 + "</p>", "text/plain": "a big table"}
    job = run(
        mgr,
        fake.display(FIGURE),
        fake.stream("before the big one\n"),
        fake.display(big),
        fake.stream("after it\n"),
        fake.display(TABLE),
    )
    lines = [json.loads(line) for line in journal_lines(job)]
    # The big output is not kept; the journal says so once and keeps nothing more.
    assert len(lines) == 2 and lines[0]["output"]["data"] == FIGURE
    assert lines[1]["dropped"] == "journal full" and "output" not in lines[1]
    outs = outputs(job)
    assert kinds(outs) == ["display_data", "stream"]
    assert outs[1]["text"] == "before the big one\na big table\nafter it\n" + "   a\n0  1\n"


def test_the_whole_journal_is_bounded(mgr: JobManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal, "_MAX_JOURNAL", 2000)
    steps = []
    for i in range(20):
        steps += [fake.stream(f"plot {i}\n"), fake.display({**FIGURE, "text/plain": f"F{i}"})]
    job = run(mgr, *steps)
    lines = [json.loads(line) for line in journal_lines(job)]
    kept = [entry for entry in lines if "output" in entry]
    assert 0 < len(kept) < 20 and len(lines) == len(kept) + 1
    assert lines[-1]["dropped"] == "journal full"
    # Past the cap only the one line that says so: the size stays at the cap's.
    marker = len(json.dumps(lines[-1])) + 1
    assert (job.folder / JOURNAL).stat().st_size <= 2000 + marker
    outs = outputs(job)
    shown = [o["data"]["text/plain"] for o in outs if o["output_type"] == "display_data"]
    assert shown == [f"F{i}" for i in range(len(kept))]
    # Every plot past the cap is still there as its text form, in order, in one stream.
    assert outs[2 * len(kept) :] == [
        {
            "output_type": "stream",
            "name": "stdout",
            "text": "".join(f"plot {i}\nF{i}\n" for i in range(len(kept), 20)),
        }
    ]


def test_a_real_job_keeps_a_dataframe_between_its_prints() -> None:
    code = textwrap.dedent(
        """
        import pandas as pd
        from IPython.display import display
        print("loading folds")
        display(pd.DataFrame({"fold": [1, 2], "score": [0.8, 0.9]}))
        print("folds shown")
        """
    )
    job = bj.run_cell(code, name="journal_df", results="none").wait(120)
    assert job.state == "succeeded", job.reason
    outs = stored_outputs(job.folder, job.log_path, WHOLE)
    assert kinds(outs) == ["stream", "display_data", "stream"]
    assert outs[0]["text"] == "loading folds\n" and outs[2]["text"] == "folds shown\n"
    table = outs[1]["data"]
    assert "<table" in table["text/html"] and "score" in table["text/plain"]
    # The job's log has the table as text; the outputs have it once, as the table.
    assert "0.8" in job.log_path.read_text() and "0.8" not in stream_text(outs)


def test_outputs_of_a_job_with_no_log_yet_are_empty(tmp_path: Path) -> None:
    assert stored_outputs(tmp_path, tmp_path / "output.log", WHOLE) == []
