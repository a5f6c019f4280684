"""End to end: notebooks executed by nbclient in a real kernel that starts real job kernels."""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 240) -> nbformat.NotebookNode:
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return nb


def text_of(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_shipped_notebook_runs(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    # On failure, the whole notebook as it ran: the cell before the error says why.
    transcript = "\n".join(
        f"[{c.get('execution_count')}] {c.source}\n{text_of(c)}"
        for c in nb.cells
        if c.cell_type == "code"
    )
    assert not errors, f"{errors[0]['ename']}: {errors[0]['evalue']}\n{transcript}"


def cell(src: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(textwrap.dedent(src).strip())


def test_jobs_of_every_outcome_in_a_real_notebook(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "train.py").write_text("# %% Train\nscore = 0.75\n")
    go = tmp_path / "go"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        cell("%load_ext jupyter_bgjobs"),
        cell("""
            %%bgjob good
            # Prepare ----
            base = 20
            # Compute ----
            answer = base * 2 + 2
            """),
        cell("""
            %%bgjob bad
            ok_before = 1
            raise ValueError("bad input row 7")
            """),
        cell("""
            %%bgjob stopped
            import time
            while True: time.sleep(0.05)
            """),
        cell("""
            %%bgjob slow --timeout 1
            import time
            time.sleep(60)
            """),
        cell(f"""
            %%bgjob killed
            import os, signal, time
            while not os.path.exists({str(go)!r}): time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
            """),
        cell("%bgjob_script train.py"),
        cell(f"""
            from jupyter_bgjobs import get_job
            from pathlib import Path
            get_job('stopped').cancel()
            Path({str(go)!r}).touch()
            states = {{n: get_job(n).wait(120).state
                      for n in ['good', 'bad', 'stopped', 'slow', 'killed', 'train']}}
            print(states)
            """),
        cell("""
            assert states == {'good': 'succeeded', 'bad': 'failed', 'stopped': 'cancelled',
                              'slow': 'timed_out', 'killed': 'died', 'train': 'succeeded'}, states
            assert answer == 42 and base == 20
            assert ok_before == 1  # a failed job merges what it made before its error
            assert train_results.score == 0.75
            assert get_job('good').section == 'Compute'
            assert get_job('bad').error.ename == 'ValueError'
            assert 'SIGKILL' in get_job('killed').reason
            print('all checked')
            """),
        cell("""
            %%bgjob forever
            import time
            while True: time.sleep(0.05)
            """),
    ]
    execute(nb, tmp_path)
    assert "all checked" in text_of(nb.cells[-2])
    status = text_of(nb.cells[1])
    assert "good  succeeded  2/2" in status and "merged answer, base into globals" in status, status
    # The notebook's kernel shut down with `forever` still running, and said so.
    assert "ending 1 running job(s): forever" in capfd.readouterr().err
