"""A real JupyterLab (or Notebook 7) server on 127.0.0.1 and a headless Debian Chromium,
for the browser tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat
import pytest
from cells import free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def skip_without_chromium() -> None:
    if not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true":
        # On CI the browser is installed by the test command; a missing one is a failure.
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium)",
            allow_module_level=True,
        )


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@contextmanager
def lab_server(
    root: Path, token: str, app: str = "jupyterlab", jobs_dir: str | None = None
) -> Iterator[str]:
    """Run ``python -m <app>`` serving ``root``; yield its URL; end it (and its kernels).

    ``jobs_dir``: a job root of the server's own, so its Jobs pane lists only the jobs of
    the test that uses it."""
    # No news or update toasts over what the tests look at.
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    port = free_port()
    log = open(root / "server.log", "wb")  # closed after the server ends
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            app,
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            f"--{'LabApp' if app == 'jupyterlab' else 'JupyterNotebookApp'}"
            ".expose_app_in_browser=True",
            f"--LabServerApp.user_settings_dir={root / 'settings'}",
            f"--LabServerApp.workspaces_dir={root / 'workspaces'}",
        ],
        env=dict(
            os.environ,
            JUPYTER_RUNTIME_DIR=str(root / "runtime"),
            JUPYTER_BGJOBS_DIR=jobs_dir or os.environ.get("JUPYTER_BGJOBS_DIR", ""),
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"{app} did not start:\n" + (root / "server.log").read_text()[-3000:]
                    )
                time.sleep(0.2)  # polling a port that is not open yet; no event to wait on
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def end_sessions(url: str, token: str) -> None:
    """Shut down every session's kernel through the REST API (the page's own shutdown
    would ask first about the jobs they run): a test's end, not a user's action."""
    import json

    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(
        urllib.request.Request(f"{url}/api/sessions", headers=headers), timeout=30
    ) as answer:
        sessions = json.load(answer)
    for session in sessions:
        request = urllib.request.Request(
            f"{url}/api/sessions/{session['id']}", method="DELETE", headers=headers
        )
        with urllib.request.urlopen(request, timeout=60):
            pass


@contextmanager
def browser(viewport: tuple[int, int] = (1400, 1000)) -> Iterator[Any]:
    """A headless Chromium context."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        context = chromium.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        try:
            yield context
        finally:
            context.close()
            chromium.close()


def wait_for_kernel(page: Any, timeout: float = 120_000) -> None:
    page.wait_for_function(
        "() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel"
        "?.status === 'idle'",
        timeout=timeout,
    )


def pane(page: Any) -> Any:
    """The IDE's Jobs pane, opened by its command."""
    page.evaluate("() => window.jupyterapp.commands.execute('bgjobs:open-panel')")
    found = page.locator("#jupyter-bgjobs-panel")
    found.wait_for(state="visible")
    return found


def pane_row(page: Any, name: str) -> Any:
    """The row of the job named ``name`` in the Jobs pane's list."""
    return (
        pane(page)
        .locator(
            ".jp-bgjobs-list .jp-bgjobs-row",
            has=page.locator(f".jp-bgjobs-name:text-is('{name}')"),
        )
        .first
    )
