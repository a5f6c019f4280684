"""Jobs that wait for the jobs whose results they read, and sweeps, against real kernels:
an implicit wait that takes the new value, none for a name only a function's parameter or
a comprehension's variable has, a failed producer that cancels its waiter with
the reason, ``--after`` by name (a detached job's too), ``--after none``, the line a plain
cell gets before it reads a name a job will replace, and a sweep of 6 runs with one
failing, its table and its runs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cells import until
from IPython.core.error import UsageError

import jupyter_bgjobs as bj
from jupyter_bgjobs._waits import bound_names


def _gate(path: Path) -> str:
    return f"import os, time\nwhile not os.path.exists({str(path)!r}):\n    time.sleep(0.01)\n"


def test_a_job_that_reads_what_a_running_job_binds_waits_and_takes_its_value(
    ip: Any, tmp_path: Path
) -> None:
    ip.user_ns["df"] = [0]  # the notebook's old value, which the new job must not get
    gate = tmp_path / "gate"
    ip.run_cell_magic("bgjob", "make_df", _gate(gate) + "df = [1, 2, 3]\n")
    ip.run_cell_magic("bgjob", "use_df", "total = sum(df)\n")
    use = bj.get_job("use_df")
    assert use.state == "waiting"  # from the moment it is made
    assert use.status == "waiting for make_df (df)"
    assert use.waits_for == ["make_df (df)"] and use.waits_for_ids == [bj.get_job("make_df").id]
    record = json.loads((use.folder / "state.json").read_text())
    assert record["state"] == "waiting" and record["waits_for"] == ["make_df (df)"]
    gate.touch()
    use.wait(60)
    assert use.state == "succeeded", use.reason
    assert ip.user_ns["total"] == 6  # the value the job it waited for made
    assert [h["event"] for h in use.history][:3] == ["submit", "wait", "start"]


def test_a_name_only_a_function_or_comprehension_has_is_no_wait(ip: Any, tmp_path: Path) -> None:
    # The running job binds `i` and `x` at its top level; the new job's `i` is its
    # comprehension's and its `x` a parameter: it reads neither of the notebook's.
    gate = tmp_path / "gate"
    ip.run_cell_magic("bgjob", "binds_i", _gate(gate) + "for i in range(3):\n    x = i\n")
    ip.run_cell_magic(
        "bgjob", "own_i", "doubled = [i * 2 for i in range(3)]\ndef half(x):\n    return x / 2\n"
    )
    own = bj.get_job("own_i")
    assert own.waits_for == []
    assert own.wait(60).state == "succeeded", own.reason
    assert ip.user_ns["doubled"] == [0, 2, 4]
    gate.touch()
    assert bj.get_job("binds_i").wait(60).state == "succeeded"


def test_a_failed_producer_cancels_its_waiter_with_the_reason(ip: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ip.run_cell_magic(
        "bgjob", "bad_fit", _gate(gate) + "model = 1\nraise ValueError('no convergence')\n"
    )
    ip.run_cell_magic("bgjob", "after_bad", "score = model * 2\n")
    waiter = bj.get_job("after_bad")
    until(lambda: waiter.state == "waiting", "the job to wait")
    gate.touch()
    waiter.wait(60)
    assert waiter.state == "cancelled"
    assert waiter.reason == "bad_fit failed: ValueError: no convergence"
    assert waiter.started is None  # it never ran: no kernel, no statement


def test_after_waits_for_a_job_by_name_whatever_the_names(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first = bj.run_cell(_gate(gate) + "a = 1\n", "first_step", env="none")
    second = bj.run_cell("b = 2\n", "second_step", env="none", after="first_step")
    until(lambda: second.state == "waiting", "the job to wait")
    assert second.waits_for == ["first_step"]
    gate.touch()
    second.wait(60)
    assert second.state == "succeeded"
    assert second.timings["first_statement"] >= first.finished.timestamp()


def test_after_none_turns_the_implicit_wait_off(ip: Any, tmp_path: Path) -> None:
    ip.user_ns["level"] = "old"
    gate = tmp_path / "gate"
    ip.run_cell_magic("bgjob", "sets_level", _gate(gate) + "level = 'new'\n")
    ip.run_cell_magic("bgjob", "reads_level --after none", "seen = level\n")
    reader = bj.get_job("reads_level").wait(60)
    assert reader.state == "succeeded" and reader.waits_for == []
    assert ip.user_ns["seen"] == "old"
    gate.touch()
    bj.get_job("sets_level").wait(60)


def test_an_unknown_after_is_one_line_and_makes_nothing(tmp_path: Path) -> None:
    from jupyter_bgjobs._config import settings

    before = set(settings.job_root().iterdir())
    with pytest.raises(bj.JobSpecError, match="no job named 'nosuch' to wait for"):
        bj.run_cell("x = 1", "orphan", after="nosuch")
    with pytest.raises(bj.JobSpecError, match="after takes the names of jobs"):
        bj.run_cell("x = 1", "orphan", after="a b")
    assert set(settings.job_root().iterdir()) == before


def test_a_waiting_job_can_be_stopped(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    slow = bj.run_cell(_gate(gate) + "w = 1\n", "slow_w", env="none")
    waiter = bj.run_cell("v = w + 1\n", "waits_w", after="slow_w")
    until(lambda: waiter.state == "waiting", "the job to wait")
    assert waiter.cancel()
    waiter.wait(30)
    assert waiter.state == "cancelled" and waiter.reason == "cancelled while waiting for slow_w (w)"
    gate.touch()
    slow.wait(60)


def test_a_plain_cell_is_told_which_names_a_job_will_replace(
    ip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.user_ns["frame"] = "old frame"
    gate = tmp_path / "gate"
    ip.run_cell_magic("bgjob", "refresh", _gate(gate) + "frame = 'new frame'\n")
    job = bj.get_job("refresh")
    until(lambda: job.state == "running", "the job to run")
    capsys.readouterr()
    ip.run_cell("rows_now = len(frame)")
    said = capsys.readouterr().out
    assert "frame will be replaced when job refresh ends (running, " in said
    assert ip.user_ns["rows_now"] == len("old frame")  # nothing else changes
    ip.run_cell("unrelated = 1")
    assert "will be replaced" not in capsys.readouterr().out
    gate.touch()
    job.wait(60)


def test_a_detached_job_waits_for_another_in_the_same_store(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first = bj.run_cell(_gate(gate) + "a = 1\n", "det_first", env="none", detach=True)
    second = bj.run_cell("b = 2\n", "det_second", env="none", detach=True, after="det_first")
    until(lambda: second.state == "waiting", "the detached job to wait", timeout=60)
    assert second.record()["waits_for"] == ["det_first"]
    gate.touch()
    second.wait(90)
    assert first.state == "succeeded" and second.state == "succeeded"
    assert second.record()["timings"]["first_statement"] >= first.finished.timestamp()


def test_a_sweep_of_six_runs_with_one_failing(ip: Any) -> None:
    ip.run_cell_magic(
        "bgjob",
        "tune --over lr=0.1,0.01,0.001 --over depth=3,5",
        textwrap.dedent("""\
            score = lr * depth
            if lr == 0.01 and depth == 5:
                raise ValueError("diverged")
            tag = f"{lr}/{depth}"
            """),
    )
    handle = bj.get_job("tune")
    assert isinstance(handle, bj.Sweep)
    assert [j.name for j in handle.runs] == [f"tune_{i}" for i in range(1, 7)]
    handle.wait(120)
    table = ip.user_ns["tune_results"]
    assert list(table.columns[:5]) == ["lr", "depth", "state", "elapsed", "reason"]
    assert list(table["lr"]) == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert list(table["depth"]) == [3, 5, 3, 5, 3, 5]
    assert list(table["state"]) == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 2
    assert table.loc[3, "reason"] == "ValueError: diverged"
    assert table.loc[0, "score"] == pytest.approx(0.3) and table.loc[5, "tag"] == "0.001/5"
    assert handle.summary() == "tune: 6 runs, 5 done, 1 failed"
    record = json.loads((handle.runs[0].folder / "state.json").read_text())
    assert record["sweep"] == handle.id and record["params"] == {"lr": 0.1, "depth": 3}
    # The runs' names do not go into the notebook one by one: the table holds them.
    assert "tag" not in ip.user_ns


def test_sweep_in_python_stops_and_checks_its_values() -> None:
    with pytest.raises(bj.JobSpecError, match="over: depth needs a non-empty list"):
        bj.sweep("x = depth", over={"depth": []})
    with pytest.raises(bj.JobSpecError, match="must be numbers, strings"):
        bj.sweep("x = f", over={"f": [object()]})
    handle = bj.sweep(
        "import time\ntime.sleep(60)", over={"n": [1, 2, 3]}, name="long_sweep", env="none"
    )
    until(lambda: any(j.state == "running" for j in handle.runs), "a run to start")
    assert handle.cancel() == 3
    handle.wait(60)
    assert handle.state == "cancelled"
    assert {j.state for j in handle.runs} == {"cancelled"}


def test_the_magic_refuses_options_a_sweep_cannot_take(ip: Any) -> None:
    with pytest.raises(UsageError, match="--over makes a sweep"):
        ip.run_cell_magic("bgjob", "s --over a=1,2 --detach", "b = a")
    with pytest.raises(UsageError, match="--over takes NAME=V1,V2"):
        ip.run_cell_magic("bgjob", "s --over a", "b = a")


def test_what_a_cell_binds() -> None:
    source = textwrap.dedent("""\
        import numpy as np, os.path
        from math import pi as PI
        df = load()
        a, (b, *c) = 1, (2, 3)
        total += 1
        for i in range(3):
            seen = i
        with open('f') as fh:
            pass
        def fit(x):
            inner = x
        class Model:
            attr = 1
        squares = [k * k for k in range(3)]
        try:
            pass
        except ValueError as err:
            pass
        """)
    assert bound_names(source) == {
        "np", "os", "PI", "df", "a", "b", "c", "total", "i", "seen", "fh", "fit",
        "Model", "squares", "err",
    }  # fmt: skip


def test_a_cell_that_binds_a_name_before_reading_it_does_not_wait_for_it() -> None:
    from jupyter_bgjobs._waits import read_names

    assert read_names("import time\ntime.sleep(1)\nx = 1") == set()
    assert read_names("df = df.dropna()") == {"df"}
    assert read_names("n = 1\ndef f():\n    return n + m\n") == {"m"}
    from jupyter_bgjobs._spec import transformed

    assert read_names(transformed("%timeit f(x)")) >= {"f", "x"}


def test_only_what_merges_into_the_notebook_is_waited_for(ip: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ip.run_cell_magic("bgjob", "kept_apart --results none", _gate(gate) + "apart = 1\n")
    ip.run_cell_magic("bgjob", "as_object --results object", _gate(gate) + "inner = 2\n")
    ip.run_cell_magic("bgjob", "reads_apart", "seen = apart if 'apart' in dir() else None\n")
    ip.run_cell_magic("bgjob", "reads_object", "got = as_object_results.inner\n")
    reader = bj.get_job("reads_object")
    # ``apart`` never reaches the notebook: nothing waits for it; ``as_object_results`` does.
    assert bj.get_job("reads_apart").waits_for == []
    assert reader.waits_for == ["as_object (as_object_results)"]
    gate.touch()
    reader.wait(60)
    assert reader.state == "succeeded" and ip.user_ns["got"] == 2
