"""bg(): a call in a separate process whose handle belongs to the process, not the caller."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from cells import free_port, notebook

import jupyter_bgjobs as bj


def test_a_call_returns_its_value_and_its_output_in_pieces(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ns = notebook(
        f"""
        import os, sys, time
        def talk(n):
            print("first")
            sys.stdout.flush()
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.01)
            print("second")
            print("oops", file=sys.stderr)
            return n * 2
        """
    )
    call = bj.bg(ns["talk"], 21)
    assert call.pid and call.is_alive() and call.state == "running"
    deadline = time.monotonic() + 30
    first = ""
    # print() may write its text and its newline apart: wait for the whole line.
    while "first\n" not in first:
        assert time.monotonic() < deadline
        first += call.read_output()
    assert first == "first\n"
    gate.touch()
    assert call.result(30) == 42
    assert call.state == "succeeded" and not call.is_alive()
    assert call.read_output() == "second\n"  # only what is new since the last read
    assert call.read_error() == "oops\n"
    assert call in bj.bg_calls()


def test_a_chatty_call_never_blocks_on_a_full_pipe() -> None:
    ns = notebook(
        """
        def flood():
            for i in range(300_000):
                print("line", i)
            return "finished"
        """
    )
    call = bj.bg_call(ns["flood"], name="flood")
    assert call.result(60) == "finished"
    out = call.read_output()
    assert out.count("\n") == 300_000 and out.endswith("line 299999\n")


@pytest.mark.parametrize(
    ("body", "state", "raises", "words"),
    [
        ("raise ValueError('bad input')", "failed", ValueError, "raised ValueError"),
        ("os._exit(3)", "died", bj.KernelDiedError, "the process exited with code 3"),
        ("ctypes.string_at(0)", "died", bj.KernelDiedError, "the process was killed by SIGSEGV"),
        (
            "os.kill(os.getpid(), signal.SIGKILL)",
            "died",
            bj.KernelDiedError,
            "the process was killed by SIGKILL",
        ),
    ],
    ids=["exception", "os_exit", "segfault", "killed"],
)
def test_how_a_call_ends(body: str, state: str, raises: type, words: str) -> None:
    ns = notebook(
        f"""
        import ctypes, os, signal
        def go():
            {body}
        """
    )
    call = bj.bg(ns["go"])
    with pytest.raises(raises) as info:
        call.result(30)
    assert call.state == state
    assert words in call.reason
    if raises is ValueError:
        cause = str(info.value.__cause__)
        assert "in go" in cause and "raise ValueError('bad input')" in cause


def test_timeout_interrupt_and_kill() -> None:
    ns = notebook(
        """
        import subprocess, time
        def sleepy():
            time.sleep(300)
        def with_child(path):
            child = subprocess.Popen(["sleep", "300"])
            open(path, "w").write(str(child.pid))
            time.sleep(300)
        """
    )
    timed = bj.bg_call(ns["sleepy"], timeout=0.5)
    with pytest.raises(bj.JobTimeoutError):
        timed.result(30)
    assert timed.state == "timed_out"

    stopped = bj.bg(ns["sleepy"])
    stopped.interrupt()
    with pytest.raises(bj.JobCancelledError, match="interrupted"):
        stopped.result(30)
    assert stopped.state == "cancelled"

    marker = Path(os.environ["JUPYTER_BGJOBS_DIR"]) / "grandchild.pid"
    killed = bj.bg(ns["with_child"], str(marker))
    deadline = time.monotonic() + 30
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)  # polling the file the call writes; nothing else to wait on
    killed.kill()
    killed.wait(30)
    assert killed.state == "cancelled" and killed.reason == "killed"
    import psutil

    try:
        grandchild = [psutil.Process(int(marker.read_text()))]
    except psutil.NoSuchProcess:
        grandchild = []
    _, left = psutil.wait_procs(grandchild, timeout=10)
    assert not [p for p in left if p.status() != psutil.STATUS_ZOMBIE], (
        "kill() must end what the call started too"
    )


def test_bad_input_says_what_to_do() -> None:
    import threading

    with pytest.raises(bj.JobSpecError, match="needs a function"):
        bj.bg(42)  # type: ignore[arg-type]
    with pytest.raises(bj.JobSpecError, match="cannot be pickled"):
        bj.bg(print, threading.Lock())
    with pytest.raises(bj.JobSpecError, match="timeout must be a positive number"):
        bj.bg_call(print, timeout=-1)


@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
def test_wait_past_its_timeout_raises_and_the_call_goes_on(tmp_path: Path, detach: bool) -> None:
    ns = notebook(
        """
        import os, time
        def gated(path):
            while not os.path.exists(path):
                time.sleep(0.01)
            return "through"
        """
    )
    gate = tmp_path / "gate"
    call = bj.bg_call(ns["gated"], (str(gate),), detach=detach)
    with pytest.raises(bj.WaitTimeout, match=r"is still running after 0\.1 s") as info:
        call.wait(0.1)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, bj.JobStateError)
    with pytest.raises(bj.WaitTimeout):
        call.result(0)
    assert call.state == "running" and call.is_alive()
    gate.touch()
    assert call.wait(60) is call
    assert call.result() == "through" and call.state == "succeeded"


def test_calls_end_with_their_process_unless_detached(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os, time
            import jupyter_bgjobs as bj
            def wait_for(path):
                while not os.path.exists(path):
                    time.sleep(0.02)
            attached = bj.bg_call(time.sleep, (300,), name="attached")
            detached = bj.bg_call(wait_for, (GATE,), name="detached", detach=True)
            print(json.dumps({"attached": attached.pid, "detached": detached.pid}), flush=True)
            """
        ).replace("GATE", repr(str(tmp_path / "gate")))
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    pids = json.loads(done.stdout)
    assert "ended 1 background call(s) with this process: attached" in done.stderr
    import psutil

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 30
    while alive(pids["attached"]):
        assert time.monotonic() < deadline, "an attached call ends with its process"
        time.sleep(0.05)  # another process's call: no handle to wait on here
    assert alive(pids["detached"]), "a detached call outlives the process that started it"
    (tmp_path / "gate").touch()
    # The store is shared: this process sees the other one's detached call.
    from jupyter_bgjobs._cli import main

    deadline = time.monotonic() + 30
    while alive(pids["detached"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)  # waiting for another process's call to end; no handle here
    assert main(["results", "detached"]) == 0


APP = """
import time
from flask import Flask, jsonify, url_for
import jupyter_bgjobs as bj

app = Flask(__name__)

def slow_sum(n):
    time.sleep(5)
    return sum(range(n))

@app.post("/sum/<int:n>")
def start(n):
    call = bj.bg_call(slow_sum, (n,), name="slow_sum")
    return jsonify(id=call.id, status=url_for("status", call_id=call.id)), 202

@app.get("/status/<call_id>")
def status(call_id):
    call = next((c for c in bj.bg_calls() if c.id == call_id), None)
    if call is None:
        return jsonify(error="no such task"), 404
    if call.is_alive():
        return jsonify(state="running", output=call.read_output())
    return jsonify(state="done", outcome=call.state, result=call.result())

if __name__ == "__main__":
    import sys
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
"""


def test_a_web_request_starts_a_task_that_outlives_it(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(tmp_path / "app.py"), str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)  # polling a port that is not open yet
        # POST, read the 202, and hang up: the request that started the task is over.
        req = urllib.request.Request(f"{base}/sum/1000", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
            body = json.loads(resp.read())
        status_url = base + body["status"]
        with urllib.request.urlopen(status_url, timeout=10) as resp:
            assert json.loads(resp.read())["state"] == "running"
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(status_url, timeout=10) as resp:
                report = json.loads(resp.read())
            if report["state"] == "done":
                break
            assert time.monotonic() < deadline
            time.sleep(0.25)  # a client polling the status URL, as the pattern has it
        assert report == {"state": "done", "outcome": "succeeded", "result": sum(range(1000))}
    finally:
        server.terminate()
        server.wait(30)
