"""Notebook 7 gets the Jobs panel and the commands too: the same extension, in a real
Notebook 7 server, in Debian's headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labserver import (
    browser,
    end_sessions,
    lab_server,
    skip_without_chromium,
    wait_for_kernel,
    write_notebook,
)

skip_without_chromium()
playwright_sync = pytest.importorskip("playwright.sync_api")
pytest.importorskip("notebook")
expect = playwright_sync.expect

TOKEN = "bgjobs-nb7-token"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root: Path = tmp_path_factory.mktemp("nb7")
    write_notebook(root / "seven.ipynb", ["n = 6", "m = n * 7"])
    with lab_server(root, TOKEN, app="notebook") as url, browser() as context:
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(f"{url}/notebooks/seven.ipynb?token={TOKEN}")
        wait_for_kernel(pg)
        yield pg
        end_sessions(url, TOKEN)


def test_a_cell_runs_as_a_job_and_the_panel_lists_it(page: Any) -> None:
    commands = page.evaluate(
        "() => ['bgjobs:run-cell', 'bgjobs:run-selection', 'bgjobs:run-file', "
        "'bgjobs:open-panel'].filter(c => window.jupyterapp.commands.hasCommand(c))"
    )
    assert len(commands) == 4, commands
    page.evaluate(
        """() => {
        const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = 0;
        return window.jupyterapp.commands.execute('notebook:run-cell');
    }"""
    )
    # Scripted: the options as arguments, no dialog.
    page.evaluate(
        """() => {
        const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = 1;
        return window.jupyterapp.commands.execute('bgjobs:run-cell',
            {name: 'seven', env: 'auto', results: 'globals'});
    }"""
    )
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    row = cell.locator(".jp-bgjobs-cellrow .jp-bgjobs-row")
    expect(row).to_have_attribute("data-state", "succeeded", timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('bgjobs:open-panel')")
    panel = page.locator("#jupyter-bgjobs-panel")
    expect(panel).to_be_visible()
    expect(panel.locator(".jp-bgjobs-list")).to_contain_text("seven")
    expect(panel.locator(".jp-bgjobs-list")).to_contain_text("seven.ipynb")
