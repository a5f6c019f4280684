"""The server extension: the job store over a real jupyter_server's REST API and its auth.

The server is started as a user starts it (``jupyter server``), with no option naming the
extension: ``pip install`` enabled it. It shares this run's job root, so it sees the jobs
this process and ``bgjobs run`` start.
"""

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

import jupyter_bgjobs as bj

TOKEN = "bgjobs-server-token"


class Server:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                "--allow-root",
                f"--port={self.port}",
                "--ServerApp.ip=127.0.0.1",
                f"--IdentityProvider.token={TOKEN}",
                f"--ServerApp.root_dir={root}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.request("GET", "/api/status")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("jupyter_server did not start") from None
                time.sleep(0.1)  # polling a port that is not open yet

    def request(
        self, method: str, path: str, body: Any = None, token: bool = True, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"token {TOKEN}")
        for key, value in headers.items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, _, data = self.request(method, path, body)
        assert status < 300, (status, data)
        return json.loads(data) if data else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


def until(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)  # polling the server
    return found


def gate_code(gate: Path) -> str:
    return f"while not __import__('os').path.exists({str(gate)!r}): __import__('time').sleep(0.02)"


def test_the_api_refuses_requests_without_the_token(server: Server) -> None:
    for path in ("/bgjobs/api/jobs", "/bgjobs/api/events"):
        status, _, _ = server.request("GET", path, token=False)
        assert status == 403
    status, _, _ = server.request("POST", "/bgjobs/api/jobs", {"path": "x.py"}, token=False)
    assert status == 403


def test_every_job_is_listed_with_its_state_and_read_whole(server: Server, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    attached = bj.run_cell(f"print('hello from here')\n{gate_code(gate)}", name="srv_here")
    script = tmp_path / "far.py"
    script.write_text("print('hello from far')\nvalue = 3\n")
    subprocess.run(
        [sys.executable, "-m", "jupyter_bgjobs._cli", "run", str(script), "--name", "srv_far"],
        check=True,
        capture_output=True,
        timeout=120,
    )

    def listed() -> dict[str, Any]:
        jobs = server.json("GET", "/bgjobs/api/jobs")["jobs"]
        return {j["name"]: j for j in jobs if j["name"] in ("srv_here", "srv_far")}

    rows = until(lambda: (r := listed()) and len(r) == 2 and r, "both jobs listed")
    here = rows["srv_here"]
    assert here["detached"] is False and here["where"] == "local" and here["id"] == attached.id
    assert set(here) >= {"state", "progress", "section", "status", "started", "finished"}
    assert rows["srv_far"]["detached"] is True
    until(lambda: "hello from here" in attached.output, "the job to print")
    detail = server.json("GET", f"/bgjobs/api/jobs/{attached.id}")
    assert detail["state"] == "running" and detail["record"]["owner_pid"] == os.getpid()
    assert any("hello from here" in o["text"] for o in detail["outputs"])
    # The log, whole and in ranges.
    status, headers, data = server.request(
        "GET", f"/bgjobs/api/jobs/{attached.id}/log", Range="bytes=0-4"
    )
    assert (
        status == 206
        and data == b"hello"
        and headers["Content-Range"].endswith(f"/{attached.log_path.stat().st_size}")
    )
    status, _, data = server.request("GET", f"/bgjobs/api/jobs/{attached.id}/log")
    assert status == 200 and data.startswith(b"hello from here")
    # A running job cannot be deleted; an ended one can, and is gone.
    status, _, _ = server.request("DELETE", f"/bgjobs/api/jobs/{attached.id}")
    assert status == 409
    gate.touch()
    attached.wait(60)
    status, _, _ = server.request("DELETE", f"/bgjobs/api/jobs/{attached.id}")
    assert status == 204 and not attached.folder.exists()
    status, _, _ = server.request("GET", f"/bgjobs/api/jobs/{attached.id}")
    assert status == 404


def test_cancel_from_the_pane_reaches_a_job_of_a_notebook(server: Server) -> None:
    job = bj.run_cell("import time\nwhile True:\n    time.sleep(0.05)", name="srv_stop")
    until(lambda: job.state == "running", "the job to run")
    reply = server.json("POST", f"/bgjobs/api/jobs/{job.id}/cancel")
    assert reply == {"id": job.id, "cancel": True}
    job.wait(60)
    assert job.state == "cancelled" and job.reason == "cancelled from the Jobs pane"
    status, _, data = server.request("POST", f"/bgjobs/api/jobs/{job.id}/cancel")
    assert status == 409 and b"already ended" in data


def test_a_script_job_is_started_by_the_server(server: Server, tmp_path: Path) -> None:
    script = tmp_path / "started.py"
    script.write_text("total = sum(range(10))\nprint('total', total)\n")
    made = server.json("POST", "/bgjobs/api/jobs", {"path": str(script), "name": "srv_made"})
    assert made["name"] == "srv_made" and made["detached"] is True
    job = bj.get_job(made["id"])
    job.wait(120)
    assert job.state == "succeeded" and "total 45" in job.output
    status, _, data = server.request("POST", "/bgjobs/api/jobs", {"path": "/no/such.py"})
    assert status == 400 and b"no script at" in data


def test_changes_are_pushed_as_server_sent_events(server: Server, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    req = urllib.request.Request(
        server.url + "/bgjobs/api/events", headers={"Authorization": f"token {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=60) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        job = bj.run_cell(gate_code(gate), name="srv_live")
        states: list[str] = []
        while "succeeded" not in states:
            line = stream.readline().decode()
            if not line.startswith("data: "):
                continue
            for row in json.loads(line[6:])["jobs"]:
                if row["id"] == job.id:
                    states.append(row["state"])
                    if row["state"] == "running":
                        gate.touch()
    assert "running" in states and states[-1] == "succeeded"
    job.wait(60)


def test_pip_install_enabled_the_extension() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter_server", "extension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = listing.stdout + listing.stderr
    assert "jupyter_bgjobs" in text and "enabled" in text.split("jupyter_bgjobs", 1)[1][:80]
