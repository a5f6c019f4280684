"""Kernels forked from a warm template process (``_inside/template.py``), for the pool.

A fresh kernel spends most of its start importing: ipykernel, the job runner, then numpy
and pandas when the notebook has them. The template imports all of it once and forks each
new kernel from itself, so a kernel's start is ipykernel opening its sockets. jupyter_client
still manages the kernel: a provisioner of ours launches it through the template instead
of ``Popen`` and hands jupyter_client a process object with ``Popen``'s manners, so
shutdown, signals and cleanup go the usual way.

The template is used only where it makes the very kernel the kernelspec would: a Python
kernelspec started as ``python -m ipykernel_launcher ...``, on Linux. Anything else, or a
template that cannot start, falls back to a normal start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner

from .._inside import template as _template_code
from .._inside.procs import identity, identity_alive, signal_identified
from .._runtime import short_owner_tag

# How long a template may take to answer: imports of large libraries included.
_ANSWER_TIMEOUT = 120.0


# What the template's Python runs: the template's source, read from the first line of stdin.
_LOADER = "import json,sys;exec(json.loads(sys.stdin.buffer.readline()))"


class TemplateUnavailable(Exception):
    """The template cannot fork now (ended, spoiled, or too slow); start the usual way."""


def forkable(cmd: list[str]) -> bool:
    """Whether a kernel command is one a template of the same Python can stand in for."""
    return (
        sys.platform.startswith("linux")
        and len(cmd) >= 3
        and os.path.isabs(cmd[0])
        and cmd[1:3] == ["-m", "ipykernel_launcher"]
    )


class ForkedProcess:
    """A kernel forked by a template, with the part of ``Popen``'s interface that
    jupyter_client and the driver use. The template is its parent and tells its exit."""

    stdin = stdout = stderr = None

    def __init__(self, template: Template, pid: int, imported: set[str]) -> None:
        self.pid = pid
        # What its template had imported when it forked it: the kernel has it too.
        self.imported = imported
        self.returncode: int | None = None
        self._template = template
        self._ended = threading.Event()
        # Read once now, while it surely runs: signals go to this very process only.
        self._identity = identity(pid)

    def exited(self, code: int) -> None:
        self.returncode = code
        self._ended.set()

    def poll(self) -> int | None:
        if not self._ended.is_set() and not self._template.alive():
            # Its template is gone, so nobody will tell how it ended; a kernel whose parent
            # is gone ends itself with 1 (ipykernel's parent poller).
            if identity_alive(self._identity) is not True:
                self.exited(1)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        step = 0.25  # the template's answer is the usual way; its death the rare one
        remaining = timeout
        while self.poll() is None:
            wait = step if remaining is None else min(step, remaining)
            if self._ended.wait(wait):
                break
            if remaining is not None:
                remaining -= wait
                if remaining <= 0:
                    raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout or 0.0)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, signum: int) -> None:
        signal_identified(self._identity, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Template:
    """One template process: started, told what to import, asked to fork, closed."""

    def __init__(self, python: str, env: dict[str, str], logs: Path) -> None:
        self.python = python
        self.imported: set[str] = set()
        self.spoiled = ""
        self._lock = threading.Lock()
        self._answers: dict[int, dict[str, Any]] = {}
        self._answered = threading.Condition(self._lock)
        self._next_id = 0
        self._children: dict[int, ForkedProcess] = {}
        self._exits: dict[int, int] = {}
        source = Path(_template_code.__file__).read_text(encoding="utf-8")
        # Its stderr: what a failed import or fork says. Named as a kernel's log is, so
        # the sweep of a dead owner's litter takes it too.
        fd, self.log_path = tempfile.mkstemp(
            prefix=f"k{short_owner_tag()}xtemplate", suffix=".log", dir=logs
        )
        try:
            # The source comes as the first line of its stdin: a short command line for
            # ps and top, the same text whatever Python runs it.
            self._proc = subprocess.Popen(
                [python, "-c", _LOADER, "bgjobs-template"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=fd,
                cwd="/",
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            os.unlink(self.log_path)
            raise TemplateUnavailable(f"{python} cannot start: {exc}") from None
        finally:
            os.close(fd)
        self._writing = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="bgjobs-template", daemon=True)
        self._reader.start()
        self._write(json.dumps(source).encode() + b"\n")
        self._ask(None)  # its first word: it has imported ipykernel

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if "exit" in message:
                    child = self._children.pop(message["exit"], None)
                    if child is not None:
                        child.exited(int(message["code"]))
                    else:  # it ended before its fork's answer was read
                        self._exits[message["exit"]] = int(message["code"])
                    continue
                if message.get("spoiled"):
                    self.spoiled = message["spoiled"]
                self._answers[message.get("id", -1)] = message
                self._answered.notify_all()
        self._proc.wait()
        with self._lock:
            children, self._children = list(self._children.values()), {}
            self._answered.notify_all()
        for child in children:
            child.poll()

    def _write(self, line: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            with self._writing:  # one line at a time, from whichever thread
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise TemplateUnavailable(f"the template has ended: {exc}") from None

    def _send(self, request: dict[str, Any]) -> int:
        with self._lock:
            self._next_id += 1
            request["id"] = rid = self._next_id
        self._write(json.dumps(request).encode() + b"\n")
        return rid

    def _ask(self, request: dict[str, Any] | None) -> dict[str, Any]:
        rid = -1 if request is None else self._send(request)
        with self._lock:
            ok = self._answered.wait_for(
                lambda: rid in self._answers or self._proc.poll() is not None, _ANSWER_TIMEOUT
            )
            answer = self._answers.pop(rid, None)
        if not ok or answer is None:
            raise TemplateUnavailable("the template did not answer")
        if "error" in answer:
            raise TemplateUnavailable(answer["error"])
        return answer

    def boot(self, code: str) -> None:
        """Load the job runner, once for every kernel it forks."""
        self._ask({"boot": code})

    def preimport(self, modules: list[str], wait: bool = True) -> None:
        """Import ``modules`` for the kernels forked from now on; without ``wait`` the
        request is queued and the next fork follows it."""
        modules = [m for m in modules if m not in self.imported]
        if not modules:
            return
        self.imported.update(modules)  # asked once; a failed import is the kernel's
        if wait:
            self._ask({"import": modules})
        else:
            self._send({"import": modules})

    def fork(self, argv0: str, args: list[str], cwd: str, env: dict[str, str], log: str) -> Any:
        """A new kernel, as ``argv0 -m ipykernel_launcher *args`` would start it."""
        if self.spoiled:
            raise TemplateUnavailable(f"spoiled by {self.spoiled}")
        imported = set(self.imported)
        answer = self._ask(
            {"fork": {"argv0": argv0, "args": args, "cwd": cwd, "env": env, "log": log}}
        )
        pid = int(answer["pid"])
        child = ForkedProcess(self, pid, imported)
        with self._lock:
            if pid in self._exits:
                child.exited(self._exits.pop(pid))
            else:
                self._children[pid] = child
        return child

    def close(self) -> None:
        """Take no more requests; the template ends once the kernels it forked have (its
        stdin closed without this word means its owner died: it ends them at once)."""
        try:
            self._send({"close": True})
        except TemplateUnavailable:
            pass
        try:
            with self._writing:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
        except OSError:
            pass
        try:  # the template holds it open while it lingers
            os.unlink(self.log_path)
        except OSError:
            pass


class ForkProvisioner(LocalProvisioner):  # type: ignore[misc]
    """jupyter_client's local provisioner, launching through a template when one serves."""

    # Set by the kernel that makes it: the pool's template for a command and environment
    # (None: start the usual way), and the kernel's log file.
    template_for: Any = None
    log_path: str = ""
    imported: frozenset[str] = frozenset()

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        env = kwargs.get("env") or dict(os.environ)
        template = self.template_for(cmd, env) if self.template_for and forkable(cmd) else None
        if template is None:
            return await super().launch_kernel(cmd, **kwargs)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        try:
            process = template.fork(cmd[0], list(cmd[3:]), cwd, env, self.log_path)
        except TemplateUnavailable:
            # Spoiled or ended since it was handed out: its successor, once.
            template = self.template_for(cmd, env)
            try:
                if template is None:
                    raise TemplateUnavailable("no template")
                process = template.fork(cmd[0], list(cmd[3:]), cwd, env, self.log_path)
            except TemplateUnavailable:
                return await super().launch_kernel(cmd, **kwargs)
        self.process = process
        self.imported = frozenset(process.imported)
        self.pid = self.pgid = process.pid
        self.cwd = kwargs.get("cwd") or os.getcwd()
        return self.connection_info
