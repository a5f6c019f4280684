"""The progress API (rstudioapi's jobAdd family) and tqdm, in the notebook and inside jobs."""

from __future__ import annotations

import textwrap

import pytest

import jupyter_bgjobs as bj


def test_add_job_lifecycle_and_errors() -> None:
    stopped: list[bool] = []
    job = bj.add_job(
        "copy files",
        status="starting",
        progress_units=4,
        actions={"stop": lambda: stopped.append(True)},
        auto_remove=False,
    )
    assert (job.state, job.progress, job.status) == ("idle", (0, 4), "starting")
    job.add_progress(1)
    assert job.state == "running" and job.progress == (1, 4)
    job.set_progress(3)
    job.set_status("file 3 of 4")
    job.add_output("copied a\n")
    job.add_output("skipped b\n", error=True)
    assert job.output == "copied a\nskipped b\n"
    assert [o["name"] for o in job.outputs] == ["stdout", "stderr"]
    assert job.cancel() is True and stopped == [True]
    job.set_state("succeeded")
    assert job.done and job.progress == (4, 4) and job.cancel() is False
    with pytest.raises(bj.JobSpecError, match="state must be one of"):
        job.set_state("exploded")
    with pytest.raises(bj.JobSpecError, match="the one action is 'stop'"):
        bj.add_job("x", actions={"pause": lambda: None})
    with pytest.raises(bj.JobSpecError, match="needs a name"):
        bj.add_job("")


def test_add_job_as_context_manager() -> None:
    with bj.add_job("ok", progress_units=2) as job:
        assert job.state == "running"
        job.add_progress(2)
    assert job.state == "succeeded"
    with pytest.raises(ValueError, match="boom"), bj.add_job("bad") as bad:
        raise ValueError("boom")
    assert bad.state == "failed" and "ValueError: boom" in bad.output


def test_set_progress_outside_a_job_says_what_to_use() -> None:
    with pytest.raises(bj.JobStateError, match="add_job"):
        bj.set_progress(1, 10)
    with pytest.raises(bj.JobStateError, match="add_job"):
        bj.set_status("x")


def test_custom_progress_and_status_inside_a_job_drive_its_row() -> None:
    seen: list[tuple[int, int, str]] = []
    code = textwrap.dedent(
        """
        import jupyter_bgjobs as bj
        for i in range(1, 6):
            bj.set_status(f"batch {i}")
            bj.set_progress(i, 5)
        """
    )
    job = bj.run_cell(code, results="none", env="none")
    job.on_change(lambda j: seen.append((*j.progress, j.status)))
    job.wait(60)
    assert job.state == "succeeded", job.output
    assert job.progress == (5, 5)  # the job's own units, not its 2 statements
    assert job.status == "batch 5"
    assert (5, 5, "batch 5") in seen


def test_add_job_inside_a_job_drives_the_jobs_row() -> None:
    code = textwrap.dedent(
        """
        import jupyter_bgjobs as bj
        with bj.add_job("inner", progress_units=3) as p:
            for _ in range(3):
                p.add_progress(1)
        """
    )
    job = bj.run_cell(code, results="none", env="none").wait(60)
    assert job.state == "succeeded", job.output
    assert job.progress == (3, 3) and job.status == "inner"


def test_a_plain_tqdm_bar_inside_a_job_drives_its_row() -> None:
    code = "from tqdm import tqdm\nfor _ in tqdm(range(50), mininterval=0):\n    pass"
    job = bj.run_cell(code, results="none", env="none").wait(60)
    assert job.state == "succeeded", job.output
    assert job.progress == (50, 50)


def test_our_tqdm_drives_a_row_in_the_notebook_and_in_a_job() -> None:
    bar = bj.tqdm(range(7), desc="epochs", mininterval=0)
    for _ in bar:
        pass
    row = bar._row
    assert row is not None and row.name == "epochs"
    assert row.state == "succeeded" and row.progress == (7, 7)
    assert "7/7" in row.status
    code = "import jupyter_bgjobs as bj\nfor _ in bj.tqdm(range(9), mininterval=0):\n    pass"
    job = bj.run_cell(code, results="none", env="none").wait(60)
    assert job.state == "succeeded", job.output
    assert job.progress == (9, 9)


def test_a_job_that_imports_our_tqdm_sends_it_back_as_the_same_class() -> None:
    code = "from jupyter_bgjobs import tqdm\nfor _ in tqdm(range(3), mininterval=0):\n    pass"
    job = bj.run_cell(code, results="object", env="none").wait(60)
    assert job.state == "succeeded", job.output
    assert not job.skipped, job.skipped
    assert job.results.tqdm is bj.tqdm
