"""What the IDE's rows and event stream cost a real jupyter_server.

Three tables, each with its floor measured in the same run:

1. One read of every row with N ended jobs in the store (the watcher's tick): rows read
   whole, against rows of unchanged ended jobs kept, against listing the folders.
2. ``/api/status`` latency (p50, p95) of the same server with no page open and with 100
   pages following the event stream, while 30 jobs run (their records rewritten twice a
   second, as running jobs' are), as a ratio.
3. The server's resident memory while 4 pages read a large log whole at once, against
   the log's size.

Run: python benchmarks/bench_server.py [--jobs 200] [--pages 100] [--running 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

import jupyter_bgjobs as bj
from jupyter_bgjobs._inside import procs as _procs
from jupyter_bgjobs._runtime import pid_alive
from jupyter_bgjobs._server.rows import Rows, job_row

TOKEN = "bench-server-token"


def best(fn: Callable[[], object], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def seed_job(root: Path) -> Any:
    """One finished detached job, its host gone."""
    script = root / "job.py"
    script.write_text("total = 6\nprint('total', total)\n")
    job = bj.run_script(script, name="seed", detach=True).wait(120)
    assert job.state == "succeeded", job.reason
    host = json.loads((job.folder / "host.json").read_text())["pid"]
    while pid_alive(host):  # its host ends just after the record says succeeded
        time.sleep(0.05)
    return job


def copy_entry(job: Any, **record: Any) -> Path:
    copy = job.folder.with_name(uuid.uuid4().hex[:8])
    shutil.copytree(job.folder, copy)
    spec = json.loads((copy / "spec.json").read_text())
    spec["id"] = copy.name
    (copy / "spec.json").write_text(json.dumps(spec))
    if record:
        state = json.loads((copy / "state.json").read_text())
        state.update(record)
        (copy / "state.json").write_text(json.dumps(state))
    return copy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                "--allow-root",
                f"--port={self.port}",
                "--ServerApp.ip=127.0.0.1",
                f"--IdentityProvider.token={TOKEN}",
                f"--ServerApp.root_dir={root}",
            ],
            env={**os.environ, "JUPYTER_BGJOBS_DIR": str(root / "store")},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/api/status")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def get(self, path: str, **headers: str) -> bytes:
        req = urllib.request.Request(self.url + path)
        req.add_header("Authorization", f"token {TOKEN}")
        for key, value in headers.items():
            req.add_header(key, value)
        with urllib.request.urlopen(req, timeout=60) as resp:
            return bytes(resp.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def status_latency(server: Server, n: int = 200) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        server.get("/api/status")
        times.append(time.perf_counter() - t0)
        time.sleep(0.01)  # a page's request now and then, not a flood
    times.sort()
    return statistics.median(times), times[int(0.95 * len(times)) - 1]


def follow(server: Server, stop: threading.Event, counts: list[int], i: int) -> None:
    """One page: follow the event stream until told to stop, counting its events."""
    req = urllib.request.Request(server.url + "/bgjobs/api/events")
    req.add_header("Authorization", f"token {TOKEN}")
    with urllib.request.urlopen(req, timeout=60) as stream:
        while not stop.is_set():
            line = stream.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                counts[i] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--running", type=int, default=30)
    parser.add_argument("--log-mib", type=int, default=300)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    sleeper = None
    try:
        bj.configure(root=str(root / "store"))
        job = seed_job(root)
        for _ in range(args.jobs - 1):
            copy_entry(job)

        # 1. one read of every row
        where = str(root)
        folders = Rows(where)._folders
        tables = [
            ("every row read whole", lambda: [job_row(f, d, where) for f, d in folders()]),
            ("ended rows kept (the watcher)", Rows(where).read),
            ("floor: listing the folders", folders),
        ]
        Rows(where).read()  # warm the file system's caches
        kept = tables[1][1]
        kept()
        times = [(label, best(fn)) for label, fn in tables]
        floor = times[-1][1]
        print(f"one read of every row, {args.jobs} ended jobs (best of 7)")
        print(f"{'':32} {'ms':>8} {'vs floor':>9}")
        for label, t in times:
            print(f"{label:32} {t * 1000:8.1f} {t / floor:9.2f}")

        # 2. /api/status with many pages, many running jobs
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        host = {"host_pid": sleeper.pid, "host_id": _procs.identity(sleeper.pid)}
        running = [
            copy_entry(job, state="running", finished=None, finished_ts=None, **host)
            for _ in range(args.running)
        ]
        for folder in running:
            (folder / "host.json").write_text(
                json.dumps({"pid": sleeper.pid, "pid_id": host["host_id"]})
            )
        server = Server(root)
        writing = threading.Event()

        def progress() -> None:  # what running jobs do: rewrite their records
            n = 0
            while not writing.wait(0.5):
                n += 1
                for folder in running:
                    state = json.loads((folder / "state.json").read_text())
                    state["progress"] = [n, 10**6]
                    tmp = folder / ".state.tmp"
                    tmp.write_text(json.dumps(state))
                    os.replace(tmp, folder / "state.json")

        writer = threading.Thread(target=progress, daemon=True)
        writer.start()
        try:
            alone = status_latency(server)
            stop = threading.Event()
            counts = [0] * args.pages
            pages = [
                threading.Thread(target=follow, args=(server, stop, counts, i), daemon=True)
                for i in range(args.pages)
            ]
            for page in pages:
                page.start()
            while sum(1 for c in counts if c) < args.pages:  # every page has its first event
                time.sleep(0.1)
            before = sum(counts)
            proc = psutil.Process(server.proc.pid)
            cpu0 = proc.cpu_times()
            t0 = time.monotonic()
            busy = status_latency(server)
            spent = time.monotonic() - t0
            cpu = sum(proc.cpu_times()[:2]) - sum(cpu0[:2])
            events = (sum(counts) - before) / args.pages
            stop.set()
        finally:
            writing.set()
        print()
        print(
            f"/api/status, {args.running} running jobs (records rewritten every 0.5 s), "
            f"200 requests"
        )
        print(f"{'':34} {'p50 ms':>8} {'p95 ms':>8} {'p95 vs no pages':>16}")
        print(f"{'no page open':34} {alone[0] * 1000:8.1f} {alone[1] * 1000:8.1f} {1:16.2f}")
        print(
            f"{f'{args.pages} pages following events':34} {busy[0] * 1000:8.1f} "
            f"{busy[1] * 1000:8.1f} {busy[1] / alone[1]:16.2f}"
        )
        print(
            f"meanwhile: each page got {events / spent:.1f} events/s; the server used "
            f"{cpu / spent:.0%} of a core"
        )
        server.stop()

        # 3. a large log read whole by 4 pages at once
        big = copy_entry(job)
        with open(big / "output.log", "wb") as fh:
            line = b"x" * 1023 + b"\n"
            for _ in range(args.log_mib * 1024):
                fh.write(line)
        server = Server(root)
        proc = psutil.Process(server.proc.pid)
        start_rss = proc.memory_info().rss
        peak = start_rss
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.01):
                peak = max(peak, proc.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        sizes: list[int] = []
        readers = [
            threading.Thread(
                target=lambda: sizes.append(len(server.get(f"/bgjobs/api/jobs/{big.name}/log")))
            )
            for _ in range(4)
        ]
        t0 = time.monotonic()
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        took = time.monotonic() - t0
        done.set()
        sampler.join()
        server.stop()
        assert sizes == [args.log_mib << 20] * 4, sizes
        print()
        print(f"4 pages read a {args.log_mib} MiB log whole at once ({took:.1f} s)")
        print(
            f"server's peak RSS above its start: {(peak - start_rss) / 2**20:.0f} MiB "
            f"(floor: the log itself, {args.log_mib} MiB; "
            f"{(peak - start_rss) / (args.log_mib << 20):.2f}x)"
        )
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
