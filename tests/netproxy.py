"""A TCP proxy on 127.0.0.1 in front of a real server: the network between a notebook and
its gateway, which tests make fail. It counts the bytes a kernel's websocket carries each
way and, once a chosen count has passed, cuts that connection (a dropped link) or calls
a function (the gateway dies mid-transfer)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

WEBSOCKET = b"/channels"  # in the first line of a kernel websocket's request


class Proxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``. ``trip(direction, after, action)``
    arms one fault: when the websockets have carried ``after`` more bytes in
    ``direction`` ("up": to the server, "down": from it), ``action`` runs; the default
    action cuts every open websocket connection. ``refuse`` turns new connections away."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.carried = {"up": 0, "down": 0}
        self.cuts = 0
        self.refuse = False
        self._lock = threading.Lock()
        self._trip: tuple[str, int, Callable[[], Any] | None] | None = None
        self._websockets: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="test-proxy", daemon=True)
        self._thread.start()

    def trip(self, direction: str, after: int, action: Callable[[], Any] | None = None) -> None:
        with self._lock:
            self._trip = (direction, self.carried[direction] + after, action)

    def cut(self) -> None:
        """Cut every websocket connection open now, both ends, as a broken link would."""
        with self._lock:
            pairs, self._websockets = self._websockets, []
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        self.cut()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._start, args=(client, server), daemon=True).start()

    def _start(self, client: socket.socket, server: socket.socket) -> None:
        first = client.recv(65536)
        websocket = WEBSOCKET in first.split(b"\r\n", 1)[0]
        if websocket:
            with self._lock:
                self._websockets.append((client, server))
        server.sendall(first)
        down = threading.Thread(
            target=self._pump, args=(server, client, "down" if websocket else ""), daemon=True
        )
        down.start()
        self._pump(client, server, "up" if websocket else "")
        down.join()
        for sock in (client, server):
            sock.close()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        while True:
            try:
                data = src.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                break
            action = None
            if direction:
                with self._lock:
                    self.carried[direction] += len(data)
                    armed = self._trip
                    if armed and armed[0] == direction and self.carried[direction] >= armed[1]:
                        self._trip = None
                        action = armed[2] or self.cut
            if action is not None:
                action()
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
