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

import asyncio
import datetime as dt
import functools
import json
import os
import queue
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import BgJobError
from .base import KernelBackend
from .local import KernelStartError, execute_content, runner_boot_code

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
# One frame handed to a socket that takes nothing for this long: the link is gone.
SEND_TIMEOUT = 60.0
# The largest message we take from a gateway: a kernel's display output can be large.
MAX_MESSAGE = 1 << 30
# A gateway that stops answering for this long has lost the job.
DOWN_AFTER = 10.0


class GatewayError(BgJobError):
    """The gateway could not be reached or refused a request; the message says which."""


def gateway_settings(url: str | None) -> tuple[str, str]:
    """(url, token): the argument, else ``configure(gateway=...)``, else jupyter_server's
    environment variables ``JUPYTER_GATEWAY_URL`` / ``JUPYTER_GATEWAY_AUTH_TOKEN``; a
    gateway set to ``env`` (or ``default``) is that variable's. The url is "" if none."""
    from .._config import settings

    url = url or settings.gateway
    if not url or url in ("env", "default"):
        url = os.environ.get("JUPYTER_GATEWAY_URL", "")
    token = settings.gateway_token or os.environ.get("JUPYTER_GATEWAY_AUTH_TOKEN", "")
    return url.rstrip("/"), token


def _redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


_IO: dict[str, asyncio.AbstractEventLoop] = {}
_IO_LOCK = threading.Lock()


def _io_loop() -> asyncio.AbstractEventLoop:
    """The one event loop of every gateway websocket in this process, on its own thread:
    tornado's websocket client masks and parses frames in C, where a pure-Python client
    spends most of a transfer masking."""
    with _IO_LOCK:
        loop = _IO.get("loop")
        if loop is None or loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="bgjobs-gateway-io", daemon=True).start()
            _IO["loop"] = loop
        return loop


def _io_call(make: Callable[[], Any], timeout: float) -> Any:
    """Run ``make()`` (an awaitable made on the IO thread, where tornado needs it) there and
    wait for its result."""

    async def wrapped() -> Any:
        return await make()

    return asyncio.run_coroutine_threadsafe(wrapped(), _io_loop()).result(timeout)


async def _write(ws: Any, data: str | bytes) -> None:
    if ws is None:
        raise ConnectionError("no websocket yet")
    await ws.write_message(data, binary=isinstance(data, bytes))


def pack_message(msg: dict[str, Any], buffers: list[Any]) -> str | bytes:
    """A kernel message for jupyter_server's websocket: JSON text, or with binary buffers
    its binary form (the count of parts and their offsets as big-endian 32-bit integers,
    then the JSON, then each buffer as it is)."""
    if not buffers:
        return json.dumps(msg)
    head = json.dumps(msg).encode()
    views = [memoryview(b).cast("B") for b in buffers]
    count = len(views) + 1
    offsets = [4 * (count + 1)]
    for part in (head, *views[:-1]):
        offsets.append(offsets[-1] + len(part))
    return b"".join([struct.pack(f"!{count + 1}I", count, *offsets), head, *views])


def unpack_message(raw: str | bytes) -> dict[str, Any]:
    """The inverse of ``pack_message``; binary buffers are views of ``raw``, not copies."""
    if isinstance(raw, str):
        msg: dict[str, Any] = json.loads(raw)
        msg.setdefault("buffers", [])
        return msg
    view = memoryview(raw)
    if len(view) < 8:
        raise ValueError("a binary message too short to be a kernel message")
    (count,) = struct.unpack("!I", view[:4])
    offsets = [*struct.unpack(f"!{count}I", view[4 : 4 * (count + 1)]), len(view)]
    parts = [view[offsets[i] : offsets[i + 1]] for i in range(count)]
    msg = json.loads(bytes(parts[0]))
    msg["buffers"] = parts[1:]
    return msg


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
        self.connections = 0  # websockets opened so far: more than one after a drop
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
    def _named(self) -> None:
        """Called once the gateway has named the kernel, before anything else is asked of
        it: a subclass that must know every kernel it could leave behind hooks in here."""

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
        self._named()
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
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        scheme = "wss" if self.url.startswith("https") else "ws"
        base = self.url.split("://", 1)[1]
        ws_url = (
            f"{scheme}://{base}/api/kernels/{self.kernel_id}/channels?session_id={self.session}"
        )
        headers = {"Authorization": f"token {self._token}"} if self._token else {}
        request = HTTPRequest(
            ws_url,
            headers=headers,
            connect_timeout=CONNECT_TIMEOUT,
            request_timeout=CONNECT_TIMEOUT,
        )
        try:
            ws = _io_call(
                lambda: websocket_connect(request, max_message_size=MAX_MESSAGE),
                CONNECT_TIMEOUT * 2,
            )
        except Exception as exc:
            raise GatewayError(
                f"cannot open the kernel's websocket at the gateway {self.url}: "
                f"{_redact(str(exc) or type(exc).__name__, self._token)}"
            ) from None
        with self._lock:
            self._ws = ws
            # Transfers in flight ask again for what the old connection may have lost.
            self.connections += 1
        asyncio.run_coroutine_threadsafe(self._read(ws), _io_loop())

    async def _read(self, ws: Any) -> None:
        # On the IO thread: every message is parsed here and queued for the driver.
        while not self._closed:
            raw = await ws.read_message()
            if raw is None:
                if not self._closed:
                    reason = ws.close_reason or "the websocket closed"
                    threading.Thread(
                        target=self._reconnect,
                        args=(ConnectionError(reason),),
                        name="bgjobs-gateway-reconnect",
                        daemon=True,
                    ).start()
                return
            self._last_ok = time.monotonic()
            try:
                msg = unpack_message(raw)
            except Exception:
                continue  # not a kernel message: nothing of ours (and the reader lives on)
            channel = msg.get("channel")
            if channel == "iopub":
                state = (msg.get("content") or {}).get("execution_state")
                if msg.get("msg_type") == "status" and state in ("restarting", "dead"):
                    # The gateway's restarter says the kernel's process ended: a restarted
                    # kernel has none of the job's state, so the job's kernel is gone.
                    self.lost = self.lost or (
                        "the gateway's kernel ended on its own (the gateway said "
                        f"{state!r}); what it held is gone"
                    )
                self._iopub.put(msg)
            elif channel == "shell":
                self._shell.put(msg)

    def drop_connection(self) -> None:
        """Cut the websocket's TCP connection as a failing network would (tests use it)."""
        with self._lock:
            ws = self._ws
        stream = getattr(getattr(ws, "protocol", None), "stream", None)
        sock = getattr(stream, "socket", None)
        if sock is not None:
            import socket

            sock.shutdown(socket.SHUT_RDWR)

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
        self,
        code: str,
        silent: bool = False,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
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
        }
        data = pack_message(msg, buffers or [])
        deadline = time.monotonic() + CONNECT_TIMEOUT * 3
        while True:
            with self._lock:
                ws = self._ws
            try:
                # Waits until the frame is handed to the socket: a slow link slows the
                # sender instead of piling the payload up in memory.
                _io_call(functools.partial(_write, ws, data), SEND_TIMEOUT)
                return msg_id
            except Exception as exc:
                # Mid-reconnect: the reader is opening a new websocket; wait for it.
                if self.lost or self._closed or time.monotonic() > deadline:
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
            gone = self.check(5.0)
        except GatewayError as exc:
            if now - self._last_ok > DOWN_AFTER:
                self.lost = f"the gateway stopped answering for {DOWN_AFTER:g} s: {exc}"
                return False
            return True
        if gone:
            self.lost = gone
            return False
        return True

    def check(self, timeout: float) -> str:
        """Ask the gateway about the kernel now: "" while it has it, else why it is gone.
        Raises ``GatewayError`` when the gateway does not answer."""
        try:
            model = self._request("GET", f"/api/kernels/{self.kernel_id}", timeout=timeout)
        except GatewayError as exc:
            if "HTTP 404" in str(exc):
                return f"the gateway {self.url} reports the kernel is gone (HTTP 404)"
            raise
        if (model or {}).get("execution_state") == "dead":
            return "the gateway reports the kernel dead"
        return ""

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
                _io_loop().call_soon_threadsafe(ws.close)
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
