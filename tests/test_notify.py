"""Word of a job's end wherever its user is, through real Apprise to real servers on
127.0.0.1: a ``json://`` webhook received by an HTTP server, a ``mailto://`` message by
an SMTP server (aiosmtpd); a target that cannot be reached changes nothing but a note in
the job's log; the URLs' secrets are never in a record, a log, a repr, a command line or
the job's kernel."""

from __future__ import annotations

import http.server
import json
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cells import free_port

import jupyter_bgjobs as bj
from jupyter_bgjobs._config import settings

pytest.importorskip("apprise")
smtp = pytest.importorskip("aiosmtpd.controller")

SECRET = "s3cret-token-41"


class Hook:
    """An HTTP server on 127.0.0.1 that keeps what is posted to it."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers["Content-Length"])
                hook.got.append(json.loads(self.rfile.read(size)))
                hook.arrived.set()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://user:{SECRET}@127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    made = Hook()
    yield made
    made.close()


def _sent() -> None:
    """Every notification under way has been sent (or given up on)."""
    for thread in threading.enumerate():
        if thread.name == "bgjobs-notify":
            thread.join(60)


def test_a_webhook_hears_of_a_failed_jobs_end(hook: Hook) -> None:
    job = bj.run_cell(
        "x = 1\nraise ValueError('bad input\\nsecond line')",
        name="hooked",
        env="none",
        results="none",
        notify=[hook.url],
    )
    job.wait(60)
    assert hook.arrived.wait(60)
    message = hook.got[0]
    assert message["title"] == "Background job hooked failed"
    body = message["message"]
    assert body.startswith("hooked failed after 00:0")
    assert "its memory peaked at" in body
    assert "ValueError: bad input" in body and "second line" not in body
    _sent()


def test_a_mail_tells_of_a_jobs_end(tmp_path: Path) -> None:
    got: list[Any] = []
    arrived = threading.Event()

    class Mailbox:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            got.append(envelope)
            arrived.set()
            return "250 OK"

    port = free_port()
    box = smtp.Controller(Mailbox(), hostname="127.0.0.1", port=port)
    box.start()
    try:
        url = (
            f"mailto://127.0.0.1:{port}?user=jobs&from=jobs@example.org"
            "&to=me@example.org&mode=insecure"
        )
        job = bj.run_cell("total = 6 * 7", name="mailed", env="none", notify=[url])
        job.wait(60)
        assert arrived.wait(60)
    finally:
        _sent()
        box.stop()
    mail = got[0]
    assert mail.rcpt_tos == ["me@example.org"]
    text = mail.content.decode()
    assert "Subject: Background job mailed succeeded" in text


def test_a_target_that_cannot_be_reached_changes_nothing_but_a_note(hook: Hook) -> None:
    closed = free_port()
    job = bj.run_cell(
        "y = 2",
        name="unheard",
        env="none",
        notify=[f"json://user:{SECRET}@127.0.0.1:{closed}/hook"],
    )
    job.wait(60)
    _sent()
    assert job.state == "succeeded"
    log = job.log_path.read_text()
    assert "the notification to json://127.0.0.1 could not be sent" in log
    assert SECRET not in log


def test_secrets_stay_out_of_records_logs_reprs_argv_and_the_kernel(
    hook: Hook, tmp_path: Path
) -> None:
    code = textwrap.dedent(
        """
        import os
        print('seen:', os.environ.get('JUPYTER_BGJOBS_NOTIFY'))
        """
    )
    attached = bj.run_cell(code, name="quiet", env="none", results="none", notify=[hook.url])
    attached.wait(60)
    assert hook.arrived.wait(60)
    hook.arrived.clear()
    gate = tmp_path / "gate"
    detached = bj.run_cell(
        code + f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)\n",
        name="far_quiet",
        env="none",
        results="none",
        notify=[hook.url],
        detach=True,
    )
    try:
        host = psutil.Process(json.loads((detached.folder / "host.json").read_text())["pid"])
        assert SECRET not in " ".join(host.cmdline())
    finally:
        gate.touch()
    detached.wait(60)
    assert hook.arrived.wait(60), "the detached job's host sent nothing"
    _sent()
    for job in (attached, detached):
        for path in job.folder.iterdir():
            if path.is_file():
                assert SECRET not in path.read_text(errors="replace"), path.name
        assert "seen: None" in job.log_path.read_text()
    assert SECRET not in repr(attached.spec) and SECRET not in repr(settings)


def test_a_target_apprise_does_not_know_is_refused_before_anything_starts() -> None:
    before = len(bj.jobs())
    with pytest.raises(bj.JobSpecError, match="nope://host is no notification target") as err:
        bj.run_cell("x = 1", notify=[f"nope://user:{SECRET}@host/x"])
    assert SECRET not in str(err.value)
    assert len(bj.jobs()) == before


def test_configure_tells_every_jobs_end_and_notify_true_stays_the_browsers(hook: Hook) -> None:
    bj.configure(notify=[hook.url])
    try:
        assert settings.notify is False and settings.notify_targets == [hook.url]
        job = bj.run_cell("z = 3", name="everyone", env="none", results="none")
        job.wait(60)
        assert hook.arrived.wait(60)
        assert hook.got[0]["title"] == "Background job everyone succeeded"
    finally:
        _sent()
        bj.configure(notify=[])
    bj.configure(notify=True)
    assert settings.notify is True and settings.notify_targets == []
    bj.configure(notify=False)


def test_the_magic_takes_notify_urls(ip: Any, hook: Hook) -> None:
    ip.run_line_magic("load_ext", "jupyter_bgjobs")
    ip.run_cell_magic("bgjob", f"magicked --env none --results none --notify {hook.url}", "w = 4")
    bj.get_job("magicked").wait(60)
    assert hook.arrived.wait(60)
    assert hook.got[0]["title"] == "Background job magicked succeeded"
    _sent()


def test_a_bg_calls_end_is_told(hook: Hook) -> None:
    call = bj.bg_call(divmod, (7, 2), name="divided", notify=[hook.url])
    assert call.result(60) == (3, 1)
    assert hook.arrived.wait(60)
    assert hook.got[0]["title"] == "Background job divided succeeded"
    _sent()
    assert SECRET not in (call.folder / "state.json").read_text()
