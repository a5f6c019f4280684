"""Local kernels: ipykernel processes started through jupyter_client on Unix sockets, each
with the job runner loaded (a pool of warm ones is ``pool``)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _runtime
from .._errors import BgJobError
from .._inside import kernel as _kernel_code
from .._inside.procs import signal_group, signal_process
from .._runtime import short_owner_tag, sweep_litter
from .base import KernelBackend
from .template import ForkedProcess, ForkProvisioner

_PACKAGE = "_bgjobs_kernel"

# Run in the job's kernel with its own globals (the user's namespace gets no names): makes
# a package of the kernel modules, each exec'ed from source under its own name, so their
# relative imports resolve through sys.modules; the runner is also ``_bgjobs_runner``.
_BOOT = """
import sys, types
# Loaded already when the kernel was forked from a template that ran this same code.
if getattr(sys.modules.get(PACKAGE), "__bgjobs_key__", None) != KEY:
    package = types.ModuleType(PACKAGE)
    package.__path__ = []
    package.__package__ = PACKAGE
    sys.modules[PACKAGE] = package
    for name, source in SOURCES:
        module = types.ModuleType(PACKAGE + "." + name)
        module.__file__ = "<bgjobs-kernel/" + name + ".py>"
        module.__package__ = PACKAGE
        sys.modules[module.__name__] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        setattr(package, name, module)
    sys.modules["_bgjobs_runner"] = sys.modules[PACKAGE + ".runner"]
    package.__bgjobs_key__ = KEY
    sys.modules["_bgjobs_runner"].warm()
"""


def runner_boot_code() -> str:
    """The code that loads the job runner into a kernel: every kernel module as source,
    so the kernel needs no jupyter_bgjobs installed (it may be another environment's)."""
    global _boot_code
    if _boot_code is None:
        import hashlib

        folder = Path(_kernel_code.__file__).parent
        sources = [
            (name, (folder / f"{name}.py").read_text(encoding="utf-8"))
            for name in _kernel_code.MODULES
        ]
        key = hashlib.sha256(repr(sources).encode()).hexdigest()[:16]
        _boot_code = (
            f"exec({_BOOT!r}, {{'PACKAGE': {_PACKAGE!r}, 'KEY': {key!r}, "
            f"'SOURCES': {sources!r}}})\n"
        )
    return _boot_code


_boot_code: str | None = None
_RUNNER_THERE = "import sys as _s; _s.modules['_bgjobs_runner']; del _s\n"


class KernelStartError(BgJobError):
    """A kernel could not be started; the message says which and why."""


def execute_content(code: str, silent: bool) -> dict[str, Any]:
    """The content of a job's execute request: no history, no stdin, stop on error."""
    return {
        "code": code,
        "silent": silent,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }


def _ipc_prefix() -> str:
    """A private, short path prefix for one kernel's sockets and connection file."""
    import uuid

    base = _runtime.sockets_dir()
    global _swept
    if not _swept:
        _swept = True
        sweep_litter(base, _SOCKET_NAME)
    # The owner in the name: a kernel ends with its owner, so once the owner is gone its
    # socket and connection files are litter (a killed kernel cannot remove them itself).
    return str(Path(base) / f"k{short_owner_tag()}x{uuid.uuid4().hex[:6]}")


def _kernel_log_dir() -> Path:
    from .._config import settings

    logs = settings.job_root().parent / "kernels"
    logs.mkdir(mode=0o700, exist_ok=True)
    global _logs_swept
    if not _logs_swept:
        _logs_swept = True
        sweep_litter(logs, _LOG_NAME)
    return logs


_swept = False
_logs_swept = False
_SOCKET_NAME = re.compile(r"^k(?P<owner>\d+\.\d+)x[0-9a-f]+(-\d+|\.json)$")
_LOG_NAME = re.compile(r"^k(?P<owner>\d+\.\d+)x[A-Za-z0-9_]+\.log$")


def _await_sockets(km: Any, proc: Any, timeout: float) -> None:
    """Wait until the kernel has made its sockets (on Unix sockets, their files exist).

    A client that connects before then is refused and tries again only after zmq's
    reconnect interval (100 ms), most of a forked kernel's start. Gives up quietly at
    the deadline or when the process ends: the readiness check then says what is wrong."""
    if getattr(km, "transport", "") != "ipc":
        return
    ports = (km.shell_port, km.iopub_port, km.stdin_port, km.hb_port, km.control_port)
    paths = [f"{km.ip}-{port}" for port in ports]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        if all(os.path.exists(p) for p in paths):
            return
        time.sleep(0.002)  # a file system has no word for "created"; a kernel takes ~60 ms


def wait_ready(kc: Any, timeout: float) -> None:
    """Block until the kernel answers on its shell channel and its IOPub reaches us.

    jupyter_client's ``wait_for_ready`` ends with 0.2 s of listening for stray IOPub
    messages; a kernel that greets each subscriber (``iopub_welcome``, JEP 65) tells us
    at once, and the status of our own request is the proof for one that does not."""
    deadline = time.monotonic() + timeout
    welcomed = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the kernel did not answer within {timeout:.0f} s")
        msg_id = kc.kernel_info()
        try:
            while True:
                reply = kc.get_shell_msg(timeout=min(1.0, left))
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
        except queue.Empty:
            continue
        # Messages published before our subscription took hold are lost, not late: a
        # silence means asking again, soon once the kernel has greeted us.
        while True:
            quiet = 0.05 if welcomed else 0.25
            try:
                msg = kc.get_iopub_msg(timeout=quiet)
            except queue.Empty:
                break
            welcomed = welcomed or msg["msg_type"] == "iopub_welcome"
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                return


class LocalKernel:
    """One ipykernel process started through jupyter_client, with the runner loaded."""

    def __init__(self, kernel_name: str = "python3", cwd: str | None = None) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.km: Any = None
        self.kc: Any = None
        self._ended = False
        # What it has imported ahead of a job; held while it imports more.
        self.imported: set[str] = set()
        self.busy = threading.Lock()

    def start(self, timeout: float = 60.0, template_for: Any = None) -> LocalKernel:
        """Start the kernel and load the runner. ``template_for(cmd, env)`` may give a
        warm template to fork it from (``_backends.template``); None starts it anew."""
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import NoSuchKernel

        # Unix sockets, not TCP ports: jupyter_client picks free ports and the kernel binds
        # them later, a race that kills kernels at start when many start at once.
        prefix = _ipc_prefix()
        km = KernelManager(
            kernel_name=self.kernel_name,
            transport="ipc",
            ip=prefix,
            connection_file=prefix + ".json",
        )
        self.km = km
        # The kernel process's own stderr (faulthandler's report of a segfault, a failed
        # import at start) goes to a file, so a dead kernel can say why it died.
        fd, self.stderr_path = tempfile.mkstemp(
            prefix=f"k{short_owner_tag()}x", suffix=".log", dir=_kernel_log_dir()
        )
        # What the kernel inherits; a job later applies the notebook's changes since.
        self.launch_env = dict(os.environ)
        try:
            with os.fdopen(fd, "wb") as sink:
                if template_for is not None and not km.kernel_spec.metadata.get(
                    "kernel_provisioner"
                ):
                    self._fork_through(km, template_for)
                # stdin is /dev/null: a subprocess of the job that reads it ends at once
                # instead of waiting for a keyboard nobody has.
                km.start_kernel(
                    cwd=self.cwd or os.getcwd(),
                    stdout=sink,
                    stderr=sink,
                    stdin=subprocess.DEVNULL,
                )
        except Exception as exc:
            # Whatever was made for it goes: its connection file, sockets and log.
            self.shutdown(now=True)
            if isinstance(exc, NoSuchKernel):
                raise KernelStartError(
                    f"no kernel named {self.kernel_name!r}; `jupyter kernelspec list` shows "
                    "the installed ones"
                ) from None
            raise KernelStartError(f"kernel {self.kernel_name!r} failed to start: {exc}") from exc
        _await_sockets(km, self._process(), timeout)
        kc = km.blocking_client()
        kc.start_channels()
        self.kc = kc
        # A forked kernel has what its template imported, the runner among them.
        forked = isinstance(self._process(), ForkedProcess)
        if forked:
            self.imported = set(km.provisioner.imported)
        try:
            wait_ready(kc, timeout)
            # A forked kernel needs only the look that the runner is there; that first
            # request also readies the kernel's path for the job's own.
            self._boot(timeout, _RUNNER_THERE if forked else runner_boot_code())
        except BaseException as exc:
            self.shutdown(now=True)
            if isinstance(exc, BgJobError):
                raise
            raise KernelStartError(
                f"kernel {self.kernel_name!r} did not become ready: {exc}"
            ) from exc
        return self

    def _fork_through(self, km: Any, template_for: Any) -> None:
        import uuid

        km.kernel_id = str(uuid.uuid4())
        provisioner = ForkProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
        provisioner.template_for = template_for
        provisioner.log_path = self.stderr_path
        km.provisioner = provisioner

    def _process(self) -> Any:
        """The kernel's process (a ``Popen``, or a ``ForkedProcess``), None before start."""
        return getattr(getattr(self.km, "provisioner", None), "process", None)

    def _boot(self, timeout: float, code: str) -> None:
        # Not silent, as a job's request is not: what the kernel does once, lazily, for
        # the first such request (its transcript logger, say) is done before a job comes.
        msg_id = self.execute(code)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"]["status"] != "ok":
            raise KernelStartError(
                f"kernel {self.kernel_name!r} could not load the job runner: "
                f"{reply['content'].get('ename')}: {reply['content'].get('evalue')} "
                "(a job's kernel must be an IPython kernel for Python 3.10 or newer)"
            )
        # The boot request's own iopub messages are not a job's output: read up to its idle.
        self._skip_to_idle(msg_id, deadline)

    def _skip_to_idle(self, msg_id: str, deadline: float) -> None:
        """Read iopub up to the idle status of request ``msg_id``."""
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                break

    def stderr_tail(self, limit: int = 2000) -> str:
        """The end of what the kernel process wrote to its stderr, minus startup noise."""
        try:
            text = Path(self.stderr_path).read_text(encoding="utf-8", errors="replace")
        except (OSError, AttributeError):
            return ""
        lines = [ln for ln in text.splitlines() if "WARNING | Kernel is running over TCP" not in ln]
        return "\n".join(lines)[-limit:].strip()

    def preimport(self, modules: list[str], timeout: float = 60.0) -> None:
        """Import ``modules`` in the kernel ahead of any job, so a job seeded with a
        DataFrame does not wait for pandas to import. No names appear in the namespace."""
        modules = [m for m in modules if m not in self.imported]
        if not modules:
            return
        self.imported.update(modules)
        code = "".join(f"try: __import__({m!r})\nexcept Exception: pass\n" for m in modules)
        msg_id = self.execute(code, silent=True)
        deadline = time.monotonic() + timeout
        self._skip_to_idle(msg_id, deadline)
        self.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))

    @property
    def pid(self) -> int | None:
        return getattr(self._process(), "pid", None)

    def exit_code(self) -> int | None:
        """The process's exit code once it has ended, else None."""
        proc = self._process()
        if proc is None:
            return None
        return proc.poll()  # type: ignore[no-any-return]

    def alive(self) -> bool:
        proc = self._process()
        return proc is not None and proc.poll() is None

    def execute(
        self,
        code: str,
        silent: bool = False,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> str:
        # Always our own request: jupyter_client's default allows stdin, and a job that
        # then asks for input would wait forever for an answer.
        msg = self.kc.session.msg(
            "execute_request", execute_content(code, silent), metadata=metadata or {}
        )
        self.kc.session.send(self.kc.shell_channel.socket, msg, buffers=buffers or None)
        return str(msg["header"]["msg_id"])

    def iopub(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.kc.get_iopub_msg(timeout=timeout)  # type: ignore[no-any-return]
        except queue.Empty:
            return None

    def _signal(self, signum: int) -> None:
        # Kernels run in their own process group: signalling the group also reaches the
        # job's own subprocesses (`!cmd`, multiprocessing), as jupyter_client does.
        proc = self._process()
        if proc is None or proc.poll() is not None:
            return
        pgid = getattr(self.km.provisioner, "pgid", None)
        if not (pgid and signal_group(pgid, signum)):
            signal_process(proc.pid, signum)

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        proc = self._process()
        if proc is not None:
            try:
                proc.wait(5)
            except Exception:
                pass

    def shutdown(self, now: bool = False) -> None:
        """End the kernel; tolerant of a kernel that is already gone."""
        if self._ended:
            return
        self._ended = True
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
        km = self.km
        if km is None:
            return
        try:
            if now or not self.alive():
                self.kill()
                km.cleanup_resources()
            else:
                km.shutdown_wait_time = 2.0
                km.shutdown_kernel(now=False)
        except Exception:
            self.kill()
        finally:
            ip = getattr(km, "ip", "")
            if getattr(km, "transport", "") == "ipc" and ip:
                for sock in Path(ip).parent.glob(Path(ip).name + "-*"):
                    try:
                        sock.unlink()
                    except OSError:
                        pass
            stderr_path = getattr(self, "stderr_path", None)
            if stderr_path:
                try:
                    os.unlink(stderr_path)
                except OSError:
                    pass


if TYPE_CHECKING:  # mypy holds it to the driver's interface
    _kernel: type[KernelBackend] = LocalKernel
