"""Shared fixtures: a private job folder, an in-process IPython shell, leak checks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

# Every job folder of the test run lives under one temporary root.
_ROOT = tempfile.mkdtemp(prefix="bgjobs-tests-")
os.environ["JUPYTER_BGJOBS_DIR"] = _ROOT


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(autouse=True, scope="module")
def no_leaked_processes() -> Iterator[None]:
    """After each test module: end what the manager owns, then no child may be left."""
    yield
    from jupyter_bgjobs._jobs import manager

    manager.shutdown()
    manager.forget_finished()
    # Processes that are exiting get a bounded time to be reaped; survivors are leaks.
    _, alive = psutil.wait_procs(_children(), timeout=10)
    leaked = [f"{p.pid} {' '.join(p.cmdline()[:4])}" for p in alive if p.is_running()]
    for p in alive:
        p.kill()
    assert not leaked, f"child processes outlived their test module: {leaked}"


@pytest.fixture(scope="module")
def ip() -> Iterator[Any]:
    """An in-process IPython shell with the extension loaded."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_bgjobs")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_bgjobs")
