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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from cells import execute, free_port, until

import jupyter_bgjobs as bj
from jupyter_bgjobs import _store

TOKEN = "bgjobs-server-token"


class Server:
    def __init__(self, root: Path, *options: str, **env: str) -> None:
        self.root = root
        # Where the server writes its kernels' connection files, for a test to reach them.
        self.runtime = root / "runtime"
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
                *options,
            ],
            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(self.runtime), **env},
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


def gate_code(gate: Path) -> str:
    return f"while not __import__('os').path.exists({str(gate)!r}): __import__('time').sleep(0.02)"


class Notebook:
    """A notebook open in the server: a session and its kernel, started through the REST
    API as JupyterLab starts them, and run like a front end (over the kernel's ports)."""

    def __init__(self, server: Server, path: str) -> None:
        from jupyter_client import BlockingKernelClient

        self.server = server
        file = server.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nbformat.v4.new_notebook(), file)
        model = server.json(
            "POST",
            "/api/sessions",
            {"path": path, "name": file.name, "type": "notebook", "kernel": {"name": "python3"}},
        )
        self.session = model["id"]
        self.kc = BlockingKernelClient(
            connection_file=str(server.runtime / f"kernel-{model['kernel']['id']}.json")
        )
        self.kc.load_connection_file()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 120) -> str:
        """Execute ``code`` as a cell; its stdout, once the kernel is idle again."""
        return execute(self.kc, code, timeout)

    def close(self) -> None:
        self.kc.stop_channels()
        status, _, _ = self.server.request("DELETE", f"/api/sessions/{self.session}")
        assert status == 204


def first_event(server: Server) -> Any:
    """The first event a page that opens the event stream gets."""
    req = urllib.request.Request(
        server.url + "/bgjobs/api/events", headers={"Authorization": f"token {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=60) as stream:
        while not (line := stream.readline().decode()).startswith("data: "):
            assert line, "the event stream ended"
        return json.loads(line[6:])


def record_of(job_id: str) -> Any:
    """A job's ``state.json``, as any process reads it from the store."""
    return json.loads((_store.job_root_path() / job_id / "state.json").read_text())


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


def row_named(server: Server, name: str) -> dict[str, Any] | None:
    return next(
        (j for j in server.json("GET", "/bgjobs/api/jobs")["jobs"] if j["name"] == name), None
    )


def test_calls_progress_rows_and_queue_runs_are_rows_of_the_pane(
    server: Server, tmp_path: Path
) -> None:
    """Every thing that runs has a record of the one schema, so the pane lists it: a
    ``bg()`` call (attached or detached), an ``add_job`` row and a queue's run; Stop from
    the pane reaches each that offers it, and none offers Rerun it cannot do."""
    import time as _time

    # An attached call, stopped from the pane: its owner ends it, as cancelled.
    call = bj.bg_call(_time.sleep, (600,), name="srv_call")
    row = until(lambda: row_named(server, "srv_call"), "the call listed")
    assert row["kind"] == "call" and row["state"] == "running" and row["can_stop"] is True
    assert server.json("POST", f"/bgjobs/api/jobs/{call.id}/cancel")["cancel"] is True
    assert call.wait(60).state == "cancelled"
    until(lambda: row_named(server, "srv_call")["state"] == "cancelled", "the call's end listed")
    # A detached call: its supervisor is told, only if it is still that very process.
    far = bj.bg_call(_time.sleep, (600,), name="srv_far_call", detach=True)
    until(lambda: row_named(server, "srv_far_call"), "the detached call listed")
    server.json("POST", f"/bgjobs/api/jobs/{far.id}/cancel")
    assert far.wait(60).state == "cancelled"
    until(
        lambda: row_named(server, "srv_far_call")["state"] == "cancelled",
        "the detached call's end listed",
    )
    # A progress row: its progress and status reach the pane; Stop calls its stop action.
    stopped: list[bool] = []
    task = bj.add_job(
        "srv_progress", progress_units=10, actions={"stop": lambda: stopped.append(True)}
    )
    task.set_status("downloading")
    task.set_progress(4)
    listed = until(
        lambda: (r := row_named(server, "srv_progress")) and r["progress"] == [4, 10] and r,
        "the row's progress listed",
    )
    assert listed["kind"] == "progress" and listed["status"] == "downloading"
    server.json("POST", f"/bgjobs/api/jobs/{task.id}/cancel")
    until(lambda: stopped == [True], "the row's stop action called")
    task.set_state("cancelled")
    until(lambda: row_named(server, "srv_progress")["state"] == "cancelled", "its end listed")
    # A row without a stop action offers none.
    plain = bj.add_job("srv_plain", running=True)
    assert until(lambda: row_named(server, "srv_plain"), "listed")["can_stop"] is False
    plain.set_state("succeeded")
    # A queue's run is a row of its own, with its tasks as its progress.
    with bj.Queue(workers=1, name="srv_queue") as q:
        q.add(sum, ([1, 2],))
        q.add(sum, ([3, 4],))
        q.start(message="none").wait(60)
    ended = until(
        lambda: (r := row_named(server, "srv_queue")) and r["state"] == "succeeded" and r,
        "the queue's run listed, ended",
    )
    assert ended["kind"] == "queue" and ended["progress"] == [2, 2]


def test_the_detail_says_when_its_outputs_are_the_logs_tail(server: Server) -> None:
    job = bj.run_cell("print('x' * (400 * 1024))", name="srv_long", env="none").wait(60)
    detail = server.json("GET", f"/bgjobs/api/jobs/{job.id}")
    assert detail["log_bytes"] == job.log_path.stat().st_size > 400 * 1024
    assert detail["shown_bytes"] == 256 * 1024


def test_a_detached_job_stopped_from_the_pane_says_so(server: Server) -> None:
    job = bj.run_cell(
        "import time\nwhile True:\n    time.sleep(0.05)", name="srv_far_stop", detach=True
    )
    until(lambda: job.state == "running", "the detached job to run")
    server.json("POST", f"/bgjobs/api/jobs/{job.id}/cancel")
    job.wait(60)
    assert job.state == "cancelled" and job.reason == "cancelled from the Jobs pane"


def test_a_script_job_is_started_by_the_server(server: Server, tmp_path: Path) -> None:
    # An absolute path is taken when it is inside the server's root.
    script = server.root / "started.py"
    script.write_text("total = sum(range(10))\nprint('total', total)\n")
    made = server.json("POST", "/bgjobs/api/jobs", {"path": str(script), "name": "srv_made"})
    assert made["name"] == "srv_made" and made["detached"] is True
    job = bj.get_job(made["id"])
    job.wait(120)
    assert job.state == "succeeded" and "total 45" in job.output
    status, _, data = server.request("POST", "/bgjobs/api/jobs", {"path": "no/such.py"})
    assert status == 400 and b"no such file" in data


def test_code_is_started_by_the_server_and_read_back_with_its_rich_outputs(
    server: Server,
) -> None:
    (server.root / "work").mkdir(exist_ok=True)
    code = (
        "import os\n"
        "from IPython.display import HTML, display\n"
        "print('working in', os.getcwd())\n"
        "display(HTML('<b>bold result</b>'))\n"
        "total = sum(range(5))\n"
        "print('total is', total)"
    )
    made = server.json(
        "POST", "/bgjobs/api/jobs", {"code": code, "name": "srv_code", "workdir": "work"}
    )
    assert made["name"] == "srv_code" and made["detached"] is True and made["kind"] == "cell"
    job = bj.get_job(made["id"])
    job.wait(120)
    assert job.state == "succeeded", job.reason
    detail = server.json("GET", f"/bgjobs/api/jobs/{made['id']}")
    # A relative workdir is under the server's root; the code gets no variables.
    assert detail["spec"] == {
        "code": code,
        "name": "srv_code",
        "env": "none",
        "results": "none",
        "timeout": None,
        "kernel": None,
        "workdir": str(server.root / "work"),
        "script": None,
        "memory_limit": 0,
        "checkpoint": False,
        "retries": 0,
        "after": "",
    }
    outputs = detail["outputs"]
    assert [o["output_type"] for o in outputs] == ["stream", "display_data", "stream"]
    assert outputs[0]["text"] == f"working in {server.root / 'work'}\n"
    assert outputs[1]["data"]["text/html"] == "<b>bold result</b>"
    assert outputs[2]["text"] == "total is 10\n"
    # A detached job's report says what it saved, for the store.
    assert detail["report"].startswith("srv_code: succeeded in ")
    assert detail["report"].endswith("; saved HTML, display, total")


def test_a_script_under_the_root_runs_in_a_workdir_under_it(server: Server) -> None:
    (server.root / "scripts").mkdir(exist_ok=True)
    (server.root / "data").mkdir(exist_ok=True)
    script = server.root / "scripts" / "count.py"
    script.write_text("import os\nprint('counting in', os.getcwd())\ncount = 3\n")
    made = server.json("POST", "/bgjobs/api/jobs", {"path": "scripts/count.py", "workdir": "data"})
    assert made["name"] == "count" and made["kind"] == "script"
    job = bj.get_job(made["id"]).wait(120)
    assert job.state == "succeeded", job.reason
    assert f"counting in {server.root / 'data'}" in job.output
    detail = server.json("GET", f"/bgjobs/api/jobs/{made['id']}")
    spec = detail["spec"]
    assert spec["script"] == str(script.resolve()) and spec["code"] == script.read_text()
    assert spec["workdir"] == str(server.root / "data") and spec["name"] == "count"
    rows = server.json("GET", "/bgjobs/api/jobs")["jobs"]
    assert next(r for r in rows if r["id"] == made["id"])["report"] == detail["report"]
    assert detail["report"].endswith("; saved count")


@pytest.mark.parametrize(
    "body",
    [{}, {"name": "nothing to run"}, {"code": 3}, {"path": ["a.py"]}, ["print(1)"], "print(1)"],
)
def test_a_body_with_neither_code_nor_path_is_refused_in_one_line(
    server: Server, body: Any
) -> None:
    before = {j["id"] for j in server.json("GET", "/bgjobs/api/jobs")["jobs"]}
    status, _, data = server.request("POST", "/bgjobs/api/jobs", body)
    assert status == 400
    message = json.loads(data)["message"]
    # One line that names what is missing or wrong.
    assert "\n" not in message and ("'path'" in message or "'code'" in message), message
    assert {j["id"] for j in server.json("GET", "/bgjobs/api/jobs")["jobs"]} == before


def test_a_workdir_that_is_not_there_is_refused(server: Server) -> None:
    status, _, data = server.request(
        "POST", "/bgjobs/api/jobs", {"code": "x = 1", "workdir": "no/such/folder"}
    )
    assert status == 400
    message = json.loads(data)["message"]
    assert str(server.root / "no" / "such" / "folder") in message and "\n" not in message


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


def test_a_notebooks_job_is_listed_under_its_notebook_with_its_merge_report(
    server: Server, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    notebook = Notebook(server, "studies/fit.ipynb")
    try:
        notebook.run("%load_ext jupyter_bgjobs\nfrom jupyter_bgjobs import get_job")
        notebook.run(f"%%bgjob srv_nb\n{gate_code(gate)}\nanswer = 6 * 7")
        job_id = notebook.run("print(get_job('srv_nb').id)").strip().splitlines()[-1]
        listing = server.json("GET", "/bgjobs/api/jobs")
        assert listing["root"] == str(server.root)
        row = next(j for j in listing["jobs"] if j["id"] == job_id)
        assert row["name"] == "srv_nb" and row["kind"] == "cell" and row["detached"] is False
        # The notebook, as the IDE names it: relative to the server's root.
        assert row["notebook"] == str(server.root / "studies" / "fit.ipynb")
        assert row["notebook_path"] == "studies/fit.ipynb"
        assert row["state"] in ("pending", "starting", "running") and row["report"] == ""
        gate.touch()

        def ended() -> Any:
            jobs = server.json("GET", "/bgjobs/api/jobs")["jobs"]
            return next((j for j in jobs if j["id"] == job_id and j["state"] == "succeeded"), None)

        # Ended, not merged yet: the notebook merges before its next cell runs.
        row = until(ended, "the notebook's job to end")
        assert row["report"] == "srv_nb: succeeded; its results merge into its notebook there"
        assert record_of(job_id)["report"] == ""
        # The next cell merges it first; the report is the job's row's, not printed above
        # that cell's own output.
        answer, report = notebook.run("print(answer)\nprint(get_job('srv_nb').report)").splitlines()
        assert answer == "42"
        assert report.startswith("srv_nb: succeeded in ")
        assert report.endswith(" s; merged answer into globals")
        # Written into the record as it is made, for the IDE and any other process.
        assert record_of(job_id)["report"] == report
        rows = server.json("GET", "/bgjobs/api/jobs")["jobs"]
        assert next(j for j in rows if j["id"] == job_id)["report"] == report
        # Merged the moment it ends (wait()): the report is in the record all the same.
        said, job_id = notebook.run(
            "import jupyter_bgjobs as bj\n"
            "job = bj.run_cell('doubled = answer * 2', name='srv_nb_waited', env='answer')\n"
            "print(job.wait(120).id)"
        ).splitlines()
        assert said.endswith("; merged doubled into globals")
        assert record_of(job_id)["report"] == said
    finally:
        gate.touch()
        notebook.close()


def test_the_first_event_lists_every_job(server: Server) -> None:
    ended = bj.run_cell("x = 1", name="srv_first", results="none").wait(60)
    listed = {j["id"]: j["name"] for j in server.json("GET", "/bgjobs/api/jobs")["jobs"]}
    assert listed[ended.id] == "srv_first"
    event = first_event(server)
    assert event["removed"] == []
    # Each job once, as its row: a page that opens the stream needs nothing else.
    assert [j["id"] for j in event["jobs"]] == list(listed)
    assert {j["id"]: j["name"] for j in event["jobs"]} == listed


def test_the_first_event_says_so_when_there_are_no_jobs(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    empty = Server(tmp_path, JUPYTER_BGJOBS_DIR=str(tmp_path / "jobs"))
    try:
        assert empty.json("GET", "/bgjobs/api/jobs") == {"jobs": [], "root": str(tmp_path)}
        assert first_event(empty) == {"jobs": [], "removed": []}
    finally:
        empty.stop()


def test_pip_install_enabled_the_extension() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter_server", "extension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = listing.stdout + listing.stderr
    assert "jupyter_bgjobs" in text and "enabled" in text.split("jupyter_bgjobs", 1)[1][:80]


# Files of the store the server's reader opens in this process, while ``_counting`` holds
# a list (a look at a running row also asks /proc whether its process still runs).
_counting: list[list[str]] = []


def _count_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _counting and isinstance(args[0], (str, Path)):
        # The reader's thread only: an attached job's driver here writes its record.
        if threading.get_ident() == threading.main_thread().ident and str(args[0]).startswith(
            os.environ["JUPYTER_BGJOBS_DIR"]
        ):
            _counting[-1].append(os.path.basename(str(args[0])))


sys.addaudithook(_count_opens)  # an audit hook stays for the process: it counts only here


@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
def test_a_running_row_costs_three_file_opens_a_look(detach: bool) -> None:
    """Each look of the event stream at a running job whose record changed reads its
    spec, its state and its host's heartbeat, each once; an unchanged one reads none."""
    from jupyter_bgjobs._server.rows import Rows

    job = bj.run_cell(
        "import time\nfor k in range(400):\n    print(k, flush=True)\n    time.sleep(0.02)",
        name=f"looked_{'detached' if detach else 'attached'}",
        detach=detach,
    )
    rows = Rows("/")
    until(lambda: job.state == "running", "the job runs")
    rows.read()
    looks: list[list[str]] = []
    while len([look for look in looks if look]) < 3 and job.state == "running":
        _counting.append([])
        rows.read()
        looks.append(_counting.pop())
    job.cancel()
    job.wait(60)
    changed = [look for look in looks if look]
    assert changed, "the record never changed while the job ran"
    for look in changed:
        assert len(look) <= 3 and len(set(look)) == len(look), look
        assert set(look) <= {"spec.json", "state.json", "host.json"}, look


def test_the_extensions_job_type_is_the_servers_row() -> None:
    """``IJob`` and ``IJobRecord`` in ``src/record.ts`` are generated from the record's
    schema, and name exactly the fields the server sends: of a row, sound or damaged, and
    of a record."""
    import re

    from jupyter_bgjobs._record import ROW, typescript
    from jupyter_bgjobs._server.rows import damaged_row, handle, summary

    source = (Path(__file__).parent.parent / "src" / "record.ts").read_text(encoding="utf-8")
    assert source == typescript(), (
        "src/record.ts is stale; write it anew as its docstring in _record.py says"
    )

    def typed(interface: str) -> set[str]:
        body = source.split(f"export interface {interface} {{", 1)[1].split("\n}", 1)[0]
        return set(re.findall(r"^\s+(\w+)\??:", body, re.M))

    job = bj.run_cell("x = 1", name="typed_row", env="none").wait(60)
    stored = handle(job.folder, detached=False)
    with stored.frozen():
        sound = summary(stored, "/")
        record = stored.record()
    assert typed("IJob") == set(ROW) == set(sound) == set(damaged_row(stored, ValueError("odd")))
    assert typed("IJobRecord") == set(record)
    # No other TypeScript declares a job's fields by hand.
    api = (Path(__file__).parent.parent / "src" / "api.ts").read_text(encoding="utf-8")
    assert "interface IJob {" not in api and "interface IHistoryEntry" not in api
