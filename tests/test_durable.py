"""Detached jobs outlive the kernel that started them; the store is shared and prunable."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cells import until
from jupyter_client import KernelManager

import jupyter_bgjobs as bj
from jupyter_bgjobs import _store, _stored
from jupyter_bgjobs._cli import main as cli


class Notebook:
    """A real notebook kernel driven through jupyter_client."""

    def __init__(self, cwd: Path) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd))
        self.kc = self.km.blocking_client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str) -> str:
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        reply = self.kc.execute_interactive(code, timeout=120, output_hook=hook)
        assert reply["content"]["status"] == "ok", "".join(out)
        return "".join(out)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def notebooks(tmp_path: Path) -> Iterator[list[Notebook]]:
    made: list[Notebook] = []
    yield made
    for nb in made:
        nb.close()


def test_a_detached_job_survives_a_killed_kernel_and_is_attached_after(
    tmp_path: Path, notebooks: list[Notebook]
) -> None:
    gate = tmp_path / "gate"
    first = Notebook(tmp_path)
    notebooks.append(first)
    first.run("%load_ext jupyter_bgjobs\nbase = 21")
    said = first.run(
        textwrap.dedent(
            f"""
            %%bgjob far --detach
            import os, time
            # Wait ----
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.05)
            # Answer ----
            answer = base * 2
            """
        )
    )
    # A front end's kernel shows the job's live row (a display), not a line of text.
    assert "detached job started" not in said
    kind = first.run("import jupyter_bgjobs as bj\nprint(type(bj.get_job('far')).__name__)")
    assert kind.strip() == "DetachedJob"
    # The notebook's kernel dies hard: no atexit, no goodbye.
    os.kill(first.km.provisioner.pid, signal.SIGKILL)  # type: ignore[union-attr]
    second = Notebook(tmp_path)
    notebooks.append(second)
    second.run("%load_ext jupyter_bgjobs\nimport jupyter_bgjobs as bj")
    state = second.run(
        "j = bj.get_job('far')\n"
        "deadline = __import__('time').monotonic() + 60\n"
        "while j.state != 'running' and __import__('time').monotonic() < deadline:\n"
        "    __import__('time').sleep(0.05)\n"
        "print(j.state)"
    )
    assert state.strip() == "running"
    listing = second.run("%bgjobs")
    assert "far" in listing and "running" in listing
    gate.touch()
    second.run("j.wait(60)")
    report = second.run("%bgjob_attach far")
    # The merge report of an attached job.
    assert report.startswith("far: succeeded in") and "merged answer" in report
    assert second.run("print(answer)").strip() == "42"
    assert second.run("print(bj.get_job('far').results.answer)").strip() == "42"


WRITER = """
import json, sys
import jupyter_bgjobs as bj

def square(x):
    return x * x

tag = sys.argv[1]
calls = [bj.bg_call(square, (i,), name=f"{tag}_{i}", detach=True) for i in range(8)]
print(json.dumps([c.id for c in calls]))
"""


def test_two_writers_share_the_store_without_losing_anything(tmp_path: Path) -> None:
    (tmp_path / "writer.py").write_text(WRITER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "writer.py"), tag], stdout=subprocess.PIPE, text=True
        )
        for tag in ("left", "right")
    ]
    ids = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    from jupyter_bgjobs._calls import BgCall

    wanted = set(ids[0]) | set(ids[1])
    assert len(wanted) == 16
    folders = {f.name: f for f in _store.entries()}
    assert wanted <= set(folders)
    for call_id in wanted:
        info = _stored.describe(folders[call_id])
        call = BgCall(folders[call_id], info.name, detached=True)
        i = int(info.name.split("_")[1])
        assert call.result(60) == i * i


def test_prune_removes_old_finished_entries_and_reports_the_space(tmp_path: Path) -> None:
    done = bj.bg_call(sum, ([1, 2, 3],), name="finished_one", detach=True)
    assert done.result(60) == 6
    # Its supervisor records the end, then exits; until then it holds the folder's logs
    # open, and prune never removes a folder in use.
    supervisor = done.pids()["supervisor"]
    until(lambda: not _store.pid_alive(supervisor), "the finished call's supervisor to end")
    running = bj.bg_call(time.sleep, (300,), name="still_running", detach=True)
    kept = bj.prune(older_than="1h")
    assert "finished_one" not in " ".join(kept["removed"])
    report = bj.prune(older_than=0)
    assert any(r.startswith("finished_one") for r in report["removed"])
    assert report["bytes"] > 0
    assert not done.folder.exists() and running.folder.exists()
    with pytest.raises(bj.JobSpecError, match="older_than must be"):
        bj.prune(older_than="soon")
    running.kill()
    running.wait(30)


def test_the_bgjobs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "count.py"
    script.write_text("import time\nfor i in range(3):\n    print('tick', i)\ntotal = 6\n")
    assert cli(["run", str(script), "--name", "counter"]) == 0
    assert "counter: detached job started" in capsys.readouterr().out
    assert cli(["logs", "counter", "-f"]) == 0
    assert capsys.readouterr().out.count("tick") == 3
    assert cli(["results", "counter"]) == 0
    out = capsys.readouterr().out
    assert "counter (" in out and "succeeded" in out and "total: int = 6" in out
    assert cli(["list"]) == 0
    assert "counter" in capsys.readouterr().out
    # Its story, as its host recorded it: each transition in order, with its time.
    assert cli(["show", "counter"]) == 0
    told = capsys.readouterr().out.splitlines()
    assert told[0].startswith("counter (") and told[0].endswith(": succeeded")
    # What its kernel used, as its host sampled it.
    assert re.match(r"  memory: peak \d+(\.\d)? MB; CPU: \d+\.\d s$", told[1]), told
    events = [line.split()[1] for line in told[2:]]
    assert events == ["submit", "start", "run", "succeed"], told

    script.write_text("import time\ntime.sleep(300)\n")
    assert cli(["run", str(script), "--name", "sleeper"]) == 0
    job = bj.get_job("sleeper")
    deadline = time.monotonic() + 60
    while job.state != "running":
        assert time.monotonic() < deadline, job.state
        time.sleep(0.05)  # the host writes its state file; this is another process
    assert cli(["cancel", "sleeper"]) == 0
    job.wait(60)
    assert job.state == "cancelled"
    assert cli(["show", "sleeper"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "cancel" in last and "-> cancelled" in last
    assert cli(["cancel", "sleeper"]) == 1
    assert cli(["results", "nobody"]) == 2
    assert "no detached job or call named 'nobody'" in capsys.readouterr().err


def test_a_new_job_is_named_apart_from_this_notebooks_running_detached_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detached job the notebook started (from this kernel or an earlier one) still
    runs: a new job of the same name in the notebook is named apart, as beside a running
    job of its own kernel."""
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "twins.ipynb"))
    gate = tmp_path / "gate"
    far = bj.run_cell(
        f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)",
        name="twin",
        env="none",
        detach=True,
    )
    until(lambda: far.state == "running", "the detached job to run")
    near = bj.run_cell("x = 1", name="twin", env="none")
    assert near.name == "twin-2"
    gate.touch()
    assert far.wait(60).state == "succeeded" and near.wait(60).state == "succeeded"
