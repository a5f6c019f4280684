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


def _ours() -> list[psutil.Process]:
    """Every process started by this test run, orphans included: they inherit our job root."""
    found = []
    for proc in psutil.process_iter():
        try:
            # A server under test may have a job root of its own inside ours.
            root = proc.environ().get("JUPYTER_BGJOBS_DIR") or ""
            if proc.pid != os.getpid() and (root == _ROOT or root.startswith(_ROOT + os.sep)):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _interpreter_helper(p: psutil.Process) -> bool:
    """multiprocessing's resource tracker (started by Dask's LocalCluster) belongs to the
    interpreter: it lives as long as the test process does, by design."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return True


def _left_in_shared_memory() -> list[str]:
    """Shared-memory folders of this run's detached jobs, which have all ended: each goes
    with its job, but one that keeps results its host could not move into the store."""
    from pathlib import Path

    from jupyter_bgjobs._runtime import JOB_SHM_PREFIX, job_shm_holder

    store = Path(_ROOT) / "jobs" / "detached"
    ids = {p.name for p in store.iterdir()} if store.is_dir() else set()
    left = []
    for path in Path("/dev/shm").glob(f"{JOB_SHM_PREFIX}*") if ids else []:
        job_id = path.name[len(JOB_SHM_PREFIX) :].split("-")[0]
        if job_id in ids and "entry" not in (job_shm_holder(str(path)) or {}):
            left.append(str(path))
    return left


@pytest.fixture(autouse=True, scope="module")
def no_leaked_processes() -> Iterator[None]:
    """After each test module: end what the manager owns; then no process we started may be
    left, neither a child nor an orphan whose parent died."""
    yield
    from jupyter_bgjobs._api import manager

    manager.shutdown()
    manager.forget_finished()
    # Processes that are exiting get a bounded time to be reaped; survivors are leaks.
    # (Not waited for: the interpreter's own helpers, which live on by design.)
    ours = {p.pid: p for p in _children() + _ours() if not _interpreter_helper(p)}
    _, alive = psutil.wait_procs(list(ours.values()), timeout=30)
    leaked = []
    for p in alive:
        try:
            leaked.append(f"{p.pid} {' '.join(p.cmdline()[:4])}")
            p.kill()
        except psutil.Error:
            continue
    assert not leaked, f"processes outlived their test module: {leaked}"
    left = _left_in_shared_memory()
    assert not left, f"ended jobs left their shared-memory folders: {left}"


@pytest.fixture(scope="module")
def ip() -> Iterator[Any]:
    """An in-process IPython shell with the extension loaded."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    # One shell serves every module: each starts without the names earlier ones made.
    # (Not shell.reset(): that also drops __main__'s __spec__, which multiprocessing needs.)
    for name in [n for n in shell.user_ns if not n.startswith("_")]:
        if name not in shell.user_ns_hidden:
            del shell.user_ns[name]
    shell.run_line_magic("load_ext", "jupyter_bgjobs")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_bgjobs")
