"""What a job costs and the limits that protect the machine, against real kernels: the
memory and CPU of a job's kernel (and what it started) in ``job.resources`` and its
record, a memory limit that ends the job before the machine runs short, and a death by
SIGKILL explained with the memory the job held."""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cells import notebook, until

import jupyter_bgjobs as bj
from jupyter_bgjobs._config import settings

MB = 10**6

# Holds ``n`` MB, touched page by page (an untouched allocation is not resident).
HOLD = """
import os, time
held = bytearray({n} * 1000 * 1000)
for i in range(0, len(held), 4096):
    held[i] = 1
while not os.path.exists({gate!r}):
    time.sleep(0.05)
"""


def until_job(job: bj.Job, holds: Callable[[bj.Job], bool], timeout: float = 120) -> None:
    """Return once ``holds(job)`` is true, told by the job's own changes (each sample of
    what it uses is one); fail after ``timeout`` seconds."""
    changed = threading.Event()
    job.on_change(lambda _: changed.set())
    while not holds(job):
        assert changed.wait(timeout), f"{job.name}: still {job.resources} after {timeout} s"
        changed.clear()


def test_a_jobs_peak_memory_is_what_it_held(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = bj.run_cell(
        textwrap.dedent(HOLD.format(n=500, gate=str(gate))) + "del held\n",
        name="holds_500",
        results="none",
        env="none",
    )
    try:
        until_job(job, lambda j: j.resources.get("rss", 0) >= 500 * MB or j.done)
    finally:
        gate.touch()
    job.wait(60)
    assert job.state == "succeeded", job.reason
    peak = job.resources["peak"]
    # The kernel's own memory (Python, IPython) comes on top of the 500 MB it held.
    assert 500 * MB <= peak <= 500 * MB * 1.1 + 150 * MB, peak
    assert job.resources["cpu_seconds"] > 0
    assert job.usage and all(len(sample) == 3 for sample in job.usage)
    record = json.loads((job.folder / "state.json").read_text())
    assert record["resources"]["peak"] == peak


def _over_limit(tmp_path: Path, name: str) -> bj.Job:
    job = bj.run_cell(
        "print('before the allocation', flush=True)\n"
        + textwrap.dedent(HOLD.format(n=600, gate=str(tmp_path / "never"))),
        name=name,
        results="none",
        env="none",
        memory_limit="300MB",
    )
    job.wait(120)
    assert job.state == "failed", job.reason
    assert "before the allocation" in job.log_path.read_text()
    record = json.loads((job.folder / "state.json").read_text())
    assert record["memory_limit"] == 300 * MB and record["state"] == "failed"
    return job


def test_a_job_over_its_memory_limit_ends_failed_with_the_reason_and_its_output(
    tmp_path: Path,
) -> None:
    """Where the machine lets us make a memory cgroup (this one does, as root), the limit
    is the system's to keep; the log says which keeps it."""
    job = _over_limit(tmp_path, "over_limit")
    log = job.log_path.read_text()
    if "kept by a memory cgroup of its own" in log:
        assert job.reason.startswith("used all of its 300 MB limit and asked for more")
        from jupyter_bgjobs._api import manager
        from jupyter_bgjobs._cgroup import _own_groups

        manager.join_worker(job)  # its driver ends its kernel, then removes its group
        for parent in _own_groups():
            assert parent is None or not (parent / f"bgjobs-{job.id}").exists(), "cgroup left"
    else:
        assert "kept by sampling its memory every second" in log
        assert job.reason.startswith("used ") and "over its 300 MB limit" in job.reason


def test_where_no_cgroup_can_be_made_the_sampler_keeps_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine that refuses cgroups is one this test cannot be on: the refusal is faked
    # (the only fake here; the kernel, its memory and the kill are real).
    from jupyter_bgjobs._cgroup import MemoryCage

    monkeypatch.setattr(MemoryCage, "make", classmethod(lambda cls, name, limit: None))
    job = _over_limit(tmp_path, "sampled_limit")
    assert "kept by sampling its memory every second" in job.log_path.read_text()
    assert job.reason.startswith("used ") and "over its 300 MB limit" in job.reason
    assert job.resources["peak"] > 300 * MB


def test_a_memory_limit_that_is_no_size_is_refused_before_anything_starts() -> None:
    before = len(bj.jobs())
    with pytest.raises(bj.JobSpecError, match="memory_limit must be a size such as '8G'"):
        bj.run_cell("x = 1", memory_limit="lots")
    assert len(bj.jobs()) == before
    with pytest.raises(bj.JobSpecError, match="memory_limit"):
        bj.configure(memory_limit="-1G")
    assert settings.memory_limit == 0


def test_a_job_killed_by_sigkill_says_how_much_memory_it_held(tmp_path: Path) -> None:
    job = bj.run_cell(
        "import os, signal\n"
        + textwrap.dedent(HOLD.format(n=200, gate=str(tmp_path / "gate")))
        + "os.kill(os.getpid(), signal.SIGKILL)\n",
        name="killed",
        results="none",
        env="none",
    )
    # It holds 200 MB until the gate opens; the sampler sees it first.
    until_job(job, lambda j: j.resources.get("peak", 0) >= 200 * MB or j.done)
    (tmp_path / "gate").touch()
    job.wait(60)
    assert job.state == "died"
    assert "SIGKILL" in job.reason
    assert "its memory peaked at" in job.reason and "on this machine" in job.reason


@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
def test_a_bg_calls_memory_is_in_its_record(tmp_path: Path, detach: bool) -> None:
    """An attached call is sampled by the process that started it, a detached one by its
    supervisor; either way its handle and its record say what it held."""
    gate = tmp_path / "gate"
    ns = notebook(
        f"""
        import os, time
        def hold():
            held = bytearray(150 * 1000 * 1000)
            for i in range(0, len(held), 4096):
                held[i] = 1
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.05)
            return len(held)
        """
    )
    call = bj.bg_call(ns["hold"], detach=detach)
    try:
        until(lambda: call.resources.get("peak", 0) >= 150 * MB or call.done, "a sample")
    finally:
        gate.touch()
    assert call.result(60) == 150 * MB
    assert call.resources["peak"] >= 150 * MB
    call.settle_record()
    record = json.loads((call.folder / "state.json").read_text())
    assert record["resources"]["peak"] == call.resources["peak"]


def test_a_bg_call_over_its_memory_limit_ends_failed_with_the_reason() -> None:
    ns = notebook(
        """
        import time
        def grow():
            held = bytearray(400 * 1000 * 1000)
            for i in range(0, len(held), 4096):
                held[i] = 1
            time.sleep(600)
        """
    )
    call = bj.bg_call(ns["grow"], memory_limit="200MB")
    call.wait(120)
    assert call.state == "failed"
    assert call.reason.startswith("used ") and "over its 200 MB limit" in call.reason
    with pytest.raises(bj.JobFailedError, match="over its 200 MB limit"):
        call.result()
    record = json.loads((call.folder / "state.json").read_text())
    assert record["state"] == "failed" and "over its 200 MB limit" in record["reason"]


def test_a_detached_call_refuses_a_memory_limit_before_anything_starts() -> None:
    before = len(bj.bg_calls())
    with pytest.raises(bj.JobSpecError, match="not detached"):
        bj.bg_call(print, memory_limit="1G", detach=True)
    assert len(bj.bg_calls()) == before
