"""``bgjobs``: the store of detached jobs and calls, from a terminal.

bgjobs list
bgjobs logs NAME [-f]
bgjobs cancel NAME
bgjobs run SCRIPT.py [--name N] [--timeout S] [--kernel K] [--checkpoint] [--retries N]
bgjobs resume NAME
bgjobs results NAME
bgjobs prune [--older-than 7d]

Reading commands (list, logs, results) write nothing, so they work on a read-only store.
Errors are one line on stderr: exit code 2, or 1 for a cancel of a job that has ended.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from . import _detached, _store, _stored
from ._errors import BgJobError
from ._prune import prune
from ._record import not_saved
from ._states import DAMAGED, ENDED_STATES, label


def _entry(name: str, damaged_ok: bool = False) -> tuple[Path, dict[str, Any]]:
    folder = _store.find(name)
    if folder is None:
        raise BgJobError(f"no detached job or call named {name!r}; `bgjobs list` shows them")
    if not damaged_ok:
        _detached.check_sound(folder, name)
    return folder, _store.read_json(folder / "spec.json") or {}


def _handle(folder: Path, spec: dict[str, Any]) -> Any:
    if spec.get("kind") == "call":
        from ._calls import BgCall

        return BgCall(folder, spec.get("name", folder.name), detached=True)
    return _detached.DetachedJob(folder)


def cmd_list(args: argparse.Namespace) -> int:
    print(_stored.table())
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    # A damaged record may still point at a sound log: that is shown.
    folder, spec = _entry(args.name, damaged_ok=True)
    handle = _handle(folder, spec)
    if spec.get("kind") != "call" and handle.log_path is None and handle.state == "damaged":
        _detached.check_sound(folder, args.name)
    paths = (
        [folder / "stdout", folder / "stderr"]
        if spec.get("kind") == "call"
        else [None]  # a job's log path is known once its host has started
    )
    offsets: dict[Path, int] = {}
    while True:
        # Seen before reading: what was written up to the end is read once more.
        ended = not args.follow or handle.state in (*ENDED_STATES, DAMAGED)
        if spec.get("kind") != "call":
            paths = [handle.log_path] if handle.log_path is not None else []
        for path in paths:
            if path is None:
                continue
            try:
                with open(_store.open_own(path), "rb") as fh:  # the job's own file only
                    fh.seek(offsets.get(path, 0))
                    data = fh.read()
            except FileNotFoundError:
                continue
            offsets[path] = offsets.get(path, 0) + len(data)
            sys.stdout.write(data.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        if ended:
            return 0
        time.sleep(0.2)


def cmd_cancel(args: argparse.Namespace) -> int:
    folder, spec = _entry(args.name)
    handle = _handle(folder, spec)
    if handle.state in ENDED_STATES:
        print(f"{args.name} has already ended: {handle.state}")
        return 1
    if spec.get("kind") == "call":
        handle.kill()
    else:
        handle.cancel()
    print(f"{args.name}: cancel requested")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ._api import run_script

    job = run_script(
        args.script,
        name=args.name,
        timeout=args.timeout,
        kernel=args.kernel,
        detach=True,
        checkpoint=args.checkpoint,
        retries=args.retries,
    )
    print(f"{job.name}: detached job started (id {job.id}); `bgjobs logs {job.name} -f`")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    folder, spec = _entry(args.name)
    if spec.get("kind") != "job":
        raise BgJobError(f"{args.name!r} is a call, not a job: a call has no sections to resume")
    from ._launch import resume_stored

    job = resume_stored(_detached.DetachedJob(folder), None)
    print(f"{job.name}: resumed as detached job {job.id}; {job.spec_record()['resume']['note']}")
    print(f"  `bgjobs logs {job.id} -f` follows it")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    folder, spec = _entry(args.name)
    handle = _handle(folder, spec)
    print(f"{handle.name} ({spec.get('id')}): {handle.state}")
    if spec.get("kind") == "call":
        if handle.state == "succeeded":
            print(f"  result: {_short(handle.result())}")
        else:
            print(f"  {handle.reason}")
        return 0
    info = _store.read_json(folder / "results.json")
    if info is None:
        print("  no results saved yet" if not handle.done else "  no results were saved")
        return 0
    values = vars(handle.results) if handle.results is not None else {}
    for name in info.get("names") or []:
        value = values.get(name)
        print(f"  {name}: {type(value).__name__} = {_short(value)}")
    for miss in not_saved(info):
        print(f"  not saved: {miss}")
    if handle.error:
        print(f"  the job raised {handle.error.ename}: {handle.error.evalue}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    folder, spec = _entry(args.name, damaged_ok=True)
    handle = _handle(folder, spec)
    print(f"{handle.name} ({folder.name}): {label(handle.state)}")
    if handle.reason:
        print(f"  {handle.reason}")
    used = handle.resources
    if used:
        print(f"  {_usage_words(used)}")
    record = handle.record() if hasattr(handle, "record") else {}
    if record.get("resumed"):
        print(f"  {_store.text_field(record['resumed'])}")
    point = record.get("checkpoint")
    if isinstance(point, dict) and point:
        print(
            f"  checkpoint after section {point.get('section', '')!r} "
            f"(statement {point.get('statement', 0)}/{point.get('total', 0)}, "
            f"{_size(point.get('nbytes'))}); `bgjobs resume {handle.name}` goes on from it"
        )
    for entry in getattr(handle, "history", []):
        at = entry.get("at", "")[11:19]  # the time of day of an ISO stamp
        why = f"  ({entry['reason']})" if entry.get("reason") else ""
        print(f"  {at}  {entry.get('event', ''):<8} -> {label(entry.get('state', ''))}{why}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    report = prune(args.older_than)
    print(
        f"removed {len(report['removed'])} finished job(s), freed "
        f"{report['bytes'] / 2**20:.1f} MiB"
        + (": " + ", ".join(report["removed"]) if report["removed"] else "")
    )
    for kept in report["kept"]:
        print(f"kept {kept}")
    return 0


def _size(value: Any) -> str:
    from ._usage import size_text

    return size_text(value) if isinstance(value, int | float) else "?"


def _usage_words(used: dict[str, Any]) -> str:
    from ._usage import size_text

    words = f"memory: peak {size_text(used.get('peak', 0))}"
    if "cpu_seconds" in used:
        words += f"; CPU: {used['cpu_seconds']:.1f} s"
    if "gpu_peak" in used:
        words += f"; GPU memory: peak {size_text(used['gpu_peak'])}"
    return words


def _short(value: Any, limit: int = 70) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bgjobs`` command."""
    parser = argparse.ArgumentParser(prog="bgjobs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="detached jobs and calls with their live state")
    p = sub.add_parser("logs", help="a job's output log")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="follow until it ends")
    p = sub.add_parser("cancel", help="cancel a running detached job or call")
    p.add_argument("name")
    p = sub.add_parser("run", help="run a script as a detached job")
    p.add_argument("script")
    p.add_argument("--name", default=None)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--kernel", default=None)
    p.add_argument("--checkpoint", action="store_true", help="save it where each section ends")
    p.add_argument("--retries", type=int, default=0, help="resume it this many times if it fails")
    p = sub.add_parser(
        "resume",
        help="run a failed, died, timed out or cancelled job again from its newest checkpoint",
    )
    p.add_argument("name")
    p = sub.add_parser("results", help="what a job saved")
    p.add_argument("name")
    p = sub.add_parser("show", help="a job's state, and its story: each transition, when, why")
    p.add_argument("name")
    p = sub.add_parser("prune", help="remove finished jobs older than --older-than")
    p.add_argument("--older-than", default="7d", help="seconds or 30m, 12h, 7d (default 7d)")
    args = parser.parse_args(argv)
    commands = {
        "list": cmd_list,
        "logs": cmd_logs,
        "cancel": cmd_cancel,
        "run": cmd_run,
        "resume": cmd_resume,
        "results": cmd_results,
        "show": cmd_show,
        "prune": cmd_prune,
    }
    try:
        return commands[args.command](args)
    except BgJobError as exc:
        print(f"bgjobs: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file of the store that cannot be read, said in one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"bgjobs: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # `bgjobs logs -f` is left with Ctrl-C
        return 130


if __name__ == "__main__":
    sys.exit(main())
