"""A store or a record that is not ours is never trusted: a store another local user made
first, files planted in it, pids that now name other processes; and the processes we
leave behind: hosts reaped, hosts whose folder went away, logs on a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cells import until

import jupyter_bgjobs as bj
from jupyter_bgjobs import _store, _trust
from jupyter_bgjobs._errors import StoreError
from jupyter_bgjobs._inside import procs as _procs

ROOT_ONLY = pytest.mark.skipif(
    os.getuid() != 0, reason="giving a folder to another user needs root"
)


@pytest.fixture(scope="module")
def other_uid() -> Iterator[int]:
    """A second local user (made with useradd where the machine allows it)."""
    name = f"bgjobs{uuid.uuid4().hex[:6]}"
    made = (
        shutil.which("useradd") is not None
        and subprocess.run(["useradd", "-M", "-N", name], capture_output=True).returncode == 0
    )
    if made:
        import pwd

        yield pwd.getpwnam(name).pw_uid
        subprocess.run(["userdel", name], capture_output=True)
    else:  # a uid nobody has is as much another user for the checks
        yield 54321


class Planted:
    """Unpickling this runs code: it makes ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def plant_job(store: Path, marker: Path) -> Path:
    """A finished detached job, written by someone else, whose results run code."""
    folder = store / "jobs" / "detached" / "deadbeef"
    folder.mkdir(parents=True)
    spec = {
        "kind": "job",
        "id": "deadbeef",
        "name": "planted",
        "submitted": "2026-01-01T00:00:00+00:00",
        "code_file": "code.py",
        "token": TOKEN,
    }
    (folder / "code.py").write_text("x = 1\n")
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "state.json").write_text(json.dumps({"state": "succeeded", "progress": [1, 1]}))
    write_results(folder, {"x": Planted(str(marker))})
    return folder


# The token a planted job's results are written with, as a job's kernel writes them.
TOKEN = "planted-token"


def write_results(folder: Path, values: dict[str, Any]) -> None:
    """Results as a job's kernel leaves them: a snapshot in the folder, and results.json."""
    from jupyter_bgjobs._inside.kernel.wire import encode, write_parts

    parts, _, _ = encode(values, TOKEN)
    pieces = write_parts(str(folder / "results.snap"), parts)
    info = {"names": sorted(values), "path": str(folder / "results.snap"), "pieces": pieces}
    (folder / "results.json").write_text(json.dumps(info))


def chown_tree(path: Path, uid: int) -> None:
    for base, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(base, name), uid, -1)
    os.lchown(path, uid, -1)


def cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_bgjobs._cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JUPYTER_BGJOBS_DIR": str(store)},
    )


@contextlib.contextmanager
def store_at(store: Path) -> Iterator[None]:
    bj.configure(root=str(store))
    _trust.forget()
    try:
        yield
    finally:
        bj.configure(root="")
        _trust.forget()


@ROOT_ONLY
def test_a_store_another_user_made_first_is_refused_before_anything_is_read(
    tmp_path: Path, other_uid: int
) -> None:
    store = tmp_path / "shared" / "bgjobs"
    marker = tmp_path / "ran"
    plant_job(store, marker)
    chown_tree(store, other_uid)
    for args in (["list"], ["results", "planted"], ["logs", "planted"]):
        done = cli(*args, store=store)
        assert done.returncode != 0, args
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert str(store) in lines[0] and f"uid {other_uid}" in lines[0]
        assert "JUPYTER_BGJOBS_DIR" in lines[0]
    with store_at(store):
        with pytest.raises(StoreError, match=f"uid {other_uid}"):
            bj.get_job("planted")
        with pytest.raises(StoreError, match="not to you"):
            bj.run_cell("x = 1", detach=True)
    assert not marker.exists()


@ROOT_ONLY
def test_a_store_in_a_folder_another_user_may_change_is_refused(
    tmp_path: Path, other_uid: int
) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, other_uid, -1)
    store = parent / "bgjobs"
    store.mkdir(mode=0o700)
    done = cli("list", store=store)
    assert done.returncode != 0 and "could be swapped" in done.stderr
    # A folder every user may write, without the sticky bit /tmp has, likewise.
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    os.chmod(open_parent, 0o777)
    (open_parent / "bgjobs").mkdir(mode=0o700)
    done = cli("list", store=open_parent / "bgjobs")
    assert done.returncode != 0 and "may write in it" in done.stderr
    # Our own store in a sticky folder (as under /tmp) is ours.
    os.chmod(open_parent, 0o1777)
    assert cli("list", store=open_parent / "bgjobs").returncode == 0


@ROOT_ONLY
def test_results_not_written_by_us_are_never_unpickled(tmp_path: Path, other_uid: int) -> None:
    store = tmp_path / "mine"
    marker = tmp_path / "ran"
    folder = plant_job(store, marker)
    for base, dirs, _ in os.walk(store):
        for name in ["", *dirs]:
            os.chmod(os.path.join(base, name), 0o700)
    results = folder / "results.snap"
    # A results file of another user's, in our store.
    os.chown(results, other_uid, -1)
    with store_at(store):
        with pytest.raises(StoreError, match="damaged"):
            bj.get_job("planted").results  # noqa: B018
        # A results file of ours that anyone may write is no more ours.
        os.chown(results, os.getuid(), -1)
        os.chmod(results, 0o666)
        with pytest.raises(StoreError, match="may be written by others"):
            bj.get_job("planted").results  # noqa: B018
        # The same file, ours alone: it is ours to load.
        results.unlink()
        write_results(folder, {"x": 3})
        assert bj.get_job("planted").results.x == 3
    assert not marker.exists()


# -- 5. a recorded pid is trusted only while it names the same process --------------------


def test_only_the_very_process_a_record_names_is_signalled() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tag = _procs.identity(sleeper.pid)
        namespace, pid, start = tag.split(".")
        reused = f"{namespace}.{pid}.{int(start) + 1}"  # the same pid, another process
        assert _procs.identity_alive(tag) is True
        assert _procs.identity_alive(reused) is False
        assert not _procs.signal_identified(reused, signal.SIGTERM)
        assert not _procs.signal_identified(f"{namespace}.{pid}", signal.SIGTERM)  # no start
        assert sleeper.poll() is None
        assert _procs.signal_identified(tag, signal.SIGTERM)
        assert sleeper.wait(30) == -signal.SIGTERM
        assert _procs.identity_alive(tag) is False
    finally:
        sleeper.kill()
        sleeper.wait()


def finished(tmp_path: Path) -> Any:
    job = bj.run_cell("x = 1", name="ident", detach=True).wait(120)
    assert job.state == "succeeded", job.reason
    host = json.loads((job.folder / "host.json").read_text())["pid"]
    until(lambda: not _store.pid_alive(host), "the host to end")
    return job


def running_copy(job: Any, host: dict[str, Any]) -> Any:
    """A copy of an ended job's entry whose record says it runs, on the host ``host``."""
    copy = job.folder.with_name(uuid.uuid4().hex[:8])
    shutil.copytree(job.folder, copy)
    spec = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps(dict(spec, id=copy.name, name="reused")))
    record = json.loads((copy / "state.json").read_text())
    record.update(state="running", finished=None, finished_ts=None, **host)
    (copy / "state.json").write_text(json.dumps(record))
    (copy / "host.json").write_text(
        json.dumps({"pid": host["host_pid"], "pid_id": host["host_id"]})
    )
    return bj.get_job(copy.name)


def test_a_host_whose_pid_was_reused_is_gone_and_never_signalled(tmp_path: Path) -> None:
    job = finished(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        namespace, pid, _ = _procs.identity(sleeper.pid).split(".")
        # The record names the sleeper's pid with another start time: a host that ended,
        # its pid since given to an unrelated process.
        stale = running_copy(job, {"host_pid": sleeper.pid, "host_id": f"{namespace}.{pid}.1"})
        # The same record with the sleeper's own identity: alive.
        live = running_copy(job, {"host_pid": sleeper.pid, "host_id": _procs.identity(sleeper.pid)})
        assert stale.state == "died" and stale.done and not stale.cancel()
        assert sleeper.poll() is None
        assert live.state == "running"
        pruned = bj.prune("0s")
        assert f"reused ({stale.id})" in pruned["removed"] and not stale.folder.exists()
        assert live.folder.is_dir()
        # Stop reaches the very process the record names.
        assert live.cancel()
        assert sleeper.wait(30) == -signal.SIGTERM
        assert live.state == "died"
        shutil.rmtree(live.folder)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_host_of_another_pid_namespace_lives_while_its_heartbeat_does(tmp_path: Path) -> None:
    job = finished(tmp_path)
    other = running_copy(job, {"host_pid": 7, "host_id": "1.7.12345"})  # another container's
    try:
        assert other.state == "running"
        old = other.folder / "host.json"
        os.utime(old, (1, 1))  # its host stopped touching it long ago
        assert other.state == "died"
    finally:
        shutil.rmtree(other.folder)


# -- 12. hosts are reaped; a host whose folder is gone ends --------------------------------


def test_a_long_lived_process_keeps_no_zombie_of_its_detached_hosts(tmp_path: Path) -> None:
    job = bj.run_cell("x = 1", name="reaped", detach=True).wait(120)
    host = json.loads((job.folder / "host.json").read_text())["pid"]

    def reaped() -> bool:
        try:
            return psutil.Process(host).status() != psutil.STATUS_ZOMBIE and host not in {
                c.pid for c in psutil.Process().children()
            }
        except psutil.NoSuchProcess:
            return True

    until(reaped, "the ended host to be reaped by the process that started it")
    call = bj.bg_call(sum, ([1, 2],), detach=True)
    assert call.result(timeout=60) == 3
    supervisor = json.loads((call.folder / "pid.json").read_text())["supervisor"]
    until(lambda: not psutil.pid_exists(supervisor), "the call's supervisor to be reaped")


def test_a_host_whose_folder_is_removed_ends_its_kernel_and_itself(tmp_path: Path) -> None:
    job = bj.run_cell("import time\nwhile True:\n    time.sleep(0.1)", name="orphan", detach=True)
    until(lambda: job.state == "running" and job.kernel_pid, "the job to run")
    host = psutil.Process(json.loads((job.folder / "host.json").read_text())["pid"])
    kernel = psutil.Process(job.kernel_pid)
    shutil.rmtree(job.folder)
    _, alive = psutil.wait_procs([host, kernel], timeout=30)
    assert not alive, alive


# -- 11. a log that fills the disk: the job goes on, its record says why the log is short --


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB file system of its own (tmpfs), where ``mount`` is allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a small file system cannot be mounted here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_job_whose_log_fills_the_disk_goes_on_and_says_so(
    small_disk: Path, tmp_path: Path
) -> None:
    from test_server import Server

    store = small_disk / "store"
    filler = small_disk / "filler"
    gate = tmp_path / "gate"
    code = (
        "import os, time\n"
        "for i in range(3000):\n"
        "    print('x' * 1000)\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.05)\n"
        "finished = True"
    )
    with store_at(store):
        filler.write_bytes(b"\0" * (256 << 10))  # room for the records once freed
        job = bj.run_cell(code, name="fills_disk", results="object")
        until(lambda: job.log_note, "the disk to refuse the log", timeout=120)
        assert job.state == "running" and "disk is full" in job.log_note
        filler.unlink()
        gate.touch()
        job.wait(120)
        assert job.state == "succeeded" and job.reason == "", job.reason
        assert job.results.finished is True
        assert (job.folder / "output.log").stat().st_size < 3000 * 1001
        record = json.loads((job.folder / "state.json").read_text())
        assert record["state"] == "succeeded" and "disk is full" in record["log_note"]
        srv = Server(tmp_path, JUPYTER_BGJOBS_DIR=str(store))
        try:
            rows = srv.json("GET", "/bgjobs/api/jobs")["jobs"]
            row = next(r for r in rows if r["id"] == job.id)
            assert "disk is full" in row["log_note"] and row["state"] == "succeeded"
        finally:
            srv.stop()
