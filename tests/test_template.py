"""Warm kernels forked from a template: the same kernel a fresh start makes, with what the
notebook imported already there, and what a job's code imports there before the job
(imported once, in the template; the notebook imports the data libraries meanwhile),
their own random numbers, signals and exit codes as ever, no process left behind (closed
pool, dead owner), a job that finds the pool empty taking the kernel being started, and
a module that starts a thread kept out of the template. Real kernels, a real template
process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

import jupyter_bgjobs as bj
from jupyter_bgjobs._api import manager
from jupyter_bgjobs._backends.pool import KernelPool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork on Linux")

# What a kernel's own state says about how it was made.
_PORTRAIT = textwrap.dedent(
    """
    import os, sys, json
    print(json.dumps({
        "path": sys.path, "argv0": os.path.basename(sys.argv[0]), "cwd": os.getcwd(),
        "executable": sys.executable, "shell": type(get_ipython()).__name__,
        "main": sys.modules["__main__"].__name__, "runner": "_bgjobs_runner" in sys.modules,
        "env": {k: v for k, v in os.environ.items() if k != "JPY_PARENT_PID"},
        "pandas": "pandas" in sys.modules, "parent": os.getppid(),
    }))
    """
)


def printed(kernel: Any, code: str) -> str:
    """What ``code`` prints in ``kernel``."""
    lines: list[str] = []

    def keep(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            lines.append(msg["content"]["text"])

    reply = kernel.kc.execute_interactive(code, timeout=60, output_hook=keep)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(lines)


def portrait(kernel: Any) -> dict[str, Any]:
    import json

    return json.loads(printed(kernel, _PORTRAIT))  # type: ignore[no-any-return]


def test_a_forked_kernel_is_the_kernel_a_fresh_start_makes() -> None:
    import pandas  # noqa: F401  (the notebook has it: the template imports it too)

    pools = {fork: KernelPool(1, fork=fork) for fork in (True, False)}
    try:
        for pool in pools.values():
            pool.refill()
        for pool in pools.values():
            assert pool.wait_warm(120)
        kernels = {f: pools[f].acquire() for f in (True, False)}
        forked, fresh = (portrait(kernels[f]) for f in (True, False))
        template = psutil.Process(forked["parent"]).cmdline()
        for kernel in kernels.values():
            kernel.shutdown()
    finally:
        for pool in pools.values():
            pool.close()
    assert "bgjobs-template" in template  # it did come from the template
    assert fresh["parent"] == os.getpid()
    for key in ("path", "argv0", "cwd", "executable", "shell", "main", "runner", "env"):
        assert forked[key] == fresh[key], key
    assert forked["pandas"] and fresh["pandas"]


def test_kernels_forked_from_one_template_draw_their_own_random_numbers() -> None:
    import numpy  # noqa: F401

    pool = KernelPool(2)
    try:
        pool.refill()
        assert pool.wait_warm(120)
        draws = []
        for kernel in (pool.acquire(), pool.acquire()):
            draws.append(
                printed(kernel, "import random, numpy; print(random.random(), numpy.random.rand())")
            )
            kernel.shutdown()
    finally:
        pool.close()
    first, second = (d.split() for d in draws)
    assert first[0] != second[0] and first[1] != second[1], draws


def test_jobs_in_forked_kernels_stop_and_die_as_in_any_kernel(ip: Any) -> None:
    bj.configure(pool_size=1, pool_fork=True)
    assert manager.pool().wait_warm(120)
    ip.run_cell_magic(
        "bgjob", "forked_sleeper", "print('working', flush=True)\nimport time\ntime.sleep(120)"
    )
    job = bj.get_job("forked_sleeper")
    with job._cond:
        assert job._cond.wait_for(lambda: "working" in job.output, 60)
    job.cancel()
    assert job.wait(60).state == "cancelled", job.report

    assert manager.pool().wait_warm(120)
    ip.run_cell_magic("bgjob", "forked_killed", "import os, signal\nos.kill(os.getpid(), 9)")
    job = bj.get_job("forked_killed").wait(60)
    assert job.state == "died", job.report
    # The template reaped it and told how it ended.
    assert "SIGKILL" in job.reason, job.reason


def test_the_template_ends_with_its_last_kernel_and_with_its_owner(tmp_path: Path) -> None:
    pool = KernelPool(1)
    pool.refill()
    assert pool.wait_warm(120)
    kernel = pool.acquire()
    template = psutil.Process(psutil.Process(kernel.pid).ppid())
    pool.close()
    # Closed, it lingers for the kernel it forked, which may be running a job.
    assert template.is_running() and kernel.alive()
    kernel.shutdown()
    template.wait(30)

    # An owner killed outright: its template ends the kernels it forked, and itself.
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from jupyter_bgjobs._backends.pool import KernelPool
            pool = KernelPool(1)
            pool.refill()
            assert pool.wait_warm(120)
            print(pool.acquire().pid, flush=True)
            sys.stdin.read()
            """
        )
    )
    owner = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        kernel_pid = int(owner.stdout.readline())
        orphan = psutil.Process(kernel_pid)
        template = psutil.Process(orphan.ppid())
    finally:
        owner.kill()
        owner.wait()
    _, alive = psutil.wait_procs([orphan, template], timeout=30)
    assert not alive, alive


def test_a_module_that_starts_a_thread_stays_out_of_the_template(tmp_path: Path) -> None:
    (tmp_path / "threadmaker.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    )
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tmp_path)
    pool = KernelPool(1)
    try:
        pool.refill()
        assert pool.wait_warm(120)
        first = pool.acquire()
        old_template = psutil.Process(psutil.Process(first.pid).ppid())
        pool.follow(["threadmaker"])
        assert pool.wait_warm(120)
        forked_before = pool.acquire()  # forked before: it imports the module itself
        # A fork of a process with two threads would copy one: the pool makes a new
        # template without the module, and its kernels import it themselves.
        assert pool.wait_warm(120)
        for kernel in (forked_before, pool.acquire()):
            had, parent = printed(
                kernel, "import sys, os; print('threadmaker' in sys.modules, os.getppid())"
            ).split()
            assert had == "True"
            kernel.shutdown()
        new_template = psutil.Process(int(parent))
        assert "bgjobs-template" in new_template.cmdline()
        assert new_template.pid != old_template.pid
        first.shutdown()
        old_template.wait(30)  # closed once spoiled, it ended with its last kernel
    finally:
        pool.close()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def test_pool_fork_off_starts_every_kernel_anew(ip: Any) -> None:
    bj.configure(pool_size=1, pool_fork=False)
    try:
        assert manager.pool().wait_warm(120)
        ip.run_cell_magic("bgjob", "unforked", "import os\nparent = os.getppid()")
        job = bj.get_job("unforked").wait(60)
        assert job.state == "succeeded", job.report
        assert ip.user_ns["parent"] == os.getpid()
    finally:
        bj.configure(pool_fork=True)


def test_a_job_s_kernel_arrives_with_what_its_code_imports(ip: Any, monkeypatch: Any) -> None:
    # The notebook has imported nothing heavy (as a notebook opened anew): its pool's
    # kernels have no numpy. A job whose code imports numpy gets a kernel forked after the
    # template imported it, and so does the job after it; neither imports it itself.
    from jupyter_bgjobs._backends import pool as pool_module

    monkeypatch.setattr(pool_module, "heavy_imports", list)
    bj.configure(pool_size=1, pool_fork=True)
    try:
        pool = manager.pool()
        assert pool.wait_warm(120)
        (before,) = pool._idle
        assert "numpy" not in before.imported
        before_process = psutil.Process(before.pid)
        probe = "import sys\nhad = ('numpy' in sys.modules, 'cloudpickle' in sys.modules)\n"
        ip.run_cell_magic("bgjob", "imports_numpy --env none", probe + "import numpy as np")
        first = bj.get_job("imports_numpy").wait(120)
        assert first.state == "succeeded", first.report
        assert ip.user_ns["had"] == (True, True)  # the runner's pickler came warm too
        assert ip.user_ns["np"] is sys.modules["numpy"]
        # The idle kernel that lacked it made way; none is left running.
        _, alive = psutil.wait_procs([before_process], timeout=30)
        assert not alive
        ip.run_cell_magic(
            "bgjob", "after_it --env none", "import sys\nhad = 'numpy' in sys.modules"
        )
        assert bj.get_job("after_it").wait(120).state == "succeeded"
        assert ip.user_ns["had"] is True
    finally:
        bj.configure(pool_size=0)
        bj.configure(pool_size=2)


def test_a_job_that_finds_the_pool_empty_takes_the_kernel_it_is_starting() -> None:
    pool = KernelPool(1)
    kernels = []
    try:
        pool.refill()
        assert pool.wait_warm(120)
        kernels.append(pool.acquire())  # the pool starts the next one
        with pool._lock:
            assert pool._fillers and not pool._idle
        kernels.append(pool.acquire())  # waits for that one, starts no other
        with pool._lock:
            assert pool._fillers  # starting the one for the next job
        assert len({k.pid for k in kernels}) == 2
        assert all(k.alive() for k in kernels)
        assert "1" == printed(kernels[1], "print(1)").strip()
    finally:
        for kernel in kernels:
            kernel.shutdown()
        pool.close()


def test_a_job_s_imports_are_read_from_its_code_not_run() -> None:
    from jupyter_bgjobs._backends.ahead import code_imports

    code = textwrap.dedent(
        """
        import numpy as np, json
        from pandas import DataFrame
        from . import sibling
        import notebook_helpers_that_do_not_exist
        if True:
            import pickle
        def later():
            import csv
        class Later:
            import sqlite3
        """
    )
    assert code_imports(code) == ["numpy", "json", "pandas", "pickle"]
    assert code_imports("import (") == []


def test_the_notebook_imports_ahead_the_data_libraries_a_job_brings(tmp_path: Path) -> None:
    # A process of its own: this one has numpy already. Only data libraries are imported
    # ahead (pyplot hooks into the shell as it imports: it waits for the results), and a
    # job without notification targets does not import Apprise.
    script = textwrap.dedent(
        """
        import sys, threading
        from jupyter_bgjobs._backends.ahead import import_ahead
        from jupyter_bgjobs._notify import check_targets
        assert check_targets("notify", []) == []
        import_ahead(["numpy", "matplotlib.pyplot", "json"])
        for t in threading.enumerate():
            if t.name == "bgjobs-ahead":
                t.join(60)
        print("numpy" in sys.modules, "matplotlib.pyplot" in sys.modules,
              "apprise" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["True", "False", "False"], out.stderr
