"""What comes back from a job: its results loaded into the notebook's process (one name
at a time when the whole does not load), or, for a detached job's host, kept on disk for
whoever attaches it; and the removal of snapshot files that are no longer needed."""

from __future__ import annotations

import json
import os
import sys
import time
import types
from typing import Any

from . import _snapshot
from ._errors import BgJobError
from ._inside.kernel.wire import (
    EVENT_MIME,
    MAX_PIECES,
    SnapshotError,
    decode,
    load_file,
    piece_paths,
)
from ._job import Run
from ._stream import RUNNER, TransferError, fetch


def _load_one_by_one(
    run: Run, kernel: Any, names: list[str], first: Exception, stream: bool
) -> dict[str, Any]:
    """Ask the job's kernel, still alive, to send each result on its own (over the kernel
    protocol when ``stream``), and load what can be loaded; each name that cannot says why."""
    job = run.job
    values: dict[str, Any] = {}
    reasons = {name: f"could not be loaded here: {first}" for name in names}
    if kernel is not None and kernel.alive():
        paths = {
            n: _snapshot.snapshot_paths(str(job.folder), job.id, f"result-{i}")
            for i, n in enumerate(names)
        }
        for candidates in paths.values():
            run.files.extend(candidates)
        request = {"token": run.token, "paths": paths, "transport": "stream" if stream else "file"}
        msg_id = kernel.execute(f"{RUNNER}.resend({json.dumps(request)!r})", silent=True)
        # All the answers first: fetching one reads the kernel's messages too.
        answers: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            msg = kernel.iopub(timeout=0.5)
            if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                if not kernel.alive():
                    break
                continue
            content = msg["content"]
            if msg["msg_type"] == "status" and content.get("execution_state") == "idle":
                break
            event = content.get("data", {}).get(EVENT_MIME) if "data" in content else None
            if event and event.get("type") == "resent":
                answers.append(event)
        for event in answers:
            name = event["name"]
            try:
                if event.get("error"):
                    raise SnapshotError(event["error"])
                if event.get("key"):
                    data = fetch(kernel, event["key"], event)
                    values.update(decode(data, run.token))
                else:
                    values.update(load_file(event["path"], run.token, event.get("pieces", 1)))
                reasons.pop(name, None)
            except Exception as exc:
                reasons[name] = f"could not be loaded here: {type(exc).__name__}: {exc}"
    for name, reason in reasons.items():
        job.skipped.append({"name": name, "type": "?", "direction": "out", "reason": reason})
    return values


def _lost_on_the_way(run: Run, names: list[str], exc: BaseException) -> None:
    reason = f"its results were lost on the way back: {exc}"
    run.tell(reason=reason, results_lost=True)
    for name in names:
        run.job.skipped.append({"name": name, "type": "?", "direction": "out", "reason": reason})


def load_results(run: Run, end: dict[str, Any] | None, kernel: Any = None) -> None:
    """Load the results ``end`` announces into ``run`` (its ``values``), and say of each
    name that could not come back why."""
    if end is None:
        return
    job = run.job
    info = end.get("results") or {}
    job.skipped.extend(dict(s, direction="out") for s in info.get("skipped", []))
    values: dict[str, Any] = {}
    job.mutated = list(info.get("mutated", []))
    job.deleted = [n for n in info.get("deleted") or [] if isinstance(n, str)]
    if info.get("names"):
        try:
            if info.get("transport") == "stream":
                if kernel is None:
                    raise TransferError("the job's kernel is gone")
                values.update(decode(fetch(kernel, run.token, info), run.token))
                job.timings["results_fetched"] = time.time()
            elif info.get("path") in run.files:
                values.update(load_file(info["path"], run.token, info.get("pieces", 1)))
                job.timings["results_mapped"] = time.time()
            else:
                raise SnapshotError(f"results path {info.get('path')!r} is not this job's")
        except TransferError as exc:
            # Not one name that cannot load here: the link lost them all. The job failed.
            _lost_on_the_way(run, info["names"], exc)
        except Exception as exc:  # one name that cannot load here must not sink the rest
            stream = info.get("transport") == "stream"
            values.update(_load_one_by_one(run, kernel, info["names"], exc, stream))
    # A function or class that came back as the very object the notebook had under that
    # name (pickled by reference: `from math import sqrt`) is nothing new: no result. Not
    # data: a small int or a short string is one shared object on both sides by chance.
    by_reference = (type, types.FunctionType, types.BuiltinFunctionType)
    for name in [
        n for n, v in values.items() if isinstance(v, by_reference) and run.ns_ids.get(n) == id(v)
    ]:
        del values[name]
    for name, module in (info.get("modules") or {}).items():
        import importlib

        if name in run.ns_ids and run.ns_ids[name] == id(sys.modules.get(module)):
            continue  # the notebook has that very module under that name: no result
        try:
            values[name] = importlib.import_module(module)
        except Exception as exc:
            job.skipped.append(
                {
                    "name": name,
                    "type": "module",
                    "direction": "out",
                    "reason": f"import {module} failed here: {exc}",
                }
            )
    run.values = values
    job.timings["code_done"] = end.get("code_done", 0.0)
    for key in ("t_compared", "t_encoded", "t_written"):
        if key in info:
            job.timings["results_" + key[2:]] = info[key]
    job.timings["end_received"] = time.time()
    job.timings["results_loaded"] = time.time()
    for path in run.files:
        remove_snapshot(path)


def remove_snapshot(path: str) -> None:
    """Remove a snapshot file and its pieces, if they are there."""
    for piece in piece_paths(path, MAX_PIECES):
        try:
            os.unlink(piece)
        except OSError:
            pass


def keep_results(run: Run, end: dict[str, Any] | None, kernel: Any = None) -> None:
    """A detached job's results stay, as its kernel wrote them, in its folder for whoever
    attaches them: the host never loads the notebook's values. ``results.json`` says
    where they are, and what did not travel."""
    from ._store import write_json

    job = run.job
    info = (end or {}).get("results") or {}
    kept: dict[str, Any] = {
        "names": list(info.get("names") or []),
        "mutated": list(info.get("mutated") or []),
        "deleted": list(info.get("deleted") or []),
        "modules": dict(info.get("modules") or {}),
        "not_saved": list(info.get("skipped") or []),
        "nbytes": info.get("nbytes", 0),
        "saved_at": time.time(),
    }
    job.skipped.extend(dict(s, direction="out") for s in kept["not_saved"])
    job.timings["code_done"] = (end or {}).get("code_done", 0.0)
    for key in ("t_compared", "t_encoded", "t_written"):
        if key in info:
            job.timings["results_" + key[2:]] = info[key]
    if kept["names"]:
        if info.get("transport") == "stream":
            path = job.folder / "results.snap"
            partial = job.folder / ".results.snap.partial"
            try:
                # Straight into a file, the host never holding the results in memory; named
                # results.snap once whole, so no reader of the store sees half of it.
                fetch(kernel, run.token, info, str(partial))
                os.replace(partial, path)
                kept.update(path=str(path), pieces=1)
            except (BgJobError, OSError) as exc:
                _lost_on_the_way(run, kept["names"], exc)
                kept["not_saved"].extend(
                    {"name": n, "type": "?", "reason": f"lost on the way back: {exc}"}
                    for n in kept["names"]
                )
                kept["names"] = []
        elif info.get("path") in run.result_paths:
            kept.update(path=info["path"], pieces=info.get("pieces", 1))
        else:
            kept["names"] = []
            kept["not_saved"].append(
                {"name": "*", "type": "results", "reason": "written outside the job's folder"}
            )
    run.kept = kept
    # A write the store refuses (read-only, full) waits in the job for its host to retry.
    run.unsaved = [lambda: write_json(job.folder / "results.json", kept)]
    save_kept(run)


def save_kept(run: Run) -> bool:
    """Write what ``keep_results`` could not write yet; True once all is written."""
    while run.unsaved:
        try:
            run.unsaved[0]()
        except OSError:
            return False
        run.unsaved.pop(0)
    return True
