"""The host of a detached job: a process of its own session that runs the job and keeps its
record in the store, so the job outlives the notebook kernel that started it.

``python -m jupyter_bgjobs._host FOLDER``: reads ``spec.json`` (and ``seed.pkl``, the
notebook names shipped with it, removed once loaded), runs the job with the ordinary
engine, writes ``state.json`` as the job goes and ``results.pkl`` at the end. SIGTERM
cancels the job.

The record is the store's; the job is the user's. When the store cannot be written (made
read-only, or full) the job runs on: the host says so once in the job's output log and
writes the record again as soon as it can.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

# How long a job that has ended waits for a read-only store to take its results and final
# state; the host holds them in memory meanwhile.
FINAL_WAIT = 3600.0


def _state_of(job: Any, host_pid: int) -> dict[str, Any]:
    done, total = job.progress
    return {
        "state": job.state,
        "progress": [done, total],
        "section": job.section,
        "status": job.status,
        "started": job.started.isoformat() if job.started else None,
        "finished": job.finished.isoformat() if job.finished else None,
        "finished_ts": job.finished.timestamp() if job.finished else None,
        "elapsed": job.elapsed,
        "error": list(job.error) if job.error else None,
        "reason": job.reason,
        "exit_code": job.exit_code,
        "log_path": str(job.log_path),
        "host_pid": host_pid,
        "kernel_pid": job.kernel_pid,
        "skipped": job.skipped,
    }


class _Record:
    """Writes the job's record; a write the store refuses is told once in the job's log,
    not raised, and the next one that succeeds says the record is current again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log: IO[str] | None = None
        self.failing = ""

    def say(self, line: str) -> None:
        text = f"\n[jupyter_bgjobs host: {line}]\n"
        try:
            if self.log is not None:
                self.log.write(text)
                self.log.flush()
                return
        except (OSError, ValueError):
            pass
        print(text.strip(), flush=True)  # host.log, when the job's log is not open

    def write(self, do: Any, *args: Any) -> bool:
        from ._errors import StoreError

        try:
            do(*args)
        except StoreError as exc:
            if not self.failing:
                self.say(
                    f"the job's record cannot be updated: {exc}. The job keeps running; "
                    "its record is written again once the store can be written"
                )
            self.failing = str(exc)
            return False
        if self.failing:
            self.failing = ""
            self.say("the store can be written again; the job's record is current")
        return True


def main(folder: Path) -> int:
    # The engine's own job folder lives inside this one, so the store holds everything.
    os.environ["JUPYTER_BGJOBS_DIR"] = str(folder / "run")
    (folder / "run").mkdir(mode=0o700, exist_ok=True)
    import cloudpickle

    from . import _store
    from ._config import configure
    from ._jobs import JobSpec, manager

    spec_data, problem = _store.load_json(folder / "spec.json")
    problem = problem or _store.check_spec(folder, spec_data or {})
    if spec_data is None or problem:
        print(f"jupyter_bgjobs host: {folder}: {problem}; there is nothing to run", flush=True)
        return 1
    configure(pool_size=0)
    context = spec_data.get("import_context")
    if isinstance(context, dict) and isinstance(context.get("sys_path"), list):
        # The seed refers to the notebook's modules by name: find them where it did.
        sys.path[:0] = [p for p in context["sys_path"] if isinstance(p, str) and p not in sys.path]
    ns: dict[str, Any] | None = None
    seed = folder / "seed.pkl"
    if seed.exists():
        with open(seed, "rb") as fh:
            ns = cloudpickle.load(fh)
        try:
            seed.unlink()
        except OSError as exc:
            print(f"jupyter_bgjobs host: cannot remove {seed}: {exc}", flush=True)
    spec = JobSpec(
        code=spec_data["code"],
        name=spec_data["name"],
        kind=spec_data.get("job_kind") or "cell",
        kernel=spec_data.get("kernel"),
        timeout=spec_data.get("timeout"),
        env="all" if ns else "none",
        results="none",
        workdir=spec_data.get("workdir") or os.getcwd(),
        script_path=spec_data.get("script"),
        import_context=spec_data.get("import_context")
        if isinstance(spec_data.get("import_context"), dict)
        else None,
    )
    job = manager.submit(spec, ns if ns else None)
    record = _Record(folder)
    try:
        # Opened now, while the store can be written: a store made read-only later still
        # gets the host's word about it in the job's own log.
        fd = os.open(job.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        record.log = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
    except OSError:
        pass
    pid = os.getpid()
    signal.signal(signal.SIGTERM, lambda *_: job.cancel())
    signal.signal(signal.SIGINT, lambda *_: job.cancel())
    last: dict[str, Any] = {}
    while True:
        with job._cond:
            job._cond.wait(0.25)
        if job.done:
            # A reader that sees a final state must find the results too, so the final
            # state is written only after results.pkl and results.json.
            break
        state = _state_of(job, pid)
        if state != last or record.failing:
            # The engine's files were made under this process's umask: they are made
            # private as they appear.
            _store.tighten(folder / "run")
            if record.write(_store.write_json, folder / "state.json", state):
                last = state
    manager.join_worker(job, 60)
    _store.tighten(folder / "run")
    deadline = time.monotonic() + FINAL_WAIT
    saved = False
    while True:
        saved = saved or record.write(_save_results, folder, job, cloudpickle)
        if saved and record.write(_store.write_json, folder / "state.json", _state_of(job, pid)):
            break
        if time.monotonic() >= deadline:
            record.say(f"gave up on writing the job's results and final state to {folder}")
            break
        time.sleep(1.0)  # the store is read-only or full: try again until it is not
    if record.log is not None:
        record.log.close()
    manager.shutdown()
    return 0


def _save_results(folder: Path, job: Any, cloudpickle: Any) -> None:
    """Write results.pkl and results.json; ``StoreError`` when the store refuses them. A
    failure to pickle is recorded in results.json instead, so the job's end still is."""
    from . import _store
    from ._errors import StoreError

    values = job._values or {}
    saved: dict[str, Any] = {}
    not_saved = []
    for name, value in values.items():
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            not_saved.append({"name": name, "type": type(value).__name__, "reason": str(exc)})
            continue
        saved[name] = value
    try:
        _store.write_with(
            folder / "results.pkl", lambda fh: cloudpickle.dump(saved, fh), "save the job's results"
        )
    except StoreError:
        raise
    except Exception as exc:  # each pickles alone, not all together (a recursion limit)
        _store.write_json(
            folder / "results.json",
            {
                "names": [],
                "not_saved": [
                    {"name": "results", "type": "all", "reason": f"{type(exc).__name__}: {exc}"}
                ],
            },
        )
        return
    _store.write_json(
        folder / "results.json",
        {"names": sorted(saved), "not_saved": not_saved, "saved_at": time.time()},
    )


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
