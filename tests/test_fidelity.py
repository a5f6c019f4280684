"""A job sees what the cell would see in the notebook, bad input never makes a half job,
and what a job prints stays bounded in memory. Real kernels throughout; the in-process
IPython shell plays the notebook."""

from __future__ import annotations

import math
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

import jupyter_bgjobs as bj
from jupyter_bgjobs import _runtime
from jupyter_bgjobs._api import manager
from jupyter_bgjobs._config import settings


def _folders() -> set[str]:
    return set(os.listdir(settings.job_root()))


@pytest.fixture
def restore_process() -> Iterator[None]:
    """The notebook's sys.path, environment and working directory, put back afterwards."""
    path, environ, cwd = list(sys.path), dict(os.environ), os.getcwd()
    yield
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)


# -- what the job inherits ----------------------------------------------------------------
def test_a_module_imported_from_a_folder_the_notebook_put_on_sys_path(
    ip: Any, tmp_path: Path, restore_process: None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "helpers_nb.py").write_text("def double(x):\n    return 2 * x\n")
    # The warm kernel was started before the notebook changed its path.
    assert manager.pool().wait_warm(60)
    ip.run_cell(f"import sys\nsys.path.append({str(src)!r})\nimport helpers_nb")
    ip.run_cell_magic("bgjob", "uses_src", "doubled = helpers_nb.double(21)")
    job = bj.get_job("uses_src").wait(60)
    assert job.state == "succeeded", job.report
    assert ip.user_ns["doubled"] == 42
    sys.modules.pop("helpers_nb", None)


def test_a_detached_job_imports_from_the_notebooks_path_too(
    ip: Any, tmp_path: Path, restore_process: None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "helpers_far.py").write_text("def triple(x):\n    return 3 * x\n")
    ip.run_cell(f"import sys\nsys.path.append({str(src)!r})\nimport helpers_far")
    job = bj.run_cell("tripled = helpers_far.triple(4)", name="far_src", detach=True)
    job.wait(120)
    assert job.state == "succeeded", job.reason
    assert job.results is not None and job.results.tripled == 12
    sys.modules.pop("helpers_far", None)


def test_the_environment_and_working_directory_at_submission(
    ip: Any, tmp_path: Path, restore_process: None
) -> None:
    assert manager.pool().wait_warm(60)
    os.environ["BGJOBS_SET_LATE"] = "late"
    os.environ.pop("BGJOBS_REMOVED_LATE", None)
    os.chdir(tmp_path)
    ip.run_cell_magic(
        "bgjob",
        "environ",
        "import os\nlate = os.environ.get('BGJOBS_SET_LATE')\nhere = os.getcwd()\n"
        "gone = 'HOME' in os.environ",
    )
    job = bj.get_job("environ").wait(60)
    assert job.state == "succeeded", job.report
    assert ip.user_ns["late"] == "late"
    assert ip.user_ns["here"] == str(tmp_path)


def test_a_variable_the_notebook_removed_is_gone_in_the_job(ip: Any, restore_process: None) -> None:
    os.environ["BGJOBS_DOOMED"] = "x"
    manager.resize_pool()  # a warm kernel started while the variable was set
    assert manager.pool().wait_warm(60)
    del os.environ["BGJOBS_DOOMED"]
    ip.run_cell_magic(
        "bgjob", "unset", "import os\ndoomed = os.environ.get('BGJOBS_DOOMED', 'unset')"
    )
    assert bj.get_job("unset").wait(60).state == "succeeded"
    assert ip.user_ns["doomed"] == "unset"


def test_a_failed_reimport_names_the_module_the_error_and_the_fix(
    ip: Any, tmp_path: Path, restore_process: None
) -> None:
    src = tmp_path / "lib"
    src.mkdir()
    (src / "vanishing_nb.py").write_text("VALUE = 1\n")
    ip.run_cell(f"import sys\nsys.path.insert(0, {str(src)!r})\nimport vanishing_nb")
    # The module can no longer be found where the notebook found it.
    (src / "vanishing_nb.py").unlink()
    ip.run_cell_magic("bgjob", "reimport", "value = vanishing_nb.VALUE")
    job = bj.get_job("reimport").wait(60)
    assert job.state == "failed" and job.error is not None
    message = job.error.evalue
    assert "vanishing_nb" in message and "ModuleNotFoundError" in message
    assert "sys.path" in message and str(src) in message
    sys.modules.pop("vanishing_nb", None)


def test_top_level_await_runs_as_in_a_cell(ip: Any) -> None:
    ip.run_cell_magic(
        "bgjob",
        "awaits",
        "import asyncio\nawait asyncio.sleep(0.01)\n"
        "async def count():\n    for i in range(3):\n        yield i\n"
        "seen = [i async for i in count()]\n"
        "answer = await asyncio.sleep(0, result=42)",
    )
    job = bj.get_job("awaits").wait(60)
    assert job.state == "succeeded", job.report
    assert ip.user_ns["answer"] == 42 and ip.user_ns["seen"] == [0, 1, 2]
    assert job.progress == (5, 5)


@pytest.mark.parametrize(
    "code",
    [
        "name = input('your name? ')",
        "import getpass\nsecret = getpass.getpass()",
        "import sys\nline = sys.stdin.readline()",
        "import sys\ndata = sys.stdin.buffer.read(1)",
        "import sys\nwith sys.stdin as f:\n    text = f.read()",
    ],
)
def test_reading_stdin_fails_at_once_and_says_how_to_pass_the_value(ip: Any, code: str) -> None:
    job = bj.run_cell(code, name="asks")
    # Never waits for a keyboard: it fails long before any sensible timeout.
    job.wait(30)
    assert job.state == "failed" and job.error is not None
    assert job.error.ename == "NoStdinError"
    assert "no keyboard" in job.error.evalue and "--env" in job.error.evalue


def test_a_tty_probe_of_stdin_says_no_as_in_a_notebook() -> None:
    job = bj.run_cell("import os, sys\ntty = os.isatty(sys.stdin.fileno())", name="probe")
    assert job.wait(30).state == "succeeded" and job.results is not None
    assert job.results.tty is False


def test_a_subprocess_reading_stdin_gets_end_of_file(ip: Any) -> None:
    ip.run_cell_magic(
        "bgjob", "cat", "import subprocess\nread = subprocess.run(['cat'], capture_output=True)"
    )
    job = bj.get_job("cat").wait(30)
    assert job.state == "succeeded"
    assert ip.user_ns["read"].stdout == b""


def test_a_name_read_through_eval_says_how_to_ship_it(ip: Any) -> None:
    ip.user_ns["threshold"] = 0.5
    ip.run_cell_magic("bgjob", "evals", "limit = eval('threshold') * 2")
    job = bj.get_job("evals").wait(60)
    assert job.state == "failed" and job.error is not None
    assert job.error.ename == "NameError"
    assert "--env threshold" in job.error.evalue and "--env all" in job.error.evalue
    # With the name shipped it works.
    ip.run_cell_magic("bgjob", "evals2 --env threshold", "limit = eval('threshold') * 2")
    assert bj.get_job("evals2").wait(60).state == "succeeded"
    assert ip.user_ns["limit"] == 1.0


def test_a_name_read_through_globals_says_how_to_ship_it(ip: Any) -> None:
    ip.user_ns["ceiling"] = 9
    ip.run_cell_magic("bgjob", "globs", "top = globals()['ceiling']")
    job = bj.get_job("globs").wait(60)
    assert job.state == "failed" and job.error is not None
    assert job.error.ename == "KeyError"
    assert "--env ceiling" in job.error.evalue and "--env ceiling" in job.report


def test_an_awaited_last_expression_is_shown_as_in_a_cell(ip: Any) -> None:
    job = bj.run_cell("import asyncio\nawait asyncio.sleep(0, result=41 + 1)", name="shown")
    job.wait(60)
    assert job.state == "succeeded", job.report
    results = [o for o in job.outputs if o["output_type"] == "execute_result"]
    assert results and results[-1]["data"]["text/plain"] == "42"


@pytest.mark.parametrize("results", ["globals", "object"])
def test_a_module_both_sides_import_is_no_result(ip: Any, results: str) -> None:
    ip.run_cell("import json\nimport os.path as osp\nfrom math import sqrt")
    ip.user_ns.pop("textwrap", None)
    ip.run_cell_magic(
        "bgjob",
        f"imports_{results} --env none --results {results}",
        "import json\nimport os.path as osp\nfrom math import sqrt\nimport textwrap\n"
        "out = json.dumps([1])",
    )
    job = bj.get_job(f"imports_{results}").wait(60)
    ip.run_cell("pass")
    assert job.state == "succeeded"
    assert job.results is not None and not hasattr(job.results, "json")
    assert not hasattr(job.results, "osp") and not hasattr(job.results, "sqrt")
    merged = job.report.split("merged ", 1)[1].split(" into ", 1)[0]
    assert "json" not in merged and "osp" not in merged
    assert "out" in merged and "textwrap" in merged  # a module new to the notebook comes back


# -- bounded output ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "log_size", "ending"),
    [
        ("print('x' * (48 << 20))", (48 << 20) + 1, "x\n"),
        ("import sys\nfor _ in range(48):\n    sys.stdout.write('y' * (1 << 20))", 48 << 20, "y"),
        (
            "for i in range(300_000):\n    print(i)",
            sum(len(str(i)) + 1 for i in range(300_000)),
            "299999\n",
        ),
    ],
    ids=["one huge line", "1 MiB writes", "many short lines"],
)
def test_the_output_tail_is_bounded_in_bytes_and_the_log_is_whole(
    code: str, log_size: int, ending: str
) -> None:
    job = bj.run_cell(code, name="loud", env="none").wait(120)
    assert job.state == "succeeded"
    kept = sum(len(o.get("text", "")) for o in job.outputs)
    assert 0 < kept <= settings.output_tail_bytes
    assert job.log_path.stat().st_size == log_size
    assert job.output.endswith(ending)  # the newest output is what is kept


# -- bad input --------------------------------------------------------------------------------
_BAD: list[tuple[str, Callable[[], Any], str]] = [
    ("run_cell(123)", lambda: bj.run_cell(123), "code must be a string"),  # type: ignore[arg-type]
    ("name=5", lambda: bj.run_cell("x = 1", name=5), "name must be a string"),  # type: ignore[arg-type]
    ("env=None", lambda: bj.run_cell("x = 1", env=None), "env must be a string"),  # type: ignore[arg-type]
    (
        "kernel_env str",
        lambda: bj.run_cell("x = 1", kernel_env="KERNEL_X=1"),  # type: ignore[arg-type]
        "kernel_env must be a dict",
    ),
    ("timeout inf", lambda: bj.run_cell("x = 1", timeout=math.inf), "timeout must be a finite"),
    ("timeout nan", lambda: bj.run_cell("x = 1", timeout=math.nan), "timeout must be a finite"),
    ("timeout True", lambda: bj.run_cell("x = 1", timeout=True), "timeout must be a number"),
    ("timeout 0", lambda: bj.run_cell("x = 1", timeout=0), "more than 0"),
    ("timeout '5'", lambda: bj.run_cell("x = 1", timeout="5"), "timeout must be a number"),  # type: ignore[arg-type]
    (
        "kernel_env int",
        lambda: bj.run_cell("x = 1", kernel_env={"KERNEL_X": 1}, gateway="http://h:1"),  # type: ignore[dict-item]
        "must be a string",
    ),
    (
        "kernel_env local",
        lambda: bj.run_cell("x = 1", kernel_env={"KERNEL_X": "1"}),
        "name the gateway too",
    ),
    ("kernel ''", lambda: bj.run_cell("x = 1", kernel=""), "must name a kernelspec"),
    ("root blank", lambda: bj.configure(root="   "), "root must be a path"),
    ("units '3'", lambda: bj.add_job("t", progress_units="3"), "progress_units must be"),  # type: ignore[arg-type]
    ("results 1", lambda: bj.run_cell("x = 1", results=1), "results must be one of"),  # type: ignore[arg-type]
    ("detach 'yes'", lambda: bj.run_cell("x = 1", detach="yes"), "detach must be True or False"),  # type: ignore[arg-type]
    ("workdir 5", lambda: bj.run_cell("x = 1", workdir=5), "workdir must be a path"),  # type: ignore[arg-type]
    ("kernel missing", lambda: bj.run_cell("x = 1", kernel="nope"), "installed ones are: python3"),
    ("gateway form", lambda: bj.run_cell("x = 1", gateway="gateway:8888"), "must look like"),
    ("gateway port", lambda: bj.run_cell("x = 1", gateway="http://h:99999"), "not a valid URL"),
    ("gateway host", lambda: bj.run_cell("x = 1", gateway="http://:8888"), "has no host"),
    ("run_script 5", lambda: bj.run_script(5), "path must be a path"),  # type: ignore[arg-type]
    ("encoding None", lambda: bj.run_script(__file__, encoding=None), "encoding must be"),  # type: ignore[arg-type]
    ("get_job 5", lambda: bj.get_job(5), "name_or_id must be a string"),  # type: ignore[arg-type]
    ("grace nan", lambda: bj.configure(cancel_grace=math.nan), "cancel_grace must be a finite"),
    ("root 5", lambda: bj.configure(root=5), "root must be a path"),
    ("kernel 5", lambda: bj.configure(kernel=5), "kernel must be a string"),
    ("kernel nope", lambda: bj.configure(kernel="nope"), "no kernelspec named 'nope'"),
    ("pool 1.5", lambda: bj.configure(pool_size=1.5), "pool_size must be a whole number"),
    ("tail '9'", lambda: bj.configure(output_tail="9"), "output_tail must be a number"),
    ("notify 1", lambda: bj.configure(notify=1), "notify must be True or False"),
    ("add_job 5", lambda: bj.add_job(5), "name must be a string"),  # type: ignore[arg-type]
    ("units -1", lambda: bj.add_job("t", progress_units=-1), "progress_units must be"),
    ("actions", lambda: bj.add_job("t", actions={"stop": 1}), "actions must be a dict"),  # type: ignore[dict-item]
]


@pytest.mark.parametrize(("label", "call", "message"), _BAD, ids=[b[0] for b in _BAD])
def test_bad_arguments_are_one_line_and_make_nothing(
    label: str, call: Callable[[], Any], message: str
) -> None:
    before_jobs, before_folders = len(bj.jobs()), _folders()
    before = repr(settings)
    with pytest.raises(bj.JobSpecError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
    assert len(bj.jobs()) == before_jobs and _folders() == before_folders
    assert repr(settings) == before  # a refused setting changes nothing


def test_a_wait_timeout_must_be_a_number() -> None:
    job = bj.run_cell("x = 1", name="waits", env="none")
    with pytest.raises(bj.JobSpecError, match="timeout must be"):
        job.wait("soon")  # type: ignore[arg-type]
    assert job.wait(60).state == "succeeded"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("k --kernel no-such-kernel", "no kernelspec named 'no-such-kernel'; the installed ones"),
        ("g --gateway http//gw:8888", "must look like http://"),
        ("t --timeout inf", "finite"),
    ],
)
def test_magic_options_that_cannot_work_are_refused_at_once(
    ip: Any, line: str, message: str
) -> None:
    before = _folders()
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("bgjob", line, "x = 1")
    assert _folders() == before


def test_magic_options_follow_shell_quoting(ip: Any, tmp_path: Path) -> None:
    spaced = tmp_path / "my project"
    spaced.mkdir()
    ip.user_ns.update(a=1, b=2)
    ip.run_cell_magic(
        "bgjob",
        f"quoted --workdir \"{spaced}\" --env 'a,b'",
        "import os\nwhere = os.getcwd()\nboth = a + b",
    )
    job = bj.get_job("quoted").wait(60)
    assert job.state == "succeeded", job.report
    assert ip.user_ns["where"] == str(spaced) and ip.user_ns["both"] == 3
    assert job.shipped == ["a", "b"]


# -- runtime folders and files ----------------------------------------------------------------
def test_folders_another_user_made_under_shared_names_stop_nothing(ip: Any, tmp_path: Path) -> None:
    """The names older versions used in /tmp and /dev/shm, made by someone else and open to
    all, are never used: jobs run, in folders of their own."""
    planted, found = [], []
    for base in ("/tmp", "/dev/shm"):
        path = Path(base) / f"jupyter-bgjobs-{os.getuid()}"
        if path.exists():  # left by an older version: put back as it was afterwards
            st = path.stat()
            found.append((path, st.st_mode & 0o7777, st.st_uid, st.st_gid))
        else:
            path.mkdir()
            planted.append(path)
        os.chmod(path, 0o777)
        if os.getuid() == 0:
            os.chown(path, 65534, 65534)
    try:
        job = bj.run_cell("import numpy\nx = numpy.arange(3).sum()", name="planted").wait(60)
        assert job.state == "succeeded", job.reason
        for folder in (_runtime.sockets_dir(), _runtime.shm_dir()):
            assert folder is not None and _runtime.is_private(folder)
            assert not folder.endswith(f"jupyter-bgjobs-{os.getuid()}")
    finally:
        for path in planted:
            path.rmdir()
        for path, mode, uid, gid in found:
            if os.getuid() == 0:
                os.chown(path, uid, gid)
            os.chmod(path, mode)


def test_every_file_of_a_job_folder_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        job = bj.run_cell("print('hello')\nx = list(range(1000))", name="private").wait(60)
    finally:
        os.umask(old)
    assert job.state == "succeeded"
    folder = job.log_path.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"spec.json", "output.log"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_no_kernel_leaves_a_connection_file_in_the_shared_runtime_folder() -> None:
    from jupyter_core.paths import jupyter_runtime_dir

    before = set(Path(jupyter_runtime_dir()).glob("kernel-*.json"))
    job = bj.run_cell("x = 1", name="connfile", env="none").wait(60)
    manager.join_worker(job)
    assert set(Path(jupyter_runtime_dir()).glob("kernel-*.json")) <= before
    # Ours live in the private folder, named after their owner, and go with the kernel.
    ours = list(Path(_runtime.sockets_dir()).glob(f"k*.{os.getpid()}x*.json"))
    assert len(ours) <= manager.pool().size


def test_readme_table_of_what_a_job_inherits() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### What a job inherits from the notebook", 1)[1][:3000]
    for word in ("sys.path", "working directory", "environment", "stdin", "open files"):
        assert word in section


def test_output_waits_for_the_notebook_to_take_it(tmp_path: Path) -> None:
    """The job's side of output credit: it waits while more than the window is not taken,
    goes on as the notebook takes it, and gives up on a notebook that stopped counting."""
    import threading

    from jupyter_bgjobs._inside.kernel.console import Flow

    counter = tmp_path / "flow"
    counter.write_bytes(bytes(8))
    flow = Flow(str(counter), window=100, stall=30)
    flow.sent = 1000
    released = threading.Event()

    def take() -> None:
        released.wait(30)
        with open(counter, "r+b") as fh:
            fh.write((950).to_bytes(8, "little"))

    taker = threading.Thread(target=take)
    taker.start()
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (flow.wait(), done.set()))
    waiter.start()
    assert not done.wait(0.3)  # 1000 written, 0 taken: held back
    released.set()
    assert done.wait(30)  # 950 taken: within the window again
    taker.join()
    waiter.join()
    stalled = Flow(str(counter), window=100, stall=0.2)
    stalled.sent = 10_000
    stalled.wait()  # the counter never moves: it stops waiting, and for good
    assert stalled.off
    flow.close()
    stalled.close()


def test_a_name_bound_to_the_very_object_it_held_is_a_result(ip: Any) -> None:
    # 45 is one shared object in a process: the job's `total` is the object it was given,
    # and still the job bound it, as the cell would have.
    ip.user_ns["total"] = 45
    ip.run_cell_magic("bgjob", "same_object", "total = sum(range(10))\nseen = total")
    job = bj.get_job("same_object").wait(60)
    assert job.state == "succeeded", job.report
    assert job.results is not None and job.results.total == 45
    assert "total" in job.report.split("merged", 1)[1], job.report
    assert ip.user_ns["total"] == 45 and ip.user_ns["seen"] == 45
