"""The host of a detached job: a process of its own session that drives the job with the
same driver an attached job has, so the job outlives the notebook kernel that started it.

``python -m jupyter_bgjobs._host FOLDER``: reads ``spec.json`` (the job's spec, the
runner's spec and the token), starts the job's kernel and drives it; the kernel loads the
seed the notebook wrote and writes its results into the folder. The host never loads the
notebook's values or the job's results: it relays. ``state.json`` is kept current as the
job goes; ``results.json`` says where the results are. SIGTERM cancels the job.

The record is the store's; the job is the user's. When the store cannot be written (made
read-only, or full) the job runs on: the host says so once in the job's output log and
writes the record again as soon as it can.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

# How long a job that has ended waits for a read-only store to take its results and final
# state; the host holds them in memory meanwhile.
FINAL_WAIT = 3600.0


def main(folder: Path) -> int:
    from . import _store
    from ._config import configure
    from ._driver import save_kept
    from ._errors import JobSpecError
    from ._job import Job
    from ._manager import manager
    from ._records import RecordWriter, open_log_for_notes
    from ._spec import JobSpec

    data, problem = _store.load_json(folder / "spec.json")
    problem = problem or _store.check_spec(folder, data or {})
    runner = (data or {}).get("runner")
    if data is None or problem or not isinstance(runner, dict):
        why = problem or "no runner spec (written by another version?)"
        print(f"jupyter_bgjobs host: {folder}: {why}; there is nothing to run", flush=True)
        return 1
    try:
        spec = JobSpec.from_json(data)
    except (JobSpecError, TypeError) as exc:
        print(f"jupyter_bgjobs host: {folder}: {exc}; there is nothing to run", flush=True)
        return 1
    configure(pool_size=0)
    job = Job(spec, manager, folder=folder, token=str(data.get("token", "")), detached=True)
    _restore(job, data, folder)
    writer = RecordWriter(job, log=open_log_for_notes(job.log_path))
    job._listeners.append(writer)
    signal.signal(signal.SIGTERM, lambda *_: job.cancel())
    signal.signal(signal.SIGINT, lambda *_: job.cancel())
    try:
        manager.run_here(job, runner)
    finally:
        _remove_seed_folders(data)
    deadline = time.monotonic() + FINAL_WAIT
    # A reader that sees a final state must find the results too: results.json first.
    while not (save_kept(job) and writer.write()):
        if time.monotonic() >= deadline:
            writer.say(f"gave up on writing the job's results and final state to {folder}")
            break
        time.sleep(1.0)  # the store is read-only or full: try again until it is not
    manager.shutdown()
    return 0


def _restore(job: Any, data: dict[str, Any], folder: Path) -> None:
    """What the notebook decided for the job, taken over by its host."""
    from . import _store

    job.shipped = [n for n in data.get("shipped") or [] if isinstance(n, str)]
    job.skipped = [
        dict(s, direction="in") for s in data.get("not_shipped") or [] if isinstance(s, dict)
    ]
    job._awaits = bool(data.get("awaits"))
    job._environ = dict(os.environ)
    job._files = [p for p in data.get("seed_files") or [] if isinstance(p, str)]
    chunks = _store.read_json(folder / "seed.chunks")
    if chunks is not None:
        job._seed_chunks = [c for c in chunks.get("chunks") or [] if isinstance(c, str)]
        try:
            (folder / "seed.chunks").unlink()
        except OSError:
            pass


def _remove_seed_folders(data: dict[str, Any]) -> None:
    """The shared-memory folder the notebook made for the seed goes with the job."""
    for path in data.get("seed_files") or []:
        parent = Path(str(path)).parent
        if parent.name.startswith("bgjobs-job-") and parent.parent == Path("/dev/shm"):
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
