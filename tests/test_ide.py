"""The IDE's side, end to end: the JupyterLab extension in a real JupyterLab, driven by
Playwright in Debian's headless Chromium, over the real server extension and job store.

A user's path: run a cell as a background job from its context menu through the dialog,
run a ``.py`` file from the file browser, see the jobs of two notebooks and of
``bgjobs run`` in one panel, reload the page and find the same rows, restart a kernel
whose job runs (warned first; the job then ended, with the reason). Screenshots of the
panel, the dialog and the status bar, light and dark, are saved under ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labserver import (
    ARTIFACTS,
    DOCS,
    browser,
    end_sessions,
    lab_server,
    skip_without_chromium,
    wait_for_kernel,
    write_notebook,
)

skip_without_chromium()
playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

TOKEN = "bgjobs-ide-token"
GATE = "gate"
# Each listed row as id:state:name.
ROWS_JS = (
    "rows => rows.map(r => r.dataset.jobId + ':' + r.dataset.state + ':' + "
    "r.querySelector('.jp-bgjobs-name').textContent)"
)  # a file the tests create to let a waiting job finish


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ide")
    write_notebook(
        root / "first.ipynb",
        [
            "base = 20",
            "import pandas as pd\ntable = pd.DataFrame({'fold': [1, 2], 'score': [0.8, 0.9]})\n"
            "doubled = base * 2\nprint('fitting', doubled)\ntable",
            "print('doubled is', doubled)",
        ],
    )
    write_notebook(
        root / "second.ipynb",
        [
            "%load_ext jupyter_bgjobs",
            f"%%bgjob waiter\nimport os, time\nwhile not os.path.exists({str(root / GATE)!r}):\n"
            "    time.sleep(0.1)\nwaited = True",
        ],
    )
    (root / "script.py").write_text("total = sum(range(10))\nprint('script total', total)\n")
    (root / "cli.py").write_text("print('from the command line')\n")
    return root


@pytest.fixture(scope="module")
def jobs_dir(root: Path) -> str:
    """This server's own job root (inside the test run's, so leak checks see it)."""
    folder = Path(os.environ["JUPYTER_BGJOBS_DIR"]) / f"ide-{root.name}"
    folder.mkdir()
    return str(folder)


@pytest.fixture(scope="module")
def lab(root: Path, jobs_dir: str) -> Iterator[str]:
    with lab_server(root, TOKEN, jobs_dir=jobs_dir) as url:
        yield url


@pytest.fixture(scope="module")
def page(lab: str) -> Iterator[Any]:
    with browser() as context:
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        dialogs: list[str] = []
        pg.on("dialog", lambda d: (dialogs.append(d.type), d.accept()))
        pg.dialogs_seen = dialogs  # type: ignore[attr-defined]
        pg.goto(f"{lab}/lab/tree/first.ipynb?token={TOKEN}")
        wait_for_kernel(pg)
        yield pg
        end_sessions(lab, TOKEN)


def _run_all(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def _panel(page: Any) -> Any:
    page.evaluate("() => window.jupyterapp.commands.execute('bgjobs:open-panel')")
    panel = page.locator("#jupyter-bgjobs-panel")
    expect(panel).to_be_visible()
    return panel


def _row(scope: Any, name: str) -> Any:
    return scope.locator(
        ".jp-bgjobs-row", has=scope.page.locator(f".jp-bgjobs-name:text-is('{name}')")
    ).first


def _shot(target: Any, name: str) -> None:
    # Toasts of ended jobs would cover what the picture is of (ends are told together a
    # moment after they happen: dismissed until none is left).
    target.page.wait_for_function(
        "() => { window.jupyterapp.commands.execute('apputils:dismiss-notification');"
        " return document.querySelectorAll('.Toastify__toast').length === 0; }",
        polling=200,
        timeout=30_000,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    target.screenshot(path=str(path))
    assert path.stat().st_size > 1000
    if os.environ.get("BGJOBS_UPDATE_SCREENSHOT"):
        shutil.copy(path, DOCS / name)


def test_the_api_refuses_a_browser_without_the_token(lab: str) -> None:
    with browser() as context:
        pg = context.new_page()
        response = pg.request.get(f"{lab}/bgjobs/api/jobs")
        assert response.status == 403
        assert "token" not in response.text()


def test_a_cell_runs_from_its_context_menu_through_the_dialog(page: Any) -> None:
    page.evaluate(
        """() => {
        const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = 0;
        return window.jupyterapp.commands.execute('notebook:run-cell');
    }"""
    )
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    cell.locator(".cm-content").click()
    cell.locator(".jp-InputArea").click(button="right")
    page.locator(".lm-Menu-item", has_text="Run Cell as Background Job").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Run Cell as Background Job")
    dialog.locator("input[name=name]").fill("fit")
    dialog.locator("select[name=env]").select_option("auto")
    dialog.locator("select[name=results]").select_option("globals")
    _shot(dialog.locator(".jp-Dialog-content"), "ide-dialog-light.png")
    dialog.get_by_role("button", name="Start").click()

    # The row under the cell is the extension's, read from the store.
    row = cell.locator(".jp-bgjobs-cellrow .jp-bgjobs-row")
    expect(row).to_have_attribute("data-state", "succeeded", timeout=120_000)
    expect(row).to_contain_text("fit")
    # JupyterLab's notification told of the end, with "Show output";
    # it closes itself after 8 s, so it is read before anything else is waited for.
    toast = page.locator(".Toastify__toast", has_text="Background job fit succeeded").first
    expect(toast).to_be_visible(timeout=30_000)
    toast.get_by_role("button", name="Show output").click()
    panel = page.locator("#jupyter-bgjobs-panel")
    detail = panel.locator(".jp-bgjobs-detail")
    expect(detail).to_be_visible()
    # The output as JupyterLab renders it: the printed line and the DataFrame's table.
    expect(detail.locator(".jp-OutputArea")).to_contain_text("fitting 40")
    expect(detail.locator(".jp-OutputArea table")).to_contain_text("score")
    # The results came back: the next cell reads them.
    page.evaluate(
        """() => {
        const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = 2;
        return window.jupyterapp.commands.execute('notebook:run-cell');
    }"""
    )
    expect(page.locator(".jp-Notebook .jp-CodeCell").nth(2)).to_contain_text("doubled is 40")
    # The merge report, under the job's cell, read from the store.
    expect(cell.locator(".jp-bgjobs-report")).to_contain_text("merged", timeout=30_000)
    expect(cell.locator(".jp-bgjobs-report")).to_contain_text("doubled")
    # The detail opened from the notification shows the same report.
    expect(detail.locator(".jp-bgjobs-report")).to_contain_text("merged")
    # And the job's story: each transition, in order.
    story = detail.get_by_role("list", name="History").locator("li")
    expect(story).to_have_count(4)
    expect(story.nth(0)).to_contain_text("submit → pending")
    expect(story.nth(3)).to_contain_text("succeed → succeeded")
    detail.get_by_role("button", name="Full log").click()
    log = detail.locator(".jp-bgjobs-log")
    expect(log).to_contain_text("fitting 40")
    expect(log).not_to_contain_text("No log")
    detail.get_by_role("button", name="← All jobs").click()


def test_a_py_file_runs_from_the_file_browser(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:activate')")
    item = page.locator(".jp-DirListing-item", has_text="script.py")
    item.click(button="right")
    page.locator(".lm-Menu-item", has_text="Run as Background Job").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog.locator("input[name=name]")).to_have_value("script")
    dialog.get_by_role("button", name="Start").click()
    row = _row(_panel(page), "script")
    expect(row).to_have_attribute("data-state", "succeeded", timeout=120_000)


def test_the_commands_are_in_the_menus_palette_toolbar_and_a_shortcut(page: Any) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    expect(page.locator(".lm-Menu-item", has_text="Run Cell as Background Job")).to_be_visible()
    expect(page.locator(".lm-Menu-item", has_text="Run as Background Job")).to_be_visible()
    page.keyboard.press("Escape")
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:activate-command-palette')")
    page.keyboard.type("Background Job")
    palette = page.locator(".lm-CommandPalette-content")
    expect(palette).to_contain_text("Run Selection as Background Job")
    expect(palette).to_contain_text("Show Background Jobs")
    page.keyboard.press("Escape")
    # The notebook's active cell has the button in its toolbar, and the shortcut opens
    # the dialog from command mode.
    page.locator(".jp-NotebookPanel:visible .jp-CodeCell").first.locator(".jp-InputPrompt").click()
    toolbar = page.locator(".jp-NotebookPanel:visible .jp-cell-toolbar")
    expect(toolbar.locator("[data-command='bgjobs:run-cell']").first).to_be_attached()
    page.keyboard.press("Control+Alt+Enter")
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Run Cell as Background Job")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)


def test_a_selection_runs_on_the_server_and_stop_ends_it(page: Any) -> None:
    page.evaluate(
        "() => window.jupyterapp.commands.execute('docmanager:open', {path: 'script.py'})"
    )
    page.locator(".jp-FileEditor .cm-content").click()
    page.keyboard.press("Control+a")
    page.locator(".jp-FileEditor .cm-content").click(button="right")
    page.locator(".lm-Menu-item", has_text="Run Selection as Background Job").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input[name=name]").fill("selected")
    dialog.get_by_role("button", name="Start").click()
    panel = _panel(page)
    expect(_row(panel, "selected")).to_have_attribute("data-state", "succeeded", timeout=120_000)
    # Scripted, no dialog: a long job, stopped from its row.
    page.evaluate(
        """() => { window.jupyterapp.commands.execute('bgjobs:run-selection',
            {name: 'sleepy', code: 'import time\\ntime.sleep(600)'}); }"""
    )
    sleepy = _row(panel, "sleepy")
    expect(sleepy).to_have_attribute("data-state", "running", timeout=120_000)
    sleepy.get_by_role("button", name="Stop").click()
    expect(sleepy).to_have_attribute("data-state", "cancelled", timeout=60_000)
    # A start the magic refuses says why, in one line, where JupyterLab shows problems.
    page.evaluate(
        """() => { window.jupyterapp.commands.execute('bgjobs:run-file',
            {path: 'script.py', timeout: 'soon'}); }"""
    )
    refused = page.locator(".Toastify__toast", has_text="The job did not start").first
    expect(refused).to_contain_text("timeout", timeout=60_000)
    page.evaluate(
        """() => { for (const w of Array.from(window.jupyterapp.shell.widgets('main'))) {
            if (w.context?.path === 'script.py') { w.close(); } } }"""
    )


def test_the_panel_lists_jobs_of_two_notebooks_and_the_command_line(
    page: Any, root: Path, jobs_dir: str
) -> None:
    subprocess.run(
        [sys.executable, "-m", "jupyter_bgjobs._cli", "run", str(root / "cli.py"), "--name", "cli"],
        check=True,
        capture_output=True,
        timeout=120,
        env=dict(os.environ, JUPYTER_BGJOBS_DIR=jobs_dir),
    )
    page.evaluate(
        "() => window.jupyterapp.commands.execute('docmanager:open', {path: 'second.ipynb'})"
    )
    wait_for_kernel(page)
    _run_all(page)
    panel = _panel(page)
    waiter = _row(panel, "waiter")
    expect(waiter).to_have_attribute("data-state", "running", timeout=120_000)
    expect(waiter).to_contain_text("second.ipynb")
    expect(_row(panel, "fit")).to_contain_text("first.ipynb")
    expect(_row(panel, "cli")).to_be_visible(timeout=60_000)
    # Rerun: the command-line job again, started by the server.
    _row(panel, "cli").get_by_role("button", name="Rerun").click()
    clis = panel.locator(".jp-bgjobs-list .jp-bgjobs-row[data-state=succeeded]", has_text="cli")
    expect(clis).to_have_count(2, timeout=120_000)
    # Another job's detail after the first one's: its own output.
    _row(panel, "cli").get_by_role("button", name="Output").click()
    expect(panel.locator(".jp-bgjobs-detail .jp-OutputArea")).to_contain_text(
        "from the command line", timeout=30_000
    )
    panel.get_by_role("button", name="← All jobs").click()
    expect(panel.locator("[data-group=running]")).to_contain_text("waiter")
    expect(panel.locator("[data-group=ended]")).to_contain_text("fit")
    # The status bar counts the running job; a click opens the panel.
    status = page.locator(".jp-bgjobs-statusbar")
    expect(status).to_contain_text("1 job running")
    _shot(status, "ide-status-light.png")
    # The elapsed clock ticks with no event from the server.
    clock = waiter.locator(".jp-bgjobs-clock")
    first = clock.inner_text()
    expect(clock).not_to_have_text(first, timeout=5_000)
    # At the side area's default width every row fits: nothing runs out sideways.
    overflow = panel.evaluate(
        "p => Array.from(p.querySelectorAll('.jp-bgjobs-row *'))"
        ".filter(n => n.getBoundingClientRect().right > p.getBoundingClientRect().right + 1)"
        ".map(n => n.className)"
    )
    assert overflow == [], overflow
    _shot(panel, "ide-panel-light.png")


def test_reloading_the_page_shows_the_same_live_rows(page: Any, lab: str) -> None:
    before = sorted(
        page.locator("#jupyter-bgjobs-panel .jp-bgjobs-list .jp-bgjobs-row").evaluate_all(ROWS_JS)
    )
    # Saved, as autosave would: JupyterLab's own unsaved-changes warning is then silent,
    # and the one left is ours.
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save-all')")
    expect(page.locator(".jp-mod-dirty")).to_have_count(0)
    page.reload()
    # A job of this page runs: the browser was asked to warn before leaving.
    assert "beforeunload" in page.dialogs_seen
    wait_for_kernel(page)
    panel = _panel(page)
    expect(_row(panel, "waiter")).to_have_attribute("data-state", "running")
    after = sorted(panel.locator(".jp-bgjobs-list .jp-bgjobs-row").evaluate_all(ROWS_JS))
    assert after == before, (before, after)
    # The rows under the cells are the store's, never a missing widget.
    body = page.locator(".jp-NotebookPanel:visible")
    expect(body.locator(".jp-bgjobs-cellrow")).to_contain_text("waiter")
    assert "Error displaying widget" not in body.inner_text()


def test_restarting_a_kernel_warns_and_its_job_ends_with_the_reason(page: Any) -> None:
    # Not awaited: the command ends when its dialog is answered.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-kernel'); }")
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("waiter")
    expect(dialog).to_contain_text("will end")
    dialog.get_by_role("button", name="Restart").click()
    panel = _panel(page)
    waiter = _row(panel, "waiter")
    expect(waiter).not_to_have_attribute("data-state", "running", timeout=120_000)
    expect(waiter).to_contain_text("kernel")
    expect(page.locator(".jp-bgjobs-statusbar")).to_be_hidden()


def test_shutting_down_a_kernel_warns_first_and_cancel_keeps_it(page: Any) -> None:
    wait_for_kernel(page)
    page.evaluate(
        """() => { window.jupyterapp.commands.execute('bgjobs:run-cell',
            {name: 'lasting', code: 'import time\\ntime.sleep(600)', env: 'none'}); }"""
    )
    panel = _panel(page)
    lasting = _row(panel, "lasting")
    expect(lasting).to_have_attribute("data-state", "running", timeout=120_000)
    shut = "() => { window.jupyterapp.commands.execute('notebook:shutdown-kernel'); }"
    page.evaluate(shut)
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("lasting")
    expect(dialog).to_contain_text("will end")
    dialog.get_by_role("button", name="Cancel").click()
    # Cancelled: the kernel and its job go on.
    expect(dialog).to_have_count(0)
    expect(lasting).to_have_attribute("data-state", "running")
    assert page.evaluate(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status"
    ) in ("idle", "busy")
    page.evaluate(shut)
    dialog.get_by_role("button", name="Shut down").click()
    expect(lasting).not_to_have_attribute("data-state", "running", timeout=120_000)
    expect(lasting).to_contain_text("kernel")


def test_dark_theme_screenshots_and_contrast(page: Any) -> None:
    panel = _panel(page)
    for theme, suffix in (("JupyterLab Light", "light"), ("JupyterLab Dark", "dark")):
        page.evaluate(
            f"() => window.jupyterapp.commands.execute('apputils:change-theme', "
            f"{{theme: {json.dumps(theme)}}})"
        )
        page.wait_for_function(f"() => document.body.dataset.jpThemeName === {json.dumps(theme)}")
        ratios = page.evaluate(CONTRAST)
        assert ratios and min(r for _, r in ratios) >= 4.5, (theme, ratios)
        _shot(panel, f"ide-panel-ended-{suffix}.png")
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', "
        "{theme: 'JupyterLab Light'})"
    )


# The WCAG contrast ratio of each row text against the panel's background.
CONTRAST = """() => {
  const rgb = c => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = c => {
    const [r, g, b] = rgb(c).map(v => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const panel = document.querySelector('#jupyter-bgjobs-panel');
  const bg = getComputedStyle(panel).backgroundColor;
  const sel = '.jp-bgjobs-name, .jp-bgjobs-statename, .jp-bgjobs-row-meta, .jp-bgjobs-clock';
  return Array.from(panel.querySelectorAll(sel)).map(node => {
    const a = lum(getComputedStyle(node).color), b = lum(bg);
    return [node.className, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
  });
}"""


def test_calls_and_progress_rows_are_rows_of_the_pane(page: Any, root: Path, jobs_dir: str) -> None:
    """A progress row (``add_job``) and a ``bg()`` call of another process are rows of the
    pane as jobs are: the row shows its progress; Stop only where its owner offers it; no
    Rerun for what the IDE cannot start again."""
    gate = root / "rows.gate"
    code = (
        "import os, time, jupyter_bgjobs as bj\n"
        "row = bj.add_job('download', progress_units=4)\n"
        "row.set_status('one of four')\n"
        "row.set_progress(1)\n"
        "bj.bg_call(sum, ([1, 2],), name='summed').wait(60)\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.05)\n"
        "row.set_state('succeeded')\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code], env=dict(os.environ, JUPYTER_BGJOBS_DIR=jobs_dir)
    )
    try:
        panel = _panel(page)
        download = _row(panel, "download")
        expect(download).to_have_attribute("data-state", "running", timeout=60_000)
        expect(download).to_contain_text("1/4")
        expect(download.get_by_role("button", name="Stop")).to_have_count(0)
        summed = _row(panel, "summed")
        expect(summed).to_have_attribute("data-state", "succeeded", timeout=60_000)
        expect(summed.get_by_role("button", name="Rerun")).to_have_count(0)
        expect(summed.get_by_role("button", name="Remove")).to_be_visible()
    finally:
        gate.touch()
        assert owner.wait(60) == 0
    expect(download).to_have_attribute("data-state", "succeeded", timeout=60_000)
