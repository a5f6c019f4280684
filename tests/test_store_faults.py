"""The store under stress: made read-only, damaged entries, old attached folders, links, and
files that stay their owner's."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cells import until

import jupyter_bgjobs as bj
from jupyter_bgjobs import _store, _stored
from jupyter_bgjobs._cli import main as cli


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its mode, size and modification time."""
    seen = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(base, name))
            seen[os.path.join(base, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


def set_modes(root: Path, writable: bool) -> None:
    """chmod -R a-w (or u+w) on ``root``."""
    for base, dirs, files in os.walk(root):
        for name in [*dirs, *files, ""]:
            path = os.path.join(base, name) if name else base
            if os.path.islink(path):
                continue
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            os.chmod(path, mode | stat.S_IWUSR if writable else mode & ~0o222)


def age(folder: Path, seconds: float) -> None:
    """Make ``folder`` and what is in it look ``seconds`` old."""
    then = time.time() - seconds
    for base, dirs, files in os.walk(folder, topdown=False):
        for name in dirs + files:
            os.utime(os.path.join(base, name), (then, then), follow_symlinks=False)
    os.utime(folder, (then, then))


@pytest.fixture
def writable_store() -> Iterator[Path]:
    """The store, writable again after the test whatever it did to it."""
    store = _store.store_root()
    yield store
    set_modes(store, writable=True)


def finished_job(tmp_path: Path, name: str) -> Any:
    script = tmp_path / f"{name}.py"
    script.write_text("for i in range(3):\n    print('tick', i)\ntotal = 6\n")
    job = bj.run_script(script, name=name, detach=True)
    job.wait(60)
    assert job.state == "succeeded", job.reason
    # Its host stops its kernel after the record says succeeded; while the host lives,
    # prune keeps any entry naming it (copies of this one included).
    host = json.loads((job.folder / "host.json").read_text())["pid"]
    until(lambda: not _store.pid_alive(host), "the host to end")
    return job


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_read_only_store_is_read_and_never_written(
    tmp_path: Path, writable_store: Path, capsys: pytest.CaptureFixture[str], ip: Any
) -> None:
    finished_job(tmp_path, "ro_done")
    (tmp_path / "sleep.py").write_text("import time\ntime.sleep(300)\n")
    sleeper = bj.run_script(tmp_path / "sleep.py", name="ro_orphan", detach=True)
    until(lambda: sleeper.state == "running", "the sleeper to run")
    record = _store.read_json(sleeper.folder / "state.json") or {}
    # Its host dies hard, with its kernel: the record still says running. (The host is
    # looked up before it is killed: once dead it is reaped at once, pid and all.)
    host = psutil.Process(record["host_pid"])
    os.killpg(record["kernel_pid"], signal.SIGKILL)
    os.kill(record["host_pid"], signal.SIGKILL)
    psutil.wait_procs([host], timeout=30)
    until(lambda: not _store.pid_alive(record["kernel_pid"]), "the kernel to end")
    capsys.readouterr()

    set_modes(writable_store, writable=False)
    before = snapshot(writable_store)

    assert cli(["list"]) == 0
    listing = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in listing.splitlines() if line.strip()}
    assert "ro_done" in rows, listing
    assert "succeeded" in rows["ro_done"] and "died" in rows["ro_orphan"]
    assert cli(["logs", "ro_done"]) == 0
    assert capsys.readouterr().out.count("tick") == 3
    assert cli(["results", "ro_done"]) == 0
    assert "total: int = 6" in capsys.readouterr().out

    job = bj.get_job("ro_done")
    assert (job.state, job.results.total) == ("succeeded", 6)
    assert "tick 2" in job.output
    assert bj.get_job("ro_orphan").state == "died"
    assert "ro_orphan" in _stored.table()
    ip.run_line_magic("bgjobs", "")
    shown = capsys.readouterr().out
    assert "ro_done" in shown and "died" in shown
    assert snapshot(writable_store) == before, "reading the store wrote to it"

    # Writing is refused in one line that names the folder and the fix.
    assert cli(["run", str(tmp_path / "sleep.py"), "--name", "refused"]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(writable_store) in line and "read-only" in line and "chmod u+w" in line
    assert cli(["prune", "--older-than", "0"]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(writable_store) in line and "chmod u+w" in line
    with pytest.raises(bj.BgJobError, match="read-only") as caught:
        bj.run_cell("x = 1", name="refused", detach=True)
    assert str(writable_store) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(bj.BgJobError, match="read-only"):
        bj.prune(older_than=0)
    # The command line, as a user runs it: no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_bgjobs._cli", "prune", "--older-than", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and one_line(proc.stderr).startswith("bgjobs: cannot prune")
    assert snapshot(writable_store) == before
    assert _store.find("refused") is None


GATED = """
import os, time
while not os.path.exists({gate!r}):
    time.sleep(0.05)
with open({mark!r}, "w") as fh:
    fh.write("ran on")
answer = 42
print("answer ready")
"""


def test_a_running_job_runs_on_when_its_store_turns_read_only(
    tmp_path: Path, writable_store: Path
) -> None:
    gate, mark = tmp_path / "gate", tmp_path / "mark"
    (tmp_path / "gated.py").write_text(GATED.format(gate=str(gate), mark=str(mark)))
    job = bj.run_script(tmp_path / "gated.py", name="ro_running", detach=True)
    until(lambda: job.state == "running", "the job to run")
    host = (_store.read_json(job.folder / "state.json") or {})["host_pid"]

    for folder in (writable_store, job.folder):
        os.chmod(folder, 0o500)
    gate.touch()
    # The code goes on to its end; the host says in the job's log why the record lags.
    until(mark.exists, "the job's code to run on")
    until(lambda: "the job's record cannot be updated" in job.output, "the host's word")
    assert "keeps running" in job.output and str(job.folder) in job.output
    assert _store.pid_alive(host)
    assert job.state == "running"  # the record is behind, the host is alive

    for folder in (writable_store, job.folder):
        os.chmod(folder, 0o700)
    job.wait(60)
    assert job.state == "succeeded" and job.results.answer == 42
    assert "answer ready" in job.output
    assert "the store can be written again" in job.output


def copy_entry(source: Path) -> Path:
    """A new entry of the store made from ``source``, with its own id."""
    new = source.with_name(uuid.uuid4().hex[:8])
    shutil.copytree(source, new, symlinks=True)
    spec = json.loads((new / "spec.json").read_text())
    spec["id"] = new.name
    (new / "spec.json").write_text(json.dumps(spec))
    return new


def test_damaged_entries_are_listed_and_pruned_and_harm_no_other(
    tmp_path: Path, writable_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sound = finished_job(tmp_path, "sound")
    damaged: dict[str, tuple[Path, str]] = {}

    def damage(label: str, reason: str, change: Callable[[Path], None]) -> None:
        folder = copy_entry(sound.folder)
        change(folder)
        damaged[label] = (folder, reason)

    def set_spec(key: str, value: Any) -> Callable[[Path], None]:
        def change(folder: Path) -> None:
            spec = json.loads((folder / "spec.json").read_text())
            spec[key] = value
            (folder / "spec.json").write_text(json.dumps(spec))

        return change

    def truncate(folder: Path) -> None:
        text = (folder / "spec.json").read_text()
        (folder / "spec.json").write_text(text[: len(text) // 2])

    damage("submitted", "spec.json: 'submitted' is int 5, not str", set_spec("submitted", 5))
    damage("name", "spec.json: 'name' is list [1], not str", set_spec("name", [1]))
    damage("truncated", "spec.json: not valid JSON (truncated?)", truncate)
    damage("empty state", "state.json: empty", lambda f: (f / "state.json").write_text(""))
    damage(
        "garbage results",
        "results.snap: not a complete results file",
        lambda f: (f / "results.snap").write_bytes(b"garbage"),
    )
    damage("no spec", "spec.json: missing", lambda f: (f / "spec.json").unlink())
    age(damaged["no spec"][0], 7200)  # an entry without a spec is only shown once old

    assert cli(["list"]) == 0
    listing = capsys.readouterr().out
    assert "succeeded" in listing
    for folder, reason in damaged.values():
        assert f"{folder.name}: damaged: {reason}" in listing, listing

    # The command's listing is %bgjobs's table; a job of another test that still runs
    # may have ticked its clock between the two looks: clocks are left out.
    def clockless(text: str) -> list[str]:
        return [re.sub(r"\s+\d+:\d\d(:\d\d)?$", "", line) for line in text.splitlines()]

    table = clockless(_stored.table())
    shown = clockless(listing)
    assert any(shown[i : i + len(table)] == table for i in range(len(shown))), listing

    assert bj.get_job("sound").results.total == 6
    ns: dict[str, Any] = {}
    report = _stored.attach("sound", results="globals", ns=ns)
    assert report.startswith("sound: succeeded in") and "merged i, total" in report
    assert ns["total"] == 6
    for folder, reason in damaged.values():
        with pytest.raises(bj.BgJobError, match="is damaged") as caught:
            bj.get_job(folder.name)
        assert reason in str(caught.value) and "\n" not in str(caught.value)
        with pytest.raises(bj.BgJobError, match="is damaged"):
            _stored.attach(folder.name, ns={})
        assert cli(["results", folder.name]) == 2
        assert reason in one_line(capsys.readouterr().err)
    # Its log is sound: it is shown.
    assert cli(["logs", damaged["garbage results"][0].name]) == 0
    assert "tick 2" in capsys.readouterr().out

    # Damaged ones count as ended, as old as their folders.
    # (The store is the whole run's: only this test's entries are looked at.)
    def ours(removed: list[str]) -> list[str]:
        return [r for r in removed if any(f.name in r for f, _ in damaged.values())]

    no_spec = damaged["no spec"][0].name
    assert ours(bj.prune(older_than="1h")["removed"]) == [f"{no_spec} (damaged)"]
    for label, (folder, _) in damaged.items():
        if label != "no spec":
            age(folder, 7200)
    report = bj.prune(older_than="1h")
    assert len(ours(report["removed"])) == len(damaged) - 1 and report["kept"] == []
    assert not any(folder.exists() for folder, _ in damaged.values())
    assert sound.folder.exists() and bj.get_job("sound").state == "succeeded"


CALLER = """
import jupyter_bgjobs as bj
call = bj.bg_call(sum, ([1, 2],), name="att_call")
print(call.folder, call.result(60))
"""


def test_prune_removes_ended_attached_folders_and_never_live_ones(
    tmp_path: Path, writable_store: Path
) -> None:
    gate = tmp_path / "gate"
    done = bj.run_cell("y = 1", name="att_done", results="none")
    done.wait(60)
    # Its driver writes the record last and lets go of the log as it stops the kernel,
    # after wait() returned: the folder is changed below only once the driver is done.
    bj._api.manager.join_worker(done)
    live = bj.run_cell(
        f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)\n",
        name="att_live",
        results="none",
    )
    # A call of a process that has ended since (this process's handles read their folders).
    made = subprocess.run(
        [sys.executable, "-c", CALLER], capture_output=True, text=True, timeout=120, check=True
    )
    call_folder = Path(made.stdout.split()[0])
    assert made.stdout.split()[1] == "3" and call_folder.is_dir()
    running_call = bj.bg_call(time.sleep, (300,), name="att_sleep")
    until(lambda: live.state == "running", "the live job to run")

    jobs_root = writable_store.parent
    # Folders as a newer writer leaves them: state.json names the owner.
    ended_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    ended_owner.wait()
    orphan, owned = jobs_root / uuid.uuid4().hex[:8], jobs_root / uuid.uuid4().hex[:8]
    for folder, owner in ((orphan, ended_owner.pid), (owned, os.getpid())):
        folder.mkdir(mode=0o700)
        (folder / "spec.json").write_text(json.dumps({"name": folder.name, "id": folder.name}))
        (folder / "output.log").write_text("")
        ns = _store.owner_tag().partition(".")[0]
        state = {"state": "running", "owner": f"{ns}.{owner}", "finished": None}
        (folder / "state.json").write_text(json.dumps(state))
    # A link out of the store is removed with its folder; what it leads to stays.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the store's")
    (done.folder / "link").symlink_to(outside)
    (writable_store / "linked").symlink_to(outside)
    for folder in (done.folder, live.folder, call_folder, running_call.folder, orphan, owned):
        age(folder, 7200)
    # The ended job's own record says when it ended: two hours ago, as its files say.
    record = json.loads((done.folder / "state.json").read_text())
    assert record["state"] == "succeeded" and record["owner_pid"] == os.getpid()
    record["finished_ts"] -= 7200
    (done.folder / "state.json").write_text(json.dumps(record))

    try:
        # From another process, which sees the live ones only by what their folders say.
        proc = subprocess.run(
            [sys.executable, "-m", "jupyter_bgjobs._cli", "prune", "--older-than", "1h"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert not done.folder.exists() and not orphan.exists()
        assert "att_done" in proc.stdout and orphan.name in proc.stdout
        # The call's own record says it ended a moment ago, whatever its files' times.
        assert call_folder.exists()
        assert live.folder.exists() and running_call.folder.exists() and owned.exists()
        assert (outside / "keep.txt").exists() and (writable_store / "linked").is_symlink()
        report = bj.prune(older_than=0)
        assert any(r.startswith("att_call") for r in report["removed"])
        assert not call_folder.exists()
        assert live.folder.exists() and running_call.folder.exists() and owned.exists()
    finally:
        gate.touch()
        live.wait(60)
        running_call.kill()
        running_call.wait(30)
        (writable_store / "linked").unlink()
        shutil.rmtree(owned)


def test_a_detached_job_keeps_its_files_private_and_drops_its_seed(
    tmp_path: Path, writable_store: Path, ip: Any
) -> None:
    gate = tmp_path / "gate"
    old = os.umask(0o022)
    try:
        ip.run_cell("base = 21")
        job = bj.run_cell(
            f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n"
            "    time.sleep(0.05)\nanswer = base * 2\n",
            name="private",
            detach=True,
        )
    finally:
        os.umask(old)
    until(lambda: job.state == "running", "the job to run")
    assert not (job.folder / "seed.pkl").exists(), "the notebook's values outlived their load"
    gate.touch()
    job.wait(60)
    assert job.state == "succeeded" and job.results.answer == 42
    # Its host moves the results into the folder after the job's end: once it is gone,
    # the folder is as it stays.
    host = json.loads((job.folder / "host.json").read_text())["pid"]
    until(lambda: not _store.pid_alive(host), "the host to end")
    assert stat.S_IMODE(writable_store.stat().st_mode) == 0o700
    wrong = []
    for base, dirs, files in os.walk(job.folder):
        for name, want in [(d, 0o700) for d in dirs] + [(f, 0o600) for f in files]:
            mode = stat.S_IMODE(os.lstat(os.path.join(base, name)).st_mode)
            if mode != want:
                wrong.append(f"{os.path.join(base, name)}: {oct(mode)}")
    assert stat.S_IMODE(job.folder.stat().st_mode) == 0o700
    assert not wrong, wrong
