"""JobSpec: everything one job needs, checked when it is made."""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import _checks
from ._config import settings
from ._errors import JobSpecError
from ._states import CONFLICT_MODES, FAILURE_MODES, RESULT_MODES


@dataclass
class JobSpec:
    """Everything needed to run one job; built by ``run_cell``/``run_script`` and the magics."""

    code: str
    name: str
    kind: str = "cell"
    kernel: str | None = None
    timeout: float | None = None
    env: str = "none"
    results: str = "globals"
    on_conflict: str = "keep"
    on_failure: str = "merge"
    workdir: str = ""
    script_path: str | None = None
    results_name: str = ""
    env_vars: dict[str, str] = field(default_factory=dict)
    gateway: str = ""
    kernel_env: dict[str, str] = field(default_factory=dict)
    # The notebook's import path when a host process runs the job for it (--detach);
    # otherwise the submitting process's own is taken at submission.
    import_context: dict[str, Any] | None = None
    # The notebook cell that started it (its id, as the front end sent it): the row under
    # that cell shows the newest job the cell started, whatever the saved output says.
    cell_id: str = ""
    # Bytes its kernel and the processes it started may use (0: none): passing it ends
    # the job, failed, before the machine's OOM killer picks a victim.
    memory_limit: int = 0
    # Where its end is told (Apprise URLs): secrets, so never in spec.json or a repr; a
    # detached job's host gets them in its environment.
    notify: list[str] = field(default_factory=list, repr=False)
    # Save its namespace each time a section completes (``--checkpoint``): a job that
    # fails later resumes from the newest one.
    checkpoint: bool = False
    # Resumed automatically this many times when it fails or dies, the first after
    # ``retry_delay`` seconds, each next after twice as long; ``retry_on`` may add
    # "timeout" (a job that ran past its timeout).
    retries: int = 0
    retry_delay: float = 1.0
    retry_on: list[str] = field(default_factory=list)
    # For a job that resumes another: which, from which checkpoint, the statement it goes
    # on from, the words of its report, and the checkpoints further back. Made by
    # ``_resume``, never by hand.
    resume: dict[str, Any] = field(default_factory=dict)
    # The jobs it waits for whatever the names (``--after fit,clean``), "none" for no
    # implicit wait either, "" for the implicit waits alone (``_waits``).
    after: str = ""
    # A run of a sweep: the sweep's id, and the names this run sets (``--over``).
    sweep: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON values: what ``spec.json`` holds, read back by ``from_json``."""
        data = asdict(self)
        del data["notify"]
        data["job_kind"] = data.pop("kind")
        data["script"] = data.pop("script_path")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        """The spec ``to_json`` wrote; fields it does not know are left out, a field of the
        wrong type is a ``JobSpecError`` naming it."""
        values: dict[str, Any] = {}
        renamed = {"job_kind": "kind", "script": "script_path"}
        for f in fields(cls):
            if f.name == "notify":
                continue  # never read from a file: the host has them from its parent
            key = next((k for k, v in renamed.items() if v == f.name), f.name)
            if key in data:
                values[f.name] = data[key]
        for name in ("code", "name"):
            if not isinstance(values.get(name), str):
                raise JobSpecError(f"spec.json: {name!r} must be a string")
        for name in ("env_vars", "kernel_env", "resume", "params"):
            if not isinstance(values.get(name, {}), dict):
                raise JobSpecError(f"spec.json: {name!r} must be an object")
        return cls(**values)


# The ends a job is retried after besides failing and dying, as ``retry_on`` names them.
RETRY_ON = {"timeout": "timed_out"}


def _check_retry_on(value: str | list[str] | None) -> list[str]:
    """``"timeout"`` (or a list of such words): the ends retried besides failed and died."""
    if value is None or value == "":
        return []
    words = value.split(",") if isinstance(value, str) else value
    if not isinstance(words, list | tuple) or not all(isinstance(w, str) for w in words):
        raise JobSpecError(f"retry_on must be 'timeout' or a list of such words, not {value!r}")
    out = []
    for word in (w.strip() for w in words):
        if word in ("failed", "died", ""):
            continue  # retried anyway
        if word == "cancelled":
            raise JobSpecError(
                "retry_on cannot name cancelled: a job you stop stays stopped; "
                "retry_on='timeout' retries a job that ran past its timeout"
            )
        if word not in RETRY_ON:
            raise JobSpecError(
                f"retry_on takes 'timeout' (failed and died are retried), not {word!r}"
            )
        out.append(RETRY_ON[word])
    return sorted(set(out))


def parse_after(after: str | list[str] | None) -> tuple[list[str], bool]:
    """``--after``: the job names it lists, and whether implicit waits stay on (``none``
    turns them off)."""
    if after is None or after == "" or after == []:
        return [], True
    words = after.split(",") if isinstance(after, str) else list(after)
    if not all(isinstance(w, str) for w in words):
        raise JobSpecError(f"after must be job names, 'a,b' or a list, or 'none'; not {after!r}")
    names = [w.strip() for w in words if w.strip()]
    if names == ["none"]:
        return [], False
    bad = [n for n in names if not n.replace("-", "_").isidentifier()]
    if bad or not names:
        raise JobSpecError(
            f"after takes the names of jobs that exist ('fit,clean'), or 'none'; not {after!r}"
        )
    return names, True


def _check_gateway(gateway: str | None) -> str:
    from ._config import settings

    _checks.text("gateway", gateway, optional=True, example="'http://gateway:8888'")
    url = gateway or settings.gateway
    if not url:
        return ""
    if url in ("env", "default"):
        url = os.environ.get("JUPYTER_GATEWAY_URL", "")
        if not url:
            raise JobSpecError(
                "--gateway env asks for $JUPYTER_GATEWAY_URL, which is not set; "
                "pass the gateway's URL instead"
            )
    return _checks.gateway_url(url)


def _check_kernel_env(env: dict[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    checked = _checks.str_mapping("kernel_env", env, example="{'KERNEL_NAMESPACE': 'team-a'}")
    for key, value in checked.items():
        if not key.startswith("KERNEL_") or not key.replace("_", "").isalnum():
            raise JobSpecError(
                f"kernel variable {key!r}: gateways pass only KERNEL_* variables to the "
                "kernels they start (KERNEL_NAMESPACE, KERNEL_CPUS, ...); name it KERNEL_..."
            )
        out[key] = str(value)
    return out


def parse_kernel_env(items: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` strings from the magics' ``--kernel-env``."""
    env: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise JobSpecError(f"--kernel-env needs KEY=VALUE, got {item!r}")
        env[key.strip()] = value
    return env


def _check_name(name: str) -> str:
    _checks.text("name", name, example="'fit_model'")
    if not name.isidentifier():
        raise JobSpecError(
            f"job name {name!r} is not a Python identifier; use letters, digits and _ "
            "(for example 'fit_model')"
        )
    return name


def _check_env(env: str) -> str:
    _checks.text("env", env, example="'auto', 'all', 'none' or 'a,b'")
    if env in ("auto", "all", "none"):
        return env
    names = [n.strip() for n in env.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if not names or bad:
        raise JobSpecError(
            f"env must be auto, all, none or a comma-separated list of names, not {env!r}"
        )
    return ",".join(names)


_counter = 0
_counter_lock = threading.Lock()


def _default_name() -> str:
    global _counter
    with _counter_lock:
        _counter += 1
        return f"job{_counter}"


def build_spec(
    code: str,
    *,
    name: str | None,
    kind: str,
    kernel: str | None,
    timeout: float | None,
    env: str,
    results: str,
    on_conflict: str,
    workdir: str | None,
    on_failure: str = "merge",
    script_path: str | None = None,
    gateway: str | None = None,
    kernel_env: dict[str, str] | None = None,
    memory_limit: int | str | None = None,
    notify: list[str] | None = None,
    checkpoint: bool | None = None,
    retries: int | str = 0,
    retry_delay: float | str = 1.0,
    retry_on: str | list[str] | None = None,
    after: str | list[str] | None = None,
) -> JobSpec:
    """Check every option and build a spec; raises JobSpecError naming the fix."""
    _checks.text("code", code, example="'x = 1'")
    if name is not None:
        _check_name(name)
    checked_timeout = _checks.timeout("timeout", timeout)
    checked_env = _check_env(env)
    checked_results = _checks.choice("results", results, RESULT_MODES)
    checked_conflict = _checks.choice("on_conflict", on_conflict, CONFLICT_MODES)
    checked_failure = _checks.choice("on_failure", on_failure, FAILURE_MODES)
    _checks.text("kernel", kernel, optional=True, example="'python3'")
    if kernel is not None and not kernel.strip():
        raise JobSpecError(
            "kernel must name a kernelspec, for example 'python3'; leave it out for the default"
        )
    workdir = _checks.path("workdir", workdir, optional=True)
    limit = _checks.memory("memory_limit", memory_limit) or settings.memory_limit
    keep = settings.checkpoint if checkpoint is None else _checks.flag("checkpoint", checkpoint)
    tries = int(_checks.number("retries", retries, integer=True, text=True))
    delay = _checks.number("retry_delay", retry_delay, unit="seconds", text=True)
    also = _check_retry_on(retry_on)
    explicit, implicit = parse_after(after)
    from ._notify import check_targets

    targets = list(dict.fromkeys([*check_targets("notify", notify), *settings.notify_targets]))
    url = _check_gateway(gateway)
    env_vars = _check_kernel_env(kernel_env)
    if url and limit:
        # A gateway's kernel is not a process of this machine: its limit is the gateway's
        # to keep, asked for as Enterprise Gateway's kernels take it.
        env_vars.setdefault("KERNEL_MEMORY", str(limit))
    if env_vars and not url:
        raise JobSpecError(
            "kernel_env (--kernel-env) passes KERNEL_* variables to a gateway's kernel; name "
            "the gateway too (gateway=URL, --gateway URL), or set os.environ for a local job"
        )
    if url:
        # The remote kernel's folders are not ours: only an explicit workdir is used there.
        wd = workdir or ""
    else:
        wd = workdir or os.getcwd()
        if not os.path.isdir(wd):
            raise JobSpecError(f"working directory {wd!r} does not exist; pass an existing folder")
        _checks.kernelspec(kernel or settings.kernel)
    base = name if name is not None else _default_name()
    spec = JobSpec(
        code=code,
        name=base,
        kind=kind,
        kernel=kernel,
        timeout=checked_timeout,
        env=checked_env,
        results=checked_results,
        on_conflict=checked_conflict,
        on_failure=checked_failure,
        workdir=(wd if url else os.path.abspath(wd)),
        script_path=script_path,
        gateway=url,
        kernel_env=env_vars,
    )
    spec.results_name = base + "_results"
    spec.cell_id = this_cell()
    spec.memory_limit = limit
    spec.checkpoint = keep
    spec.retries, spec.retry_delay, spec.retry_on = tries, delay, also
    spec.after = ",".join(explicit) if explicit else ("" if implicit else "none")
    spec.notify = targets
    return spec


def this_cell() -> str:
    """The id of the notebook cell being run (JupyterLab and Notebook send it with each
    execution); "" outside a kernel or from a front end that does not."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        parent = kernel.get_parent() if kernel is not None else {}
    except Exception:  # no IPython, or a kernel without the per-request parent
        return ""
    cell = (parent or {}).get("metadata", {}).get("cellId", "")
    return cell if isinstance(cell, str) and len(cell) <= 200 else ""


def script_name(script: Path) -> str:
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in script.stem)
    return stem if stem.isidentifier() else f"script_{stem}"


def transformed(code: str) -> str:
    """IPython-transformed source (magics and ! lines turned into Python), for reading."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return str(TransformerManager().transform_cell(code))
    except Exception:
        return code
