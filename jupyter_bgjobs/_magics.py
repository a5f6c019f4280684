"""``%%bgjob``, ``%bgjob_script`` and ``%bgjobs``, and the extension's hooks into IPython."""

from __future__ import annotations

import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from . import _checks, _display
from ._api import Job, manager, parse_kernel_env, run_cell, run_script
from ._config import settings
from ._errors import BgJobError
from ._text import clock, text_table
from ._text import count as count_text
from ._text import usage as usage_text

# A sweep shows the rows of its first runs under its cell; the Jobs pane shows them all.
_SWEEP_ROWS = 12

# The jobs with a live row under their cell: their merge reports are shown there.
_rowed: set[str] = set()


def _show(job: Job, notify: bool = False) -> None:
    """The job's live row under the cell: a widget where there is a front end, else a
    status line."""
    notify = notify or settings.notify
    if _display.live_frontend():
        # A row a front end keeps current: the job's report is shown in it.
        _rowed.add(job.id)
        try:
            from ._panel import show_row
        except ImportError:
            pass
        else:
            show_row(job, notify=notify)
            _display.ticker.add(None)
            return
    line = _display.StatusLine(job)
    job.on_change(lambda j: line.refresh(force=j.done))
    line.show()
    _display.ticker.add(line)


def _shared_options(fn: Any) -> Any:
    for arg in reversed(
        [
            argument("--timeout", default=None, help="end the job as timed_out after SECONDS"),
            argument(
                "--kernel", default=None, help="kernelspec to run the job in (default python3)"
            ),
            argument("--workdir", default=None, help="working directory of the job"),
            argument(
                "--gateway",
                default=None,
                help="run on a Kernel/Enterprise Gateway: its URL, or 'env' for "
                "$JUPYTER_GATEWAY_URL",
            ),
            argument(
                "--memory-limit",
                dest="memory_limit",
                default=None,
                help="end the job, failed, when its kernel uses more memory: 8G, 300MB",
            ),
            argument(
                "--kernel-env",
                dest="kernel_env",
                action="append",
                default=None,
                help="KERNEL_*=VALUE passed to the gateway's kernel (repeatable)",
            ),
            argument(
                "--checkpoint",
                action="store_true",
                default=None,
                help="save its namespace each time a section completes, to resume from",
            ),
            argument(
                "--resume",
                action="store_true",
                help="go on from the newest checkpoint of the last job of this name whose "
                "sections up to there are unchanged",
            ),
            argument(
                "--retries", default=0, help="resume it automatically N times if it fails or dies"
            ),
            argument(
                "--retry-delay",
                dest="retry_delay",
                default=1.0,
                help="seconds before the first retry, doubling each time (default 1)",
            ),
            argument(
                "--retry-on",
                dest="retry_on",
                default=None,
                help="timeout: retry a job that ran past its timeout too",
            ),
            argument(
                "--after",
                default=None,
                help="wait for these jobs to end (fit,clean), whatever the names; none: no "
                "wait, not even for the jobs that make the names it reads",
            ),
        ]
    ):
        fn = arg(fn)
    return fn


@magics_class
class BgJobMagics(Magics):
    """The magics of jupyter_bgjobs."""

    @magic_arguments()
    @argument("name", nargs="?", default=None, help="the job's name (an identifier)")
    @_shared_options
    @argument(
        "--env",
        default="auto",
        help="what the job gets from the notebook: auto (the names the cell reads), "
        "all, none, or a,b,c",
    )
    @argument("--results", default="globals", help="globals, object (<name>_results) or none")
    @argument(
        "--on-conflict",
        dest="on_conflict",
        default="keep",
        help="keep or overwrite a name the notebook changed while the job ran",
    )
    @argument(
        "--on-failure",
        dest="on_failure",
        default="merge",
        help="merge (default: a failed job's names made before its error come back, as a "
        "cell that raises keeps them) or keep (in job.results only)",
    )
    @argument(
        "--notify",
        action="append",
        nargs="?",
        const="",
        default=None,
        metavar="URL",
        help="alone: a browser notification when it ends; with an Apprise URL (mailto://, "
        "slack://, json://...): a message there (repeatable)",
    )
    @argument(
        "--detach",
        action="store_true",
        help="run apart from this kernel: the job outlives it; %%bgjob_attach NAME merges",
    )
    @argument(
        "--over",
        action="append",
        default=None,
        metavar="NAME=V1,V2",
        help="a sweep: run the cell once per combination of these values (repeatable); "
        "NAME_results is the table of their outcomes",
    )
    @cell_magic
    def bgjob(self, line: str, cell: str) -> None:
        """Run the cell in a separate kernel; its results come back when it ends."""
        args = _parse(self.bgjob, line)
        if args.over:
            self._sweep(args, cell)
            return
        browser = "" in (args.notify or [])
        targets = [url for url in args.notify or [] if url]
        if args.detach and browser:
            # The notification comes from this kernel's row; a detached job is meant to
            # outlive this kernel, so it cannot promise one.
            raise UsageError(
                "--notify (a browser notification) and --detach do not go together: a detached "
                "job may end after this kernel; --notify URL (mail, chat, a webhook) does"
            )
        try:
            job = run_cell(
                cell,
                args.name,
                results=args.results,
                detach=args.detach,
                notify=targets,
                **_cell_options(args),
                **_resume_options(args),
            )
        except BgJobError as exc:
            raise UsageError(str(exc)) from None
        if not isinstance(job, Job):
            _show_detached(job)
            return
        _show(job, notify=browser)

    def _sweep(self, args: Any, cell: str) -> None:
        from ._sweep import parse_over, sweep

        if args.detach or args.resume or args.results != "globals":
            raise UsageError(
                "--over makes a sweep, whose runs put their names into NAME_results: it "
                "takes no --detach, --resume or --results"
            )
        options = _resume_options(args)
        options.pop("resume")
        try:
            handle = sweep(
                cell,
                parse_over(args.over),
                args.name,
                notify=[url for url in args.notify or [] if url],
                **_cell_options(args),
                **options,
            )
        except BgJobError as exc:
            raise UsageError(str(exc)) from None
        first, last = handle.runs[0].name, handle.runs[-1].name
        print(
            f"{handle.name}: a sweep of {len(handle.runs)} runs ({first} ... {last}); "
            f"{handle.results_name} holds their outcomes once they have all ended"
        )
        for job in handle.runs[:_SWEEP_ROWS]:
            _show(job)

    @magic_arguments()
    @argument("path", help="the script to run")
    @argument("--name", default=None, help="the job's name (default: the script's name)")
    @_shared_options
    @argument(
        "--env",
        default="none",
        choices=["none", "all"],
        help="none (a clean kernel) or all (a copy of the notebook's namespace)",
    )
    @argument(
        "--results", default="object", help="object (<name>_results, the default), globals or none"
    )
    @argument("--encoding", default="utf-8", help="the script's encoding")
    @argument(
        "--notify",
        action="append",
        default=None,
        metavar="URL",
        help="an Apprise URL (mailto://, slack://, json://...) told of its end (repeatable)",
    )
    @argument("--detach", action="store_true", help="run apart from this kernel")
    @line_magic
    def bgjob_script(self, line: str) -> None:
        """Run a script as a background job, like RStudio's "Source as Background Job"."""
        args = _parse(self.bgjob_script, line)
        if args.results not in ("object", "globals", "none"):
            raise UsageError(f"--results must be object, globals or none, not {args.results!r}")
        export = {"object": "", "globals": "globals", "none": ""}[args.results]
        try:
            job = run_script(
                args.path,
                name=args.name,
                encoding=args.encoding,
                workdir=args.workdir,
                import_env=args.env == "all",
                export_env=export,
                kernel=args.kernel,
                timeout=_checks.timeout("timeout", args.timeout, text=True),
                detach=args.detach,
                gateway=args.gateway,
                kernel_env=parse_kernel_env(args.kernel_env),
                memory_limit=args.memory_limit,
                notify=args.notify,
                _results=args.results,
                **_resume_options(args),
            )
        except BgJobError as exc:
            raise UsageError(str(exc)) from None
        if not isinstance(job, Job):
            _show_detached(job)
            return
        _show(job)

    @magic_arguments()
    @argument("name", help="the job's name or id")
    @line_magic
    def bgjob_resume(self, line: str) -> None:
        """Run a job that failed, died, timed out or was cancelled again from where it
        stopped: from its newest checkpoint (``--checkpoint``), else from the start."""
        args = _parse(self.bgjob_resume, line)
        from ._api import get_job

        try:
            job = get_job(args.name).resume()
        except BgJobError as exc:
            raise UsageError(str(exc)) from None
        if not isinstance(job, Job):
            _show_detached(job)
            return
        _show(job)

    @magic_arguments()
    @argument("name", help="the detached job's name or id")
    @argument(
        "--results",
        default=None,
        choices=["globals", "object"],
        help="globals or object (<name>_results); default: what the job was started with",
    )
    @line_magic
    def bgjob_attach(self, line: str) -> None:
        """Merge a detached job's saved results into the notebook, after a restart too."""
        args = _parse(self.bgjob_attach, line)
        from ._stored import attach

        try:
            print(attach(args.name, args.results, self.shell.user_ns if self.shell else None))
        except BgJobError as exc:
            raise UsageError(str(exc)) from None

    @magic_arguments()
    @argument("--sidebar", action="store_true", help="open the panel in JupyterLab's side area")
    @line_magic
    def bgjobs(self, line: str) -> None:
        """The Jobs panel: every job with its state, progress, section, elapsed time, Stop,
        and its output. A plain-text table where there are no widgets."""
        args = _parse(self.bgjobs, line)
        from . import _stored

        earlier = _stored.earlier_jobs()
        if not _display.live_frontend():
            rows = manager.jobs()
            print(jobs_table(rows) if rows else "no jobs")
            if earlier:
                print("\nrun by this notebook's earlier kernels:\n" + earlier_table(earlier))
            if _store_has_entries():
                print("\ndetached (they outlive this kernel):\n" + _stored.table())
            return
        if earlier:
            print("run by this notebook's earlier kernels:\n" + earlier_table(earlier))
        if _store_has_entries():
            print("detached (they outlive this kernel):\n" + _stored.table())
        from IPython.display import display

        from ._panel import panel, row_for

        widget = panel()
        # The store's detached jobs and this notebook's earlier ones get rows too, read
        # from their records; the detached ones live (progress, section, Stop, Output).
        for job in [*_stored.detached_jobs(), *earlier]:
            row_for(job)
        if args.sidebar:
            try:
                from sidecar import Sidecar
            except ImportError:
                raise UsageError(
                    "--sidebar needs the sidecar package: pip install sidecar"
                ) from None
            with Sidecar(title="Jobs"):
                display(widget)
            return
        display(widget)


def _store_has_entries() -> bool:
    from . import _store

    return bool(_store.entries())


def earlier_table(rows: list[Any]) -> str:
    """Jobs of earlier kernels: how each ended, and where its log is."""
    header = ("name", "id", "state", "progress", "reason", "log")
    body = [
        (
            j.name,
            j.id,
            j.state,
            count_text(j.progress[0], j.progress[1], j.state) or "0/0",
            j.reason[:60],
            str(j.log_path or ""),
        )
        for j in rows
    ]
    return text_table(header, body)


def _show_detached(job: Any) -> None:
    """A detached job's live row under its cell, as an attached job's (it reads the
    job's record); a line saying where to find it where there are no widgets."""
    if _display.live_frontend():
        try:
            from ._panel import show_row
        except ImportError:
            pass
        else:
            show_row(job)
            return
    print(
        f"{job.name}: detached job started (id {job.id}); it outlives this kernel. "
        f"%bgjobs shows it; %bgjob_attach {job.name} merges its results once it has ended."
    )


def jobs_table(rows: list[Job]) -> str:
    header = ("name", "id", "state", "progress", "section", "elapsed", "memory", "waits for")
    body = [
        (
            j.name,
            j.id,
            j.state,
            count_text(j.progress[0], j.progress[1], j.state) or "0/0",
            j.section,
            clock(j.elapsed),
            usage_text(j.resources, not j.done),
            ", ".join(j.waits_for) if j.state == "waiting" else "",
        )
        for j in rows
    ]
    return text_table(header, body)


def _cell_options(args: Any) -> dict[str, Any]:
    """The options of ``%%bgjob`` a job and a sweep's runs take alike."""
    return {
        "kernel": args.kernel,
        "timeout": _checks.timeout("timeout", args.timeout, text=True),
        "env": args.env,
        "on_conflict": args.on_conflict,
        "on_failure": args.on_failure,
        "workdir": args.workdir,
        "gateway": args.gateway,
        "kernel_env": parse_kernel_env(args.kernel_env),
        "memory_limit": args.memory_limit,
    }


def _resume_options(args: Any) -> dict[str, Any]:
    """The options of checkpoints, resuming and retries, checked as the API checks them."""
    return {
        "checkpoint": args.checkpoint,
        "resume": args.resume,
        "retries": args.retries,
        "retry_delay": args.retry_delay,
        "retry_on": args.retry_on,
        "after": args.after,
    }


def _parse(magic: Any, line: str) -> Any:
    """The magic's options, split as a shell splits them: quotes group words and are
    removed (``--workdir "/data/my project"``, ``--env 'a,b'``)."""
    try:
        argv = shlex.split(line, posix=True)
    except ValueError as exc:
        raise UsageError(f"cannot parse the options {line!r}: {exc}; check the quotes") from None
    return magic.parser.parse_args(argv)


def _pre_run_cell(info: Any = None) -> None:
    """Merge finished jobs' results at the cell boundary, never under a running cell. A
    job's report belongs to its own row (which shows it): only a job with no row (one
    started from Python) has it said here, in the cell that runs next. Then a plain cell
    that reads a name a job not ended will bind is told so."""
    for job, report in manager.merge_ready():
        if job.id not in _rowed:
            print(report)
    from ._sweep import merge_ready

    for report in merge_ready():
        print(report)
    _tell_replaced(str(getattr(info, "raw_cell", "") or ""))


def _tell_replaced(cell: str) -> None:
    """One line for each name the cell reads that a job not ended will bind, before the
    cell runs: "df will be replaced when job fit ends (running, 3/5)"."""
    if not cell.strip() or cell.lstrip().startswith("%%bgjob"):
        return
    unfinished = [(job, binds) for job, binds in manager.unfinished() if binds]
    if not unfinished:
        return
    from ._spec import transformed
    from ._waits import read_names

    reads = read_names(transformed(cell))
    for job, binds in unfinished:
        done, total = job.progress
        for name in sorted(reads & binds):
            print(
                f"{name} will be replaced when job {job.name} ends "
                f"({job.state.replace('_', ' ')}, {done}/{total})"
            )


def _post_run_cell(*_: Any) -> None:
    """After each cell: what the notebook imports, the warm kernels import too, ahead of
    the next job (a job's kernel would import numpy and pandas again otherwise)."""
    from IPython import get_ipython

    from ._backends.ahead import notebook_imports

    ip = get_ipython()
    if ip is not None:
        manager.follow_imports(notebook_imports(ip.user_ns))


def load(ip: Any) -> None:
    ip.register_magics(BgJobMagics)
    ip.events.register("pre_run_cell", _pre_run_cell)
    ip.events.register("post_run_cell", _post_run_cell)
    manager.pool()
    # What the first job imports on its way (its merge, its sampler's psutil), imported
    # while the pool warms: the first job costs what the next ones do.
    import psutil  # noqa: F401

    from . import _merge, _stored  # noqa: F401


def unload(ip: Any) -> None:
    for event, hook in (("pre_run_cell", _pre_run_cell), ("post_run_cell", _post_run_cell)):
        try:
            ip.events.unregister(event, hook)
        except ValueError:
            pass
    # Every magic the class registered, whatever is added to it later.
    magics = ip.magics_manager.magics
    for kind, names in BgJobMagics.magics.items():
        for name in names:
            magics[kind].pop(name, None)
    manager.shutdown(announce=True)
    _display.ticker.stop()
