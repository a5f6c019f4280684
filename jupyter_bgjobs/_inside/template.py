"""A warm template of a pool's kernels: one process of the kernel's Python that has imported
ipykernel, the job runner and what the notebook imports, and forks a kernel on request.

A kernel forked from it starts with all of that already imported (shared, copy on write),
so a pool refills in the time ipykernel takes to open its sockets rather than the time
numpy and pandas take to import. The kernelspec's Python (which may not have
jupyter_bgjobs) runs this file's text, read as the first line of its stdin; it then speaks
JSON lines on its stdin and stdout, and uses the standard library and ipykernel only.

Requests (one JSON object a line): ``{"boot": code}`` runs the job runner's boot code,
``{"import": [names]}`` imports modules, ``{"fork": {...}}`` starts a kernel, ``{"close":
true}`` stops taking requests. Answers carry the request's ``id``; ``{"exit": pid, "code":
n}`` tells, unasked, that a kernel ended (``-N`` for signal N, as ``subprocess`` says it).

A fork is safe only while this process runs one thread: a module whose import starts a
thread spoils the template, which then says so (``"spoiled"``) and forks no more; the pool
starts another template without that module.
"""

import fcntl
import gc
import importlib.util
import json
import os
import select
import signal
import sys
import threading
import traceback
from typing import IO, Any

RUNNER = "the job runner"  # what spoiled the template, when loading the runner did

# What a kernel's initialisation and its first cell import on their own (its shell's
# debugger, inspector, completer and logger, the history's database, the event loop's
# bridge), imported here once rather than in each kernel.
_KERNEL_INIT_MODULES = (
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.logger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "faulthandler",
    "importlib.resources.readers",
    "pdb",
    "sqlite3",
    "tornado.platform.asyncio",
)


def _serve() -> None:
    # The protocol keeps the original stdout; what imported modules print goes to stderr,
    # which is the template's log.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    # As ipykernel_launcher does: the folder we were started in is not a module folder.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    # What the environment was before any import: what imports set on top of it is set
    # in each kernel too, as the same imports would have set it there.
    before = dict(os.environ)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)

    # What a kernel's start imports, imported once here.
    from ipykernel import ipkernel, kernelapp, zmqshell  # noqa: F401

    try:
        from ipykernel import debugger  # noqa: F401
    except Exception:  # an ipykernel without a debugger, or debugpy broken: still a kernel
        pass
    for name in _KERNEL_INIT_MODULES:
        try:
            __import__(name)
        except Exception:  # another IPython's kernel imports other things: it still starts
            pass

    children: dict[int, int] = {}
    spoiled = ""
    closing = False

    def say(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")

    def check_threads(what: str) -> None:
        nonlocal spoiled
        if not spoiled and threading.active_count() > 1:
            spoiled = what

    def settle() -> None:
        # What the template holds is left out of its kernels' garbage collections: one
        # that walked it would copy every page it touched, and share nothing.
        gc.collect()
        gc.freeze()

    check_threads("ipykernel")
    settle()
    say({"ready": os.getpid(), "spoiled": spoiled})
    pending = b""
    while True:
        if closing and not children:
            return
        readers = [wake_r] if closing else [0, wake_r]
        try:
            ready, _, _ = select.select(readers, [], [])
        except InterruptedError:
            ready = []
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.pop(pid, None)
            say({"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        if 0 not in ready:
            continue
        data = os.read(0, 1 << 16)
        if not data:
            if not closing:
                # Our owner is gone without closing us: so are the jobs its kernels ran.
                # The kernel itself too: one forked a moment ago may not lead its own group
                # yet, and it would wait for us as we wait for it.
                for pid in list(children):
                    for kill in (os.killpg, os.kill):
                        try:
                            kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
            closing = True
            continue
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            rid = request.get("id")
            if "close" in request:
                closing = True
                say({"id": rid, "closed": True})
            elif "boot" in request:
                try:
                    exec(request["boot"], {})
                    check_threads(RUNNER)
                    settle()
                    say({"id": rid, "ok": True, "spoiled": spoiled})
                except Exception as exc:
                    say({"id": rid, "error": f"{type(exc).__name__}: {exc}"})
            elif "import" in request:
                done = []
                for name in request["import"]:
                    try:
                        __import__(name)
                        done.append(name)
                    except BaseException:  # an import that fails is the kernel's to retry
                        pass
                    check_threads(name)
                    if spoiled:
                        break
                settle()
                say({"id": rid, "imported": done, "spoiled": spoiled})
            elif "fork" in request:
                if spoiled:
                    say({"id": rid, "error": f"spoiled by {spoiled}", "spoiled": spoiled})
                    continue
                pid = os.fork()
                if pid == 0:
                    imported_env = {k: v for k, v in os.environ.items() if before.get(k) != v}
                    _kernel(request["fork"], imported_env, out, wake_r, wake_w)
                children[pid] = pid
                say({"id": rid, "pid": pid})


def _kernel(
    request: dict[str, Any], imported_env: dict[str, str], out: IO[str], wake_r: int, wake_w: int
) -> None:
    """In the forked child: become the kernel a jupyter_client launch would have made."""
    try:
        os.setsid()  # its own group: interrupting or ending the job reaches what it starts
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)
        out.close()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        # Grow the table of open files now, while this process has one thread: grown
        # later, with the kernel's threads running, it waits out an RCU grace period
        # (10-15 ms, in the middle of a job). A fresh kernel grows it at its start.
        try:
            os.close(fcntl.fcntl(null, fcntl.F_DUPFD, 255))
        except OSError:
            pass
        os.close(null)
        os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.update(imported_env)
        os.environ["JPY_PARENT_PID"] = str(os.getppid())
        # Every kernel draws its own random numbers: `random` reseeds itself after a fork,
        # numpy's global generator does not.
        nprandom = sys.modules.get("numpy.random")
        if nprandom is not None:
            try:
                nprandom.seed()
            except Exception:
                pass
        sys.argv = [request["argv0"], *request["args"]]
        spec = importlib.util.find_spec("ipykernel_launcher")
        if spec is not None and spec.origin:
            sys.argv[0] = spec.origin  # as `python -m ipykernel_launcher` has it
        from ipykernel import kernelapp

        # Its parent is this template: the kernel ends when the template does. A job runs
        # its code outside the shell's history, so the kernel keeps none: no database to
        # open at its start, no thread to save it.
        argv = [*request["args"], "--HistoryManager.enabled=False"]
        kernelapp.IPKernelApp.launch_instance(argv=argv, parent_handle=os.getppid())
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    _serve()
