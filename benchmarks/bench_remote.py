"""How fast a job's namespace travels: a large array in (the seed) and out (the results),
locally and through a Kernel Gateway on loopback, beside the raw websocket floor.

The floor is what a websocket on loopback carries with the same libraries (tornado's client
to a tornado server), measured in the same run; a remote job's transfer should approach it. Prints
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
from jupyter_bgjobs._api import manager

TOKEN = "bench-remote-token"
CHUNK = 4 * 1024 * 1024  # as a job's snapshot chunks


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
    in binary frames of 4 MiB with tornado's client (the one remote jobs use): the
    transport's own cost, no Jupyter on top."""
    import asyncio

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

    async def client() -> tuple[float, float]:
        from tornado.websocket import websocket_connect

        ws = await websocket_connect(
            f"ws://127.0.0.1:{state['port']}/ws", max_message_size=2 * CHUNK
        )
        payload = b"\1" * CHUNK
        t0 = time.perf_counter()
        for _ in range(nbytes // CHUNK):
            await ws.write_message(payload, binary=True)
        await ws.read_message()
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        await ws.write_message("send")
        got = 0
        while got < (nbytes // CHUNK) * CHUNK:
            got += len(await ws.read_message())
        down = time.perf_counter() - t0
        ws.close()
        return up, down

    up, down = asyncio.run(client())
    state["loop"].call_soon_threadsafe(state["loop"].stop)
    thread.join(10)
    return up, down


class PeakRss:
    """The highest resident memory of this process and, apart, of the kernels under
    ``parent`` (a gateway's, or ours), sampled every 5 ms while a job runs."""

    def __init__(self, parent: int) -> None:
        import psutil

        self.me = psutil.Process()
        self.parent = psutil.Process(parent)
        self.base_me = self.me.memory_info().rss
        self.peak_me = self.base_me
        self.base_kernel: dict[int, int] = {}
        self.peak_kernel = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.005):
            self.peak_me = max(self.peak_me, self.me.memory_info().rss)
            for child in self.parent.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                if "ipykernel" not in " ".join(child.cmdline()):
                    continue
                # A kernel's growth over what it held when first seen (started, idle).
                base = self.base_kernel.setdefault(child.pid, rss)
                self.peak_kernel = max(self.peak_kernel, rss - base)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peak_me - self.base_me, self.peak_kernel


def job_transfer(
    ip: Any, gateway: str | None, trials: int, parent: int
) -> tuple[list[float], list[float], list[tuple[int, int]]]:
    """(seed in, results out) in seconds, from the job's own milestones, and each trial's
    peak memory growth (notebook, job kernel) in bytes."""
    ins, outs, peaks = [], [], []
    for i in range(trials):
        name = f"bench_remote_{'gw' if gateway else 'local'}_{i}"
        rss = PeakRss(parent)
        job = bj.run_cell("out = arr + 1", name, env="arr", results="none", gateway=gateway).wait(
            600
        )
        peaks.append(rss.stop())
        assert job.state == "succeeded", job.reason
        t = job.timings
        assert job.results is not None and job.results.out.nbytes == ip.user_ns["arr"].nbytes
        # Taking the seed, then its way into the kernel once the kernel is there: a remote
        # kernel's start (a new kernel, or a warm one) is not the transport's time.
        taken = t["snapshot_written"] - t["snapshot_started"]
        ins.append(taken + t["seeded"] - max(t["kernel_ready"], t["snapshot_written"]))
        outs.append(t["results_loaded"] - t["code_done"])
        manager.join_worker(job)
        del job
    return ins, outs, peaks


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
        local = job_transfer(ip, None, args.trials, os.getpid())
        remote = job_transfer(ip, url, args.trials, proc.pid)
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
    print()
    print("peak memory growth while the job runs, in payloads (max of trials). The values")
    print("themselves: 2 in the kernel (arr, out); 1 in the notebook (out), except for a local")
    print("job, whose results are mapped from their file and not resident until read")
    print(f"{'path':26} {'notebook':>9} {'kernel':>9}")
    for label, result in (("local job", local), ("gateway job (loopback)", remote)):
        me = max(p[0] for p in result[2]) / nbytes
        kernel = max(p[1] for p in result[2]) / nbytes
        print(f"{label:26} {me:9.2f} {kernel:9.2f}")
    print(json.dumps({"target_mb_s_each_way": 100}))


if __name__ == "__main__":
    main()
