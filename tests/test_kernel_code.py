"""The code a job's kernel gets as source: it loads and works in a bare Python that has no
jupyter_bgjobs, importing only the standard library."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from jupyter_bgjobs._backends.local import runner_boot_code
from jupyter_bgjobs._inside import kernel

PROBE = textwrap.dedent(
    """
    import json, sys
    before = set(sys.modules)
    user_ns = {}  # stands for the kernel's user namespace: the boot adds nothing to it
    exec(open(sys.argv[1]).read(), user_ns)
    runner = sys.modules["_bgjobs_runner"]
    added = sorted({m.split(".")[0] for m in set(sys.modules) - before})
    package = sys.modules["_bgjobs_kernel"]
    report = {
        "added": added,
        "names": [getattr(package, m).__name__ for m in MODULES],
        "same": runner is package.runner,
        "current": runner.CURRENT is None,
        "entries": [callable(getattr(runner, n)) for n in ENTRIES],
        "leaked": sorted(set(user_ns) - {"__builtins__"}),
    }
    print(json.dumps(report))
    spec = {"code": "# One ----\\nx = 1\\ny = x + 1", "token": "t", "results": None}
    runner.run(json.dumps(spec))
    """
)

ENTRIES = ("run", "run_async", "receive", "resend", "report_progress", "report_status")


def test_the_kernel_modules_boot_from_source_with_the_standard_library_only(
    tmp_path: Path,
) -> None:
    boot = tmp_path / "boot.py"
    boot.write_text(runner_boot_code())
    probe = f"MODULES = {kernel.MODULES!r}\nENTRIES = {ENTRIES!r}\n" + PROBE
    # -I: no user site, no PYTHONPATH, no current folder; -S: no site-packages at all.
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(boot)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    first, *events = proc.stdout.splitlines()
    report = json.loads(first)
    stdlib = set(sys.stdlib_module_names)
    assert [m for m in report["added"] if m not in stdlib and not m.startswith("_bgjobs")] == []
    assert report["names"] == [f"_bgjobs_kernel.{m}" for m in kernel.MODULES]
    assert report["same"] and report["current"] and all(report["entries"])
    assert report["leaked"] == []  # the boot code leaves no names behind
    kinds = [json.loads(e)["type"] for e in events]
    assert kinds == ["plan", "stmt", "stmt", "end"]
    end = json.loads(events[-1])
    assert end["status"] == "ok" and end["done"] == 2
    assert json.loads(events[1])["section"] == "One"
