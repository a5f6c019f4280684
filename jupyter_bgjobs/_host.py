"""The host of a detached job: a process of its own session that runs the job and keeps its
record in the store, so the job outlives the notebook kernel that started it.

``python -m jupyter_bgjobs._host FOLDER``: reads ``spec.json`` (and ``seed.pkl``, the
notebook names shipped with it), runs the job with the ordinary engine, writes
``state.json`` as the job goes and ``results.pkl`` at the end. SIGTERM cancels the job.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


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


def main(folder: Path) -> None:
    # The engine's own job folder lives inside this one, so the store holds everything.
    os.environ["JUPYTER_BGJOBS_DIR"] = str(folder / "run")
    (folder / "run").mkdir(mode=0o700, exist_ok=True)
    import cloudpickle

    from . import _store
    from ._config import configure
    from ._jobs import JobSpec, manager

    spec_data = _store.read_json(folder / "spec.json") or {}
    configure(pool_size=0)
    ns: dict[str, Any] | None = None
    if (folder / "seed.pkl").exists():
        with open(folder / "seed.pkl", "rb") as fh:
            ns = cloudpickle.load(fh)
    spec = JobSpec(
        code=spec_data["code"],
        name=spec_data["name"],
        kind=spec_data.get("job_kind", "cell"),
        kernel=spec_data.get("kernel"),
        timeout=spec_data.get("timeout"),
        env="all" if ns else "none",
        results="none",
        workdir=spec_data.get("workdir") or os.getcwd(),
        script_path=spec_data.get("script"),
    )
    job = manager.submit(spec, ns if ns else None)
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
        if state != last:
            _store.write_json(folder / "state.json", state)
            last = state
    manager.join_worker(job, 60)
    try:
        _save_results(folder, job, cloudpickle)
    except Exception as exc:  # the job's end must still be recorded, with the reason
        for tmp in folder.glob(".results.*.tmp"):
            tmp.unlink(missing_ok=True)
        try:
            _store.write_json(
                folder / "results.json",
                {
                    "names": [],
                    "not_saved": [
                        {
                            "name": "results",
                            "type": "all",
                            "reason": f"{type(exc).__name__}: {exc}",
                        }
                    ],
                },
            )
        except OSError:
            pass
    _store.write_json(folder / "state.json", _state_of(job, pid))
    manager.shutdown()


def _save_results(folder: Path, job: Any, cloudpickle: Any) -> None:
    from . import _store

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
    tmp = folder / f".results.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        cloudpickle.dump(saved, fh)
    os.replace(tmp, folder / "results.pkl")
    _store.write_json(
        folder / "results.json",
        {"names": sorted(saved), "not_saved": not_saved, "saved_at": time.time()},
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
