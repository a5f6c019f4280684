"""The server extension against careless and hostile input, as a shared deployment meets
it: a real jupyter_server with a custom Authorizer, paths outside its root, files planted
in job folders, damaged records, FIFOs, odd numbers and ranges, a read-only store."""

from __future__ import annotations

import json
import os
import shutil
import stat
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cells import until
from test_server import TOKEN, Server

import jupyter_bgjobs as bj
from jupyter_bgjobs import _store
from jupyter_bgjobs._inside import procs as _procs

HERE = Path(__file__).parent


def authorized_server(root: Path, allow: str) -> tuple[Server, Path]:
    """A server whose Authorizer allows only ``allow`` (comma-separated actions), and the
    file where it writes down each question it is asked."""
    asked = root / "asked.txt"
    asked.touch()
    srv = Server(
        root,
        "--ServerApp.authorizer_class=authorizers.ActionsAuthorizer",
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        BGJOBS_TEST_ALLOW=allow,
        BGJOBS_TEST_ASKED=str(asked),
    )
    return srv, asked


def questions(asked: Path) -> set[str]:
    return set(asked.read_text().splitlines())


def store_ids() -> set[str]:
    return (
        {p.name for p in _store.store_path().iterdir()} if _store.store_path().is_dir() else set()
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("trust"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ended(server: Server) -> Any:
    """A detached job the server started and that has ended, its host gone."""
    made = server.json("POST", "/bgjobs/api/jobs", {"code": "print('the job said this')\nx = 1"})
    job = bj.get_job(made["id"]).wait(120)
    assert job.state == "succeeded", job.reason
    host = json.loads((job.folder / "host.json").read_text())["pid"]
    until(lambda: not _store.pid_alive(host), "the host to end")
    return job


def copy_of(job: Any) -> Path:
    """A copy of an ended job's folder, under a new id, to damage."""
    copy = job.folder.with_name(uuid.uuid4().hex[:8])
    shutil.copytree(job.folder, copy, symlinks=True)
    spec = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps(dict(spec, id=copy.name, name="copy")))
    return copy


def row(server: Server, job_id: str) -> Any:
    jobs = server.json("GET", "/bgjobs/api/jobs")["jobs"]
    return next((j for j in jobs if j["id"] == job_id), None)


def message(data: bytes) -> str:
    text = json.loads(data)["message"]
    assert isinstance(text, str) and "\n" not in text and "Traceback" not in text
    return text


# -- 1. jupyter_server's Authorizer is asked for every action ----------------------------


def test_a_read_only_user_lists_but_starts_stops_and_removes_nothing(
    tmp_path: Path, server: Server, ended: Any
) -> None:
    marker = tmp_path / "ran"
    ro, asked = authorized_server(tmp_path, "read")
    try:
        # jupyter_server's own write endpoints refuse, and so do ours.
        status, _, _ = ro.request("POST", "/api/contents", {"type": "notebook"})
        assert status == 403
        assert row(ro, ended.id)["state"] == "succeeded"
        status, _, data = ro.request("GET", f"/bgjobs/api/jobs/{ended.id}/log")
        assert status == 200 and b"the job said this" in data
        before = store_ids()
        status, _, _ = ro.request(
            "POST", "/bgjobs/api/jobs", {"code": f"open({str(marker)!r}, 'w').close()"}
        )
        assert status == 403 and store_ids() == before and not marker.exists()
        status, _, _ = ro.request("DELETE", f"/bgjobs/api/jobs/{ended.id}")
        assert status == 403 and ended.folder.is_dir()
        status, _, _ = ro.request("POST", f"/bgjobs/api/jobs/{ended.id}/cancel")
        assert status == 403
        status, _, _ = ro.request("POST", f"/bgjobs/api/jobs/{ended.id}/resume")
        assert status == 403 and store_ids() == before
        asked_for = questions(asked)
        assert {"bgjobs read", "bgjobs write"} <= asked_for
    finally:
        ro.stop()


def test_starting_a_job_needs_execute_as_well_as_write(tmp_path: Path, ended: Any) -> None:
    srv, asked = authorized_server(tmp_path, "read,write")
    try:
        before = store_ids()
        status, _, _ = srv.request("POST", "/bgjobs/api/jobs", {"code": "x = 1"})
        assert status == 403 and store_ids() == before
        # Resuming runs code too.
        status, _, _ = srv.request("POST", f"/bgjobs/api/jobs/{ended.id}/resume")
        assert status == 403 and store_ids() == before
        assert "bgjobs execute" in questions(asked)
        copy = copy_of(ended)
        status, _, _ = srv.request("DELETE", f"/bgjobs/api/jobs/{copy.name}")
        assert status == 204 and not copy.exists()
    finally:
        srv.stop()


def test_a_user_without_read_sees_no_job_no_log_and_no_event(tmp_path: Path, ended: Any) -> None:
    srv, _ = authorized_server(tmp_path, "")
    try:
        for path in (
            "/bgjobs/api/jobs",
            f"/bgjobs/api/jobs/{ended.id}",
            f"/bgjobs/api/jobs/{ended.id}/log",
            "/bgjobs/api/events",
        ):
            status, _, data = srv.request("GET", path)
            assert status == 403, path
            assert b"the job said this" not in data
    finally:
        srv.stop()


# -- 2. paths of new jobs stay inside the server's root ----------------------------------


def test_paths_and_workdirs_outside_the_root_or_hidden_are_refused(
    server: Server, tmp_path: Path
) -> None:
    root = server.root
    (root / ".hidden").mkdir(exist_ok=True)
    (root / ".hidden" / "x.py").write_text("x = 1\n")
    (root / ".secret.py").write_text("x = 1\n")
    outside = tmp_path / "outside.py"
    outside.write_text("x = 1\n")
    link = root / "link.py"
    if not link.is_symlink():
        link.symlink_to(outside)
    (root / "fifo.py").unlink(missing_ok=True)
    os.mkfifo(root / "fifo.py")
    cases = [
        ({"path": "/etc/passwd"}, "outside the server's root"),
        ({"path": "/proc/self/environ"}, "outside the server's root"),
        ({"path": os.path.relpath(outside, root)}, "outside the server's root"),
        ({"path": "link.py"}, "outside the server's root"),
        ({"path": ".hidden/x.py"}, "hidden"),
        ({"path": ".secret.py"}, "hidden"),
        ({"path": "fifo.py"}, "not a regular file"),
        ({"path": "."}, "not a regular file"),
        ({"code": "x = 1", "workdir": "/tmp"}, "outside the server's root"),
        ({"code": "x = 1", "workdir": ".."}, "outside the server's root"),
        ({"code": "x = 1", "workdir": ".hidden"}, "hidden"),
        ({"code": "x = 1", "workdir": "link.py"}, "outside the server's root"),
    ]
    before = store_ids()
    for body, rule in cases:
        status, _, data = server.request("POST", "/bgjobs/api/jobs", body)
        assert status == 400, body
        assert rule in message(data), (body, message(data))
    assert store_ids() == before
    for listed in server.json("GET", "/bgjobs/api/jobs")["jobs"]:
        detail = server.json("GET", f"/bgjobs/api/jobs/{listed['id']}")
        assert "PATH=" not in json.dumps(detail)


def test_hidden_files_run_where_the_server_allows_them(tmp_path: Path) -> None:
    (tmp_path / ".tools").mkdir()
    (tmp_path / ".tools" / "job.py").write_text("value = 5\n")
    srv = Server(tmp_path, "--ContentsManager.allow_hidden=True")
    try:
        made = srv.json("POST", "/bgjobs/api/jobs", {"path": ".tools/job.py"})
        job = bj.get_job(made["id"]).wait(120)
        assert job.state == "succeeded" and job.results.value == 5
    finally:
        srv.stop()


# -- 3. what the server serves is the job's own, inside its folder -----------------------


def test_a_record_naming_another_log_or_a_linked_log_serves_no_other_file(
    server: Server, ended: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:SECRET-HASH:19000\n")
    # A record that names another file as its log: the job's own log is served.
    named = copy_of(ended)
    record = json.loads((named / "state.json").read_text())
    (named / "state.json").write_text(json.dumps(dict(record, log_path=str(secret))))
    status, _, data = server.request("GET", f"/bgjobs/api/jobs/{named.name}/log")
    assert status == 200 and b"the job said this" in data and b"SECRET" not in data
    # A log that is a link to another file: nothing is served through it.
    linked = copy_of(ended)
    (linked / "output.log").unlink()
    (linked / "output.log").symlink_to(secret)
    status, _, data = server.request("GET", f"/bgjobs/api/jobs/{linked.name}/log")
    assert status == 404 and "a link" in message(data)
    detail = server.json("GET", f"/bgjobs/api/jobs/{linked.name}")
    assert "SECRET" not in json.dumps(detail)
    # A journal of rich outputs that is a link, likewise.
    (linked / "outputs.jsonl").symlink_to(secret)
    assert "SECRET" not in json.dumps(server.json("GET", f"/bgjobs/api/jobs/{linked.name}"))


# -- 6. one bad record never hurts the rest ----------------------------------------------


def test_damaged_records_are_listed_with_their_reason_and_removable(
    server: Server, ended: Any
) -> None:
    deep = copy_of(ended)
    (deep / "state.json").write_text("[" * 50_000 + "]" * 50_000)
    truncated = copy_of(ended)
    text = (truncated / "spec.json").read_text()
    (truncated / "spec.json").write_text(text[: len(text) // 2])
    claimant = copy_of(ended)
    spec = json.loads((claimant / "spec.json").read_text())
    (claimant / "spec.json").write_text(json.dumps(dict(spec, id=ended.id, name="impostor")))
    big = copy_of(ended)
    (big / "state.json").write_text(json.dumps({"state": "running", "pad": "x" * (5 << 20)}))
    nan = copy_of(ended)
    record = json.loads((nan / "state.json").read_text())
    (nan / "state.json").write_text(json.dumps(dict(record, elapsed=float("nan"))))
    ancient = copy_of(ended)
    (ancient / "state.json").write_text(json.dumps(dict(record, started="0001-01-01T00:00:00")))
    journal = copy_of(ended)
    (journal / "outputs.jsonl").write_text('{"at": [' + "9" * 5000 + ", 1]}\n" + "[" * 50_000)
    linked = copy_of(ended)
    (linked / "state.json").unlink()
    (linked / "state.json").symlink_to(ended.folder / "state.json")

    reasons = {
        deep.name: "nested too deep",
        truncated.name: "spec.json: not valid JSON",
        claimant.name: "is not its folder's name",
        big.name: "too large",
        linked.name: "a link",
        nan.name: "holds NaN",
        ancient.name: "is not a time",
    }
    # A damaged journal of rich outputs costs its outputs, not the job's detail.
    assert server.json("GET", f"/bgjobs/api/jobs/{journal.name}")["state"] == "succeeded"
    for job_id, reason in reasons.items():
        listed = row(server, job_id)
        assert listed is not None and listed["state"] == "damaged", job_id
        assert reason in listed["reason"], (job_id, listed["reason"])
        detail = server.json("GET", f"/bgjobs/api/jobs/{job_id}")
        assert detail["state"] == "damaged"
    # The job whose id was claimed is itself, untouched.
    own = row(server, ended.id)
    assert own["name"] == ended.name and own["state"] == "succeeded"
    first = first_event(server)
    assert {r["id"] for r in first["jobs"]} >= {ended.id, *reasons}
    for job_id in reasons:
        status, _, _ = server.request("DELETE", f"/bgjobs/api/jobs/{job_id}")
        assert status == 204 and row(server, job_id) is None


def first_event(server: Server, timeout: float = 30) -> Any:
    req = urllib.request.Request(
        server.url + "/bgjobs/api/events", headers={"Authorization": f"token {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as stream:
        while not (line := stream.readline().decode()).startswith("data: "):
            assert line, "the event stream ended"
        return json.loads(line[6:])


# -- 7. no read blocks the server --------------------------------------------------------


def test_a_fifo_in_place_of_a_record_or_a_log_hangs_nothing(server: Server, ended: Any) -> None:
    fifo = copy_of(ended)
    (fifo / "state.json").unlink()
    os.mkfifo(fifo / "state.json")
    (fifo / "output.log").unlink()
    os.mkfifo(fifo / "output.log")
    listed = row(server, fifo.name)
    assert listed["state"] == "damaged" and "not a regular file" in listed["reason"]
    status, _, data = server.request("GET", f"/bgjobs/api/jobs/{fifo.name}/log")
    assert status == 404 and "not a regular file" in message(data)
    assert server.request("GET", "/api/status")[0] == 200
    assert fifo.name in {r["id"] for r in first_event(server)["jobs"]}
    status, _, _ = server.request("DELETE", f"/bgjobs/api/jobs/{fifo.name}")
    assert status == 204


def test_a_large_log_is_streamed_whole_and_in_ranges(server: Server, ended: Any) -> None:
    copy = copy_of(ended)
    body = b"".join(b"line %07d\n" % i for i in range(400_000))  # 5.2 MB
    (copy / "output.log").write_bytes(body)
    status, _, data = server.request("GET", f"/bgjobs/api/jobs/{copy.name}/log")
    assert status == 200 and data == body
    status, headers, data = server.request(
        "GET", f"/bgjobs/api/jobs/{copy.name}/log", Range="bytes=-13"
    )
    assert status == 206 and data == b"line 0399999\n"[-13:]
    assert headers["Content-Range"] == f"bytes {len(body) - 13}-{len(body) - 1}/{len(body)}"


def test_the_code_of_a_job_is_stored_once(server: Server) -> None:
    code = "size = len(" + repr("y" * 200_000) + ")"
    made = server.json("POST", "/bgjobs/api/jobs", {"code": code})
    job = bj.get_job(made["id"]).wait(120)
    assert job.state == "succeeded" and job.results.size == 200_000
    stored = [p.name for p in job.folder.iterdir() if "y" * 1000 in p.read_text(errors="ignore")]
    assert stored == ["code.py"]
    assert server.json("GET", f"/bgjobs/api/jobs/{job.id}")["spec"]["code"] == code


# -- 9. bad input: one line, the status an HTTP client expects ---------------------------


@pytest.mark.parametrize(
    "timeout",
    [0, [], {}, -5, "10", True, 10**30, 1e400, "5,000 digits"],
)
def test_a_timeout_that_is_not_a_positive_number_is_refused(server: Server, timeout: Any) -> None:
    before = store_ids()
    if timeout == "5,000 digits":
        raw = b'{"code": "x = 1", "timeout": 1' + b"0" * 5000 + b"}"
    else:
        raw = json.dumps({"code": "x = 1", "timeout": timeout}).encode()
    status, _, data = post_raw(server, raw)
    assert status == 400, (timeout, data)
    message(data)
    assert store_ids() == before


def post_raw(server: Server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(server.url + "/bgjobs/api/jobs", data=raw, method="POST")
    req.add_header("Authorization", f"token {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_odd_bodies_are_refused_in_one_line(server: Server) -> None:
    before = store_ids()
    for raw, expected in [
        (b'{"code": "x = 1\xff\xfe"}', "not UTF-8"),
        (b'{"code": ', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"code": "x = 1", "shell": "rm -rf /"}', "unknown field"),
        (b'{"code": "x = 1", "path": "a.py"}', "not both"),
        (b'{"code": "x = 1", "name": 5}', "'name' must be a string"),
        (b'{"code": "x = 1", "memory_limit": "lots"}', "memory_limit must be a size such as"),
        (b'{"path": "\\ud800.py"}', "lone surrogate"),
        (b'{"path": "100%.py"}', "100%.py': no such file"),
    ]:
        status, _, data = post_raw(server, raw)
        assert status == 400, raw[:40]
        assert expected in message(data), (raw[:40], message(data))
    assert store_ids() == before


def test_ranges_past_the_end_or_backwards_answer_416_with_the_size(
    server: Server, ended: Any
) -> None:
    size = (ended.folder / "output.log").stat().st_size
    for header in ("bytes=5-3", f"bytes={size}-", "bytes=-0", "bytes=" + "9" * 4300 + "-"):
        status, headers, data = server.request(
            "GET", f"/bgjobs/api/jobs/{ended.id}/log", Range=header
        )
        assert status == 416, header[:20]
        assert headers["Content-Range"] == f"bytes */{size}"
        message(data)
    # A suffix longer than the log is the whole log; a huge end is the end.
    status, _, data = server.request(
        "GET", f"/bgjobs/api/jobs/{ended.id}/log", Range="bytes=-" + "9" * 4300
    )
    assert status == 206 and len(data) == size
    status, _, data = server.request(
        "GET", f"/bgjobs/api/jobs/{ended.id}/log", Range="bytes=0-" + "9" * 30
    )
    assert status == 206 and len(data) == size


# -- 10. a read-only store says so -------------------------------------------------------


def test_a_read_only_entry_is_not_removed_and_says_why(server: Server, ended: Any) -> None:
    copy = copy_of(ended)
    os.chmod(copy, 0o500)
    try:
        status, _, data = server.request("DELETE", f"/bgjobs/api/jobs/{copy.name}")
        assert status == 409 and "read-only" in message(data) and copy.is_dir()
    finally:
        os.chmod(copy, 0o700)
    status, _, _ = server.request("DELETE", f"/bgjobs/api/jobs/{copy.name}")
    assert status == 204


def test_cancelling_an_attached_job_in_a_read_only_folder_says_why(server: Server) -> None:
    job = bj.run_cell("import time\nwhile True:\n    time.sleep(0.05)", name="ro_cancel")
    try:
        until(lambda: job.state == "running", "the job to run")
        mode = stat.S_IMODE(job.folder.stat().st_mode)
        os.chmod(job.folder, 0o500)
        try:
            status, _, data = server.request("POST", f"/bgjobs/api/jobs/{job.id}/cancel")
            assert status == 409 and "read-only" in message(data)
        finally:
            os.chmod(job.folder, mode)
        assert job.state == "running"
    finally:
        job.cancel()
        job.wait(60)


# -- hostile records found by probing: each is one damaged row, never a 500 ---------------


def strict_json(data: bytes) -> Any:
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in an answer: no browser can parse it")

    return json.loads(data, parse_constant=refuse)


def test_records_with_impossible_numbers_are_rows_and_removable(
    server: Server, ended: Any, tmp_path: Path
) -> None:
    namespace = _procs.identity().split(".")[0]
    cases: dict[str, tuple[str, Any]] = {
        "huge host pid": ("host.json", {"pid": 5, "pid_id": f"{namespace}.2147483648"}),
        "digits that are not ASCII": ("host.json", {"pid": 5, "pid_id": f"{namespace}.\u00b2.1"}),
        "a pid past any": ("state.json", {"host_pid": 10**30}),
        "a time past any": ("state.json", {"finished_ts": 1e308}),
        "results not a list": ("results.json", {"names": True, "not_saved": 5}),
        "nested where": ("state.json", {"where": json.loads("[" * 900 + "]" * 900)}),
    }
    made = {}
    for label, (name, change) in cases.items():
        copy = copy_of(ended)
        data = json.loads((copy / name).read_text()) if (copy / name).exists() else {}
        data.update(change)
        if name == "state.json" or "host_pid" in change:
            data.update(state="running", finished=None)
        (copy / name).write_text(json.dumps(data))
        made[label] = copy
    # Infinity written as a number JSON can hold, but no float can.
    inf = copy_of(ended)
    text = (inf / "state.json").read_text().replace('"where": "local"', '"where": 1e999')
    (inf / "state.json").write_text(text)
    made["1e999"] = inf
    status, _, listing = server.request("GET", "/bgjobs/api/jobs")
    assert status == 200
    rows = {r["id"]: r for r in strict_json(listing)["jobs"]}  # what a browser can parse
    for label, folder in made.items():
        assert folder.name in rows, label
        status, _, data = server.request("GET", f"/bgjobs/api/jobs/{folder.name}")
        assert status == 200, (label, data[:200])
        strict_json(data)
    event = first_event(server)
    assert {f.name for f in made.values()} <= {r["id"] for r in event["jobs"]}
    for label, folder in made.items():
        status, _, data = server.request("DELETE", f"/bgjobs/api/jobs/{folder.name}")
        assert status in (204, 409), (label, data)
        if status == 409:  # a row that still runs by its record: stopped first, or said why
            message(data)
        else:
            assert not folder.exists(), label


def test_a_sparse_journal_a_hard_linked_log_and_an_open_folder_are_not_read(
    server: Server, ended: Any, tmp_path: Path
) -> None:
    sparse = copy_of(ended)
    with open(sparse / "outputs.jsonl", "wb") as fh:
        fh.truncate(2 << 30)  # 2 GiB of nothing, on no disk
    detail = server.json("GET", f"/bgjobs/api/jobs/{sparse.name}")
    assert detail["state"] == "succeeded"
    secret = tmp_path / "secret"
    secret.write_text("SECRET-LINE\n")
    os.chmod(secret, 0o600)
    linked = copy_of(ended)
    (linked / "output.log").unlink()
    os.link(secret, linked / "output.log")
    status, _, data = server.request("GET", f"/bgjobs/api/jobs/{linked.name}/log")
    assert status == 404 and "hard link" in message(data)
    opened = copy_of(ended)
    os.chmod(opened, 0o777)
    listed = row(server, opened.name)
    assert listed["state"] == "damaged" and "alone" in listed["reason"]
    os.chmod(opened, 0o700)


def test_code_started_by_the_server_runs_in_its_root(server: Server) -> None:
    made = server.json("POST", "/bgjobs/api/jobs", {"code": "import os\nwhere = os.getcwd()"})
    job = bj.get_job(made["id"]).wait(120)
    assert job.state == "succeeded" and job.results.where == str(server.root)
    status, _, data = server.request("POST", "/bgjobs/api/jobs", {"path": "fifo.py/"})
    assert status == 400 and "names a folder" in message(data)


def test_resume_through_the_server_is_for_ended_jobs_inside_its_root(
    server: Server, ended: Any, tmp_path: Path
) -> None:
    # A job that succeeded has nothing to resume.
    status, _, data = server.request("POST", f"/bgjobs/api/jobs/{ended.id}/resume")
    assert status == 409 and "nothing to resume" in message(data)
    # A failed job whose working folder is outside the server's root is not run by it.
    outside = bj.run_cell("raise ValueError('no')", "outside", env="none", detach=True)
    outside.wait(120)
    before = store_ids()
    status, _, data = server.request("POST", f"/bgjobs/api/jobs/{outside.id}/resume")
    assert status == 400 and "outside the server's root" in message(data)
    assert store_ids() == before
    # Inside it, the server resumes it as a detached job of its own.
    inside = bj.run_cell(
        "import os\n# A ----\nx = 1\n# B ----\nif not os.path.exists('go'):\n"
        "    raise ValueError('no')\ny = x + 1\n",
        "inside",
        env="none",
        detach=True,
        checkpoint=True,
        workdir=str(server.root),
    ).wait(120)
    assert inside.state == "failed"
    (server.root / "go").touch()
    row = server.json("POST", f"/bgjobs/api/jobs/{inside.id}/resume")
    again = bj.get_job(row["id"]).wait(120)
    assert again.state == "succeeded" and (again.results.x, again.results.y) == (1, 2)
    assert "resumed from section B" in again.report
