"""A job kernel behind a Jupyter Kernel Gateway or Enterprise Gateway.

The gateway protocol is jupyter_server's: REST for the kernel's life (``POST /api/kernels``,
``/interrupt``, ``DELETE``) and one websocket (``/api/kernels/{id}/channels``) carrying the
kernel's messages as JSON. ``GatewayKernel`` offers the engine the same small surface as a
local kernel (execute, iopub, alive, interrupt, kill, shutdown), so a remote job runs the
same code path as a local one; only the snapshot and results travel over the kernel
protocol, since the gateway's host shares no files with us.

Every request has a connect and a read timeout. A dropped websocket is reconnected with the
same session (the server replays what it buffered meanwhile); if that fails the kernel is
reported lost, with the reason. The token goes in a header only: never into a URL, a log, a
report or a job folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any

from .._errors import BgJobError
from .base import KernelBackend
from .local import KernelStartError, execute_content, runner_boot_code

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
# A gateway that stops answering for this long has lost the job.
DOWN_AFTER = 10.0


class GatewayError(BgJobError):
    """The gateway could not be reached or refused a request; the message says which."""


def gateway_settings(url: str | None) -> tuple[str, str]:
    """(url, token): the argument, else ``configure(gateway=...)``, else jupyter_server's
    environment variables ``JUPYTER_GATEWAY_URL`` / ``JUPYTER_GATEWAY_AUTH_TOKEN``."""
    from .._config import settings

    url = url or settings.gateway or os.environ.get("JUPYTER_GATEWAY_URL", "")
    token = settings.gateway_token or os.environ.get("JUPYTER_GATEWAY_AUTH_TOKEN", "")
    return url.rstrip("/"), token


def _redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


class GatewayKernel:
    """One kernel on a gateway, with the job runner loaded."""

    pid = None

    def __init__(
        self, url: str, token: str, kernel_name: str = "python3", env: dict[str, str] | None = None
    ) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise GatewayError(
                f"gateway URL {url!r} is not an http(s) URL; for example "
                "http://gateway.example.org:8888"
            )
        self.url = url.rstrip("/")
        self._token = token
        self.kernel_name = kernel_name
        self.env = dict(env or {})
        self.kernel_id = ""
        self.session = uuid.uuid4().hex
        self._ws: Any = None
        self._iopub: queue.Queue[dict[str, Any]] = queue.Queue()
        self._shell: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.lost = ""  # why the kernel is gone, in words, once it is
        self._last_ok = time.monotonic()
        self._last_check = 0.0

    # -- REST ------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        if data is None and method == "POST":
            data = b""
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self._token:
            req.add_header("Authorization", f"token {self._token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = ""
            try:
                detail = json.loads(exc.read() or b"{}").get("message", "")
            except ValueError:
                pass
            if exc.code in (401, 403):
                raise GatewayError(
                    f"the gateway at {self.url} rejected the token (HTTP {exc.code}); set "
                    "JUPYTER_GATEWAY_AUTH_TOKEN or configure(gateway_token=...)"
                ) from None
            what = f": {_redact(detail, self._token)}" if detail else ""
            raise GatewayError(
                f"the gateway at {self.url} answered {method} {path} with HTTP {exc.code}{what}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise GatewayError(
                    f"the gateway at {self.url} did not answer {method} {path} within {timeout:g} s"
                ) from None
            why = _redact(str(reason), self._token)
            raise GatewayError(
                f"the gateway at {self.url} is not reachable ({why}); "
                "is it running, and is the URL right?"
            ) from None
        self._last_ok = time.monotonic()
        return json.loads(raw) if raw else None

    # -- life ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> GatewayKernel:
        try:
            model = self._request(
                "POST",
                "/api/kernels",
                {"name": self.kernel_name, "env": self.env},
                min(timeout, REQUEST_TIMEOUT),
            )
        except GatewayError as exc:
            raise KernelStartError(str(exc)) from None
        self.kernel_id = model["id"]
        try:
            self._connect()
            msg_id = self.execute(runner_boot_code(), silent=True)
            reply = self._reply(msg_id, timeout)
        except BaseException as exc:
            self.shutdown(now=True)
            if isinstance(exc, BgJobError):
                raise KernelStartError(str(exc)) from None
            raise KernelStartError(
                f"the gateway's kernel {self.kernel_name!r} did not become ready: "
                f"{_redact(str(exc), self._token)}"
            ) from None
        if reply["content"].get("status") != "ok":
            self.shutdown(now=True)
            raise KernelStartError(
                f"the gateway's kernel {self.kernel_name!r} could not load the job runner: "
                f"{reply['content'].get('ename')}: {reply['content'].get('evalue')}"
            )
        return self

    def _connect(self) -> None:
        try:
            import websocket
        except ImportError:
            raise GatewayError(
                "remote jobs need the websocket-client package: "
                "pip install 'jupyter_bgjobs[gateway]'"
            ) from None

        scheme = "wss" if self.url.startswith("https") else "ws"
        base = self.url.split("://", 1)[1]
        ws_url = (
            f"{scheme}://{base}/api/kernels/{self.kernel_id}/channels?session_id={self.session}"
        )
        header = [f"Authorization: token {self._token}"] if self._token else []
        try:
            # The kernel protocol is JSON; websocket-client's pure-Python UTF-8 check of
            # every text frame costs seconds per megabyte of a snapshot.
            ws = websocket.create_connection(
                ws_url, header=header, timeout=CONNECT_TIMEOUT, skip_utf8_validation=True
            )
        except Exception as exc:
            raise GatewayError(
                f"cannot open the kernel's websocket at the gateway {self.url}: "
                f"{_redact(str(exc), self._token)}"
            ) from None
        ws.settimeout(None)
        with self._lock:
            self._ws = ws
        threading.Thread(target=self._read, args=(ws,), name="bgjobs-gateway", daemon=True).start()

    def _read(self, ws: Any) -> None:
        while not self._closed:
            try:
                raw = ws.recv()
            except Exception as exc:
                if self._closed:
                    return
                self._reconnect(exc)
                return
            if not raw:
                if self._closed:
                    return
                self._reconnect(ConnectionError("the websocket closed"))
                return
            self._last_ok = time.monotonic()
            msg = json.loads(raw)
            channel = msg.get("channel")
            if channel == "iopub":
                self._iopub.put(msg)
            elif channel == "shell":
                self._shell.put(msg)

    def _reconnect(self, cause: BaseException) -> None:
        """The websocket dropped: open it again with the same session (the server keeps
        what the kernel sent meanwhile for a reconnecting session). Three tries, then the
        kernel is reported lost; never silent."""
        for attempt in range(3):
            if self._closed:
                return
            time.sleep(0.2 * (attempt + 1))
            try:
                self._connect()
                return
            except GatewayError:
                continue
        self.lost = (
            f"the websocket to the gateway {self.url} dropped "
            f"({_redact(str(cause), self._token) or type(cause).__name__}) and could not be "
            "reopened"
        )

    def _reply(self, msg_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GatewayError(f"no reply from the gateway's kernel within {timeout:g} s")
            if self.lost:
                raise GatewayError(self.lost)
            try:
                reply = self._shell.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return reply

    # -- the engine's surface ----------------------------------------------------------
    def execute(
        self, code: str, silent: bool = False, metadata: dict[str, Any] | None = None
    ) -> str:
        msg_id = uuid.uuid4().hex
        msg = {
            "header": {
                "msg_id": msg_id,
                "username": "jupyter_bgjobs",
                "session": self.session,
                "msg_type": "execute_request",
                "version": "5.3",
                "date": dt.datetime.now(dt.timezone.utc).isoformat(),
            },
            "parent_header": {},
            "metadata": metadata or {},
            "content": execute_content(code, silent),
            "channel": "shell",
            "buffers": [],
        }
        data = json.dumps(msg)
        deadline = time.monotonic() + CONNECT_TIMEOUT * 3
        while True:
            with self._lock:
                ws = self._ws
            try:
                ws.send(data)
                return msg_id
            except Exception as exc:
                # Mid-reconnect: the reader is opening a new websocket; wait for it.
                if self.lost or time.monotonic() > deadline:
                    raise GatewayError(
                        self.lost or f"cannot send to the gateway's kernel: {exc}"
                    ) from None
                time.sleep(0.1)

    def iopub(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._iopub.get(timeout=timeout)
        except queue.Empty:
            return None

    def alive(self) -> bool:
        if self._closed or self.lost:
            return False
        now = time.monotonic()
        if now - self._last_check < 1.0:
            return True
        self._last_check = now
        try:
            model = self._request("GET", f"/api/kernels/{self.kernel_id}", timeout=5.0)
        except GatewayError as exc:
            if "HTTP 404" in str(exc):
                self.lost = f"the gateway {self.url} reports the kernel is gone (HTTP 404)"
                return False
            if now - self._last_ok > DOWN_AFTER:
                self.lost = f"the gateway stopped answering for {DOWN_AFTER:g} s: {exc}"
                return False
            return True
        state = (model or {}).get("execution_state")
        if state == "dead":
            self.lost = "the gateway reports the kernel dead"
            return False
        return True

    def exit_code(self) -> int | None:
        return None

    def death_reason(self) -> str:
        return self.lost or "the gateway's kernel ended"

    def interrupt(self) -> None:
        try:
            self._request("POST", f"/api/kernels/{self.kernel_id}/interrupt", timeout=10.0)
        except GatewayError:
            pass

    def kill(self) -> None:
        self._delete()
        self.lost = self.lost or "the kernel was deleted on the gateway"

    def _delete(self) -> None:
        if not self.kernel_id:
            return
        try:
            self._request("DELETE", f"/api/kernels/{self.kernel_id}", timeout=10.0)
        except GatewayError:
            pass

    def shutdown(self, now: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            ws = self._ws
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        # Even after a drop the kernel may still run on the gateway: ask for its end.
        self._delete()

    def stderr_tail(self, limit: int = 2000) -> str:
        return ""

    def preimport(self, modules: list[str]) -> None:
        pass


if TYPE_CHECKING:  # mypy holds it to the driver's interface
    _kernel: type[KernelBackend] = GatewayKernel
