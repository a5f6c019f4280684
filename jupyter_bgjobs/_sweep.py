"""Sweeps: one cell run once per combination of values of some of its names
(``%%bgjob fit --over lr=0.1,0.01 --over depth=3,5``, ``bj.sweep(code, over={...})``), as
jobs side by side (at most ``max_concurrent`` at a time, as any jobs), their outcomes in
one table: a DataFrame with a row per combination, ``<name>_results`` in the notebook.

Each run is a job of its own (``fit_1``, ``fit_2``...), whose record names its sweep and
the values it set; its results stay in ``job.results`` (six runs binding the same names
cannot all merge): the table holds them.
"""

from __future__ import annotations

import ast
import itertools
import json
import threading
import time
import uuid
from typing import Any

from ._errors import JobSpecError, WaitTimeout
from ._states import (
    CANCELLED,
    DIED,
    FAILED,
    PENDING,
    RUNNING,
    STARTING,
    SUCCEEDED,
    TIMED_OUT,
    WAITING,
)

# The most runs one sweep makes: more is a mistake in its values, not a sweep.
MAX_RUNS = 1000

# This process's sweeps: their tables go into the notebook at a cell boundary.
_SWEEPS: list[Sweep] = []
_lock = threading.Lock()


def _value(text: str) -> Any:
    """A value of ``--over`` as Python reads it (``0.1``, ``3``, ``'adam'``), or the word."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_over(items: list[str] | None) -> dict[str, list[Any]]:
    """``--over NAME=V1,V2`` (repeatable) as names and their values."""
    over: dict[str, list[Any]] = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not values.strip():
            raise JobSpecError(f"--over takes NAME=V1,V2,... (lr=0.1,0.01), not {item!r}")
        if name in over:
            raise JobSpecError(f"--over {name} is given twice; give its values once: {name}=a,b")
        try:  # a list as Python reads it: quoted strings and tuples keep their commas
            parsed = ast.literal_eval(f"[{values}]")
            listed = list(parsed) if isinstance(parsed, list) else [parsed]
        except (ValueError, SyntaxError):
            listed = [_value(v.strip()) for v in values.split(",") if v.strip()]
        over[name] = listed
    return over


def check_over(over: Any) -> dict[str, list[Any]]:
    """``over`` as a sweep takes it: names (identifiers) to non-empty lists of values
    that can travel as they are (numbers, strings, booleans, None, lists of them)."""
    if not isinstance(over, dict) or not over:
        raise JobSpecError(
            "over must be a dict of names to lists of values ({'lr': [0.1, 0.01]}), "
            f"not {over!r:.60}"
        )
    out: dict[str, list[Any]] = {}
    for name, values in over.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise JobSpecError(f"over: {name!r} is not a name (an identifier) a cell can read")
        if not isinstance(values, list | tuple) or not values:
            raise JobSpecError(f"over: {name} needs a non-empty list of values, not {values!r:.60}")
        try:
            json.dumps(list(values), allow_nan=False)
        except (TypeError, ValueError):
            raise JobSpecError(
                f"over: the values of {name} must be numbers, strings, booleans or None "
                "(a sweep's runs are told them as they are); set other values in the cell "
                "from one of those"
            ) from None
        out[name] = list(values)
    runs = 1
    for values in out.values():
        runs *= len(values)
    if runs > MAX_RUNS:
        raise JobSpecError(f"over makes {runs} runs, more than {MAX_RUNS}; sweep fewer values")
    return out


class Sweep:
    """A cell run once per combination of values: ``runs`` (one job each, in the order of
    ``params``), ``results`` (a DataFrame: the values, state, elapsed seconds and the
    names each run bound), ``wait()``, ``cancel()``."""

    def __init__(self, name: str, sweep_id: str, params: list[dict[str, Any]]) -> None:
        self.name = name
        self.id = sweep_id
        self.params = params
        self.runs: list[Any] = []
        self.results_name = f"{name}_results"
        self.merged = False

    @property
    def done(self) -> bool:
        """Whether every run has ended."""
        return all(job.done for job in self.runs)

    @property
    def state(self) -> str:
        """``running`` until every run has ended; then ``succeeded`` when all did, else
        ``failed`` (``cancelled`` when it was stopped)."""
        if not self.done:
            return RUNNING
        states = {job.state for job in self.runs}
        if states == {SUCCEEDED}:
            return SUCCEEDED
        return CANCELLED if states <= {SUCCEEDED, CANCELLED} else FAILED

    def summary(self) -> str:
        """``fit: 6 runs, 4 done, 1 failed, 1 running``."""
        counts: dict[str, int] = {}
        for job in self.runs:
            counts[job.state] = counts.get(job.state, 0) + 1
        words = [f"{len(self.runs)} runs", f"{counts.get(SUCCEEDED, 0)} done"]
        failed = sum(counts.get(s, 0) for s in (FAILED, DIED, TIMED_OUT))
        if failed:
            words.append(f"{failed} failed")
        for state in (CANCELLED, RUNNING, WAITING, PENDING, STARTING):
            if counts.get(state):
                words.append(f"{counts[state]} {state}")
        return f"{self.name}: {', '.join(words)}"

    @property
    def results(self) -> Any:
        """A row per run: its values, ``state``, ``elapsed`` (seconds), ``reason`` (why
        it did not succeed) and every name it bound (numbers and strings as columns,
        anything else as objects). A pandas DataFrame; a list of dicts without pandas."""
        rows = []
        for combo, job in zip(self.params, self.runs, strict=True):
            row: dict[str, Any] = dict(combo)
            row.update(state=job.state, elapsed=round(job.elapsed, 3), reason=job.reason)
            made = job.results
            for key, value in (vars(made) if made is not None else {}).items():
                if key not in combo and not _is_module(value):
                    row[key] = value
            rows.append(row)
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows)

    def wait(self, timeout: float | None = None) -> Sweep:
        """Block until every run has ended; then its table is in the notebook
        (``<name>_results``) and its summary printed. ``WaitTimeout`` if ``timeout``
        seconds pass first (the runs go on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in self.runs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                job.wait(left)
            except WaitTimeout:
                raise WaitTimeout(
                    f"sweep {self.name!r} is still running after {timeout} s "
                    f"({self.summary()}); call .wait() again or .cancel() it"
                ) from None
        if threading.current_thread() is threading.main_thread():
            report = self.merge()
            if report:
                print(report)
        return self

    def cancel(self) -> int:
        """Stop every run not ended; how many were asked to stop."""
        return sum(1 for job in self.runs if job.cancel())

    def merge(self, ns: dict[str, Any] | None = None) -> str:
        """Put the table into the notebook (once, when every run has ended)."""
        from ._merge import target_namespace

        with _lock:
            if self.merged or not self.done:
                return ""
            self.merged = True
        target = ns if ns is not None else target_namespace()
        target[self.results_name] = self.results
        return f"{self.summary()}; the table is in {self.results_name}"

    def __repr__(self) -> str:
        return f"<Sweep {self.summary()}>"


def _is_module(value: Any) -> bool:
    import types

    return isinstance(value, types.ModuleType)


def sweep(code: str, over: dict[str, list[Any]], name: str | None = None, **options: Any) -> Sweep:
    """Run ``code`` once per combination of the values in ``over`` (``{"lr": [0.1, 0.01],
    "depth": [3, 5]}``: 4 runs), each with those names set, as jobs side by side; the
    options are ``run_cell``'s (``results`` aside: a run's results go into the sweep's
    table). Returns the ``Sweep`` at once; its table goes into the notebook as
    ``<name>_results`` at the first cell boundary after its last run ends (or in
    ``wait()``)."""
    from . import _checks
    from ._manager import manager
    from ._merge import target_namespace
    from ._spec import _default_name, build_spec

    checked = check_over(over)
    if name is not None:
        _checks.text("name", name, example="'fit'")
    base = name or _default_name()
    if options.pop("detach", False):
        raise JobSpecError("a sweep runs in this kernel's jobs; it cannot be detached")
    if "results" in options:
        raise JobSpecError("a sweep's runs put their names into its table; leave results out")
    defaults: dict[str, Any] = {
        "kind": "cell",
        "kernel": None,
        "timeout": None,
        "env": "auto",
        "on_conflict": "keep",
        "workdir": None,
    }
    combos = [
        dict(zip(checked, values, strict=True)) for values in itertools.product(*checked.values())
    ]
    handle = Sweep(base, f"{base}-{uuid.uuid4().hex[:6]}", combos)
    # Every run's options are checked before the first starts.
    specs = [
        build_spec(code, **{**defaults, **options, "name": f"{base}_{i}", "results": "none"})
        for i in range(1, len(combos) + 1)
    ]
    ns = target_namespace()
    for spec, combo in zip(specs, combos, strict=True):
        spec.params, spec.sweep = combo, handle.id
        handle.runs.append(manager.submit(spec, ns))
    with _lock:
        _SWEEPS.append(handle)
    return handle


def find(name: str) -> Sweep | None:
    """The latest sweep of this process with this name."""
    with _lock:
        named = [s for s in _SWEEPS if s.name == name]
    return named[-1] if named else None


def merge_ready(ns: dict[str, Any] | None = None) -> list[str]:
    """Put the table of every sweep whose runs have all ended into the notebook; their
    reports."""
    with _lock:
        ready = [s for s in _SWEEPS if not s.merged and s.done]
    return [r for r in (s.merge(ns) for s in ready) if r]
