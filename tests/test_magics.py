"""The magics, driven in-process through IPython's run_cell_magic / run_cell."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

import jupyter_bgjobs as bj
from jupyter_bgjobs._api import manager


def _gate(path: Path) -> str:
    """A statement that waits until ``path`` exists, binding no name."""
    return f"while not __import__('os').path.exists({str(path)!r}): __import__('time').sleep(0.01)"


def test_cell_magic_returns_at_once_and_merges_at_the_next_cell(
    ip: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ip.user_ns.pop("total", None)
    gate = tmp_path / "gate"
    ip.run_cell_magic(
        "bgjob",
        "mfit --timeout 600",
        "# Load ----\ndata = list(range(10))\n"
        f"# Fit ----\nimport time\n{_gate(gate)}\ntotal = sum(data)\n",
    )
    job = bj.get_job("mfit")
    assert not job.done  # the job waits for the gate: the magic did not wait for the job
    out = capsys.readouterr().out
    assert "mfit" in out  # the status line, printed once outside a kernel front end
    # A cell that runs while the job runs does not see its results yet.
    ip.run_cell("seen_early = 'total' in globals()")
    assert ip.user_ns["seen_early"] is False
    gate.touch()
    with job._cond:
        job._cond.wait_for(lambda: job.done, 60)
    assert "total" not in ip.user_ns  # never merged under a running cell: only at a boundary
    ip.run_cell("after = total")
    assert ip.user_ns["after"] == 45 and ip.user_ns["data"] == list(range(10))
    report = capsys.readouterr().out
    assert "mfit: succeeded" in report and "merged data, time, total into globals" in report
    assert job.section == "Fit" and job.progress == (4, 4)


def test_results_object_and_none(ip: Any) -> None:
    ip.run_cell_magic("bgjob", "obj --results object", "a = 1\nb = 'two'")
    bj.get_job("obj").wait(60)
    ns = ip.user_ns["obj_results"]
    assert (ns.a, ns.b) == (1, "two")
    ip.user_ns.pop("c", None)
    ip.run_cell_magic("bgjob", "nothing --results none", "c = 3")
    job = bj.get_job("nothing").wait(60)
    assert "c" not in ip.user_ns and job.results is not None and job.results.c == 3


def test_env_auto_ships_what_the_cell_reads(ip: Any) -> None:
    ip.run_cell("base = 10\nunused = object()\ndef scale(v):\n    return v * factor\nfactor = 3")
    ip.run_cell_magic("bgjob", "auto_env", "scaled = scale(base)")
    job = bj.get_job("auto_env").wait(60)
    assert job.state == "succeeded", job.output
    assert ip.user_ns["scaled"] == 30
    assert sorted(job.shipped) == ["base", "factor", "scale"]


def test_conflicting_rebind_is_kept_and_reported(ip: Any, tmp_path: Path) -> None:
    ip.run_cell("shared = 'notebook-1'")
    gate = tmp_path / "gate"
    ip.run_cell_magic("bgjob", "conflict", f"import time\n{_gate(gate)}\nshared = 'job'")
    ip.run_cell("shared = 'notebook-2'")
    gate.touch()
    bj.get_job("conflict").wait(60)
    assert ip.user_ns["shared"] == "notebook-2"
    assert ip.user_ns["conflict_results"].shared == "job"
    assert "kept the notebook's shared" in bj.get_job("conflict").report
    gate = tmp_path / "gate2"
    ip.run_cell_magic(
        "bgjob", "over --on-conflict overwrite", f"import time\n{_gate(gate)}\nshared = 'job'"
    )
    ip.run_cell("shared = 'notebook-3'")
    gate.touch()
    bj.get_job("over").wait(60)
    assert ip.user_ns["shared"] == "job"
    assert "overwrote shared" in bj.get_job("over").report


def test_script_magic(ip: Any, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("import os\n# %% Train\ncwd = os.getcwd()\nscore = 0.9\n")
    ip.run_line_magic("bgjob_script", str(script))
    job = bj.get_job("train").wait(60)
    assert job.state == "succeeded", job.output
    res = ip.user_ns["train_results"]
    assert res.score == 0.9 and res.cwd == str(tmp_path)
    ip.run_line_magic("bgjob_script", f"{script} --name tr2 --results globals --workdir /")
    bj.get_job("tr2").wait(60)
    assert ip.user_ns["cwd"] == "/"


@pytest.mark.parametrize(
    ("magic", "line", "message"),
    [
        ("bgjob", "x --bogus 1", "unrecognized arguments: --bogus"),
        ("bgjob", "x --timeout soon", "timeout must be a number"),
        ("bgjob", "not-a-name", "not a Python identifier"),
        ("bgjob", "x --results nowhere", "results must be one of"),
        ("bgjob", "x 'unclosed", "cannot parse"),
        ("bgjob", "x --detach --notify", "do not go together"),
        ("bgjob_script", "/no/such/script.py", "no script at"),
    ],
)
def test_bad_magic_input_is_one_line_and_no_job(
    ip: Any, magic: str, line: str, message: str
) -> None:
    before = len(bj.jobs())
    with pytest.raises(UsageError, match=message):
        if magic == "bgjob":
            ip.run_cell_magic(magic, line, "x = 1")
        else:
            ip.run_line_magic(magic, line)
    assert len(bj.jobs()) == before


def test_jobs_listing(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("bgjobs", "")
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == [
        "name",
        "id",
        "state",
        "progress",
        "section",
        "elapsed",
        "memory",
        "waits",
        "for",
    ]
    assert "mfit" in table
    # What it held at most, as its sampler saw it.
    assert re.search(r"mfit .* peak \d+(\.\d)? MB", table), table


def test_unload_ends_running_jobs_and_pooled_kernels(capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_bgjobs")
    assert manager.pool().wait_warm(60)
    shell.run_cell_magic(
        "bgjob", "endless", "import time\nprint('go', flush=True)\nwhile True: time.sleep(0.05)"
    )
    job = bj.get_job("endless")
    with job._cond:
        job._cond.wait_for(lambda: "go" in job.output, 60)
    pids = [k.pid for k in manager.pool()._idle] + [job.kernel_pid]
    shell.run_line_magic("unload_ext", "jupyter_bgjobs")
    assert job.state == "cancelled"
    assert "ending 1 running job(s): endless" in capsys.readouterr().out
    import psutil

    assert not [
        p
        for p in pids
        if p and psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    # None of the extension's magics is left behind.
    left = shell.magics_manager.magics
    assert "bgjob" not in left["cell"]
    assert not {"bgjob_script", "bgjobs", "bgjob_attach"} & set(left["line"])
    shell.run_line_magic("load_ext", "jupyter_bgjobs")
