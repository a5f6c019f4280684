"""The job engine through its Python API, against real kernels."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import jupyter_bgjobs as bj
from jupyter_bgjobs import _runtime, _snapshot
from jupyter_bgjobs._api import manager
from jupyter_bgjobs._backends import local as _kernels
from jupyter_bgjobs._config import settings
from jupyter_bgjobs._inside.kernel.arena import _room_for


def run(code: str, **kw: object) -> bj.Job:
    kw.setdefault("results", "none")
    return bj.run_cell(textwrap.dedent(code), **kw)  # type: ignore[arg-type]


def test_results_progress_sections_and_output() -> None:
    job = run(
        """
        # Load data ----
        data = list(range(10))
        # %% Fit the model
        total = sum(data)
        print("fitted", total)
        import sys; print("warn", file=sys.stderr)
        from IPython.display import HTML, display
        display(HTML("<b>table</b>"))
        total * 2
        """,
        name="fit_api",
    )
    assert job.wait(60) is job
    assert job.state == "succeeded"
    assert job.progress == (8, 8)
    assert job.section == "Fit the model"
    assert job.results is not None
    assert job.results.total == 45 and job.results.data == list(range(10))
    kinds = [(o["output_type"], o.get("name")) for o in job.outputs]
    assert kinds == [
        ("stream", "stdout"),
        ("stream", "stderr"),
        ("display_data", None),
        ("execute_result", None),
    ]
    assert job.outputs[2]["data"]["text/html"] == "<b>table</b>"
    assert job.outputs[3]["data"]["text/plain"] == "90"
    log = job.log_path.read_text()
    assert "fitted 45" in log and "warn" in log
    assert job.started is not None and job.finished is not None and job.elapsed > 0
    assert bj.get_job("fit_api") is job and bj.get_job(job.id) is job
    assert job in bj.jobs()


def test_ipython_syntax_in_a_job() -> None:
    job = run(
        """
        %cd /
        where = %pwd
        out = !echo shell-ok
        """,
    ).wait(60)
    assert job.state == "succeeded", job.output
    assert job.results is not None
    assert job.results.where == "/"
    assert list(job.results.out) == ["shell-ok"]


def test_section_per_statement_is_reported_live() -> None:
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    job = run(
        """
        # First ----
        a = 1
        # Second ----
        b = 2
        # %% Third
        c = 3
        """,
        name="sections",
    )
    job.on_change(lambda j: seen.append((j.section, j.progress[0])) if lock else None)
    job.wait(60)
    assert job.progress == (3, 3)
    sections = [s for s, _ in seen if s]
    assert "Third" in sections and job.section == "Third"


def test_failed_job_keeps_output_traceback_and_partial_results() -> None:
    job = run(
        """
        x = 1
        print("before the error")
        def boom():
            return 1 / 0
        boom()
        y = 2
        """,
        name="failing",
    ).wait(60)
    assert job.state == "failed"
    assert job.error is not None and job.error.ename == "ZeroDivisionError"
    assert any("boom" in line for line in job.error.traceback)
    assert "before the error" in job.output
    assert job.progress == (3, 5)
    assert job.results is not None and job.results.x == 1 and not hasattr(job.results, "y")
    err = job.exception()
    assert isinstance(err, bj.JobFailedError)
    assert "ZeroDivisionError" in str(err) and "ZeroDivisionError" in str(err.__cause__)
    assert "failed at statement 4/5" in job.report


def test_timeout_ends_the_job_as_timed_out() -> None:
    job = run("print('started', flush=True)\nimport time\ntime.sleep(60)", timeout=5).wait(60)
    assert job.state == "timed_out"
    assert "started" in job.output
    assert isinstance(job.exception(), bj.JobTimeoutError)
    assert "timeout of 5 s" in job.report


def test_cancel_interrupts_and_keeps_output() -> None:
    job = run("print('working', flush=True)\nimport time\nwhile True: time.sleep(0.05)")
    until(job, lambda: "working" in job.output)
    assert job.cancel() is True
    job.wait(30)
    assert job.state == "cancelled"
    assert "working" in job.output
    assert isinstance(job.exception(), bj.JobCancelledError)
    assert job.cancel() is False


def test_cancel_kills_a_job_that_ignores_interrupts() -> None:
    bj.configure(cancel_grace=0.5)
    try:
        job = run(
            """
            import signal, time
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print('deaf', flush=True)
            while True: time.sleep(0.05)
            """
        )
        until(job, lambda: "deaf" in job.output)
        job.cancel()
        job.wait(30)
    finally:
        bj.configure(cancel_grace=3.0)
    assert job.state == "cancelled"
    assert "kernel killed" in job.log_path.read_text()


@pytest.mark.parametrize(
    ("code", "exit_code", "words"),
    [
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", -9, "SIGKILL"),
        ("import os\nos._exit(3)", 3, "exited with code 3"),
        ("import ctypes\nctypes.string_at(0)", -11, "SIGSEGV"),
    ],
    ids=["sigkill", "os_exit", "segfault"],
)
def test_a_dying_kernel_is_reported_as_died(
    code: str, exit_code: int, words: str, tmp_path: Path
) -> None:
    # The job dies only once its first output has reached us: the output so far is kept.
    go = tmp_path / "go"
    job = run(
        f"print('alive', flush=True)\nimport os, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n{code}"
    )
    until(job, lambda: "alive" in job.output)
    go.touch()
    until(job, lambda: job.done)
    assert job.finished is not None
    assert job.state == "died"
    assert job.exit_code == exit_code
    assert words in job.reason
    assert "alive" in job.output
    assert isinstance(job.exception(), bj.KernelDiedError)


def test_a_killed_kernel_is_seen_while_its_code_would_still_run() -> None:
    job = run("import time\nprint('pid ready', flush=True)\ntime.sleep(600)")
    until(job, lambda: "pid ready" in job.output)
    pid = job.kernel_pid
    assert pid is not None
    os.kill(pid, 9)
    # The monitor notices the death itself, long before the code's sleep would end.
    until(job, lambda: job.done, timeout=60)
    assert job.state == "died" and "pid ready" in job.output


def test_done_callbacks_and_wait_timeout() -> None:
    called: list[str] = []
    job = run("import time\ntime.sleep(1)\nz = 5")
    job.add_done_callback(lambda j: called.append(j.state))
    with pytest.raises(bj.WaitTimeout, match="still"):
        job.wait(timeout=0.01)
    job.wait(60)
    assert called == ["succeeded"]
    job.add_done_callback(lambda j: called.append("late"))
    assert called == ["succeeded", "late"]


def test_twelve_jobs_on_a_small_machine_all_finish() -> None:
    bj.configure(max_concurrent=2)
    try:
        batch = [run(f"import time\ntime.sleep(0.2)\nn = {i}", name=f"many_{i}") for i in range(12)]
        assert any(j.state == "pending" for j in batch)
        for j in batch:
            j.wait(120)
    finally:
        bj.configure(max_concurrent=os.cpu_count() or 1)
    assert [j.state for j in batch] == ["succeeded"] * 12
    assert [j.results.n for j in batch if j.results] == list(range(12))


def test_a_running_name_gets_a_suffix(capsys: pytest.CaptureFixture[str]) -> None:
    first = run("import time\ntime.sleep(2)", name="dup")
    second = run("x = 1", name="dup")
    assert second.name == "dup-2"
    assert "'dup' is still running; this one is 'dup-2'" in capsys.readouterr().out
    first.cancel()
    first.wait(30), second.wait(30)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "not a name"}, "not a Python identifier"),
        ({"timeout": "soon"}, "timeout must be a number"),
        ({"timeout": -1}, "more than 0"),
        ({"results": "everywhere"}, "results must be one of"),
        ({"env": "a b"}, "env must be"),
        ({"workdir": "/no/such/dir"}, "does not exist"),
        ({"kernel": "no-such-kernel"}, "no kernelspec named 'no-such-kernel'.*python3"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs: dict[str, object], message: str) -> None:
    before = len(bj.jobs())
    with pytest.raises(bj.JobSpecError, match=message):
        run("x = 1", **kwargs)
    assert len(bj.jobs()) == before


def test_run_script_defaults(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    (tmp_path / "data.txt").write_text("41")
    script.write_text("# %% Read\nvalue = int(open('data.txt').read()) + 1\nhere = __file__\n")
    job = bj.run_script(script).wait(60)
    assert job.name == "train"
    assert job.state == "succeeded", job.output
    assert job.results is not None and job.results.value == 42
    assert job.results.here == str(script)
    assert job.section == "Read"
    with pytest.raises(bj.JobSpecError, match="no script"):
        bj.run_script(tmp_path / "missing.py")
    (tmp_path / "latin.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(bj.JobSpecError, match="encoding"):
        bj.run_script(tmp_path / "latin.py")
    job = bj.run_script(tmp_path / "latin.py", encoding="latin-1").wait(60)
    assert job.results is not None and job.results.s == "caf\xe9"


class Refuses:
    """An object whose pickling raises, as a database handle's might."""

    def __reduce__(self) -> Any:
        raise TypeError("no pickling for you")


def test_env_all_ships_the_namespace_and_skips_unpicklables() -> None:
    ns: dict[str, object] = {"a": [1, 2], "gen": Refuses(), "os": os}
    ns["b"] = ns["a"]
    spec = bj._api.make_spec(
        "same = a is b\nc = len(a) + len(os.sep)\nhas_gen = 'gen' in globals()",
        name=None,
        kind="cell",
        kernel=None,
        timeout=None,
        env="all",
        results="none",
        on_conflict="keep",
        workdir=None,
    )
    job = manager.submit(spec, ns).wait(60)
    assert job.state == "succeeded", job.output
    assert job.results is not None
    assert job.results.same is True and job.results.c == 3 and job.results.has_gen is False
    assert [(s["name"], s["type"]) for s in job.skipped] == [("gen", "Refuses")]
    assert "not shipped: gen (Refuses: TypeError: no pickling for you)" in job.report
    spec.code, spec.name = "next(gen)", "touches_gen"
    job = manager.submit(spec, ns).wait(60)
    assert job.state == "failed" and job.error is not None
    assert job.error.ename == "NameError"
    assert "'gen' was not shipped to this job (Refuses: TypeError: no pickling" in job.error.evalue


def test_kernel_from_another_environment(tmp_path: Path) -> None:
    venv = tmp_path / "otherenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The new environment borrows this one's packages (ipykernel, dill) through a .pth
    # file: --system-site-packages would reach the base Python's, not this venv's, when
    # the tests themselves run inside a virtual environment.
    (site_dir,) = (venv / "lib").glob("python*/site-packages")
    (site_dir / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    spec_dir = tmp_path / "kernels" / "otherenv"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        '{"argv": ["%s", "-m", "ipykernel_launcher", "-f", "{connection_file}"],'
        ' "display_name": "other", "language": "python"}' % (venv / "bin" / "python")
    )
    os.environ["JUPYTER_PATH"] = str(tmp_path)
    try:
        job = run("import sys\nprefix = sys.prefix", kernel="otherenv").wait(120)
    finally:
        del os.environ["JUPYTER_PATH"]
    assert job.state == "succeeded", job.reason
    assert job.results is not None and job.results.prefix == str(venv)


def test_warm_pool_serves_the_next_job() -> None:
    pool = manager.pool()
    assert pool.wait_warm(60)
    warm_pids = {k.pid for k in pool._idle}
    job = run("import os\npid = os.getpid()").wait(60)
    assert job.results is not None and job.results.pid in warm_pids
    assert pool.wait_warm(60)


def test_a_jobs_kernel_ends_with_the_job() -> None:
    job = run("import os\npid = os.getpid()").wait(60)
    manager.join_worker(job)
    assert job.results is not None
    assert (
        not psutil.pid_exists(job.results.pid)
        or psutil.Process(job.results.pid).status() == psutil.STATUS_ZOMBIE
    )


def until(job: bj.Job, cond: Callable[[], bool], timeout: float = 30) -> None:
    """Block on the job's own condition variable until ``cond()`` holds."""
    with job._cond:
        assert job._cond.wait_for(cond, timeout), "condition not met in time"


def test_job_kernels_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    shm = _snapshot.shm_dir()
    if shm is None or not _room_for(256 << 20, os.path.join(shm, "probe")):
        pytest.skip("too little free memory to prepare shared memory for results")
    script = tmp_path / "parent.py"
    script.write_text(
        "import jupyter_bgjobs as bj\n"
        "job = bj.run_cell('import time, numpy\\nbig = numpy.ones(2**24)\\ntime.sleep(600)', "
        "name='orphan')\n"
        "with job._cond:\n"
        "    job._cond.wait_for(lambda: job.progress[0] >= 2, 60)\n"
        "import glob, os, time\n"
        "from jupyter_bgjobs._snapshot import shm_dir\n"
        "deadline = time.monotonic() + 30\n"
        "while not glob.glob(f'{shm_dir()}/p*.{os.getpid()}-*') and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "print(job.kernel_pid, shm_dir(), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid_text, parent_shm = parent.stdout.readline().split()
        kernel_pid = int(pid_text)
        kernels = [psutil.Process(kernel_pid)]
        kernels += [p for p in psutil.Process(parent.pid).children() if p.pid != kernel_pid]
    finally:
        parent.kill()
        parent.wait(10)
    # ipykernel's parent watch ends each kernel within about a second of its parent's death.
    _, alive = psutil.wait_procs(kernels, timeout=10)
    assert not alive
    # Each process has its own shared-memory folder, with a name nobody can guess. The job
    # had grown (128 MB), so shared memory was being made ready for its results in it (on
    # a busy machine that may not have begun yet); its owner is gone, and the next process
    # to use shared memory frees the folder and all that is in it.
    assert Path(parent_shm) != Path(shm) and Path(parent_shm).parent == Path(shm).parent
    assert Path(parent_shm).is_dir()
    _runtime.sweep_dead_owners(str(Path(shm).parent))
    assert not Path(parent_shm).exists()
    # Killed kernels leave their socket and connection files, and their logs; the next
    # kernel started here removes them.
    base = Path(_runtime.sockets_dir())
    litter = f"k*.{parent.pid}x*"
    logs = settings.job_root().parent / "kernels"  # not _kernel_log_dir(): it sweeps
    assert list(base.glob(litter)) and list(base.glob(litter + ".json"))
    assert list(logs.glob(litter + ".log"))
    _kernels._swept = _kernels._logs_swept = False
    _kernels._ipc_prefix()
    _kernels._kernel_log_dir()
    assert not list(base.glob(litter))
    assert not list(logs.glob(litter))
