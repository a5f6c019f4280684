"""Remote jobs on a real Jupyter Kernel Gateway served on 127.0.0.1 with a token."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cells import free_port
from gatewayserver import TOKEN, Gateway

import jupyter_bgjobs as bj
from jupyter_bgjobs._backends import gateway as _gateway
from jupyter_bgjobs._job import run_of

pytest.importorskip("kernel_gateway")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", TOKEN)


def _files_of(job: Any) -> str:
    return "".join(
        p.read_text(errors="replace") for p in Path(job.folder).rglob("*") if p.is_file()
    )


def test_a_remote_job_with_namespace_progress_output_and_results(ip: Any, gateway: Gateway) -> None:
    import numpy as np

    ip.user_ns["rate"] = 0.5
    ip.user_ns["big"] = np.arange(3_000_000, dtype=np.float64)  # 24 MB: many chunks each way

    def scale(x: float) -> float:
        return x * 2

    ip.user_ns["scale"] = scale
    ip.run_cell_magic(
        "bgjob",
        f"remote --gateway {gateway.url} --kernel-env KERNEL_TEAM=blue",
        "import os\n"
        "# Prepare ----\n"
        "team = os.environ['KERNEL_TEAM']\n"
        "print('working for', team)\n"
        "# Compute ----\n"
        "doubled = big * scale(rate)\n"
        "total = float(doubled.sum())\n",
    )
    job = bj.get_job("remote").wait(120)
    assert job.state == "succeeded", (job.reason, job.output)
    assert job.progress == (5, 5) and job.section == "Compute"
    assert "working for blue" in job.output
    assert ip.user_ns["team"] == "blue"
    np.testing.assert_array_equal(ip.user_ns["doubled"], np.arange(3_000_000) * 1.0)
    assert ip.user_ns["total"] == float(np.arange(3_000_000).sum())
    # What the remote kernel said of itself: it held the 24 MB array and its double.
    assert job.resources["peak"] >= 48_000_000 and job.resources["cpu_seconds"] > 0
    spec = json.loads((job.folder / "spec.json").read_text())
    assert spec["gateway"] == gateway.url and spec["kernel_env"] == {"KERNEL_TEAM": "blue"}
    assert TOKEN not in _files_of(job) and TOKEN not in job.report
    assert gateway.no_kernels_left()


def test_cancel_interrupts_then_deletes_and_timeout_ends_a_remote_job(gateway: Gateway) -> None:
    job = bj.run_cell(
        "import time\nwhile True:\n    time.sleep(0.05)", name="spin", gateway=gateway.url
    )
    with job._cond:
        job._cond.wait_for(lambda: job.state == "running", 60)
    job.cancel()
    assert job.wait(60).state == "cancelled"
    slow = bj.run_cell("import time\ntime.sleep(60)", name="slow", gateway=gateway.url, timeout=2)
    assert slow.wait(60).state == "timed_out"
    assert gateway.no_kernels_left()


def test_a_wrong_token_and_a_gateway_that_is_down_say_so(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", "not-the-token")
    job = bj.run_cell("x = 1", name="refused", gateway=gateway.url).wait(60)
    assert job.state == "failed"
    assert "rejected the token (HTTP 403)" in job.reason or "(HTTP 401)" in job.reason
    assert "not-the-token" not in job.reason + _files_of(job)
    down = bj.run_cell("x = 1", name="nobody", gateway=f"http://127.0.0.1:{free_port()}")
    down.wait(60)
    assert down.state == "failed" and "is not reachable" in down.reason
    with pytest.raises(bj.JobSpecError, match="only KERNEL_"):
        bj.run_cell("x = 1", gateway=gateway.url, kernel_env={"TEAM": "blue"})


def test_a_gateway_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # A socket that accepts and then says nothing: a hung gateway, as no real one will be.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setattr(_gateway, "REQUEST_TIMEOUT", 1.0)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    job = bj.run_cell("x = 1", name="hung", gateway=url).wait(60)
    silent.close()
    assert job.state == "failed" and "did not answer POST /api/kernels within 1 s" in job.reason


def test_a_dropped_websocket_is_reopened_and_nothing_is_lost(gateway: Gateway) -> None:
    job = bj.run_cell(
        "import time\nfor i in range(40):\n    print('tick', i, flush=True)\n    time.sleep(0.05)",
        name="flaky",
        gateway=gateway.url,
    )
    with job._cond:
        job._cond.wait_for(lambda: "tick 5" in job.output or job.done, 60)
    # The network drops the connection: cut our end of the websocket, which is the one
    # place a test can reach; the client must reopen it with the same session.
    run_of(job).kernel.drop_connection()
    job.wait(60)
    assert job.state == "succeeded", job.reason
    ticks = [line for line in job.output.splitlines() if line.startswith("tick")]
    assert ticks == [f"tick {i}" for i in range(40)]


def test_a_gateway_killed_mid_job_is_reported(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    try:
        job = bj.run_cell("import time\ntime.sleep(120)", name="orphaned", gateway=gw.url)
        with job._cond:
            job._cond.wait_for(lambda: job.state == "running", 60)
        gw.stop(hard=True)
        job.wait(60)
        assert job.state == "died"
        assert "gateway" in job.reason and TOKEN not in job.reason
    finally:
        if gw.proc.poll() is None:
            gw.stop()


def test_configure_sets_the_default_gateway(gateway: Gateway) -> None:
    bj.configure(gateway=gateway.url)
    try:
        job = bj.run_cell("import os\nwhere = os.environ.get('KERNEL_GATEWAY')", name="dflt")
        job.wait(60)
        assert job.state == "succeeded" and job.results.where == "1"
    finally:
        bj.configure(gateway="")
    assert repr(bj.configure()).count(TOKEN) == 0


def test_a_memory_limit_on_a_gateway_is_the_gateways_to_keep(gateway: Gateway) -> None:
    """A gateway's kernel is not a process here: the limit goes to the gateway as
    KERNEL_MEMORY (what Enterprise Gateway's kernels take); the kernel says what it used."""
    job = bj.run_cell(
        "import os\nasked = os.environ.get('KERNEL_MEMORY')\nblock = bytearray(30_000_000)\n",
        name="limited_remote",
        gateway=gateway.url,
        memory_limit="2G",
    )
    job.wait(60)
    assert job.state == "succeeded", job.reason
    assert job.results.asked == "2000000000"
    assert job.resources["peak"] >= 30_000_000


def test_a_gateway_kernel_that_exits_on_its_own_makes_its_job_died(gateway: Gateway) -> None:
    # The gateway restarts a kernel whose process ended: the job's state went with it.
    job = bj.run_cell("import os\nx = 1\nos._exit(3)", name="exits", gateway=gateway.url)
    job.wait(60)
    assert job.state == "died"
    assert "the gateway's kernel ended on its own" in job.reason
    assert gateway.no_kernels_left()
