"""The host of a detached job: a process of its own session that drives the job with the
same driver an attached job has, so the job outlives the notebook kernel that started it.

``python -m jupyter_bgjobs._host FOLDER``: reads ``spec.json`` (the job's spec, the
runner's spec and the token), starts the job's kernel and drives it; the kernel loads the
seed the notebook wrote and writes its results into the folder. The host never loads the
notebook's values or the job's results: it relays. ``state.json`` is kept current as the
job goes; ``results.json`` says where the results are. SIGTERM cancels the job.

From its start the host holds the seed and the job's shared-memory folder (the notebook
hands them over): it removes the seed once the job's kernel has loaded it, and the folder
once the job has ended; a folder whose host was killed is swept by the next process that
makes one of its own.

The record is the store's; the job is the user's. When the store cannot be written (made
read-only, or full) the job runs on: the host says so once in the job's output log and
writes the record again as soon as it can.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import BgJobError
from ._notify import TARGETS_ENV, finish_sending

if TYPE_CHECKING:
    from ._job import Run

# How long a job that has ended waits for a read-only store to take its results and final
# state; the host holds them in memory meanwhile.
FINAL_WAIT = 3600.0


def _targets(text: str) -> list[str]:
    try:
        found = json.loads(text) if text else []
    except ValueError:
        return []
    return [u for u in found if isinstance(u, str)] if isinstance(found, list) else []


def main(folder: Path) -> int:
    from . import _store
    from ._backends.providers import provider_for
    from ._config import configure
    from ._errors import JobSpecError
    from ._job import Run
    from ._manager import manager
    from ._results import save_kept
    from ._spec import JobSpec
    from ._state_record import RecordWriter, open_log_for_notes

    # Where the job's end is told: secrets, handed over in the environment; out of it at
    # once, so the job's kernel (and what it starts) never sees them.
    targets = _targets(os.environ.pop(TARGETS_ENV, ""))
    data, problem = _store.load_json(folder / "spec.json")
    problem = problem or _store.check_spec(folder, data or {})
    runner = (data or {}).get("runner")
    if data is None or problem or not isinstance(runner, dict):
        why = problem or "no runner spec (written by another version?)"
        print(f"jupyter_bgjobs host: {folder}: {why}; there is nothing to run", flush=True)
        return 1
    try:
        code = _store.read_code(folder, data)
        if code is None:
            raise JobSpecError(f"no {_store.CODE_FILE}")
        data["code"] = runner["code"] = code
        spec = JobSpec.from_json(data)
        spec.notify = targets
    except (JobSpecError, TypeError, OSError) as exc:
        print(f"jupyter_bgjobs host: {folder}: {exc}; there is nothing to run", flush=True)
        return 1
    configure(pool_size=0)
    run = Run(spec, manager, folder=folder, token=str(data.get("token", "")), detached=True)
    run.provider = provider_for(spec, manager)
    job = run.job
    _restore(run, data, folder)
    run.waits = _waits_of(data.get("waits"))
    job.waits_for = [w.words() for w in run.waits]
    job.waits_for_ids = [w.job.id for w in run.waits]
    writer = RecordWriter(job, log=open_log_for_notes(job.log_path))
    run.listeners.append(writer)
    run.writer = writer
    signal.signal(signal.SIGTERM, lambda *_: job.cancel())
    signal.signal(signal.SIGINT, lambda *_: job.cancel())
    ended = threading.Event()
    gone = threading.Event()
    threading.Thread(
        target=_watch_folder, args=(folder, run, ended, gone), name="bgjobs-host", daemon=True
    ).start()
    try:
        manager.run_here(run, runner)
        deadline = time.monotonic() + FINAL_WAIT
        # A reader that sees a final state must find the results too: results.json first.
        while not gone.is_set() and not (save_kept(run) and writer.write()):
            if time.monotonic() >= deadline:
                writer.say(f"gave up on writing the job's results and final state to {folder}")
                break
            # The store is read-only or full: try again until it is not, or until the
            # job's folder is gone (removed, its temp folder cleaned): nobody is left to
            # read what it would say.
            gone.wait(1.0)
        if not gone.is_set():
            _persist_results(run, writer)
    finally:
        ended.set()
        if run.shm_dir:
            shutil.rmtree(run.shm_dir, ignore_errors=True)
        manager.shutdown()
        finish_sending()
    return 0


def _watch_folder(folder: Path, run: Run, ended: threading.Event, gone: threading.Event) -> None:
    """While the host runs: touch ``host.json`` every ``HEARTBEAT`` seconds (a reader in
    another pid namespace, which cannot see this process, judges it alive by that), and
    end the job at once, with this host, when the job's folder is gone."""
    from ._config import configure
    from ._store import HEARTBEAT, read_only_reason

    beat = 0.0
    while not ended.wait(1.0):
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            gone.set()
            run.tell(reason="its folder in the job store was removed while it ran")
            configure(cancel_grace=0)  # nobody is left to wait for: its kernel ends now
            run.job.cancel()
            return
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if time.monotonic() - beat >= HEARTBEAT:
            beat = time.monotonic()
            if read_only_reason(folder):  # a store made read-only is never written, not even this
                continue
            try:
                os.utime(folder / "host.json", follow_symlinks=False)
            except OSError:
                pass


def _copier(source: str) -> Any:
    def copy(fh: Any) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh, 16 << 20)

    return copy


def _persist_results(run: Run, writer: Any) -> None:
    """Results written to shared memory move into the job's folder, where they outlive
    the machine's memory; whoever attaches meanwhile reads them where they were."""
    from . import _store
    from ._inside.kernel.wire import piece_paths
    from ._runtime import hand_job_shm

    kept, job = run.kept, run.job
    if not kept or not kept.get("path") or Path(kept["path"]).parent == job.folder:
        return
    pieces = int(kept.get("pieces", 1))
    sources = piece_paths(kept["path"], pieces)
    targets = piece_paths(str(job.folder / "results.snap"), pieces)
    try:
        for source, target in zip(sources, targets, strict=True):
            _store.write_with(Path(target), _copier(source))
        _store.write_json(job.folder / "results.json", dict(kept, path=targets[0]))
    except OSError as exc:
        writer.say(f"the results stay in shared memory ({kept['path']}): {exc}")
        try:  # they are the only copy: held for the job's entry, gone once it is pruned
            if run.shm_dir:
                hand_job_shm(run.shm_dir, entry=str(job.folder))
        except OSError:
            pass
        run.shm_dir = ""  # kept, not removed
        return
    for source in sources:
        try:
            os.unlink(source)
        except OSError:
            pass


def _restore(run: Run, data: dict[str, Any], folder: Path) -> None:
    """What the notebook decided for the job, taken over by its host, which holds the
    seed and the job's shared-memory folder from now on."""
    from . import _store
    from ._runtime import hand_job_shm, owner_tag

    job = run.job
    job.shipped = [n for n in data.get("shipped") or [] if isinstance(n, str)]
    job.skipped = [
        dict(s, direction="in") for s in data.get("not_shipped") or [] if isinstance(s, dict)
    ]
    run.awaits = bool(data.get("awaits"))
    run.environ = dict(os.environ)
    run.files = [p for p in data.get("seed_files") or [] if isinstance(p, str)]
    run.shm_dir = data.get("shm_dir") if isinstance(data.get("shm_dir"), str) else ""
    if run.shm_dir:
        # Handed over by the notebook as it started this host; taken here as well, should
        # the notebook have ended before it could.
        try:
            hand_job_shm(run.shm_dir, owner=owner_tag())
        except OSError:
            pass
    run.preimport = [m for m in data.get("preimport") or [] if isinstance(m, str)]
    results = (data.get("runner") or {}).get("results") or {}
    run.result_paths = [p for p in results.get("paths") or [] if isinstance(p, str)]
    seed = folder / "seed.stream"
    try:
        fd = _store.open_own(seed)  # the notebook's seed: a file of ours, no link
    except OSError:
        fd = -1
    if fd >= 0:
        import mmap

        with os.fdopen(fd, "rb") as fh:
            run.seed_blob = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        # Removed with the seed's other files once the kernel has loaded it.
        run.files.append(str(seed))


def _waits_of(items: Any) -> list[Any]:
    """The waits a detached job's spec lists, as its host waits them out: on the jobs of
    the store (detached, or attached to a notebook) by their records."""
    from ._detached import find
    from ._stored import find_recorded
    from ._waits import Wait

    waits: list[Wait] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        try:
            job = find(item["id"]) or find_recorded(item["id"])
        except BgJobError:  # a store that cannot be read: that job cannot be waited for
            job = None
        if job is not None:
            names = [n for n in item.get("names") or [] if isinstance(n, str)]
            waits.append(Wait(job, names))
    return waits


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
