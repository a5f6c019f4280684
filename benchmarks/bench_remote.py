"""How fast a job's namespace travels: a large array in (the seed) and out (the results),
locally and through a Kernel Gateway on loopback, beside the raw websocket floor.

The floor is what a websocket on loopback carries with the same libraries (websocket-client
to tornado), measured in the same run; a remote job's transfer should approach it. Prints
one table. Run: python benchmarks/bench_remote.py [--mb 200] [--trials 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import numpy as np
from IPython.core.interactiveshell import InteractiveShell

import jupyter_bgjobs as bj
from jupyter_bgjobs._jobs import manager

TOKEN = "bench-remote-token"
CHUNK = 8 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kernel_gateway",
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}",
            f"--KernelGatewayApp.auth_token={TOKEN}",
        ],
        cwd=folder,
        env=dict(os.environ, JUPYTER_RUNTIME_DIR=os.path.join(folder, "runtime")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            req = urllib.request.Request(
                f"{url}/api/kernelspecs", headers={"Authorization": f"token {TOKEN}"}
            )
            urllib.request.urlopen(req, timeout=5).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the kernel gateway did not start") from None
            time.sleep(0.1)  # polling a port that is not open yet


def websocket_floor(nbytes: int) -> tuple[float, float]:
    """Seconds to send ``nbytes`` to a tornado websocket server, and to receive them back,
    in binary frames of 8 MiB: the transport's own cost, no Jupyter on top."""
    import asyncio

    import websocket
    from tornado import web
    from tornado import websocket as tws

    ready = threading.Event()
    state: dict[str, Any] = {}

    class Sink(tws.WebSocketHandler):
        got = 0

        def on_message(self, message: Any) -> None:
            if message == "send":
                payload = b"\0" * CHUNK
                for _ in range(nbytes // CHUNK):
                    self.write_message(payload, binary=True)
                return
            self.got += len(message)
            if self.got >= nbytes:
                self.write_message(str(self.got))

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application([("/ws", Sink)], websocket_max_message_size=2 * CHUNK)
        server = app.listen(0, "127.0.0.1", max_buffer_size=4 * CHUNK)
        state["port"] = next(iter(server._sockets.values())).getsockname()[1]
        state["loop"] = loop
        ready.set()
        loop.run_forever()
        server.stop()
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    ws = websocket.create_connection(f"ws://127.0.0.1:{state['port']}/ws")
    payload = b"\1" * CHUNK
    t0 = time.perf_counter()
    for _ in range(nbytes // CHUNK):
        ws.send_binary(payload)
    ws.recv()
    up = time.perf_counter() - t0
    t0 = time.perf_counter()
    ws.send("send")
    got = 0
    while got < (nbytes // CHUNK) * CHUNK:
        got += len(ws.recv())
    down = time.perf_counter() - t0
    ws.close()
    state["loop"].call_soon_threadsafe(state["loop"].stop)
    thread.join(10)
    return up, down


def job_transfer(ip: Any, gateway: str | None, trials: int) -> tuple[list[float], list[float]]:
    """(seed in, results out) in seconds, from the job's own milestones."""
    ins, outs = [], []
    for i in range(trials):
        name = f"bench_remote_{'gw' if gateway else 'local'}_{i}"
        job = bj.run_cell("out = arr + 1", name, env="arr", results="none", gateway=gateway).wait(
            600
        )
        assert job.state == "succeeded", job.reason
        t = job.timings
        assert job.results is not None and job.results.out.nbytes == ip.user_ns["arr"].nbytes
        ins.append(t["seeded"] - t["snapshot_written"])
        outs.append(t["results_loaded"] - t["code_done"])
        manager.join_worker(job)
    return ins, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    nbytes = args.mb * 1024 * 1024
    folder = tempfile.mkdtemp(prefix="bench-remote-")
    bj.configure(root=folder)
    ip = InteractiveShell.instance()
    ip.user_ns["arr"] = np.ones(nbytes // 8)
    proc, url = start_gateway(folder)
    os.environ["JUPYTER_GATEWAY_AUTH_TOKEN"] = TOKEN
    try:
        local = job_transfer(ip, None, args.trials)
        remote = job_transfer(ip, url, args.trials)
    finally:
        manager.shutdown()
        proc.terminate()
        proc.wait(30)
    up, down = websocket_floor(nbytes)
    mb = nbytes / 1e6
    rows = [
        ("local job", statistics.median(local[0]), statistics.median(local[1])),
        ("gateway job (loopback)", statistics.median(remote[0]), statistics.median(remote[1])),
        ("raw websocket floor", up, down),
    ]
    print(f"{args.mb} MiB array; MB/s each way (median of {args.trials}); speed / the floor's")
    print(f"{'path':26} {'in MB/s':>9} {'out MB/s':>9} {'in x':>9} {'out x':>10}")
    for label, t_in, t_out in rows:
        print(
            f"{label:26} {mb / t_in:9.0f} {mb / t_out:9.0f} {up / t_in:9.2f} {down / t_out:10.2f}"
        )
    print(json.dumps({"target_mb_s_each_way": 100}))


if __name__ == "__main__":
    main()
