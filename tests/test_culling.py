"""A notebook kernel with running jobs is not culled by a real jupyter_server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cells import free_port
from jupyter_client import BlockingKernelClient

TOKEN = "bgjobs-test-token"


class Server:
    def __init__(self, url: str, runtime: Path, proc: subprocess.Popen[bytes]) -> None:
        self.url, self.runtime, self.proc = url, runtime, proc

    def request(self, method: str, path: str) -> Any:
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=b"{}" if method == "POST" else None,
            headers={"Authorization": f"token {TOKEN}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def kernel_ids(self) -> set[str]:
        return {k["id"] for k in self.request("GET", "/api/kernels")}

    def client(self, kernel_id: str) -> BlockingKernelClient:
        kc = BlockingKernelClient()
        kc.load_connection_file(str(self.runtime / f"kernel-{kernel_id}.json"))
        # No heartbeat channel: a client without a manager calls a kernel dead when its first
        # heartbeat is late, as it is for a kernel still importing on a busy machine.
        kc.start_channels(hb=False)
        kc.wait_for_ready(timeout=60)
        return kc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    runtime = tmp_path / "runtime"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={tmp_path}",
            "--MappingKernelManager.cull_idle_timeout=8",
            "--MappingKernelManager.cull_interval=1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    srv = Server(f"http://127.0.0.1:{port}", runtime, proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            srv.request("GET", "/api/status")
            break
        except (urllib.error.URLError, ConnectionError):
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
    yield srv
    proc.terminate()
    proc.wait(30)


def _execute(kc: BlockingKernelClient, code: str) -> None:
    reply = kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
    assert reply["content"]["status"] == "ok", reply["content"]


def test_kernels_with_running_jobs_are_not_culled(server: Server, tmp_path: Path) -> None:
    # One kernel at a time, each put to work at once: the culler (8 s, longer than a kernel
    # takes to start on a busy machine, when it shows no activity) must see no kernel idle
    # that the test still means to use. The jobs run until the test opens a gate.
    gate = tmp_path / "gate"
    wait = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)"
    clients = []
    try:
        with_magic = server.request("POST", "/api/kernels")["id"]
        clients.append(server.client(with_magic))
        _execute(clients[0], "%load_ext jupyter_bgjobs\n%bgjobs")
        _execute(clients[0], "%%bgjob long\n" + wait)
        with_api = server.request("POST", "/api/kernels")["id"]
        clients.append(server.client(with_api))
        _execute(clients[1], f"import jupyter_bgjobs\njob = jupyter_bgjobs.run_cell({wait!r})")
        idle = server.request("POST", "/api/kernels")["id"]
        started = time.monotonic()
        # Watch the server for at least 20 s (over twice the idle timeout) and until the
        # kernel without jobs has been culled: the culler was active all along.
        while time.monotonic() - started < 20 or idle in server.kernel_ids():
            assert time.monotonic() - started < 90, "the idle kernel was never culled"
            ids = server.kernel_ids()
            assert with_magic in ids and with_api in ids, "a kernel with a running job was culled"
            time.sleep(0.25)
        gate.touch()
        # Once the jobs are over, the protection ends and the culler takes them too.
        deadline = time.monotonic() + 60
        while server.kernel_ids() & {with_magic, with_api}:
            assert time.monotonic() < deadline, (
                f"kernels were kept after their jobs ended: {server.request('GET', '/api/kernels')}"
            )
            time.sleep(0.25)
    finally:
        for kc in clients:
            kc.stop_channels()
