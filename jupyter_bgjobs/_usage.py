"""What a job costs while it runs: the memory (resident now, and its peak) and the CPU of
its kernel and of every process the kernel started, sampled about once a second by the
thread that drives the job; and what a memory limit is, in bytes and in words."""

from __future__ import annotations

import os
import re
import time
from typing import Any

# Samples kept for a job's plot: when full, every other one goes and the step doubles,
# so a day-long job keeps its whole life at a coarser grain.
MAX_SAMPLES = 240

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int | None:
    """Bytes of ``8G``, ``300MB``, ``1.5GiB``, ``512000`` (G and GB are 10**9, Gi and GiB
    2**30); None for text that is no size."""
    found = _SIZE.match(text)
    if not found or found.group(2).lower() not in _UNITS:
        return None
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


def size_text(n: float) -> str:
    """Bytes as a person reads them: ``812 MB``, ``8.1 GB``."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def machine_memory() -> int:
    """The machine's memory, in bytes (0 when it cannot be read)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # no psutil, or a platform it cannot read
        return 0


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has ended in this process's memory
    cgroup (cgroup v2 ``memory.events``, v1 ``memory.oom_control``), or None where the
    system does not say."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = f.read(4096).splitlines()
    except OSError:
        return None
    places = []
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":
            places.append(f"/sys/fs/cgroup{path}/memory.events")
        elif "memory" in controllers.split(","):
            places.append(f"/sys/fs/cgroup/memory{path}/memory.oom_control")
    for place in places:
        try:
            with open(place, encoding="utf-8") as f:
                for entry in f.read(4096).splitlines():
                    key, _, value = entry.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


# Records of the kernel log read at most, looking for an OOM kill (a long-running machine's
# log holds a few thousand).
_KMSG_RECORDS = 20000


def oom_logged(pid: int) -> bool:
    """Whether the kernel log (``/dev/kmsg``, where this user may read it) says the OOM
    killer killed ``pid``."""
    import os

    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    wanted = f"Killed process {pid} ".encode()
    try:
        for _ in range(_KMSG_RECORDS):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:  # read to its end
                return False
            except OSError:  # a record overwritten while read: go on with the next
                continue
            # "Out of memory: Killed process 1234 (python) ...", or "Memory cgroup out of
            # memory: Killed process 1234 ...": the OOM killer's words, in either case.
            if wanted in record:
                return True
    finally:
        os.close(fd)
    return False


def _gpu_handles() -> list[Any]:
    """NVIDIA's devices, where its management library (``pynvml``) is present and
    answers; none elsewhere (then GPU memory is not sampled)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no library, no driver, no device
        return []


def _gpu_memory(handles: list[Any], pids: set[int]) -> int:
    """Bytes of GPU memory the processes ``pids`` hold, over every device."""
    import pynvml

    used = 0
    for handle in handles:
        try:
            running = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:
            continue
        used += sum(p.usedGpuMemory or 0 for p in running if p.pid in pids)
    return used


def _descendants(pid: int) -> list[int] | None:
    """The processes below ``pid``, as Linux lists each thread's children; None where it
    does not (psutil then reads every process of the machine to find them, milliseconds
    a sample on a busy one)."""
    if not _LISTS_CHILDREN:
        return None
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # ended since it was listed
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    kids = [int(k) for k in f.read(1 << 16).split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


_LISTS_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


class Sampler:
    """Samples the process tree of one job's kernel (``pid``)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self._procs: dict[int, Any] = {}
        # CPU seconds of the tree's processes that have ended since.
        self._gone_cpu = 0.0
        self._last_cpu: dict[int, float] = {}
        self.t0 = time.monotonic()
        self.rss = 0
        self.peak = 0
        self.cpu = 0.0
        self.cpu_seconds = 0.0
        self.samples: list[list[float]] = []
        self._step = 1
        self._skipped = 0
        self.oom_kills_at_start = oom_kills()
        self._gpus = _gpu_handles()
        self.gpu = 0
        self.gpu_peak = 0

    def sample(self) -> dict[str, Any]:
        """Take one sample; what ``job.resources`` says now."""
        psutil = self._psutil
        below = _descendants(self.root.pid)
        if below is not None:
            tree = [self.root]
            for pid in below:
                try:
                    tree.append(self._procs.get(pid) or psutil.Process(pid))
                except psutil.Error:
                    continue  # ended since it was listed
        else:
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                tree = []
        rss, cpu, seconds = 0, 0.0, 0.0
        alive: dict[int, Any] = {}
        for proc in tree:
            # The same object between samples: its CPU percent is since the last one.
            proc = self._procs.get(proc.pid, proc)
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    cpu += proc.cpu_percent(None)
                    times = proc.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            seconds += used
            alive[proc.pid] = proc
            self._last_cpu[proc.pid] = used
        for pid in set(self._last_cpu) - set(alive):
            self._gone_cpu += self._last_cpu.pop(pid)
        self._procs = alive
        if self._gpus:
            self.gpu = _gpu_memory(self._gpus, set(alive))
            self.gpu_peak = max(self.gpu_peak, self.gpu)
        self.rss, self.cpu = rss, cpu
        self.peak = max(self.peak, rss)
        self.cpu_seconds = seconds + self._gone_cpu
        self._keep(rss, cpu)
        return self.resources()

    def resources(self) -> dict[str, Any]:
        """The figures of the last sample (bytes, percent of one core, seconds; GPU memory
        now and at most where NVIDIA's management library is present)."""
        figures = {
            "rss": self.rss,
            "peak": self.peak,
            "cpu": round(self.cpu, 1),
            "cpu_seconds": round(self.cpu_seconds, 2),
        }
        if self._gpus:
            figures.update(gpu=self.gpu, gpu_peak=self.gpu_peak)
        return figures

    def _keep(self, rss: int, cpu: float) -> None:
        self._skipped += 1
        if self._skipped < self._step:
            return
        self._skipped = 0
        self.samples.append([round(time.monotonic() - self.t0, 1), rss, round(cpu, 1)])
        if len(self.samples) >= MAX_SAMPLES:
            self.samples = self.samples[::2]
            self._step *= 2


def sampler_for(pid: int, wanted: bool) -> Sampler | None:
    """A sampler of ``pid``'s process tree when one is ``wanted`` (sampling is on, or a
    memory limit needs it); None otherwise, or when psutil cannot see the process."""
    if not wanted:
        return None
    try:
        return Sampler(pid)
    except Exception:
        return None
