"""The Jobs pane for a working day, in a real JupyterLab in Chromium: rows updated in
place (focus kept, the pointer's row kept where it is), the keyboard reaching every
button, a filter, grouping, Stop all, Clear ended, Remove with undo, the status bar by
keyboard, and no serious or critical axe-core violation in light and dark.

The rows here belong to a process of the test's (``add_job`` rows, records in the
server's job root): ten rows that move all the time, with a Stop each.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labserver import browser, end_sessions, lab_server, wait_for_kernel, write_notebook

pytest.importorskip("playwright")
from playwright.sync_api import expect

TOKEN = "bgjobs-pane-token"
AXE = Path(__file__).parent.parent / "node_modules" / "axe-core" / "axe.min.js"

# Ten rows that move (their progress every 50 ms) until told to end: ``end-N`` ends row N
# as succeeded, ``fail-N`` as failed, ``done`` ends every row still running; each row's
# Stop action ends it as cancelled.
OWNER = """
import os, sys, time
import jupyter_bgjobs as bj
gates = sys.argv[1]
rows = []
def stopper(row):
    return lambda: row.set_state('cancelled')
for i in range(10):
    row = bj.add_job(f'spin{i}', progress_units=100000)
    row.actions['stop'] = stopper(row)
    row.set_state('running')
    rows.append(row)
n = 0
while not os.path.exists(os.path.join(gates, 'done')):
    n += 1
    for i, row in enumerate(rows):
        if row.done:
            continue
        for how in ('end', 'fail'):
            if os.path.exists(os.path.join(gates, f'{how}-{i}')):
                row.set_state('succeeded' if how == 'end' else 'failed')
        if not row.done:
            row.set_progress(n)
    time.sleep(0.05)
for row in rows:
    if not row.done:
        row.set_state('succeeded')
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pane")
    write_notebook(root / "work.ipynb", ["x = 1"])
    (root / "gates").mkdir()
    return root


@pytest.fixture(scope="module")
def jobs_dir(root: Path) -> str:
    folder = Path(os.environ["JUPYTER_BGJOBS_DIR"]) / f"pane-{root.name}"
    folder.mkdir()
    return str(folder)


@pytest.fixture(scope="module")
def page(root: Path, jobs_dir: str) -> Iterator[Any]:
    with lab_server(root, TOKEN, jobs_dir=jobs_dir) as url, browser() as context:
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(f"{url}/lab/tree/work.ipynb?token={TOKEN}")
        wait_for_kernel(pg)
        yield pg
        end_sessions(url, TOKEN)


@pytest.fixture(scope="module")
def owner(root: Path, jobs_dir: str) -> Iterator[Path]:
    gates = root / "gates"
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(gates)],
        env=dict(os.environ, JUPYTER_BGJOBS_DIR=jobs_dir),
    )
    yield gates
    (gates / "done").touch()
    assert proc.wait(60) == 0


@contextlib.contextmanager
def owning(code: str, jobs_dir: str, gate: Path) -> Iterator[None]:
    """A process of the test's runs ``code`` (its rows' records in the server's job root)
    until ``gate`` is touched: at the end of the block, whatever happens in it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=dict(os.environ, JUPYTER_BGJOBS_DIR=jobs_dir)
    )
    try:
        yield
    finally:
        gate.touch()
        assert proc.wait(60) == 0


def _panel(page: Any) -> Any:
    page.evaluate("() => window.jupyterapp.commands.execute('bgjobs:open-panel')")
    panel = page.locator("#jupyter-bgjobs-panel")
    expect(panel).to_be_visible()
    return panel


def _row(panel: Any, name: str) -> Any:
    return panel.locator(
        ".jp-bgjobs-list .jp-bgjobs-row",
        has=panel.page.locator(f".jp-bgjobs-name:text-is('{name}')"),
    ).first


def _progress(row: Any) -> int:
    return int(row.locator(".jp-bgjobs-count").inner_text().split("/")[0])


def test_focus_stays_on_a_button_while_ten_rows_move(page: Any, owner: Path) -> None:
    panel = _panel(page)
    rows = panel.locator(".jp-bgjobs-list .jp-bgjobs-row[data-state=running]")
    expect(rows).to_have_count(10, timeout=60_000)
    stop = _row(panel, "spin5").get_by_role("button", name="Stop spin5")
    stop.focus()
    first = _progress(_row(panel, "spin5"))
    # Many updates of every row later, the same button still has the focus.
    page.wait_for_function(
        "([n]) => { const r = [...document.querySelectorAll('.jp-bgjobs-list .jp-bgjobs-row')]"
        ".find(r => r.querySelector('.jp-bgjobs-name').textContent === 'spin5');"
        " return parseInt(r.querySelector('.jp-bgjobs-count').textContent) > n + 40; }",
        arg=[first],
        timeout=30_000,
    )
    expect(stop).to_be_focused()
    # Tab reaches every row's Stop, in order, while they keep moving.
    panel.locator(".jp-bgjobs-filter").focus()
    seen: list[str] = []
    for _ in range(60):
        page.keyboard.press("Tab")
        label = page.evaluate("() => document.activeElement.getAttribute('aria-label') || ''")
        seen.append(label)
        if all(f"Stop spin{i}" in seen for i in range(10)):
            break
    assert all(f"Stop spin{i}" in seen for i in range(10)), seen


def test_the_pointers_row_stays_put_while_a_row_above_ends(page: Any, owner: Path) -> None:
    panel = _panel(page)
    # Newest first: spin9 is at the top, spin2 below it.
    target = _row(panel, "spin2")
    target.hover()
    before = target.bounding_box()
    (owner / "end-9").touch()
    expect(_row(panel, "spin9")).to_have_attribute("data-state", "succeeded", timeout=30_000)
    assert target.bounding_box() == before
    # What is under the pointer is the same row.
    point = (before["x"] + 5, before["y"] + 5)
    under = page.evaluate(
        "([x, y]) => document.elementFromPoint(x, y).closest('.jp-bgjobs-row').dataset.jobId",
        list(point),
    )
    assert under == target.get_attribute("data-job-id")
    # Once the pointer leaves, the ended row moves to the ended group.
    page.mouse.move(5, 5)
    expect(panel.locator("[data-group=ended]")).to_contain_text("spin9")


def test_filter_group_stop_all_clear_ended_and_undo(page: Any, owner: Path) -> None:
    panel = _panel(page)
    rows = panel.locator(".jp-bgjobs-list .jp-bgjobs-row")
    panel.locator(".jp-bgjobs-filter").fill("spin1")
    expect(rows).to_have_count(1)
    expect(panel.locator(".jp-bgjobs-title")).to_contain_text("hidden by the filter")
    panel.locator(".jp-bgjobs-filter").fill("")
    panel.locator(".jp-bgjobs-state-filter").select_option("ended")
    expect(rows).to_have_count(1)  # spin9, ended by the test before
    panel.locator(".jp-bgjobs-state-filter").select_option("")
    # Grouped by where they came from: the owner is no notebook.
    panel.locator(".jp-bgjobs-group-toggle").check()
    expect(panel.locator("[data-group='notebook:other'] .jp-bgjobs-row")).to_have_count(10)
    panel.locator(".jp-bgjobs-group-toggle").uncheck()
    # Stop all stops what the filter shows, after asking.
    panel.locator(".jp-bgjobs-filter").fill("spin")
    (owner / "fail-8").touch()
    expect(_row(panel, "spin8")).to_have_attribute("data-state", "failed", timeout=30_000)
    panel.locator(".jp-bgjobs-state-filter").select_option("failed")
    expect(rows).to_have_count(1)
    panel.locator(".jp-bgjobs-state-filter").select_option("")
    panel.get_by_role("button", name="Stop all running jobs shown").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Stop 8 running jobs?")
    dialog.get_by_role("button", name="Stop 8").click()
    running = panel.locator(".jp-bgjobs-list .jp-bgjobs-row[data-state=running]")
    expect(running).to_have_count(0, timeout=30_000)
    expect(panel.locator(".jp-bgjobs-row[data-state=cancelled]")).to_have_count(8)
    # Remove, then Undo: the row is back; Remove again, and it is gone for good.
    spin0 = _row(panel, "spin0")
    spin0.get_by_role("button", name="Remove spin0").click()
    expect(_row(panel, "spin0")).to_have_count(0)
    toast = page.locator(".Toastify__toast", has_text="Removed spin0").first
    toast.get_by_role("button", name="Undo").click()
    expect(_row(panel, "spin0")).to_be_visible()
    # Clear ended asks first, then removes every ended row shown.
    panel.get_by_role("button", name="Clear ended jobs shown").click()
    expect(dialog).to_contain_text("Clear 10 ended jobs?")
    dialog.get_by_role("button", name="Clear 10").click()
    expect(rows).to_have_count(0, timeout=30_000)
    page.wait_for_function(
        "() => fetch('/bgjobs/api/jobs', {headers: {Authorization: 'token "
        + TOKEN
        + "'}}).then(r => r.json()).then(b => b.jobs.length === 0)",
        timeout=30_000,
    )


def test_the_status_bar_opens_the_pane_by_keyboard(page: Any, root: Path, jobs_dir: str) -> None:
    gate = root / "gates" / "status-done"
    code = (
        "import os, time, jupyter_bgjobs as bj\n"
        "row = bj.add_job('held', running=True)\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.05)\n"
        "row.set_state('succeeded')\n"
    )
    with owning(code, jobs_dir, gate):
        page.evaluate("() => window.jupyterapp.shell.collapseRight()")
        status = page.locator(".jp-bgjobs-statusbar")
        expect(status).to_contain_text("1 job running", timeout=30_000)
        expect(status).to_have_attribute("role", "button")
        status.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#jupyter-bgjobs-panel")).to_be_visible()


def _violations(page: Any, selector: str) -> list[str]:
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found: list[str] = page.evaluate(
        "async (sel) => { const node = document.querySelector(sel);"
        " if (!node) { return ['nothing matches ' + sel]; }"
        " const r = await axe.run(node, {resultTypes: ['violations']});"
        " return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))"
        ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', ')); }",
        selector,
    )
    return found


def test_no_serious_accessibility_violation_light_and_dark(
    page: Any, root: Path, jobs_dir: str
) -> None:
    assert AXE.is_file(), f"axe-core is installed with the extension's npm packages: {AXE}"
    gate = root / "gates" / "axe-done"
    code = (
        "import os, time, jupyter_bgjobs as bj\n"
        "row = bj.add_job('checked', progress_units=4, actions={'stop': lambda: None})\n"
        "row.set_progress(1)\n"
        "bj.add_job('unsized', running=True)\n"
        "bj.add_job('finished').set_state('failed')\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.05)\n"
    )
    try:
        with owning(code, jobs_dir, gate):
            panel = _panel(page)
            panel.locator(".jp-bgjobs-filter").fill("")
            expect(_row(panel, "checked")).to_contain_text("1/4", timeout=30_000)
            expect(_row(panel, "finished")).to_have_attribute("data-state", "failed")
            for theme in ("JupyterLab Light", "JupyterLab Dark"):
                page.evaluate(
                    "(t) => window.jupyterapp.commands.execute("
                    "'apputils:change-theme', {theme: t})",
                    theme,
                )
                page.wait_for_function(
                    f"() => document.body.dataset.jpThemeName === {json.dumps(theme)}"
                )
                assert _violations(page, "#jupyter-bgjobs-panel") == [], theme
                assert _violations(page, ".jp-bgjobs-statusbar") == [], theme
                # The detail of a row.
                _row(panel, "checked").get_by_role("button", name="Output checked").click()
                expect(panel.locator(".jp-bgjobs-detail")).to_be_visible()
                assert _violations(page, ".jp-bgjobs-detail") == [], theme
                panel.get_by_role("button", name="← All jobs").click()
                # The dialog of Run Cell as Background Job.
                # Not awaited: the command's promise ends with the dialog.
                page.evaluate("() => { window.jupyterapp.commands.execute('bgjobs:run-cell'); }")
                expect(page.locator(".jp-Dialog")).to_be_visible()
                assert _violations(page, ".jp-Dialog-content") == [], theme
                page.keyboard.press("Escape")
                expect(page.locator(".jp-Dialog")).to_have_count(0)
    finally:
        # Whatever the test's end, the theme it changed goes back.
        page.evaluate(
            "() => window.jupyterapp.commands.execute('apputils:change-theme', "
            "{theme: 'JupyterLab Light'})"
        )


def test_jobs_are_in_jupyterlabs_running_panel_and_quick_ends_are_told(
    page: Any, root: Path, jobs_dir: str
) -> None:
    gate = root / "gates" / "running-done"
    code = (
        "import os, time, jupyter_bgjobs as bj\n"
        "made = []\n"
        "stop = {'stop': lambda: made[0].set_state('cancelled')}\n"
        "made.append(bj.add_job('runner', running=True, actions=stop))\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.05)\n"
        # Ended before any page saw it run: its end is told all the same.
        "bj.add_job('quick').set_state('failed')\n"
    )
    with owning(code, jobs_dir, gate):
        panel = _panel(page)
        expect(_row(panel, "runner")).to_have_attribute("data-state", "running", timeout=30_000)
        page.evaluate("() => window.jupyterapp.shell.activateById('jp-running-sessions')")
        sidebar = page.locator("#jp-running-sessions")
        expect(sidebar.get_by_text("Background Jobs", exact=True)).to_be_visible()
        item = sidebar.locator(".jp-RunningSessions-item", has_text="runner")
        expect(item).to_be_visible()
        item.hover()  # its Stop shows under the pointer
        item.locator(".jp-RunningSessions-itemShutdown").click()
        expect(item).to_have_count(0, timeout=30_000)
        expect(_row(panel, "runner")).to_have_attribute("data-state", "cancelled")
        gate.touch()
        toast = page.locator(".Toastify__toast", has_text="Background job quick failed")
        expect(toast.first).to_be_visible(timeout=30_000)


def test_a_cell_run_from_the_menu_again_says_nothing_above_its_row(page: Any) -> None:
    """The extension is loaded once: a second run from the menu prints no "already
    loaded" above the job's row."""
    for name in ("menu_one", "menu_two"):
        page.evaluate(
            "(n) => { window.jupyterapp.commands.execute('bgjobs:run-cell',"
            " {name: n, dialog: false, env: 'none'}); }",
            name,
        )
        expect(_row(_panel(page), name)).to_have_attribute(
            "data-state", "succeeded", timeout=60_000
        )
    output = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-OutputArea")
    expect(output.locator(".jp-bgjobs-cellrow")).to_contain_text("menu_two")
    expect(output).not_to_contain_text("already loaded")


def test_the_dialog_refuses_a_bad_timeout_before_anything_starts(page: Any) -> None:
    page.evaluate("() => { window.jupyterapp.commands.execute('bgjobs:run-cell'); }")
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input[name=name]").fill("from_dialog")
    dialog.locator("input[name=timeout]").fill("abc")
    dialog.get_by_role("button", name="Start").click()
    # Said in the dialog, with what was typed kept for the fix; nothing started.
    expect(dialog.locator(".jp-bgjobs-dialog-problem")).to_contain_text('not "abc"')
    expect(dialog.locator("input[name=timeout]")).to_have_value("abc")
    expect(_row(_panel(page), "from_dialog")).to_have_count(0)
    dialog.locator("input[name=timeout]").fill("60")
    dialog.get_by_role("button", name="Start").click()
    expect(_row(_panel(page), "from_dialog")).to_have_attribute(
        "data-state", "succeeded", timeout=60_000
    )


def test_a_jobs_detail_opens_as_a_tab_of_the_main_area(page: Any) -> None:
    panel = _panel(page)
    row = _row(panel, "from_dialog")  # started by the dialog's test, ended
    row.get_by_role("button", name="Output from_dialog").click()
    panel.get_by_role("button", name="Open in a tab").click()
    tab = page.locator(".jp-MainAreaWidget .jp-bgjobs-tab")
    expect(tab.locator(".jp-bgjobs-detail .jp-bgjobs-name")).to_have_text("from_dialog")
    # Room the side area does not have; no list to go back to.
    assert tab.bounding_box()["width"] > 500
    expect(tab.get_by_role("button", name="← All jobs")).to_be_hidden()
    expect(page.locator(".lm-TabBar-tabLabel", has_text="from_dialog")).to_be_visible()
    panel.get_by_role("button", name="← All jobs").click()


def test_the_panes_keys_move_open_and_go_back(page: Any, owner: Path) -> None:
    panel = _panel(page)
    items = panel.locator(".jp-bgjobs-list [role=listitem]")
    expect(items).not_to_have_count(0)
    # The focused row's place among the rows shown, and their number (rows keep their
    # places while the keyboard is among them, as under the pointer).
    where = """() => { const rows = Array.from(document.querySelectorAll(
        '#jupyter-bgjobs-panel .jp-bgjobs-list [role=listitem]')).filter(r => r.offsetParent);
        return [rows.indexOf(document.activeElement), rows.length]; }"""
    items.first.focus()
    assert page.evaluate(where)[0] == 0
    page.keyboard.press("ArrowDown")
    assert page.evaluate(where)[0] == 1
    page.keyboard.press("End")
    at, count = page.evaluate(where)
    assert at == count - 1
    page.keyboard.press("Home")
    assert page.evaluate(where)[0] == 0
    first = page.evaluate("() => document.activeElement.dataset.jobId")
    page.keyboard.press("Enter")
    detail = panel.locator(".jp-bgjobs-detail")
    expect(detail).to_be_visible()
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    assert page.evaluate("() => document.activeElement.dataset.jobId") == first
    page.keyboard.press("/")
    expect(panel.locator(".jp-bgjobs-filter")).to_be_focused()


RESUMABLE = """
import sys, textwrap
import jupyter_bgjobs as bj
ready, root = sys.argv[1], sys.argv[2]
code = textwrap.dedent(f'''
    import os
    # Load ----
    data = [1, 2, 3]
    # Fit ----
    if not os.path.exists({ready!r}):
        raise RuntimeError("not ready yet")
    total = sum(data)
''')
job = bj.run_cell(
    code, "resumable", env="none", checkpoint=True, detach=True, workdir=root
).wait(120)
assert job.state == "failed", job.reason
"""


def test_resume_on_a_row_goes_on_from_its_checkpoint(page: Any, root: Path, jobs_dir: str) -> None:
    ready = root / "ready"
    subprocess.run(
        # In the server's root: the server resumes only jobs whose folder is inside it.
        [sys.executable, "-c", RESUMABLE, str(ready), str(root)],
        env=dict(os.environ, JUPYTER_BGJOBS_DIR=jobs_dir),
        check=True,
        timeout=180,
    )
    panel = _panel(page)
    failed = panel.locator(
        ".jp-bgjobs-list .jp-bgjobs-row[data-state=failed]",
        has=page.locator(".jp-bgjobs-name:text-is('resumable')"),
    )
    expect(failed).to_have_count(1)
    # Only an end on its way offers Resume: the succeeded rows of the pane do not.
    expect(
        panel.locator(".jp-bgjobs-row[data-state=succeeded] .jp-bgjobs-resume:visible")
    ).to_have_count(0)
    ready.touch()
    # Its notebook is not open: the server resumes it, as a detached job.
    failed.get_by_role("button", name="Resume resumable").click()
    resumed = panel.locator(
        ".jp-bgjobs-list .jp-bgjobs-row[data-state=succeeded]",
        has=page.locator(".jp-bgjobs-name:text-is('resumable')"),
    )
    expect(resumed).to_have_count(1, timeout=120_000)
    resumed.get_by_role("button", name="Output resumable").click()
    detail = panel.locator(".jp-bgjobs-detail")
    expect(detail).to_contain_text("resumed from section Fit")
    panel.get_by_role("button", name="← All jobs").click()


WAITS_AND_SWEEP = """
import os, time
import jupyter_bgjobs as bj
release, done = {release!r}, {done!r}
gate = f"import os, time\\nwhile not os.path.exists({{release!r}}):\\n    time.sleep(0.02)\\n"
bj.run_cell(gate + "df = [1, 2]", "prod", env="none")
bj.run_cell("total = sum(df)", "cons")
sweep = bj.sweep(
    "if k == 2:\\n    raise ValueError('two')\\nsq = k * k", over={{"k": [1, 2, 3]}}, name="sw",
    env="none",
)
sweep.wait(120)
while not os.path.exists(done):
    time.sleep(0.05)
"""


def test_a_waiting_row_and_a_sweeps_row(page: Any, root: Path, jobs_dir: str) -> None:
    release, done = root / "release", root / "waits-done"
    code = WAITS_AND_SWEEP.format(release=str(release), done=str(done))
    with owning(code, jobs_dir, done):
        panel = _panel(page)
        waiting = _row(panel, "cons")
        expect(waiting).to_have_attribute("data-state", "waiting", timeout=60_000)
        expect(waiting.locator(".jp-bgjobs-status")).to_have_text("waiting for prod (df)")
        waiting.get_by_role("button", name="Output cons").click()
        expect(panel.locator(".jp-bgjobs-waits")).to_have_text("Waits for prod (df).")
        panel.get_by_role("button", name="← All jobs").click()
        _row(panel, "prod").get_by_role("button", name="Output prod").click()
        expect(panel.locator(".jp-bgjobs-waits")).to_have_text("Waited on by cons.")
        panel.get_by_role("button", name="← All jobs").click()
        # The sweep: one row of its own, its runs under it.
        sweep = panel.locator(".jp-bgjobs-group[data-group^='sweep:sw-']")
        expect(sweep.locator(".jp-bgjobs-group-title")).to_have_text(
            "sw: 3 runs, 2 done, 1 failed", timeout=120_000
        )
        expect(sweep.locator(".jp-bgjobs-row")).to_have_count(3)
        expect(sweep.get_by_role("button", name="Stop sweep sw")).to_be_hidden()
        release.touch()
        expect(_row(panel, "cons")).to_have_attribute("data-state", "succeeded")


RETRIED = """
import os, sys, time
import jupyter_bgjobs as bj
crashed, release, done = sys.argv[1], sys.argv[2], sys.argv[3]
code = f'''
import os, signal, time
# Load ----
x = 1
# Work ----
if not os.path.exists({crashed!r}):
    open({crashed!r}, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
while not os.path.exists({release!r}):
    time.sleep(0.02)
'''
job = bj.run_cell(code, "retried", env="none", checkpoint=True, retries=2, retry_delay=0)
job.wait(120)
while not os.path.exists(done):
    time.sleep(0.05)
"""


def test_a_retried_jobs_row_says_which_attempt(page: Any, root: Path, jobs_dir: str) -> None:
    crashed, release, done = root / "crashed", root / "release-retry", root / "retry-done"
    proc = subprocess.Popen(
        [sys.executable, "-c", RETRIED, str(crashed), str(release), str(done)],
        env=dict(os.environ, JUPYTER_BGJOBS_DIR=jobs_dir),
    )
    try:
        panel = _panel(page)
        row = _row(panel, "retried")
        expect(row.locator(".jp-bgjobs-status")).to_have_text(
            "attempt 2 of 3 · Work", timeout=60_000
        )
        expect(row).to_have_attribute("data-state", "running")
        release.touch()
        expect(row).to_have_attribute("data-state", "succeeded", timeout=60_000)
        row.get_by_role("button", name="Output retried").click()
        history = panel.locator(".jp-bgjobs-history")
        expect(history).to_contain_text("retry → died (attempt 1: its kernel was killed by SIGKILL")
        panel.get_by_role("button", name="← All jobs").click()
    finally:
        release.touch()
        done.touch()
        assert proc.wait(120) == 0
