"""One engine: every job has one record any process can read; a detached job is driven by
the same driver in its host, which never loads the notebook's values or the results; every
option works detached too; a job that ends with its notebook's kernel says so. Real
kernels, real hosts, a real Kernel Gateway on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cells import until
from gatewayserver import TOKEN, Gateway
from test_durable import Notebook

import jupyter_bgjobs as bj
from jupyter_bgjobs import _stored
from jupyter_bgjobs._spec import JobSpec
from jupyter_bgjobs._state_record import KERNEL_ENDED, KERNEL_SHUT_DOWN


def gate_code(gate: Path) -> str:
    return f"while not __import__('os').path.exists({str(gate)!r}): __import__('time').sleep(0.02)"


@pytest.fixture
def notebooks() -> Iterator[list[Notebook]]:
    made: list[Notebook] = []
    yield made
    for nb in made:
        try:
            nb.close()
        except Exception:
            pass


# -- one record ---------------------------------------------------------------------------
def test_an_attached_jobs_record_is_current_and_readable_elsewhere(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = bj.run_cell(
        f"# Prepare ----\nx = 1\n# Wait ----\n{gate_code(gate)}\ny = 2", name="recorded"
    )
    record_path = job.folder / "state.json"

    def record() -> dict[str, Any]:
        return dict(json.loads(record_path.read_text()))

    until(lambda: record().get("section") == "Wait", "the record to show the section")
    now = record()
    assert now["state"] == "running" and now["progress"] == [1, 3]  # one done, the 2nd runs
    assert now["owner_pid"] == os.getpid() and now["kernel_pid"] == job.kernel_pid
    assert now["where"] == "local" and now["detached"] is False and now["started"]
    # Another process reads every job from the records alone.
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import jupyter_bgjobs as bj\n"
            "for j in bj.jobs(all=True):\n"
            "    print(j.id, j.name, j.state, j.section)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert f"{job.id} recorded running Wait" in listing
    gate.touch()
    job.wait(60)
    ended = record()
    assert ended["state"] == "succeeded" and ended["finished"] and ended["progress"] == [3, 3]
    spec = json.loads((job.folder / "spec.json").read_text())
    assert spec["kind"] == "job" and spec["name"] == "recorded" and "code" not in spec
    # The code is stored once, beside the spec.
    code = (job.folder / spec["code_file"]).read_text()
    assert code.startswith("#")
    assert JobSpec.from_json({**spec, "code": code}) == job.spec


def test_wait_timeout_is_the_same_error_for_attached_and_detached_jobs(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    attached = bj.run_cell(gate_code(gate), name="waits_a")
    detached = bj.run_cell(gate_code(gate), name="waits_d", detach=True)
    for job in (attached, detached):
        with pytest.raises(bj.WaitTimeout, match="still"):
            job.wait(0.2)
    gate.touch()
    assert attached.wait(60).state == "succeeded"
    assert detached.wait(60).state == "succeeded"


# -- one driver --------------------------------------------------------------------------------
_MARKER = '''
import os

def mark(path, value):
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    return value

class Marked:
    """Whoever unpickles one writes its pid to a file."""
    def __init__(self, path, value):
        self.path, self.value = path, value
    def __reduce__(self):
        return (mark, (self.path, self.value))
'''


def test_the_host_never_loads_the_notebooks_values_or_the_results(ip: Any, tmp_path: Path) -> None:
    exec(compile(_MARKER, "<cell-marker>", "exec"), ip.user_ns)
    loads = tmp_path / "loads"
    ip.user_ns["seed"] = ip.user_ns["Marked"](str(loads), 20)
    job = bj.run_cell(
        f"import os\nkernel_pid = os.getpid()\nout = Marked({str(loads)!r}, seed + 1)",
        name="relay",
        detach=True,
    )
    job.wait(120)
    assert job.state == "succeeded", job.reason
    host = json.loads((job.folder / "host.json").read_text())["pid"]
    results = job.results
    assert results is not None and results.out == 21
    pids = [int(p) for p in loads.read_text().split()]
    # The seed was loaded by the job's kernel, the results by this process: never the host.
    assert host not in pids
    assert pids == [results.kernel_pid, os.getpid()]


def _sweep_from_another_store(tmp_path: Path) -> None:
    """What any process of another store (another ``JUPYTER_BGJOBS_DIR``) does as it makes
    its own shared-memory folder: /dev/shm is the machine's, not one store's."""
    env = dict(os.environ, JUPYTER_BGJOBS_DIR=str(tmp_path / "another_store"))
    subprocess.run(
        [sys.executable, "-c", "from jupyter_bgjobs import _runtime\n_runtime.shm_dir()"],
        env=env,
        timeout=120,
        check=True,
    )


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no shared memory here")
def test_a_detached_jobs_seed_is_held_by_its_host_and_swept_by_nobody_else(
    ip: Any, tmp_path: Path
) -> None:
    from jupyter_bgjobs import _runtime

    ip.user_ns["held_value"] = 41
    gate = tmp_path / "gate"
    job = bj.run_cell(f"{gate_code(gate)}\nanswer = held_value + 1", name="held", detach=True)
    shm = json.loads((job.folder / "spec.json").read_text())["shm_dir"]
    host = json.loads((job.folder / "host.json").read_text())["pid"]
    assert Path(shm).name.startswith(f"{_runtime.JOB_SHM_PREFIX}{job.id}-")
    # From its start the host holds the job's folder (and the seed in it), not the notebook.
    assert _runtime.job_shm_holder(shm) == {"owner": _runtime.owner_tag(host)}
    _sweep_from_another_store(tmp_path)
    assert Path(shm).is_dir(), "another store's process removed a live job's folder"
    # Its host removes the seed once the kernel has loaded it, while the job still runs.
    until(lambda: job.state == "running", "the job to run")
    until(lambda: not (Path(shm) / "seed.snap").exists(), "the seed to be removed")
    assert job.state == "running" and not (job.folder / "seed.snap").exists()
    gate.touch()
    job.wait(120)
    assert job.state == "succeeded", job.reason
    assert job.results is not None and job.results.answer == 42
    # ... and the folder once the job has ended: nothing is left in shared memory.
    until(lambda: not _runtime.pid_alive(host), "the host to end")
    assert not Path(shm).exists()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no shared memory here")
def test_a_job_folder_nobody_holds_is_swept_by_any_store(tmp_path: Path) -> None:
    from jupyter_bgjobs import _runtime

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    killed = _runtime.job_shm_dir("0badc0de")  # as a host that was killed left it
    entry = tmp_path / "entry"
    entry.mkdir()
    kept = _runtime.job_shm_dir("0badc0df")  # results its host could not move: the entry's
    assert killed and kept
    _runtime.hand_job_shm(killed, owner=_runtime.owner_tag(ended.pid))
    _runtime.hand_job_shm(kept, entry=str(entry))
    _sweep_from_another_store(tmp_path)
    assert not Path(killed).exists() and Path(kept).is_dir()
    entry.rmdir()  # pruned
    _sweep_from_another_store(tmp_path)
    assert not Path(kept).exists()


def test_every_option_works_detached(ip: Any, tmp_path: Path) -> None:
    ip.user_ns.update(base=10, unused=[1, 2])
    gate = tmp_path / "gate"
    job = bj.run_cell(
        f"{gate_code(gate)}\nbase = base + 1\nmade = base * 2",
        name="opts",
        detach=True,
        env="auto",
        results="globals",
        on_conflict="keep",
    )
    # The notebook rebinds a name the job returns while it runs: kept, as attached.
    ip.user_ns["base"] = 99
    gate.touch()
    job.wait(120)
    assert job.state == "succeeded", job.reason
    report = _stored.attach("opts", ns=ip.user_ns)
    assert "merged made" in report and "kept the notebook's base" in report
    assert ip.user_ns["base"] == 99 and ip.user_ns["made"] == 22
    assert ip.user_ns["opts_results"].base == 11
    # --results object, and the shipped names are exactly what the cell reads.
    obj = bj.run_cell("total = base + 1", name="opts_obj", detach=True, results="object")
    obj.wait(120)
    assert "into opts_obj_results" in _stored.attach("opts_obj", ns=ip.user_ns)
    assert ip.user_ns["opts_obj_results"].total == 100
    spec = json.loads((obj.folder / "spec.json").read_text())
    assert spec["shipped"] == ["base"]
    # --timeout ends it as timed_out, with the reason, as attached.
    slow = bj.run_cell("import time\ntime.sleep(60)", name="opts_slow", detach=True, timeout=1)
    slow.wait(120)
    assert slow.state == "timed_out" and "timeout of 1 s" in slow.reason


def test_a_detached_job_runs_on_the_gateway_it_names(gateway: Gateway, ip: Any) -> None:
    before = {k["id"] for k in gateway.kernels()}
    ip.user_ns["factor"] = 3
    job = bj.run_cell(
        "import os\nwhere = os.environ.get('KERNEL_TEAM')\nscaled = factor * 7",
        name="far_gw",
        detach=True,
        gateway=gateway.url,
        kernel_env={"KERNEL_TEAM": "alpha"},
    )
    # The gateway starts the job's kernel: it is there while the job runs or was.
    job.wait(120)
    assert job.state == "succeeded", job.reason
    record = json.loads((job.folder / "state.json").read_text())
    assert record["where"] == gateway.url
    assert job.results is not None and job.results.scaled == 21
    assert job.results.where == "alpha"
    assert not before and gateway.no_kernels_left()  # its host deleted its kernel after
    assert TOKEN not in "".join(
        p.read_text(errors="replace") for p in job.folder.rglob("*") if p.is_file()
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"))
    os.environ["JUPYTER_GATEWAY_AUTH_TOKEN"] = TOKEN
    yield gw
    os.environ.pop("JUPYTER_GATEWAY_AUTH_TOKEN", None)
    gw.stop()


# -- after a restart ---------------------------------------------------------------------------
def _notebook(tmp_path: Path) -> Notebook:
    nb = Notebook(tmp_path)
    nb.run("%load_ext jupyter_bgjobs\nimport jupyter_bgjobs as bj")
    return nb


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_a_job_ended_by_its_notebooks_kernel_says_so_after_a_restart(
    tmp_path: Path, notebooks: list[Notebook], how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What jupyter_server gives each kernel it starts (and restarts) for a notebook.
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / f"analysis-{how}.ipynb"))
    first = _notebook(tmp_path)
    notebooks.append(first)
    gate = tmp_path / "gate"
    first.run(f"%%bgjob long_{how}\nprint('started', flush=True)\n{gate_code(gate)}\n")
    job_id = first.run(
        f"j = bj.get_job('long_{how}')\n"
        "with j._cond:\n    j._cond.wait_for(lambda: 'started' in j.output, 60)\n"
        "print(j.id)"
    ).strip()
    if how == "restart":
        first.km.restart_kernel(now=False)  # a shutdown request first: the kernel exits
        first.kc.wait_for_ready(timeout=60)
        second = first
        reason = KERNEL_SHUT_DOWN
    else:
        os.kill(first.km.provisioner.pid, signal.SIGKILL)  # type: ignore[union-attr]
        second = _notebook(tmp_path)
        notebooks.append(second)
        reason = KERNEL_ENDED
    if how == "restart":
        second.run("%load_ext jupyter_bgjobs\nimport jupyter_bgjobs as bj")
    listed = second.run(
        "deadline = __import__('time').monotonic() + 60\n"
        "while True:\n"
        f"    job = next(j for j in bj.jobs(all=True) if j.id == {job_id!r})\n"
        "    if job.done or __import__('time').monotonic() > deadline:\n"
        "        break\n"
        "    __import__('time').sleep(0.05)\n"
        "print(job.state, '|', job.reason, '|', type(job).__name__, job.detached)"
    )
    # Read from its record by the handle every stored job has, marked attached.
    assert listed.strip() == f"cancelled | {reason} | DetachedJob False"
    # %bgjobs in the new kernel shows it, ended, with its log.
    shown = second.run("%bgjobs")
    assert "run by this notebook's earlier kernels" in shown
    assert f"long_{how}" in shown and "cancelled" in shown and "output.log" in shown
    # The record itself says it, for every other reader; the log is kept.
    folder = _job_folder(job_id)
    assert "started" in (folder / "output.log").read_text()
    record = json.loads((folder / "state.json").read_text())
    assert record["state"] == "cancelled" and record["reason"] == reason


def _job_folder(job_id: str) -> Path:
    from jupyter_bgjobs._config import settings

    return settings.job_root() / job_id


def test_detached_jobs_get_live_rows(tmp_path: Path) -> None:
    from jupyter_bgjobs._panel import JobRow

    gate = tmp_path / "gate"
    job = bj.run_cell(f"# Waiting ----\n{gate_code(gate)}\nx = 1", name="row_d", detach=True)
    row = JobRow(job)
    until(lambda: (row.refresh(), "Waiting" in row.text.value)[1], "the row to show the section")
    assert row.stop.layout.display == "" and "running" in row.icon.value
    row.stop.click()
    until(lambda: job.done, "the job to stop")
    row.refresh()
    assert "cancelled" in row.icon.value and row.drop.layout.display == ""


def test_states_move_only_by_named_transitions() -> None:
    from jupyter_bgjobs._states import FINAL_STATES, TRANSITIONS, TransitionError, transition

    assert transition("pending", "starting") == "starting"
    assert transition("running", "timed_out") == "timed_out"
    with pytest.raises(TransitionError, match="from 'pending' to 'running'"):
        transition("pending", "running")
    for final in FINAL_STATES:  # a job that ended never moves again
        for _, target in TRANSITIONS.values():
            with pytest.raises(TransitionError):
                transition(final, target)


@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
def test_a_call_has_a_record_of_the_same_schema(detach: bool) -> None:
    call = bj.bg_call(divmod, (7, 2), name="rec_call", detach=detach)
    assert call.result(60) == (3, 1)
    job = bj.run_cell("x = 1", name="rec_job").wait(60)
    record = json.loads((call.folder / "state.json").read_text())
    assert record["state"] == "succeeded" and record["reason"] == "returned"
    assert record["detached"] is detach and record["finished"] and record["pid"] == call.pid
    job_record = json.loads((job.folder / "state.json").read_text())
    assert set(job_record) <= set(record)  # every field a job's record has
    spec = JobSpec.from_json(json.loads((call.folder / "spec.json").read_text()))
    assert spec.kind == "call" and spec.name == "rec_call" and "divmod" in spec.code


def test_a_detached_job_reads_like_a_job(ip: Any, tmp_path: Path) -> None:
    ip.user_ns["start_value"] = 4
    job = bj.run_cell(
        "grown = start_value * 2\nraise ValueError('late')", name="like_a_job", detach=True
    )
    with pytest.raises(bj.JobSpecError, match="timeout must be"):
        job.wait("soon")  # type: ignore[arg-type]
    job.wait(120)
    assert job.state == "failed" and job.shipped == ["start_value"]
    assert job.reason == "ValueError: late"  # a failure always says why
    assert job.started is not None and job.finished is not None and job.kernel_pid
    err = job.exception()
    assert isinstance(err, bj.JobFailedError) and err.ename == "ValueError"
    assert job.report.startswith("like_a_job: failed")
    assert job.results is not None and job.results.grown == 8  # what it made before


def test_a_detached_job_started_with_results_none_is_not_merged(ip: Any) -> None:
    ip.user_ns.pop("kept_apart", None)
    job = bj.run_cell("kept_apart = 1", name="apart", detach=True, results="none")
    job.wait(120)
    report = _stored.attach("apart", ns=ip.user_ns)
    assert "kept_apart" not in ip.user_ns and "results in get_job('apart').results" in report
    _stored.attach("apart", results="globals", ns=ip.user_ns)  # asked for: merged
    assert ip.user_ns["kept_apart"] == 1


def test_a_damaged_record_of_another_kernel_is_one_line_listed_and_pruned() -> None:
    job = bj.run_cell("x = 1", name="to_damage").wait(60)
    bj._api.manager.join_worker(job)  # its driver has closed the log: nothing holds it
    bj._api.manager.remove(job)
    record = json.loads((job.folder / "state.json").read_text())
    # As a kernel that has ended left it: its owner is gone.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    owner = record["owner"].partition(".")[0] + f".{ended.pid}"
    damaged = dict(record, progress="x", owner=owner, owner_pid=ended.pid)
    (job.folder / "state.json").write_text(json.dumps(damaged))
    with pytest.raises(bj.BgJobError, match=r"is damaged: state\.json: 'progress'") as info:
        bj.get_job(job.id)
    assert "\n" not in str(info.value)
    listed = {j.id: j.state for j in bj.jobs(all=True)}
    assert listed[job.id] == "damaged"
    old = time.time() - 7200
    for path in [job.folder, *job.folder.iterdir()]:
        os.utime(path, (old, old))
    assert any(job.id in r for r in bj.prune(older_than="1h")["removed"])
    assert not job.folder.exists()
