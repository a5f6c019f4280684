"""Putting a finished job's results into the notebook, and saying what happened."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._job import Run
    from ._states import ErrorInfo


@dataclass(frozen=True)
class MergeRules:
    """How a job's results go into the notebook, as it was started with them."""

    results: str = "globals"
    results_name: str = ""
    on_conflict: str = "keep"
    on_failure: str = "merge"


@dataclass
class Outcome:
    """What a merge and its report read of an ended job: the same for a job of this
    process and for a detached job's results attached from the store."""

    name: str
    state: str
    progress: tuple[int, int]
    elapsed: float
    rules: MergeRules
    reason: str = ""
    error: ErrorInfo | None = None
    values: dict[str, Any] = field(default_factory=dict)
    # The ids of the notebook's objects when the job started, to tell its own changes.
    ns_ids: dict[str, int] = field(default_factory=dict)
    mutated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    # Where a resumed job (or a retried attempt) went on from, in words.
    resumed: str = ""

    @classmethod
    def of_run(cls, run: Run, ended: str = "") -> Outcome:
        """A job of this process, as it is now (or as it ends in ``ended``)."""
        job = run.job
        spec = job.spec
        return cls(
            name=job.name,
            state=ended or job.state,
            progress=job.progress,
            elapsed=job.elapsed,
            rules=MergeRules(spec.results, spec.results_name, spec.on_conflict, spec.on_failure),
            reason=job.reason,
            error=job.error,
            values=dict(run.values or {}),
            ns_ids=run.ns_ids,
            mutated=job.mutated,
            deleted=job.deleted,
            skipped=job.skipped,
            resumed=job.resumed,
        )


def target_namespace() -> dict[str, Any]:
    """The notebook's user namespace, or ``__main__`` outside IPython."""
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        ip = None
    if ip is not None:
        user_ns: dict[str, Any] = ip.user_ns
        return user_ns
    import __main__

    ns: dict[str, Any] = __main__.__dict__
    return ns


def listed(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _imported(name: str) -> Any:
    """The module ``name`` once it is imported whole: not while a thread imports it (the
    notebook imports a job's data libraries ahead, in a thread), when none of its objects
    can be in the notebook yet."""
    module = sys.modules.get(name)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def update_in_place(old: Any, new: Any) -> bool:
    """Make ``old`` hold what ``new`` holds, where its type allows that exactly (numpy
    arrays of the same shape and dtype, pandas frames and series, lists, dicts, sets,
    bytearrays); False elsewhere."""
    np = _imported("numpy")
    if np is not None and type(old) is np.ndarray and type(new) is np.ndarray:
        if old.shape != new.shape or old.dtype != new.dtype or not old.flags.writeable:
            return False
        old[...] = new
        return True
    if type(old) is not type(new):
        return False
    pd = _imported("pandas")
    if pd is not None and type(old) in (pd.DataFrame, pd.Series):
        # pandas' own way for its in-place operations (``inplace=True``, ``df[c] = ...``):
        # the object keeps its identity and takes the other's data, index and columns.
        replace = getattr(old, "_update_inplace", None)
        if replace is None:
            return False
        replace(new)
        old.attrs = new.attrs
        if type(old) is pd.Series:
            old.name = new.name
        return True
    if type(old) in (list, bytearray):
        old[:] = new
    elif type(old) in (dict, set):
        old.clear()
        old.update(new)
    else:
        return False
    return True


def _references(ns: dict[str, Any], key: str) -> int:
    return sys.getrefcount(ns[key])


def _seen_elsewhere(ns: dict[str, Any], key: str) -> bool:
    """Whether anything but ``ns[key]`` refers to that object (another name, a view of an
    array, a list holding it): only then is copying the job's changes into it worth its
    cost; otherwise the name simply takes the job's object, which costs nothing."""
    np = _imported("numpy")
    if np is not None and isinstance(ns[key], np.ndarray) and ns[key].base is not None:
        return True  # a view: its memory is another array's too
    alone = {key: object()}  # the same path, for an object nothing else refers to
    return _references(ns, key) > _references(alone, key)


def merge_results(job: Outcome, ns: dict[str, Any]) -> str:
    """Merge ``job``'s results into ``ns`` per its ``results`` and ``on_conflict`` modes."""
    values = dict(job.values)
    spec = job.rules
    merged: list[str] = []
    overwrote: list[str] = []
    conflicts: list[str] = []
    where = ""
    deleted: list[str] = []
    if spec.results == "object":
        ns[spec.results_name] = types.SimpleNamespace(**values)
        merged = sorted(values)
        where = f" into {spec.results_name}"
    elif spec.results == "globals":
        aside: dict[str, Any] = {}
        for key in sorted(values):
            if key in ns and ns[key] is values[key]:
                continue  # the same object (a module both sides imported): nothing to do
            if key in ns:
                rebound = job.ns_ids.get(key) != id(ns[key])
                if rebound and spec.on_conflict == "keep":
                    conflicts.append(key)
                    aside[key] = values[key]
                    continue
                if ns[key] is not values[key] and key not in job.mutated:
                    overwrote.append(key)
                elif (
                    key in job.mutated
                    and not rebound
                    and _seen_elsewhere(ns, key)
                    and update_in_place(ns[key], values[key])
                ):
                    # The notebook's own object takes the job's changes, so every other
                    # name that reaches it (a view of an array, a list held elsewhere)
                    # sees them, as after the same cell in the notebook.
                    merged.append(key)
                    continue
            ns[key] = values[key]
            merged.append(key)
        # What the job deleted of the names it was given goes from the notebook too,
        # unless the notebook bound the name anew since the job started.
        for key in job.deleted:
            if key not in ns:
                continue
            if job.ns_ids.get(key) != id(ns[key]) and spec.on_conflict == "keep":
                conflicts.append(key)
                continue
            del ns[key]
            deleted.append(key)
        if aside:
            ns[spec.results_name] = types.SimpleNamespace(**aside)
        where = " into globals"
    return report_line(job, merged, where, overwrote, conflicts, deleted=deleted)


def ended_on_its_way(name: str, state: str, progress: tuple[int, int], why: str) -> str:
    """``fit: failed at statement 3/5; ZeroDivisionError: ...``: the statement it was at,
    as its row counts it (``at 3/5``)."""
    done, total = progress
    at = min(done + 1, total) if total else 0
    line = f"{name}: {state.replace('_', ' ')} at statement {at}/{total}"
    return f"{line}; {why}" if why else line


def outcome(job: Outcome, state: str = "") -> str:
    """How the job ended, in words: ``fit: failed at statement 3/5; ZeroDivisionError: ...``."""
    state = state or job.state
    if state == "succeeded":
        return f"{job.name}: succeeded in {job.elapsed:.1f} s"
    why = job.reason or (f"{job.error.ename}: {job.error.evalue}" if job.error else "")
    line = ended_on_its_way(job.name, state, job.progress, why)
    merges_here = state == "failed" and job.rules.on_failure == "merge"
    if job.values and not (merges_here and job.rules.results != "none"):
        line += f"; partial results kept in get_job({job.name!r}).results"
    return line


def report_line(
    job: Outcome,
    merged: list[str] | None = None,
    where: str = "",
    overwrote: list[str] | None = None,
    conflicts: list[str] | None = None,
    state: str = "",
    deleted: list[str] | None = None,
) -> str:
    """One line: the outcome, what was merged and overwritten, what did not travel."""
    spec = job.rules
    state = state or job.state
    parts = [outcome(job, state)]
    if job.resumed:
        parts.append(job.resumed)
    if merged:
        parts.append(f"merged {listed(merged)}{where}")
    elif spec.results != "none" and state == "succeeded" and not deleted:
        parts.append("no new names")
    elif state == "succeeded" and job.values:
        parts.append(f"results in get_job({job.name!r}).results: {listed(sorted(job.values))}")
    if deleted:
        parts.append(f"deleted {listed(deleted)} (as the job did)")
    if overwrote:
        parts.append(f"overwrote {listed(overwrote)}")
    if job.mutated and merged:
        parts.append(f"{listed(job.mutated)} changed in place by the job")
    if conflicts:
        parts.append(
            f"kept the notebook's {listed(conflicts)} (changed here since the job started; "
            f"the job's values are in {spec.results_name}; --on-conflict overwrite replaces them)"
        )
    for direction, label in (
        ("in", "not shipped"),
        ("out", "not returned"),
        ("checkpoint", "not in its checkpoints"),
    ):
        skipped = [s for s in job.skipped if s.get("direction") == direction]
        if skipped:
            parts.append(
                f"{label}: "
                + "; ".join(f"{s['name']} ({s['type']}: {s['reason']})" for s in skipped[:6])
                + (f" and {len(skipped) - 6} more" if len(skipped) > 6 else "")
            )
    return "; ".join(parts)
