"""Checkpoints at section boundaries, resume and retries, against real kernels: a job that
fails in its last section goes on from there once the cause is fixed, without running its
first sections again (a file each section appends to proves it), with their values; a
kernel killed mid-section; an edited cell with ``--resume``; ``--retries`` with a job that
dies once; a detached job resumed from the command line; a job on a gateway whose
checkpoints come back to its folder; the server's resume endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cells import until

import jupyter_bgjobs as bj
from jupyter_bgjobs._errors import JobSpecError, JobStateError
from jupyter_bgjobs._resume import read_checkpoint


def three_sections(tmp: Path, last: str = "") -> str:
    """A cell of three sections; each appends its name to ``ran.txt`` as it runs. The
    last raises until ``fixed`` exists (or runs ``last`` instead)."""
    ran, fixed = tmp / "ran.txt", tmp / "fixed"
    fit = last or textwrap.dedent(f"""\
        if not os.path.exists({str(fixed)!r}):
            raise ValueError("the data is not there yet")
        model = {{"mean": mean, "n": len(rows)}}""")
    return (
        textwrap.dedent(f"""\
        import os
        # Load ----
        open({str(ran)!r}, "a").write("Load\\n")
        rows = list(range(1, 11))
        # Clean ----
        open({str(ran)!r}, "a").write("Clean\\n")
        mean = sum(rows) / len(rows)
        # Fit ----
        open({str(ran)!r}, "a").write("Fit\\n")
        """)
        + fit
        + "\n"
    )


def ran(tmp: Path) -> list[str]:
    return (tmp / "ran.txt").read_text().split()


def test_a_job_that_failed_in_its_last_section_resumes_there(ip: Any, tmp_path: Path) -> None:
    for name in ("rows", "mean", "model"):
        ip.user_ns.pop(name, None)
    ip.run_cell_magic("bgjob", "fit3 --checkpoint", three_sections(tmp_path))
    job = bj.get_job("fit3").wait(60)
    assert job.state == "failed" and "the data is not there yet" in job.reason
    assert ran(tmp_path) == ["Load", "Clean", "Fit"]
    # Its newest checkpoint, after Clean: one file in the job's own folder, no other.
    assert job.checkpoint["section"] == "Clean" and job.checkpoint["statement"] == 5
    kept = sorted(p.name for p in job.folder.iterdir() if "checkpoint" in p.name)
    assert kept == ["checkpoint.snap"]
    record = json.loads((job.folder / "state.json").read_text())
    assert record["checkpoint"]["section"] == "Clean"

    (tmp_path / "fixed").touch()
    again = job.resume()
    assert again is not job and again.name == "fit3"
    again.wait(60)
    assert again.state == "succeeded", (again.reason, again.output)
    # Load and Clean did not run again, and their values were there for Fit.
    assert ran(tmp_path) == ["Load", "Clean", "Fit", "Fit"]
    assert ip.user_ns["model"] == {"mean": 5.5, "n": 10}
    assert ip.user_ns["rows"] == list(range(1, 11)) and ip.user_ns["mean"] == 5.5
    assert "resumed from section Fit, statement 6/" in again.report
    assert "skipped Load, Clean" in again.report
    stored = json.loads((again.folder / "state.json").read_text())
    assert stored["resumed_from"] == job.id
    assert stored["resumed"].startswith("resumed from section Fit")


def test_a_kernel_killed_mid_section_resumes_from_the_section_before(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    code = textwrap.dedent(f"""\
        import os, time
        # Prepare ----
        open({str(tmp_path / "ran.txt")!r}, "a").write("Prepare\\n")
        weights = [0.5] * 1000
        # Train ----
        open({str(tmp_path / "ran.txt")!r}, "a").write("Train\\n")
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.02)
        trained = sum(weights)
        """)
    job = bj.run_cell(code, "killed", env="none", checkpoint=True)
    until(lambda: job.section == "Train" and job.checkpoint, "the job reached Train")
    os.kill(job.kernel_pid, signal.SIGKILL)
    job.wait(60)
    assert job.state == "died" and "SIGKILL" in job.reason
    gate.touch()
    again = job.resume().wait(60)
    assert again.state == "succeeded", (again.reason, again.output)
    assert ran(tmp_path) == ["Prepare", "Train", "Train"]
    assert vars(again.results)["trained"] == 500.0
    assert "resumed from section Train" in again.report


def test_an_edited_cell_with_resume_skips_the_sections_it_kept(ip: Any, tmp_path: Path) -> None:
    ip.run_cell_magic("bgjob", "edited --checkpoint", three_sections(tmp_path, "model = 1 / 0"))
    first = bj.get_job("edited").wait(60)
    assert first.state == "failed"
    # The failed section is fixed: Load and Clean are unchanged, so they are skipped.
    fixed = three_sections(tmp_path, "model = mean * 2")
    ip.run_cell_magic("bgjob", "edited --checkpoint --resume", fixed)
    second = bj.get_job("edited").wait(60)
    assert second is not first and second.state == "succeeded", second.reason
    assert ran(tmp_path) == ["Load", "Clean", "Fit", "Fit"]
    assert vars(second.results)["model"] == 11.0
    assert "section Fit changed; resumed from section Fit" in second.report
    # An earlier section changed: it runs from there (here the start), and says so.
    earlier = fixed.replace("list(range(1, 11))", "list(range(1, 21))")
    ip.run_cell_magic("bgjob", "edited --checkpoint --resume", earlier)
    third = bj.get_job("edited").wait(60)
    assert third.state == "succeeded"
    assert ran(tmp_path)[-3:] == ["Load", "Clean", "Fit"]
    assert vars(third.results)["model"] == 21.0
    assert "section Load changed: ran from the start" in third.report
    # A later edit of the last section goes on from the newest checkpoint of all.
    ip.run_cell_magic(
        "bgjob", "edited --checkpoint --resume", earlier.replace("mean * 2", "mean * 3")
    )
    fourth = bj.get_job("edited").wait(60)
    assert vars(fourth.results)["model"] == 31.5
    assert ran(tmp_path)[-4:] == ["Load", "Clean", "Fit", "Fit"]


def test_a_job_without_a_checkpoint_resumes_from_the_start_and_says_so(tmp_path: Path) -> None:
    job = bj.run_cell(three_sections(tmp_path), "nockpt", env="none").wait(60)
    assert job.state == "failed"
    assert not any("checkpoint" in p.name for p in job.folder.iterdir())
    assert job.checkpoint == {}
    (tmp_path / "fixed").touch()
    again = job.resume().wait(60)
    assert again.state == "succeeded"
    assert ran(tmp_path) == ["Load", "Clean", "Fit", "Load", "Clean", "Fit"]
    assert "nockpt has no checkpoint" in again.report and "ran from the start" in again.report


def test_names_a_checkpoint_cannot_keep_are_listed() -> None:
    code = textwrap.dedent("""\
        # Open ----
        import threading
        guard = threading.Lock()
        kept = [1, 2, 3]
        # Fail ----
        raise RuntimeError("stop here")
        """)
    job = bj.run_cell(code, "locked", env="none", checkpoint=True).wait(60)
    assert job.state == "failed"
    assert job.checkpoint["skipped"] == 1
    missing = [s for s in job.skipped if s.get("direction") == "checkpoint"]
    assert [s["name"] for s in missing] == ["guard"] and "lock" in missing[0]["reason"]
    assert "not in its checkpoints: guard (lock" in job.report
    point = read_checkpoint(job.folder / "checkpoint.snap")
    assert point is not None and [s["name"] for s in point.note["skipped"]] == ["guard"]
    assert point.note["sections"][0][0] == "Open"


def test_retries_resume_a_job_that_dies_once(tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    code = textwrap.dedent(f"""\
        import os, signal
        # Load ----
        open({str(tmp_path / "ran.txt")!r}, "a").write("Load\\n")
        x = 41
        # Crash once ----
        open({str(tmp_path / "ran.txt")!r}, "a").write("Crash\\n")
        if not os.path.exists({str(crashed)!r}):
            open({str(crashed)!r}, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        y = x + 1
        """)
    job = bj.run_cell(code, "flaky", env="none", checkpoint=True, retries=2, retry_delay=0.2)
    job.wait(90)
    assert job.state == "succeeded", (job.reason, job.output)
    assert vars(job.results)["y"] == 42
    assert ran(tmp_path) == ["Load", "Crash", "Crash"]
    retried = [h for h in job.history if h["event"] == "retry"]
    assert len(retried) == 1 and retried[0]["state"] == "died"
    assert retried[0]["reason"].startswith("attempt 1: its kernel was killed by SIGKILL")
    assert job.attempt == 2
    record = json.loads((job.folder / "state.json").read_text())
    assert record["attempt"] == 2 and record["attempts"] == 3
    from jupyter_bgjobs._display import attempt_text

    assert attempt_text(job) == "attempt 2 of 3"
    assert "attempt 2: resumed from section Crash once" in job.report
    log = job.log_path.read_text()
    assert "attempt 1 of 3 died" in log and "attempt 2 in 0.2 s" in log


def test_retries_give_up_after_the_last_attempt_and_skip_timeouts(tmp_path: Path) -> None:
    job = bj.run_cell("raise KeyError('always')", "always", env="none", retries=2, retry_delay=0)
    job.wait(90)
    assert job.state == "failed" and job.attempt == 3
    assert [h["state"] for h in job.history if h["event"] == "retry"] == ["failed", "failed"]
    slow = "import time\ntime.sleep(30)"
    timed = bj.run_cell(slow, "slow", env="none", timeout=0.5, retries=1, retry_delay=0)
    timed.wait(60)
    assert timed.state == "timed_out" and timed.attempt == 1
    again = bj.run_cell(
        slow, "slow2", env="none", timeout=0.5, retries=1, retry_delay=0, retry_on="timeout"
    ).wait(60)
    assert again.state == "timed_out" and again.attempt == 2


def test_a_retry_without_a_checkpoint_gets_its_seed_again(ip: Any, tmp_path: Path) -> None:
    ip.user_ns["given"] = [3, 4]
    marker = tmp_path / "once"
    code = (
        f"import os\nif not os.path.exists({str(marker)!r}):\n"
        f"    open({str(marker)!r}, 'w').close()\n    raise OSError('flaky disk')\n"
        "total = sum(given)\n"
    )
    job = bj.run_cell(code, "seeded", retries=1, retry_delay=0).wait(60)
    assert job.state == "succeeded", (job.reason, job.output)
    assert vars(job.results)["total"] == 7 and "ran from the start" in job.report


def test_bad_options_are_one_line_each() -> None:
    with pytest.raises(JobSpecError, match="retries must be a whole number"):
        bj.run_cell("x = 1", "bad", retries=-1)
    with pytest.raises(JobSpecError, match="a job you stop stays stopped"):
        bj.run_cell("x = 1", "bad", retries=1, retry_on="cancelled")
    with pytest.raises(JobSpecError, match="retry_on takes 'timeout'"):
        bj.run_cell("x = 1", "bad", retries=1, retry_on="sometimes")
    with pytest.raises(JobSpecError, match="resume needs the job's name"):
        bj.run_cell("x = 1", resume=True)
    done = bj.run_cell("x = 1", "finished_ok", env="none").wait(60)
    with pytest.raises(JobStateError, match="succeeded: there is nothing to resume"):
        done.resume()


def test_resume_of_a_running_job_is_refused(ip: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    code = f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)"
    job = bj.run_cell(code, "busy", env="none")
    try:
        with pytest.raises(JobStateError, match="still"):
            job.resume()
        with pytest.raises(bj.BgJobError, match="still"):
            bj.run_cell("x = 1", "busy", resume=True)
        from IPython.core.error import UsageError

        with pytest.raises(UsageError, match="still"):
            ip.run_line_magic("bgjob_resume", "busy")
    finally:
        gate.touch()
    job.wait(60)


def test_bgjob_resume_magic_and_script_checkpoints(ip: Any, tmp_path: Path) -> None:
    script = tmp_path / "steps.py"
    script.write_text(three_sections(tmp_path))
    ip.run_line_magic("bgjob_script", f"{script} --checkpoint")
    job = bj.get_job("steps").wait(60)
    assert job.state == "failed" and job.checkpoint["section"] == "Clean"
    (tmp_path / "fixed").touch()
    ip.run_line_magic("bgjob_resume", "steps")
    again = bj.get_job("steps").wait(60)
    assert again is not job and again.state == "succeeded"
    assert ran(tmp_path) == ["Load", "Clean", "Fit", "Fit"]
    assert ip.user_ns["steps_results"].model == {"mean": 5.5, "n": 10}


def test_a_detached_job_resumes_from_the_command_line(tmp_path: Path) -> None:
    job = bj.run_cell(three_sections(tmp_path), "det_cli", env="none", checkpoint=True, detach=True)
    job.wait(90)
    assert job.state == "failed"
    (tmp_path / "fixed").touch()
    env = dict(os.environ)
    cli = [sys.executable, "-m", "jupyter_bgjobs._cli"]
    done = subprocess.run([*cli, "resume", "det_cli"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "resumed from section Fit" in done.stdout
    new_id = done.stdout.split("resumed as detached job ")[1].split(";")[0]
    again = bj.get_job(new_id).wait(90)
    assert again.state == "succeeded", again.reason
    assert vars(again.results)["model"] == {"mean": 5.5, "n": 10}
    assert ran(tmp_path) == ["Load", "Clean", "Fit", "Fit"]
    shown = subprocess.run([*cli, "show", new_id], capture_output=True, text=True, env=env)
    assert "resumed from section Fit, statement 6/" in shown.stdout
    assert "skipped Load, Clean" in again.report
    # A name the store does not know: one line, exit code 2.
    refused = subprocess.run([*cli, "resume", "no_such"], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("kernel_gateway")
    from gatewayserver import Gateway

    gw = Gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture
def gateway(gateway_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The gateway, with its token where jobs find it."""
    from gatewayserver import TOKEN

    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", TOKEN)
    return gateway_server


def test_a_gateway_jobs_checkpoint_comes_back_and_resumes_there(
    gateway: Any, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""\
        import os
        # Build ----
        import numpy as np
        big = np.arange(2_000_000, dtype=np.float64)
        # Use ----
        if not os.path.exists({str(ready)!r}):
            raise RuntimeError("not ready")
        total = float(big.sum())
        """)
    job = bj.run_cell(code, "remote_ck", env="none", checkpoint=True, gateway=gateway.url)
    job.wait(120)
    assert job.state == "failed", job.output
    # The gateway's kernel shares no files with us: its checkpoint came back in chunks.
    point = read_checkpoint(job.folder / "checkpoint.snap")
    assert point is not None and point.note["sections"][-1][0] == "Build"
    assert point.nbytes > 16_000_000
    assert job.checkpoint["section"] == "Build"
    ready.touch()
    again = job.resume().wait(120)
    assert again.state == "succeeded", (again.reason, again.output)
    assert vars(again.results)["total"] == float(sum(range(2_000_000)))
    assert "resumed from section Use" in again.report
    assert gateway.no_kernels_left()


def test_a_gateway_job_that_dies_once_is_retried_from_its_checkpoint(
    gateway: Any, tmp_path: Path
) -> None:
    died = tmp_path / "died"
    code = textwrap.dedent(f"""\
        import os
        # Make ----
        open({str(tmp_path / "ran.txt")!r}, "a").write("Make\\n")
        made = [1, 2, 3]
        # Use ----
        if not os.path.exists({str(died)!r}):
            open({str(died)!r}, "w").close()
            os._exit(3)
        used = sum(made)
        """)
    job = bj.run_cell(
        code, "remote_retry", env="none", checkpoint=True, retries=1, retry_delay=0,
        gateway=gateway.url,
    )  # fmt: skip
    job.wait(180)
    assert job.state == "succeeded", (job.reason, job.output)
    assert job.attempt == 2 and vars(job.results)["used"] == 6
    assert ran(tmp_path) == ["Make"]
    assert "attempt 2: resumed from section Use" in job.report
    assert gateway.no_kernels_left()


def test_only_a_job_folders_own_checkpoint_is_read(tmp_path: Path) -> None:
    job = bj.run_cell(three_sections(tmp_path), "trusted", env="none", checkpoint=True)
    job.wait(60)
    point = job.folder / "checkpoint.snap"
    assert read_checkpoint(point) is not None
    # A copy elsewhere (a resumed job's spec could name any path) is not read.
    elsewhere = tmp_path / "checkpoint.snap"
    elsewhere.write_bytes(point.read_bytes())
    assert read_checkpoint(elsewhere) is None
    # Nor a link put in the checkpoint's place.
    moved = job.folder / "moved.snap"
    point.rename(moved)
    point.symlink_to(moved)
    assert read_checkpoint(point) is None
