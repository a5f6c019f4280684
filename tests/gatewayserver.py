"""A real Jupyter Kernel Gateway on 127.0.0.1 with a token, for the remote tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from cells import free_port, until

TOKEN = "gw-secret-token-4711"


class Gateway:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kernel_gateway",
                "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={self.port}",
                f"--KernelGatewayApp.auth_token={TOKEN}",
                # Listing kernels is off by default; the tests check none is left behind.
                "--JupyterWebsocketPersonality.list_kernels=True",
                *args,
            ],
            cwd=tmp,
            env=dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp / "runtime")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.kernels()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop(hard=True)
                    raise AssertionError("the kernel gateway did not start") from None
                time.sleep(0.1)  # polling a port that is not open yet

    def _request(self, method: str, path: str, timeout: float) -> bytes:
        """The body of the gateway's answer to a request with the token."""
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {TOKEN}"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return bytes(resp.read())

    def kernels(self) -> list[dict[str, Any]]:
        # A gateway busy ending kernels can be slow to answer; slow is not gone.
        return list(json.loads(self._request("GET", "/api/kernels", timeout=30)))

    def delete_kernel(self, kernel_id: str) -> None:
        self._request("DELETE", f"/api/kernels/{kernel_id}", timeout=10)

    def no_kernels_left(self, timeout: float = 30) -> bool:
        """Whether the gateway ends up with no kernel within ``timeout`` seconds: a job's
        driver deletes its kernel just after the job ends. False rather than a failure, for
        a fixture's teardown that only waits."""
        try:
            until(lambda: not self.kernels(), "the gateway lists no kernel", timeout)
        except AssertionError:
            return False
        return True

    def stop(self, hard: bool = False) -> None:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if hard:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(30)
        # Kernels a killed gateway leaves behind would be orphans: end them here.
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(children, timeout=10)
