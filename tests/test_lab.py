"""End to end: the Jobs panel in a real JupyterLab, driven by Playwright in headless Chromium.

A user's view: run a ``%%bgjob`` cell, watch its row advance and succeed, press Stop on a
second job and see it cancelled. A screenshot of the panel is saved under
``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labserver import (
    ARTIFACTS,
    browser,
    lab_server,
    skip_without_chromium,
    wait_for_kernel,
    write_notebook,
)

TOKEN = "bgjobs-lab-token"
skip_without_chromium()

playwright_sync = pytest.importorskip("playwright.sync_api")

CELLS = [
    "%load_ext jupyter_bgjobs",
    "%%bgjob first\n# Warm up ----\nimport time\n"
    + "\n".join("time.sleep(0.4)" for _ in range(4))
    + "\n# Finish ----\n"
    + "\n".join("time.sleep(0.4)" for _ in range(4))
    + "\nanswer = 42",
    "%%bgjob endless\nimport time\nwhile True:\n    time.sleep(0.05)",
    "%bgjobs",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A JupyterLab server on 127.0.0.1 serving one notebook; yields its URL."""
    root = tmp_path_factory.mktemp("lab")
    write_notebook(root / "jobs.ipynb", CELLS)
    with lab_server(root, TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def page(lab: str) -> Iterator[Any]:
    with browser() as context:
        # Record browser notifications instead of showing them (a headless browser has no
        # desktop to show them on); permission is granted as a user would.
        context.grant_permissions(["notifications"])
        context.add_init_script(
            """
            window.__notes = [];
            window.Notification = class {
                constructor(title, options) { window.__notes.push([title, options.body]); }
                static get permission() { return 'granted'; }
                static requestPermission() { return Promise.resolve('granted'); }
            };
            """
        )
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(f"{lab}/lab/tree/jobs.ipynb?token={TOKEN}")
        wait_for_kernel(pg)
        yield pg
        # Shutting the kernel down from the page ends its jobs' kernels with it.
        pg.evaluate(
            "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.shutdown()"
        )


def _panel(page: Any) -> Any:
    """The output of the notebook's ``%bgjobs`` cell: the Jobs panel."""
    return page.locator(".jp-Cell").nth(len(CELLS) - 1).locator(".jp-Cell-outputArea")


def _row(page: Any, name: str) -> Any:
    """The row of job ``name`` in the Jobs panel."""
    return _panel(page).locator(".widget-hbox", has=page.locator(f"b:text-is('{name}')")).first


def _run_new_cell(page: Any, code: str) -> None:
    """Add a cell at the end of the notebook, type ``code`` and press Shift+Enter."""
    page.evaluate(
        """() => {
        const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = nb.content.widgets.length - 1;
        return window.jupyterapp.commands.execute('notebook:insert-cell-below');
    }"""
    )
    page.locator(".jp-Cell").last.locator(".cm-content").click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")


def test_rows_advance_succeed_and_stop_cancels(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    first = _row(page, "first")
    first.wait_for()
    counts = set()
    # Record the k/N counter as the browser renders it until the row says succeeded.
    deadline = time.monotonic() + 120
    while "succeeded" not in first.inner_text():
        assert time.monotonic() < deadline, first.inner_text()
        counts.add(first.locator(".widget-html").nth(2).inner_text().strip())
        page.wait_for_timeout(50)  # the browser's own pacing between two reads of the DOM
    # One refresh is several widget messages; the browser may show the state first.
    playwright_sync.expect(first).to_contain_text("10/10", timeout=30_000)
    playwright_sync.expect(first).to_contain_text(
        "results merge before the next cell runs", timeout=30_000
    )
    advancing = {c for c in counts if c and c not in ("0/10", "10/10")}
    assert advancing, f"the row never showed progress between start and end: {counts}"

    endless = _row(page, "endless")
    state = endless.locator(".widget-html").first
    playwright_sync.expect(state).to_contain_text("running", timeout=60_000)
    endless.get_by_role("button", name="Stop").click()
    playwright_sync.expect(state).to_contain_text("cancelled", timeout=30_000)
    playwright_sync.expect(endless.get_by_role("button", name="Remove")).to_be_visible(
        timeout=30_000
    )
    playwright_sync.expect(endless.get_by_role("button", name="Stop")).to_be_hidden(timeout=30_000)

    # The results reached the notebook: a new cell sees them.
    _run_new_cell(page, "print('answer is', answer)")
    page.get_by_text("answer is 42").wait_for()
    # Selecting a job shows its merge report under its row.
    first.get_by_role("button", name="Output").click()
    panel = _panel(page)
    playwright_sync.expect(panel).to_contain_text("merged answer", timeout=30_000)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "jobs-panel.png"
    panel.screenshot(path=str(shot))
    assert shot.stat().st_size > 1000
    if os.environ.get("BGJOBS_UPDATE_SCREENSHOT"):
        shutil.copy(shot, Path(__file__).resolve().parent.parent / "docs" / "jobs-panel.png")

    # --notify: the browser is told when the job ends.
    _run_new_cell(page, "%%bgjob ping --notify\nx = 1")
    try:
        page.wait_for_function("() => window.__notes.length > 0", timeout=60_000)
    except Exception:
        cells = page.evaluate(
            "() => Array.from(document.querySelectorAll('.jp-Cell')).map(c => c.innerText)"
        )
        raise AssertionError(f"no notification; the notebook shows: {cells}") from None
    title, body = page.evaluate("() => window.__notes[0]")
    assert title == "ping: succeeded" and "succeeded" in body

    # The same live panel in JupyterLab's right-hand side area.
    _run_new_cell(page, "%bgjobs --sidebar")
    side = page.locator("#jp-right-stack")
    playwright_sync.expect(side).to_contain_text("endless", timeout=30_000)
    playwright_sync.expect(side).to_contain_text("cancelled")


def test_a_long_row_stays_one_line_and_keeps_its_buttons_in_view(page: Any) -> None:
    """A queue's row says much (its tasks, its workers): in a narrow notebook its words
    stay on one line (cut, with the whole text in its tooltip) and its buttons wrap below
    instead of being cut off."""
    page.set_viewport_size({"width": 900, "height": 1000})
    try:
        _run_new_cell(
            page,
            "import jupyter_bgjobs as bj\n"
            "wide = bj.add_job('wide_row', status='a queue of many tasks ' * 12, "
            "progress_units=3, auto_remove=False, show=False)\n"
            "wide.set_state('succeeded')",
        )
        row = _row(page, "wide_row")
        remove = row.get_by_role("button", name="Remove")
        playwright_sync.expect(remove).to_be_visible(timeout=60_000)
        area = _panel(page).bounding_box()
        button = remove.bounding_box()
        assert button["x"] + button["width"] <= area["x"] + area["width"] + 1, (button, area)
        said = row.locator(".widget-html", has_text="a queue of many tasks").first
        one_line = row.locator(".widget-html").first.bounding_box()["height"]
        assert said.bounding_box()["height"] <= one_line + 2, said.bounding_box()
        assert "a queue of many tasks" in (said.locator("div[title]").get_attribute("title") or "")
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
