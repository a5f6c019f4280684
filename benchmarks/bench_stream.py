"""Does the notebook stay responsive while a job floods it with output?

A real notebook kernel (ipykernel through jupyter_client, with the extension loaded and the
job's row widget live) runs ``%%bgjob`` with a job that prints LINES lines. While it
streams, a client times the notebook kernel's execute round trip (``execute`` -> reply) of
a trivial cell; the same is measured with no job running, in the same run. Also printed: the
notebook kernel's resident memory before and after, the job's run time, and how many lines
reached the log on disk.

Then the flood cases: jobs that print 1 GiB in 1 MiB writes, one 300 MiB line, and a
million short lines, with the notebook kernel's peak resident memory above its resident
memory before the job (sampled every 10 ms by this process), against the bound of 64 MiB;
the log on disk must be complete.

Run: python benchmarks/bench_stream.py [--lines 200000] [--probes 200] [--flood-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

import psutil
from jupyter_client import BlockingKernelClient, KernelManager


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def execute(kc: BlockingKernelClient, code: str, timeout: float = 300) -> tuple[float, str]:
    """Run ``code``; return (seconds to its reply, its stdout). iopub is drained so the
    notebook kernel never blocks on a slow reader."""
    out: list[str] = []
    t0 = time.perf_counter()
    msg_id = kc.execute(code)
    while True:  # skip replies to earlier requests (kernel_info from wait_for_ready)
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    took = time.perf_counter() - t0
    assert reply["content"]["status"] == "ok", reply["content"]
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return took, "".join(out)


def probe(kc: BlockingKernelClient, n: int, while_running: str | None) -> list[float]:
    """Round trips of a trivial cell; with ``while_running``, only those made while that
    job was still running count."""
    times: list[float] = []
    for _ in range(n):
        took, _ = execute(kc, "pass")
        times.append(took)
        if while_running is not None:
            _, state = execute(kc, f"print(get_job({while_running!r}).state)")
            if state.strip() not in ("pending", "starting", "running"):
                times.pop()
                break
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--flood-mib", type=int, default=1024)
    args = parser.parse_args()

    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    nb = psutil.Process(km.provisioner.pid)  # type: ignore[union-attr]
    try:
        execute(kc, "%load_ext jupyter_bgjobs\nfrom jupyter_bgjobs import get_job")
        # Warm up: one job, so the pool's kernel and the row widgets exist on both sides.
        execute(kc, "%%bgjob warm\nx = 1")
        execute(kc, "get_job('warm').wait(120)")
        idle = probe(kc, args.probes, None)
        rss_before = nb.memory_info().rss

        execute(
            kc,
            f"%%bgjob flood\nfor i in range({args.lines}):\n    print('line', i, 'of the flood')",
        )
        execute(
            kc,
            "import time\njob = get_job('flood')\n"
            "with job._cond:\n    job._cond.wait_for(lambda: job.state != 'pending', 60)",
        )
        busy = probe(kc, args.probes * 50, "flood")
        _, info = execute(
            kc,
            "import json\nj = get_job('flood').wait(600)\n"
            "lines = sum(1 for ln in open(j.log_path) if ln.startswith('line '))\n"
            "print(json.dumps({'state': j.state, 'elapsed': j.elapsed, 'lines': lines,"
            " 'tail': len(j.outputs)}))",
        )
        rss_after = nb.memory_info().rss
        floods = [flood(kc, nb, *case) for case in _floods(args.flood_mib)]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    stats: dict[str, Any] = json.loads(info)

    def row(label: str, values: list[float]) -> str:
        med, p95 = statistics.median(values) * 1e3, pct(values, 0.95) * 1e3
        return f"| {label} | {len(values)} | {med:.1f} ms | {p95:.1f} ms |"

    print(f"notebook kernel execute round trip; job prints {args.lines:,} lines")
    print()
    print("| condition | probes | median | p95 |")
    print("|---|---|---|---|")
    print(row("no job running", idle))
    print(row("while the job streams", busy))
    ratio = pct(busy, 0.95) / pct(idle, 0.95)
    print()
    print(f"p95 ratio streaming / idle: {ratio:.2f}x (target: p95 <= 50 ms while streaming)")
    print(
        f"job: {stats['state']} in {stats['elapsed']:.1f} s; log on disk has "
        f"{stats['lines']:,} lines; {stats['tail']} outputs kept in memory"
    )
    print(
        f"notebook kernel RSS: {rss_before / 2**20:.0f} MiB before, "
        f"{rss_after / 2**20:.0f} MiB after"
    )

    print()
    print("| flood | printed | job time | log on disk | notebook peak RSS above start |")
    print("|---|---|---|---|---|")
    for label, size, seconds, logged, peak in floods:
        print(
            f"| {label} | {size / 2**20:,.0f} MiB | {seconds:.1f} s | {logged / 2**20:,.0f} MiB "
            f"| {peak / 2**20:.0f} MiB (bound 64 MiB) |"
        )


def _floods(mib: int) -> list[tuple[str, str, int, bool]]:
    """(label, code, characters printed, whether the notebook computes meanwhile)."""
    busy = max(1, mib // 2)
    return [
        (
            f"{mib} x 1 MiB writes",
            f"import sys\nfor _ in range({mib}):\n    sys.stdout.write('x' * (1 << 20))",
            mib << 20,
            False,
        ),
        ("one 300 MiB line", "print('x' * (300 << 20))", (300 << 20) + 1, False),
        (
            "a million short lines",
            "for i in range(1_000_000):\n    print(f'{i:07d}')",
            8_000_000,
            False,
        ),
        (
            f"{busy} x 1 MiB writes, the notebook computing meanwhile",
            f"import sys\nfor _ in range({busy}):\n    sys.stdout.write('x' * (1 << 20))",
            busy << 20,
            True,
        ),
    ]


def flood(
    kc: BlockingKernelClient, nb: psutil.Process, label: str, code: str, size: int, busy: bool
) -> tuple[str, int, float, int, int]:
    """Run one flood job from the notebook kernel; return its size, time, log size and the
    notebook kernel's peak RSS above what it had before the job. ``busy``: the notebook's
    cell computes in pure Python until the job ends, so the job's driver thread gets the
    GIL only now and then (without credit for output this is what overflowed)."""
    start = nb.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], nb.memory_info().rss)
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, info = execute(
            kc,
            "import json, os\nfrom jupyter_bgjobs import run_cell\n"
            f"j = run_cell({code!r}, name='flood_bytes', env='none')\n"
            + ("while not j.done:\n    sum(i * i for i in range(200_000))\n" if busy else "")
            + "j.wait(900)\n"
            "print(json.dumps({'elapsed': j.elapsed, 'log': os.path.getsize(j.log_path),"
            " 'state': j.state}))",
            timeout=900,
        )
    finally:
        done.set()
        sampler.join()
    # wait() prints the job's report line first.
    stats = json.loads(info.strip().splitlines()[-1])
    assert stats["state"] == "succeeded", stats
    return label, size, stats["elapsed"], stats["log"], peak[0] - start


if __name__ == "__main__":
    main()
