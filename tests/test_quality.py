"""The code base stays ruff- and mypy-clean; checked with the tests so CI checks it too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "jupyter_bgjobs", "tests", "benchmarks"],
        ["ruff", "format", "--check", "jupyter_bgjobs", "tests", "benchmarks"],
        [sys.executable, "-m", "mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(command: list[str]) -> None:
    if command[0] == "ruff":
        ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
        command = [ruff, *command[1:]]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_lab_extension_is_typed_linted_and_formatted() -> None:
    """tsc (strict), eslint, prettier and stylelint, the JupyterLab template's tools; their
    packages are the ones ``pip install`` fetched to build the extension."""
    jlpm = shutil.which("jlpm") or str(Path(sys.executable).with_name("jlpm"))
    assert (ROOT / "node_modules").is_dir(), "pip install -e . builds the extension first"
    for command in ([jlpm, "run", "tsc", "--noEmit"], [jlpm, "run", "lint:check"]):
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_installed_lab_extension_is_this_one() -> None:
    """``pip install`` put the built extension where JupyterLab finds it, enabled."""
    proc = subprocess.run(
        [sys.executable, "-m", "jupyterlab.labextensions", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    listing = proc.stdout + proc.stderr
    line = next((ln for ln in listing.splitlines() if "jupyter-bgjobs" in ln), "")
    assert "enabled" in line and "OK" in line, listing


def test_state_words_are_written_once() -> None:
    """The extension's state tables are generated from ``_states.py`` (a job's icon is the
    same in the notebook, the widget panel and the IDE), and no other source lists states."""
    import re

    from jupyter_bgjobs._states import STATES, typescript

    assert (ROOT / "src" / "states.ts").read_text(encoding="utf-8") == typescript(), (
        "src/states.ts is stale; write it anew as its docstring in _states.py says"
    )
    # A literal list of two or more end states anywhere else is a second vocabulary.
    listed = re.compile(r"""['"]succeeded['"]\s*[,:)][^`]{0,80}['"](failed|died|cancelled)['"]""")
    elsewhere = [
        str(path.relative_to(ROOT))
        for folder in ("jupyter_bgjobs", "src")
        for path in (ROOT / folder).rglob("*.[pt][ys]")
        if path.name not in ("_states.py", "states.ts")
        and listed.search(path.read_text(encoding="utf-8").replace("\n", " "))
    ]
    assert not elsewhere, f"state words listed outside _states.py: {elsewhere}"
    assert set(STATES) <= set(re.findall(r"'(\w+)'", (ROOT / "src" / "states.ts").read_text()))
