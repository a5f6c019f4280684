"""Rows under cells tell the truth, in a real JupyterLab in Chromium: the row under a cell
shows the newest job that cell started (after a reload of a notebook not saved since),
a detached job gets a live row, a job started while the kernel is busy says it waits, a
rerun from the pane shows under its cell and is named, the row's count agrees with the
report, the dialog refuses a folder that does not exist, a refused start is notified,
Restart works after "keep detached", "Shut Down All Kernels" and the Running panel warn
as the single shutdown does, and the editor's menu keeps Undo and Redo together.

Jobs wait on gate files the test touches: nothing here is timed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labserver import (
    browser,
    end_sessions,
    lab_server,
    pane_row,
    skip_without_chromium,
    wait_for_kernel,
    write_notebook,
)

skip_without_chromium()
expect = pytest.importorskip("playwright.sync_api").expect

TOKEN = "bgjobs-cell-rows-token"


def _waits(gate: Path) -> str:
    return f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cellrows")
    gates = root / "gates"
    gates.mkdir()
    (root / "sub").mkdir()
    (root / "tool.py").write_text("value = 1\n")
    write_notebook(
        root / "cells.ipynb",
        [
            "%load_ext jupyter_bgjobs",
            "%%bgjob saved --env none\nx = 1",
            "%%bgjob far --detach --env none\n" + _waits(gates / "far"),
            _waits(gates / "busy"),
            "%%bgjob counted --env none\na = 1\nb = 1 / 0\nc = 3",
            "y = 2",
        ],
    )
    return root


@pytest.fixture(scope="module")
def page(root: Path) -> Iterator[Any]:
    jobs = Path(os.environ["JUPYTER_BGJOBS_DIR"]) / f"cells-{root.name}"
    jobs.mkdir()
    with lab_server(root, TOKEN, jobs_dir=str(jobs)) as url, browser() as context:
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        # Leaving the page with unsaved changes asks; the user says leave.
        pg.on("dialog", lambda d: d.accept())
        # A job starts in seconds on a busy machine: every expectation waits up to 60 s.
        expect.set_options(timeout=60_000)
        pg.goto(f"{url}/lab/tree/cells.ipynb?token={TOKEN}")
        wait_for_kernel(pg)
        _run(pg, 0)
        yield pg
        expect.set_options(timeout=5_000)
        for gate in ("far", "far2", "busy", "saved"):
            (root / "gates" / gate).touch()
        end_sessions(url, TOKEN)


def _run(page: Any, index: int, wait: bool = True) -> None:
    """Run cell ``index`` as a user does (Run Selected Cell)."""
    js = """(i) => { const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = i;
        return window.jupyterapp.commands.execute('notebook:run-cell'); }"""
    page.evaluate(js if wait else js.replace("return ", ""), index)


def _set_source(page: Any, index: int, source: str) -> None:
    page.evaluate(
        "([i, s]) => window.jupyterapp.shell.currentWidget.content.widgets[i]"
        ".model.sharedModel.setSource(s)",
        [index, source],
    )


def _cell_row(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-bgjobs-cellrow")


def test_the_rows_count_agrees_with_its_report(page: Any) -> None:
    _run(page, 4)
    row = _cell_row(page, 4)
    expect(row.locator(".jp-bgjobs-row")).to_have_attribute("data-state", "failed")
    expect(row.locator(".jp-bgjobs-report")).to_contain_text("failed at statement 2/3")
    expect(row.locator(".jp-bgjobs-count")).to_have_text("at 2/3")
    # What its kernel held at most, sampled while it ran.
    expect(row.locator(".jp-bgjobs-usage")).to_contain_text(re.compile(r"peak \d+(\.\d)? MB"))


def test_after_a_reload_without_saving_the_cell_shows_its_newest_job(page: Any, root: Path) -> None:
    _run(page, 1)
    row = _cell_row(page, 1).locator(".jp-bgjobs-row")
    expect(row).to_have_attribute("data-state", "succeeded")
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    expect(page.locator(".jp-mod-dirty")).to_have_count(0)
    # The cell is changed and run again, and the page reloaded before saving: the saved
    # output is the first job's row.
    _set_source(page, 1, "%%bgjob saved --env none\n" + _waits(root / "gates" / "saved"))
    _run(page, 1)
    expect(row).to_have_attribute("data-state", "running")
    newest = row.get_attribute("data-job-id")
    page.reload()
    wait_for_kernel(page)
    row = _cell_row(page, 1).locator(".jp-bgjobs-row")
    expect(page.locator(".jp-Notebook .jp-Cell").nth(1)).to_contain_text("x = 1")
    expect(row).to_have_attribute("data-job-id", newest)
    expect(row).to_have_attribute("data-state", "running")
    (root / "gates" / "saved").touch()
    expect(row).to_have_attribute("data-state", "succeeded")


def test_a_jobs_detail_draws_its_memory_and_cpu(page: Any) -> None:
    # The newest "saved" ran for seconds (across the reload): many samples of its kernel.
    listed = pane_row(page, "saved")
    listed.get_by_role("button", name="Output saved").click()
    plot = page.locator("#jupyter-bgjobs-panel .jp-bgjobs-usage-plot")
    expect(plot.locator("polyline")).to_have_count(2)
    expect(plot.locator("figcaption")).to_contain_text(re.compile(r"Memory \(peak \d"))
    expect(plot.locator("figcaption")).to_contain_text("CPU seconds")
    page.locator("#jupyter-bgjobs-panel").get_by_role("button", name="← All jobs").click()


def test_a_detached_job_has_a_live_row_under_its_cell(page: Any, root: Path) -> None:
    _run(page, 2)
    row = _cell_row(page, 2).locator(".jp-bgjobs-row")
    expect(row).to_have_attribute("data-state", "running")
    expect(row.locator(".jp-bgjobs-detached")).to_be_visible()
    expect(page.locator(".jp-Notebook .jp-Cell").nth(2)).not_to_contain_text("detached job started")
    (root / "gates" / "far").touch()
    expect(row).to_have_attribute("data-state", "succeeded")


def test_a_job_started_while_the_kernel_is_busy_says_it_waits(page: Any, root: Path) -> None:
    _run(page, 3, wait=False)
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status"
        " === 'busy'"
    )
    page.evaluate(
        """() => { const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = 5;
        window.jupyterapp.commands.execute('bgjobs:run-cell',
            {name: 'patient', dialog: false, env: 'none'}); }"""
    )
    row = _cell_row(page, 5)
    expect(row).to_contain_text("patient")
    expect(row).to_contain_text("waiting for the notebook's kernel")
    (root / "gates" / "busy").touch()
    expect(row.locator(".jp-bgjobs-row")).to_have_attribute("data-state", "succeeded")
    expect(row).not_to_contain_text("waiting for the notebook's kernel")


def test_a_rerun_from_the_pane_shows_under_its_cell_and_is_named(page: Any) -> None:
    row = _cell_row(page, 5).locator(".jp-bgjobs-row")
    first = row.get_attribute("data-job-id")
    listed = pane_row(page, "patient")
    listed.get_by_role("button", name="Rerun patient").click()
    toast = page.locator(".Toastify__toast", has_text="Background job patient started")
    expect(toast.first).to_be_visible()
    expect(row).not_to_have_attribute("data-job-id", first)
    expect(row).to_have_attribute("data-state", "succeeded")


def _dialog_of_cell_5(page: Any) -> Any:
    """Run Cell as Background Job's dialog, for the notebook's last cell."""
    # The notebook in front (a test may have opened a file over it).
    page.evaluate(
        "() => window.jupyterapp.commands.execute('docmanager:open', {path: 'cells.ipynb'})"
    )
    page.evaluate(
        """() => { const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = 5;
        window.jupyterapp.commands.execute('bgjobs:run-cell'); }"""
    )
    return page.locator(".jp-Dialog")


def test_the_dialog_refuses_a_folder_that_does_not_exist(page: Any) -> None:
    dialog = _dialog_of_cell_5(page)
    dialog.locator("input[name=name]").fill("in_sub")
    dialog.locator("input[name=workdir]").fill("no_such_folder")
    dialog.get_by_role("button", name="Start").click()
    expect(dialog.locator(".jp-bgjobs-dialog-problem")).to_contain_text(
        '"no_such_folder" does not exist'
    )
    expect(dialog.locator("input[name=workdir]")).to_have_value("no_such_folder")
    dialog.locator("input[name=workdir]").fill("sub")
    dialog.get_by_role("button", name="Start").click()
    expect(pane_row(page, "in_sub")).to_have_attribute("data-state", "succeeded")


def test_a_start_the_kernel_refuses_is_notified(page: Any) -> None:
    page.evaluate(
        """() => { const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = 5;
        window.jupyterapp.commands.execute('bgjobs:run-cell',
            {name: 'refused', dialog: false, workdir: '/no/such/folder'}); }"""
    )
    toast = page.locator(".Toastify__toast", has_text="The job did not start")
    expect(toast.first).to_contain_text("does not exist")


def test_shutdowns_of_every_kind_warn_and_restart_works_after_keep_detached(
    page: Any, root: Path
) -> None:
    _set_source(page, 2, "%%bgjob far2 --detach --env none\n" + _waits(root / "gates" / "far2"))
    _run(page, 2)
    expect(_cell_row(page, 2).locator(".jp-bgjobs-row")).to_have_attribute("data-state", "running")
    dialog = page.locator(".jp-Dialog")
    # "Shut Down All Kernels" asks JupyterLab's question, then names the job.
    page.evaluate("() => { window.jupyterapp.commands.execute('kernelmenu:shutdownAll'); }")
    dialog.get_by_role("button", name="Shut Down All").click()
    expect(dialog).to_contain_text("far2")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    # The Running panel's Shut Down of the notebook's kernel names it too.
    page.evaluate("() => window.jupyterapp.shell.activateById('jp-running-sessions')")
    kernels = page.locator("#jp-running-sessions").get_by_role("region", name="Kernels Section")
    kernel = kernels.locator(".jp-RunningSessions-item.jp-mod-kernel", has_text="cells.ipynb")
    # Its Shut Down button shows while the pointer is over the item, as for a user.
    kernel.locator(".jp-RunningSessions-itemLabel").first.hover()
    kernel.locator(".jp-RunningSessions-itemShutdown").first.click()
    expect(dialog).to_contain_text("far2")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    wait_for_kernel(page)
    # Shut down, keeping the detached job; Restart Kernel starts a kernel again.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:shutdown-kernel'); }")
    dialog.get_by_role("button", name="Shut down, keep detached").click()
    page.wait_for_function(
        "() => !window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel"
    )
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-kernel'); }")
    wait_for_kernel(page)
    expect(pane_row(page, "far2")).to_have_attribute("data-state", "running")
    (root / "gates" / "far2").touch()
    expect(pane_row(page, "far2")).to_have_attribute("data-state", "succeeded")


def test_the_editors_menu_keeps_undo_and_redo_together(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:open', {path: 'tool.py'})")
    editor = page.locator(".jp-FileEditor .cm-content")
    editor.click(button="right")
    labels = page.locator(".lm-Menu .lm-Menu-itemLabel").all_inner_texts()
    assert labels.index("Redo") == labels.index("Undo") + 1, labels
    assert "Run Selection as Background Job…" in labels, labels
    page.keyboard.press("Escape")


def test_the_dialog_takes_a_memory_limit_and_refuses_one_that_is_no_size(page: Any) -> None:
    dialog = _dialog_of_cell_5(page)
    dialog.locator("input[name=name]").fill("limited")
    dialog.locator("input[name=workdir]").fill("")
    dialog.locator("input[name=memory_limit]").fill("lots")
    dialog.get_by_role("button", name="Start").click()
    expect(dialog.locator(".jp-bgjobs-dialog-problem")).to_contain_text(
        'A memory limit is a size such as 8G, 300MB or 1.5GiB, not "lots"'
    )
    dialog.locator("input[name=memory_limit]").fill("2G")
    dialog.get_by_role("button", name="Start").click()
    listed = pane_row(page, "limited")
    expect(listed).to_have_attribute("data-state", "succeeded")
    listed.get_by_role("button", name="Output limited").click()
    panel = page.locator("#jupyter-bgjobs-panel")
    expect(panel.locator(".jp-bgjobs-options")).to_contain_text("memory limit 2.0 GB")
    panel.get_by_role("button", name="← All jobs").click()


def test_the_dialog_takes_checkpoints_retries_and_waits(page: Any) -> None:
    dialog = _dialog_of_cell_5(page)
    dialog.locator("input[name=name]").fill("kept")
    dialog.locator("input[name=workdir]").fill("")
    dialog.locator("input[name=checkpoint]").check()
    dialog.locator("input[name=retries]").fill("two")
    dialog.get_by_role("button", name="Start").click()
    expect(dialog.locator(".jp-bgjobs-dialog-problem")).to_contain_text(
        'Retries is a whole number of times (0 or more), not "two"'
    )
    dialog.locator("input[name=retries]").fill("2")
    dialog.locator("input[name=after]").fill("no such")
    dialog.get_by_role("button", name="Start").click()
    expect(dialog.locator(".jp-bgjobs-dialog-problem")).to_contain_text(
        'Wait for takes the names of jobs (fit,clean) or none, not "no such"'
    )
    dialog.locator("input[name=after]").fill("none")
    dialog.get_by_role("button", name="Start").click()
    listed = pane_row(page, "kept")
    expect(listed).to_have_attribute("data-state", "succeeded")
    listed.get_by_role("button", name="Output kept").click()
    panel = page.locator("#jupyter-bgjobs-panel")
    expect(panel.locator(".jp-bgjobs-options")).to_contain_text(
        "checkpoints · retries 2 · after none"
    )
    panel.get_by_role("button", name="← All jobs").click()
