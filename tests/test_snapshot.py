"""Namespace in, results out: what arrives in a job and what comes back, for every kind of
object a notebook holds."""

from __future__ import annotations

import glob
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import jupyter_bgjobs as bj
from jupyter_bgjobs import _snapshot
from jupyter_bgjobs._inside.kernel.arena import _room_for
from jupyter_bgjobs._inside.kernel.chunks import Inbox, Outbox
from jupyter_bgjobs._inside.kernel.wire import (
    SnapshotError,
    decode,
    encode,
    load_file,
    piece_paths,
)
from jupyter_bgjobs._job import run_of

TORTURE = textwrap.dedent(
    """
    import socket, threading, tempfile
    import numpy as np
    import pandas as pd
    from dataclasses import dataclass
    from os.path import join

    a = [1, 2]
    b = a
    square = lambda x: x * x
    def make_adder(k):
        def add(x):
            return x + k
        return add
    add5 = make_adder(5)
    class Point:
        def __init__(self, x):
            self.x = x
        def norm(self):
            return abs(self.x)
    p = Point(-3)
    @dataclass
    class Cfg:
        lr: float = 0.1
        name: str = "base"
    cfg = Cfg()
    df = pd.DataFrame(
        {"c": pd.Categorical(["a", "b", "a"], categories=["b", "a", "z"], ordered=True),
         "v": [1.5, 2.5, 3.5],
         "t": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"])},
        index=pd.Index([10, 20, 30], name="id"),
    )
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    big = np.ones(100 * 2**20 // 8)
    gen = (i for i in range(3))
    lock = threading.Lock()
    fh = tempfile.TemporaryFile()
    sock = socket.socket()
    """
)

JOB = textwrap.dedent(
    """
    alias_kept = b is a
    a.append(3)
    r_square = square(4)
    r_add = add5(1)
    r_norm = p.norm()
    r_point = isinstance(p, Point)
    cfg2 = Cfg(lr=0.5)
    r_cfg = (cfg.lr, cfg.name)
    df2 = df.copy()
    df2["v"] = df2["v"] * 2
    r_dtypes = str(arr.dtype) + str(arr.shape)
    big_sum = float(big.sum())
    r_np = np.__name__
    r_join = join("x", "y")
    missing = [n for n in ("gen", "lock", "fh", "sock") if n in globals()]
    """
)


@pytest.fixture
def torture(ip: Any) -> Any:
    ip.run_cell(TORTURE)
    yield ip
    ip.run_cell("fh.close(); sock.close()")


def test_torture_namespace_in_and_out(torture: Any) -> None:
    ip = torture
    ip.run_cell_magic("bgjob", "torture --env all", JOB)
    job = bj.get_job("torture").wait(120)
    assert job.state == "succeeded", job.output
    ns = ip.user_ns
    # What arrived: everything that can travel, aliases intact, re-imports for modules.
    assert ns["alias_kept"] is True
    assert (ns["r_square"], ns["r_add"], ns["r_norm"], ns["r_point"]) == (16, 6, 3, True)
    assert ns["r_cfg"] == (0.1, "base")
    assert ns["r_dtypes"] == "int16(3, 4)"
    assert ns["big_sum"] == float(100 * 2**20 // 8)
    assert (ns["r_np"], ns["r_join"]) == ("numpy", "x/y")
    assert ns["missing"] == []
    assert {"np", "pd", "join", "dataclass", "socket", "threading", "tempfile"} <= set(job.shipped)
    # What was skipped, with type and reason.
    skipped = {s["name"]: (s["type"], s["reason"]) for s in job.skipped}
    assert skipped == {
        "gen": (
            "generator",
            "a running generator or coroutine cannot be copied; recreate it in the job",
        ),
        "lock": ("lock", "a lock guards this process's threads; the job has its own"),
        "fh": (
            "BufferedRandom",
            "an open file belongs to this process; pass its path and open it in the job",
        ),
        "sock": ("socket", "a socket belongs to this process; connect again in the job"),
    }
    # What came back: created, rebound, or changed in place; nothing else.
    assert job.results is not None
    assert sorted(vars(job.results)) == sorted(
        [
            "a",
            "b",
            "alias_kept",
            "r_square",
            "r_add",
            "r_norm",
            "r_point",
            "cfg2",
            "r_cfg",
            "df2",
            "r_dtypes",
            "big_sum",
            "r_np",
            "r_join",
            "missing",
        ]
    )
    assert job.mutated == ["a", "b"]
    assert ns["a"] == [1, 2, 3] and ns["a"] is ns["b"]
    assert type(ns["cfg2"]).__name__ == "Cfg" and ns["cfg2"].lr == 0.5
    df2 = ns["df2"]
    assert list(df2["c"].cat.categories) == ["b", "a", "z"] and df2["c"].cat.ordered
    assert df2.index.name == "id" and list(df2.index) == [10, 20, 30]
    assert df2["t"].dtype == ns["df"]["t"].dtype and df2["t"].dtype.kind == "M"
    assert list(df2["v"]) == [3.0, 5.0, 7.0]
    assert "overwrote" not in job.report and "a, b changed in place by the job" in job.report
    assert "not shipped: fh (BufferedRandom: an open file belongs" in job.report


def test_unchanged_seeded_objects_stay_home_changed_ones_come_back(ip: Any) -> None:
    ip.run_cell(
        "import numpy as np\nbig = np.zeros(4 * 2**20)\nsmall = {'k': 1}\nuntouched = np.ones(10)"
    )
    before = ip.user_ns["big"]
    ip.run_cell_magic(
        "bgjob", "inplace", "big[123] = 7.0\nsmall['k'] = 2\ntotal = float(untouched.sum())"
    )
    job = bj.get_job("inplace").wait(120)
    assert job.state == "succeeded", job.output
    assert job.results is not None
    assert sorted(vars(job.results)) == ["big", "small", "total"]
    assert job.mutated == ["big", "small"]
    # ``before`` is another name for the same array: it sees the change, as it would have
    # after the same cell in the notebook (the job's changes are copied into it).
    assert ip.user_ns["big"][123] == 7.0 and ip.user_ns["big"] is before
    assert ip.user_ns["small"] == {"k": 2}


def test_a_touched_unshipped_name_says_why(ip: Any) -> None:
    ip.run_cell("import threading\nguard = threading.Lock()")
    ip.run_cell_magic("bgjob", "usesguard", "with guard:\n    pass")
    job = bj.get_job("usesguard").wait(60)
    assert job.state == "failed" and job.error is not None
    assert job.error.evalue == (
        "name 'guard' is not defined: 'guard' was not shipped to this job "
        "(lock: a lock guards this process's threads; the job has its own)"
    )


def test_partial_failure_of_results_is_reported_and_the_rest_merges(ip: Any) -> None:
    ip.run_cell_magic("bgjob", "halfback", "ok = 41 + 1\nstream = (i for i in range(3))")
    job = bj.get_job("halfback").wait(60)
    assert ip.user_ns["ok"] == 42 and "stream" not in ip.user_ns
    tail = job.report.split("; ", 1)[1]
    assert tail == (
        "merged ok into globals; not returned: stream (generator: a running generator or "
        "coroutine cannot be copied; recreate it in the job)"
    )


def test_conflict_report_word_for_word(ip: Any, tmp_path: Path) -> None:
    ip.run_cell("level = 1")
    gate = tmp_path / "gate"
    wait = f"while not __import__('os').path.exists({str(gate)!r}): __import__('time').sleep(0.01)"
    ip.run_cell_magic("bgjob", "clash", f"{wait}\nlevel = 2\nother = 3")
    ip.run_cell("level = 10")  # rebound while the job waits
    gate.touch()
    job = bj.get_job("clash").wait(60)
    tail = job.report.split("; ", 1)[1]
    assert tail == (
        "merged other into globals; kept the notebook's level (changed here since the "
        "job started; the job's values are in clash_results; --on-conflict overwrite "
        "replaces them)"
    )
    assert ip.user_ns["level"] == 10 and ip.user_ns["clash_results"].level == 2


def test_stream_transport_over_the_kernel_protocol(ip: Any) -> None:
    bj.configure(transport="stream")
    try:
        ip.run_cell("import numpy as np\nseeded = np.arange(3 * 2**20, dtype=np.float32)")
        ip.run_cell_magic("bgjob", "streamed", "doubled = seeded * 2\nn = len(seeded)")
        job = bj.get_job("streamed").wait(120)
    finally:
        bj.configure(transport="auto")
    assert job.state == "succeeded", job.output
    assert ip.user_ns["n"] == 3 * 2**20
    np.testing.assert_array_equal(ip.user_ns["doubled"], np.arange(3 * 2**20, dtype=np.float32) * 2)
    assert ip.user_ns["doubled"].dtype == np.float32
    assert not any(p.exists() for p in job.folder.glob("*.snap"))


def test_stream_integrity_and_token_checks() -> None:
    parts, _, _ = encode({"x": np.arange(3 << 20)}, "tok-a")  # 24 MiB and a header
    box = Outbox(parts)
    inbox = Inbox(box.nbytes)
    for seq in reversed(range(box.count())):  # any order; a repeat is ignored
        inbox.put(seq, box.piece(seq))
    inbox.put(0, box.piece(0))
    data = inbox.check(box.sha256)
    assert decode(data, "tok-a")["x"].sum() == sum(range(3 << 20))
    with pytest.raises(SnapshotError, match="not written for this job"):
        decode(data, "tok-b")
    with pytest.raises(ValueError, match="expected"):
        inbox.put(1, [b"short"])
    damaged = Inbox(box.nbytes)
    for seq in range(box.count()):
        piece = b"".join(bytes(b) for b in box.piece(seq))
        damaged.put(seq, [piece[:-1] + bytes([piece[-1] ^ 0xFF])] if seq == 3 else [piece])
    with pytest.raises(SnapshotError, match="sha256"):
        damaged.check(box.sha256)
    partial = Inbox(box.nbytes)
    partial.put(0, box.piece(0))
    assert box.count() == 7
    with pytest.raises(SnapshotError, match="without 6 of its 7 chunks"):
        partial.check(box.sha256)


def test_snapshot_files_are_private_and_removed(ip: Any, tmp_path: Path) -> None:
    paths = _snapshot.snapshot_paths(str(tmp_path), "jobx", "seed")
    # 40 MB: large enough to be written in pieces, one writer thread each, on two cores.
    snap = _snapshot.write_snapshot({"v": np.ones(5 * 2**20)}, ["v"], "t0k", paths, "file")
    assert snap.path is not None
    if (os.cpu_count() or 1) > 1:
        assert snap.pieces > 1
    files = piece_paths(snap.path, snap.pieces)
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(snap.path)).st_mode) == 0o700
    assert np.array_equal(load_file(snap.path, "t0k", snap.pieces)["v"], np.ones(5 * 2**20))
    for path in files:
        os.unlink(path)
    ip.run_cell("import numpy as np\nshipme = np.ones(5 * 2**20)")
    ip.run_cell_magic("bgjob", "tidy", "shipme[-1] = 2.0\nback = shipme + 1")
    job = bj.get_job("tidy").wait(60)
    assert job.state == "succeeded"
    assert ip.user_ns["shipme"][-1] == 2.0 and ip.user_ns["back"][-1] == 3.0
    assert not [p for p in run_of(job).files for p in glob.glob(glob.escape(p) + "*")]


def test_a_job_refuses_a_snapshot_not_written_for_it(ip: Any, tmp_path: Path) -> None:
    from jupyter_bgjobs._inside.kernel.wire import load_file, write_parts

    parts, _, _ = encode({"secret": 1}, "someone-else")
    path = str(tmp_path / "foreign.snap")
    write_parts(path, parts)
    with pytest.raises(SnapshotError):
        load_file(path, "my-token")


def test_dataframe_and_array_round_trip_exactly(ip: Any) -> None:
    frame = pd.DataFrame(
        {
            "cat": pd.Categorical(["x", "y", None], categories=["y", "x"]),
            "i": pd.array([1, None, 3], dtype="Int64"),
            "f": np.array([0.1, np.nan, 2.5], dtype=np.float32),
            "s": ["a", "b", "c"],
            "t": pd.date_range("2024-03-31", periods=3, freq="h", tz="Europe/Paris"),
            "d": pd.to_timedelta([1.5, None, 3], unit="s"),
        },
        index=pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["k", "n"]),
    )
    fortran = np.asfortranarray(np.arange(20.0).reshape(4, 5))
    stamps = np.array(["2024-01-01T00:00:00.123456789", "NaT"], dtype="M8[ns]").reshape(2, 1)
    ip.user_ns.update(frame_in=frame, fortran_in=fortran, stamps_in=stamps)
    ip.run_cell_magic(
        "bgjob",
        "exact",
        "frame_out = frame_in.copy()\nfortran_out = fortran_in.copy(order='F')\n"
        "stamps_out = stamps_in.T.copy()",
    )
    bj.get_job("exact").wait(60)
    pd.testing.assert_frame_equal(ip.user_ns["frame_out"], frame)
    np.testing.assert_array_equal(ip.user_ns["fortran_out"], fortran)
    assert ip.user_ns["fortran_out"].flags.f_contiguous
    np.testing.assert_array_equal(ip.user_ns["stamps_out"], stamps.T)
    assert ip.user_ns["stamps_out"].dtype == np.dtype("M8[ns]")


def _no_room_for_an_arena() -> bool:
    shm = _snapshot.shm_dir()
    return shm is None or not _room_for(256 << 20, os.path.join(shm, "probe"))


@pytest.mark.skipif(_no_room_for_an_arena(), reason="too little free memory to prepare any")
def test_results_written_into_memory_made_ready_while_the_job_ran(ip: Any) -> None:
    # The job waits (polling, not sleeping blind) until shared memory has been made ready
    # for its results, then returns less than was made ready, or more.
    ready = textwrap.dedent(
        """
        import sys, time
        import numpy as np
        arena = sys.modules["_bgjobs_runner"].CURRENT.arena
        scratch = np.ones(160 * 2**20 // 8)
        deadline = time.monotonic() + 60
        while sum(arena.sizes) < 96 * 2**20:
            assert time.monotonic() < deadline, f"no memory made ready: {arena.sizes}"
            time.sleep(0.01)
        del scratch
        """
    )
    for name, code in (
        ("less", "small = np.arange(10)\nlabel = 'done'"),
        ("more", "large = np.arange(40 * 2**20)"),
    ):
        ip.run_cell_magic("bgjob", name, ready + code)
        job = bj.get_job(name).wait(120)
        assert job.state == "succeeded", job.output
        assert not [p for p in run_of(job).files for p in glob.glob(glob.escape(p) + "*")]
    np.testing.assert_array_equal(ip.user_ns["small"], np.arange(10))
    assert ip.user_ns["label"] == "done"
    np.testing.assert_array_equal(ip.user_ns["large"], np.arange(40 * 2**20))


def test_a_result_the_notebook_cannot_load_does_not_sink_the_others(ip: Any) -> None:
    # The job's kernel has a module the notebook cannot import: values from it stay behind,
    # named, and everything else still comes back.
    ip.run_cell_magic(
        "bgjob",
        "jobonly",
        "import sys, types\nmod = types.ModuleType('only_in_job')\n"
        "exec('class Thing:\\n    pass', mod.__dict__)\nsys.modules['only_in_job'] = mod\n"
        "thing = mod.Thing()\nkept = [1, 2, 3]\ndel mod",
    )
    job = bj.get_job("jobonly").wait(60)
    assert job.state == "succeeded", job.output
    assert ip.user_ns["kept"] == [1, 2, 3] and "thing" not in ip.user_ns
    assert [s["name"] for s in job.skipped if s["direction"] == "out"] == ["thing"]
    assert "No module named 'only_in_job'" in job.report


def test_what_a_snapshot_in_pieces_loaded_stays_usable_until_the_process_ends(
    tmp_path: Path,
) -> None:
    # Exit handlers run late: memory mapped for a snapshot must not be gone by then.
    script = textwrap.dedent(
        f"""
        import atexit
        import numpy as np
        from jupyter_bgjobs._inside.kernel.wire import encode, load_file, write_parts
        loaded = {{}}
        # Registered first, so it runs last of the exit handlers.
        atexit.register(lambda: print("sum at exit", loaded["v"].sum()))
        parts, _, _ = encode({{"v": np.ones(5 * 2**20)}}, "tok")
        pieces = write_parts({str(tmp_path / "s.snap")!r}, parts)
        loaded.update(load_file({str(tmp_path / "s.snap")!r}, "tok", pieces))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"sum at exit {float(5 * 2**20)}" in done.stdout
