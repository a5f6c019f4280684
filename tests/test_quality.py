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
