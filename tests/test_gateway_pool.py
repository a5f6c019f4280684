"""Warm kernels on a real Jupyter Kernel Gateway (127.0.0.1, with a token):
``configure(gateway_pool_size=N)``, the kernels' end with the notebook's kernel (killed
included), a gateway that culls idle kernels, and one that is down."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cells import free_port, gone, until
from gatewayserver import TOKEN, Gateway
from jupyter_client import KernelManager

import jupyter_bgjobs as bj
from jupyter_bgjobs._api import manager
from jupyter_bgjobs._backends import gateway_pool
from jupyter_bgjobs._backends.gateway_pool import GatewayPool
from jupyter_bgjobs._config import settings
from jupyter_bgjobs._job import run_of

pytest.importorskip("kernel_gateway")

ROOT = Path(__file__).parent.parent


class Served(Gateway):
    """A gateway whose kernels listen on Unix sockets: the TCP ports jupyter_client picks
    free, for a kernel to bind later, collide now and then when kernels start at once, as a
    pool's do. In a short folder of its own: a socket's path has at most 107 characters."""

    def __init__(self, *args: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bgjobs-gw-"))
        super().__init__(self.folder, "--KernelManager.transport=ipc", *args)

    def end(self) -> None:
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            # kernel_gateway 3.0 hangs in its own shutdown when a kernel it is ending goes
            # meanwhile (culled, or deleted by a client): end it hard then.
            self.stop(hard=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    gw = Served()
    yield gw
    gw.end()


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", TOKEN)
    yield
    # A job's driver deletes its kernel, and takes it off the reaper's list, after the
    # job's wait() returned: once they are all done, the reaper lists nothing and ends
    # with the pool, and each test starts without a pool (ending one deletes its kernels).
    for job in manager.jobs():
        manager.join_worker(job)
    bj.configure(gateway="", gateway_pool_size=0)


def ids(gw: Gateway) -> set[str]:
    return {k["id"] for k in gw.kernels()}


def warm_pool(url: str, size: int) -> GatewayPool:
    bj.configure(gateway=url, gateway_pool_size=size)
    pool = manager.gateway_pool()
    assert pool is not None and pool.wait_warm(60), pool and pool.last_error
    return pool


def test_a_job_takes_a_warm_kernel_and_the_pool_refills(gateway: Gateway) -> None:
    pool = warm_pool(gateway.url, 2)
    warm = set(pool.idle_ids())
    assert len(warm) == 2 and ids(gateway) == warm
    assert manager.reaper.listed() == warm

    job = bj.run_cell("x = 20\ny = x + 22", name="warm", results="none").wait(60)
    assert job.state == "succeeded", job.reason
    assert job.results is not None and job.results.y == 42
    # It ran in a kernel that was started before it was submitted, and soon after.
    assert run_of(job).kernel.kernel_id in warm
    assert job.timings["first_statement"] >= job.timings["submitted"]
    assert pool.wait_warm(60)
    refilled = set(pool.idle_ids())
    assert len(refilled) == 2 and run_of(job).kernel.kernel_id not in refilled
    # The job's kernel is deleted once it ended; the gateway keeps the pool's only.
    until(
        lambda: ids(gateway) == refilled and manager.reaper.listed() == refilled,
        "the job's kernel deleted, and taken off the reaper's list",
        30,
    )

    # A job that asks for kernel variables gets a kernel of its own, not a pooled one.
    own = bj.run_cell(
        "import os\nteam = os.environ['KERNEL_TEAM']",
        name="own",
        results="none",
        kernel_env={"KERNEL_TEAM": "blue"},
    ).wait(60)
    assert own.state == "succeeded" and own.results is not None and own.results.team == "blue"
    assert run_of(own).kernel.kernel_id not in refilled and set(pool.idle_ids()) == refilled

    bj.configure(gateway_pool_size=0)
    assert gateway.no_kernels_left()


def test_a_job_through_the_magic_takes_a_warm_kernel(ip: Any, gateway: Gateway) -> None:
    pool = warm_pool(gateway.url, 1)
    warm = set(pool.idle_ids())
    ip.user_ns["base"] = 21
    ip.run_cell_magic("bgjob", "magic", "answer = base * 2")
    job = bj.get_job("magic").wait(60)
    assert job.state == "succeeded", job.reason
    assert run_of(job).kernel.kernel_id in warm
    assert ip.user_ns["answer"] == 42


def test_a_pool_of_zero_ends_the_pooled_kernels_and_bad_sizes_are_refused(
    gateway: Gateway,
) -> None:
    pool = warm_pool(gateway.url, 2)
    reaper = manager.reaper.pid
    assert reaper is not None and ids(gateway) == set(pool.idle_ids())
    bj.configure(gateway_pool_size=0)
    assert manager.gateway_pool() is None
    assert gateway.kernels() == []
    assert gone(reaper), "the reaper outlived the pool"
    for bad in (-1, "2", 1.5, True):
        with pytest.raises(bj.JobSpecError) as info:
            bj.configure(gateway_pool_size=bad)
        message = str(info.value)
        assert message.startswith("gateway_pool_size must be") and "\n" not in message
    assert settings.gateway_pool_size == 0


def test_the_reaper_keeps_the_token_off_its_command_line_and_ignores_interrupts(
    gateway: Gateway,
) -> None:
    warm_pool(gateway.url, 1)
    pid = manager.reaper.pid
    assert pid is not None
    proc = psutil.Process(pid)
    assert TOKEN not in " ".join(proc.cmdline())
    assert "reaper.py" in " ".join(proc.cmdline())
    # Neither the notebook's output nor its session: an interrupt of the notebook's
    # process group does not reach it.
    for fd in (1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert os.getsid(pid) != os.getsid(0)

    def ignores_sigint() -> bool:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
        return False

    until(ignores_sigint, "the reaper ignores SIGINT", 30)
    os.kill(pid, signal.SIGINT)
    child = manager.reaper._proc
    assert child is not None
    bj.configure(gateway_pool_size=0)
    assert child.returncode == 0, "the reaper did not end as told"
    assert gateway.no_kernels_left()


class Notebook:
    """A real notebook kernel that imports this checkout of jupyter_bgjobs."""

    def __init__(self, cwd: Path) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(
            cwd=str(cwd),
            env=dict(os.environ, PYTHONPATH=path, JUPYTER_GATEWAY_AUTH_TOKEN=TOKEN),
        )
        self.kc = self.km.blocking_client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str) -> str:
        from cells import execute

        return execute(self.kc, code, timeout=120)

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.pid)

    def close(self, now: bool = True) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=now)


@pytest.fixture
def notebook(tmp_path: Path, gateway: Gateway) -> Iterator[Notebook]:
    nb = Notebook(tmp_path)
    yield nb
    nb.close()
    # Whatever the test saw, its kernels go before the gateway does.
    gateway.no_kernels_left()


def _warm_notebook(nb: Notebook, url: str) -> tuple[int, set[str]]:
    """The notebook's pool warm: (its reaper's pid, the pooled kernels' ids)."""
    said = nb.run(
        "import jupyter_bgjobs as bj\n"
        "from jupyter_bgjobs._api import manager\n"
        "from jupyter_bgjobs._job import run_of\n"
        f"bj.configure(pool_size=0, gateway={url!r}, gateway_pool_size=2)\n"
        "pool = manager.gateway_pool()\n"
        "assert pool.wait_warm(60), pool.last_error\n"
        "print(manager.reaper.pid, *pool.idle_ids())\n"
    )
    pid, *kernels = said.split()
    return int(pid), set(kernels)


def test_pooled_kernels_end_with_the_notebook_kernel(notebook: Notebook, gateway: Gateway) -> None:
    reaper, kernels = _warm_notebook(notebook, gateway.url)
    assert len(kernels) == 2 and ids(gateway) == kernels
    notebook.close(now=False)  # a shutdown request: the kernel exits on its own
    assert gateway.no_kernels_left()
    until(lambda: gone(reaper), "the reaper ended", 30)


def test_gateway_kernels_end_with_a_killed_notebook_kernel(
    notebook: Notebook, gateway: Gateway
) -> None:
    reaper, pooled = _warm_notebook(notebook, gateway.url)
    # Running jobs: one in a pooled kernel, one in a kernel of its own (kernel variables).
    said = notebook.run(
        "spin = 'import time\\nwhile True:\\n    time.sleep(0.05)'\n"
        "jobs = [bj.run_cell(spin, name='pooled'),\n"
        "        bj.run_cell(spin, name='own', kernel_env={'KERNEL_TEAM': 'blue'})]\n"
        "for job in jobs:\n"
        "    with job._cond:\n"
        "        assert job._cond.wait_for(lambda: job.state == 'running', 60), job.reason\n"
        "assert pool.wait_warm(60), pool.last_error\n"
        "print(run_of(jobs[0]).kernel.kernel_id, *manager.reaper.listed())\n"
    )
    taken, *listed = said.split()
    assert taken in pooled and taken in listed, "the pooled job's kernel stays the reaper's"
    assert len(set(listed)) == 4 and ids(gateway) == set(listed)
    os.kill(notebook.pid, signal.SIGKILL)
    assert gateway.no_kernels_left(), "the gateway still lists kernels of the killed notebook"
    until(lambda: gone(reaper), "the reaper ended", 30)


@pytest.fixture
def culling() -> Iterator[Gateway]:
    gw = Served(
        "--MappingKernelManager.cull_idle_timeout=2",
        "--MappingKernelManager.cull_interval=1",
        # A pooled kernel holds its websocket open: without this it is never culled.
        "--MappingKernelManager.cull_connected=True",
    )
    yield gw
    bj.configure(gateway="", gateway_pool_size=0)  # the pool goes before its gateway
    gw.end()


def test_a_culled_pooled_kernel_gives_a_fresh_kernel(
    culling: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool must not replace culled kernels before the job comes: acquire finds them.
    monkeypatch.setattr(gateway_pool, "CHECK_INTERVAL", 3600.0)
    pool = warm_pool(culling.url, 2)
    warm = set(pool.idle_ids())
    until(lambda: not ids(culling) & warm, "the gateway culled the idle kernels", 60)
    assert set(pool.idle_ids()) == warm, "the pool has not noticed yet"
    job = bj.run_cell("y = 6 * 7", name="fresh", results="none").wait(60)
    assert job.state == "succeeded", job.reason
    assert job.results is not None and job.results.y == 42
    assert run_of(job).kernel.kernel_id not in warm


def test_the_pool_replaces_kernels_the_gateway_culled(
    culling: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_pool, "CHECK_INTERVAL", 0.2)
    pool = warm_pool(culling.url, 1)
    (first,) = pool.idle_ids()
    until(lambda: first not in ids(culling), "the gateway culled the idle kernel", 60)
    until(
        lambda: pool.idle_ids() and first not in pool.idle_ids(),
        "the pool replaced the culled kernel",
        60,
    )
    assert first not in manager.reaper.listed()
    job = bj.run_cell("y = 6 * 7", name="replaced", results="none").wait(60)
    assert job.state == "succeeded" and job.results is not None and job.results.y == 42


def test_a_gateway_that_is_down_fails_jobs_as_before_and_the_pool_retries_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gateway_pool, "BACKOFF", 0.05)
    bj.configure(gateway=f"http://127.0.0.1:{free_port()}", gateway_pool_size=2)
    pool = manager.gateway_pool()
    assert pool is not None
    until(lambda: pool._failures >= 4, "the pool retried", 30)
    assert "is not reachable" in pool.last_error and "\n" not in pool.last_error
    assert not pool.wait_warm(0.1)
    job = bj.run_cell("x = 1", name="nobody", results="none").wait(60)
    assert job.state == "failed" and "is not reachable" in job.reason
    assert capsys.readouterr() == ("", ""), "a failing refill printed"
    assert manager.reaper.pid is None, "no kernel, no reaper"


def test_a_detached_job_starts_its_own_kernel(gateway: Gateway) -> None:
    pool = warm_pool(gateway.url, 1)
    warm = set(pool.idle_ids())
    job = bj.run_cell("y = 6 * 7", name="far", detach=True).wait(120)
    assert job.state == "succeeded", job.reason
    # Its host, which outlives this kernel, started a kernel of its own and deleted it.
    assert set(pool.idle_ids()) == warm and manager.reaper.listed() == warm
    until(lambda: ids(gateway) == warm, "the detached job's kernel deleted", 30)
