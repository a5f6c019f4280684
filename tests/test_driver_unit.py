"""The driver's state machine, fast, through the fake kernel backend.

``FakeKernel`` is a fake for a seam no real part can reach cheaply: a kernel that dies at
a chosen statement with a chosen signal, one that ignores an interrupt, a timeout, results
arriving as a stream of chunks; each on cue and in milliseconds. It replays the messages a
kernel with the job runner loaded sends. The real JobManager and Driver run against it,
taking the fake through their kernel source. The same cases against real kernels stay in
tests/test_jobs.py, tests/test_snapshot.py, tests/test_gateway.py and the other
integration tests.

No sleeps: tests wait on the job (``wait``) or on the fake reaching a step (``hung``).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import signal
from collections.abc import Iterator
from typing import Any

import pytest

import jupyter_bgjobs as bj
from jupyter_bgjobs._backends import fake
from jupyter_bgjobs._backends.fake import FakeKernel, FakePool
from jupyter_bgjobs._backends.local import KernelStartError
from jupyter_bgjobs._backends.providers import provider_for
from jupyter_bgjobs._config import settings
from jupyter_bgjobs._driver import Driver
from jupyter_bgjobs._inside.kernel.wire import decode
from jupyter_bgjobs._job import Job, Run, run_of
from jupyter_bgjobs._manager import JobManager
from jupyter_bgjobs._spec import JobSpec, build_spec

WAIT = 10  # seconds; each test takes a small fraction of one


@pytest.fixture(autouse=True)
def restore_settings() -> Iterator[None]:
    saved = dataclasses.asdict(settings)
    yield
    for key, value in saved.items():
        setattr(settings, key, value)


@pytest.fixture
def mgr() -> Iterator[JobManager]:
    manager = JobManager()
    yield manager
    manager.shutdown()


def spec(code: str = "x = 1", **options: Any) -> JobSpec:
    defaults: dict[str, Any] = {
        "name": None,
        "kind": "cell",
        "kernel": None,
        "timeout": None,
        "env": "none",
        "results": "none",
        "on_conflict": "keep",
        "workdir": None,
    }
    return build_spec(code, **{**defaults, **options})


def submit(
    manager: JobManager, *kernels: FakeKernel, ns: dict[str, Any] | None = None, **options: Any
) -> Job:
    """A job of the real manager, whose kernels come from a fake pool."""
    pool = FakePool(*kernels)
    manager.pool = lambda: pool  # type: ignore[method-assign]
    return manager.submit(spec(**options), ns)


def watch(manager: JobManager) -> list[tuple[str, tuple[int, int], str]]:
    """(state, progress, section) each time one of them changes, in order."""
    seen: list[tuple[str, tuple[int, int], str]] = []

    def listener(job: Job) -> None:
        now = (job.state, job.progress, job.section)
        if not seen or seen[-1] != now:
            seen.append(now)

    manager.add_listener(listener)
    return seen


def two_sections() -> list[fake.Step]:
    return [
        fake.plan(3, ["Load", "Fit", "Fit"]),
        fake.stmt(0, 3, "Load"),
        fake.stream("loading\n"),
        fake.stmt(1, 3, "Fit"),
        fake.stream("warn\n", "stderr"),
        fake.display({"text/html": "<b>table</b>", "text/plain": "table"}),
        fake.stmt(2, 3, "Fit"),
        fake.Message("execute_result", {"data": {"text/plain": "90"}, "metadata": {}}),
        fake.end(done=3),
    ]


def test_a_job_goes_from_starting_through_running_to_succeeded(mgr: JobManager) -> None:
    seen = watch(mgr)
    kernel = FakeKernel(two_sections())
    job = submit(mgr, kernel, name="order").wait(WAIT)
    assert job.state == "succeeded", job.reason
    states = [s for s, _, _ in seen]
    assert [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s] == [
        "starting",
        "running",
        "succeeded",
    ]
    # Each stmt event moves the row: statements done, and the section it opens.
    running = [(p, sec) for s, p, sec in seen if s == "running"]
    assert ((0, 3), "Load") in running and ((1, 3), "Fit") in running
    assert running.index(((0, 3), "Load")) < running.index(((1, 3), "Fit"))
    assert job.progress == (3, 3) and job.section == "Fit"
    kinds = [(o["output_type"], o.get("name")) for o in job.outputs]
    assert kinds == [
        ("stream", "stdout"),
        ("stream", "stderr"),
        ("display_data", None),
        ("execute_result", None),
    ]
    assert "loading" in job.log_path.read_text()
    # One run call, carrying the job's spec; the kernel is ended with the job's driver.
    mgr.join_worker(job, WAIT)
    assert kernel.spec is not None and kernel.spec["token"] == run_of(job).token
    assert [c.split("(")[1] for c in kernel.executed] == ["'_bgjobs_runner').run"]
    assert kernel.shutdowns == [True] and kernel.interrupts == 0


def test_a_job_waits_pending_for_a_slot(mgr: JobManager) -> None:
    bj.configure(max_concurrent=1, cancel_grace=5)
    first = FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.hang()])
    blocker = submit(mgr, first, name="blocker")
    assert first.hung.wait(WAIT)
    waiting = submit(mgr, FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.end(done=1)]))
    assert waiting.state == "pending"
    blocker.cancel()
    assert waiting.wait(WAIT).state == "succeeded"
    assert blocker.state == "cancelled"


def test_progress_and_status_reported_by_the_job(mgr: JobManager) -> None:
    steps = [
        fake.plan(2),
        fake.stmt(0, 2),
        fake.progress(5, 40),
        fake.status("epoch 1"),
        fake.stmt(1, 2),
        fake.progress(40, 40),
        fake.end(done=2),
    ]
    job = submit(mgr, FakeKernel(steps)).wait(WAIT)
    # Progress the job reports wins over the statement count.
    assert job.state == "succeeded" and job.progress == (40, 40) and job.status == "epoch 1"


def test_a_failing_job_keeps_its_error(mgr: JobManager) -> None:
    tb = ["Traceback (most recent call last):", "ZeroDivisionError: division by zero"]
    err = {"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": tb}
    steps = [
        fake.plan(2),
        fake.stmt(0, 2),
        fake.stmt(1, 2),
        fake.error("ZeroDivisionError", "division by zero", tb),
        fake.end("error", done=1, total=2, error=err),
    ]
    job = submit(mgr, FakeKernel(steps)).wait(WAIT)
    assert job.state == "failed" and job.progress == (1, 2)
    assert job.error is not None and job.error.ename == "ZeroDivisionError"
    assert job.error.traceback == tb
    assert job.outputs[-1]["output_type"] == "error"
    exc = job.exception()
    assert isinstance(exc, bj.JobFailedError) and "division by zero" in str(exc)


def test_a_kernel_killed_by_a_signal_died_and_says_how(mgr: JobManager) -> None:
    steps = [
        fake.plan(2),
        fake.stmt(0, 2),
        fake.stream("before the crash\n"),
        fake.die(
            signal=signal.SIGSEGV,
            stderr="Fatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent):",
        ),
        fake.stream("never sent\n"),
    ]
    kernel = FakeKernel(steps)
    job = submit(mgr, kernel).wait(WAIT)
    assert job.state == "died"
    assert job.exit_code == -signal.SIGSEGV
    assert job.reason == (
        "its kernel was killed by SIGSEGV (exit code -11) (Fatal Python error: Segmentation fault)"
    )
    # What it sent before it went is kept, and so is its stderr's tail.
    assert "before the crash" in job.output and "never sent" not in job.output
    assert "Current thread" in job.output
    assert isinstance(job.exception(), bj.KernelDiedError)


def test_a_kernel_that_exits_died_with_its_exit_code(mgr: JobManager) -> None:
    job = submit(mgr, FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.die(exit_code=3)]))
    job.wait(WAIT)
    assert job.state == "died" and job.exit_code == 3
    assert job.reason == "its kernel exited with code 3"


def test_cancel_interrupts_and_a_job_that_honours_it_is_cancelled(mgr: JobManager) -> None:
    bj.configure(cancel_grace=5)
    kernel = FakeKernel([fake.plan(2), fake.stmt(0, 2), fake.stmt(1, 2), fake.hang()])
    job = submit(mgr, kernel)
    assert kernel.hung.wait(WAIT)
    assert job.cancel()
    job.wait(WAIT)
    assert job.state == "cancelled" and job.progress == (1, 2)
    assert kernel.interrupts == 1 and not kernel.killed
    assert job.outputs[-1]["ename"] == "KeyboardInterrupt"
    assert isinstance(job.exception(), bj.JobCancelledError)


def test_cancel_that_the_job_ignores_kills_its_kernel_after_the_grace(mgr: JobManager) -> None:
    bj.configure(cancel_grace=0.05)
    kernel = FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.hang(honour=False)])
    job = submit(mgr, kernel)
    assert kernel.hung.wait(WAIT)
    job.cancel()
    job.wait(WAIT)
    assert job.state == "cancelled" and job.exit_code == -signal.SIGKILL
    assert kernel.interrupts == 1 and kernel.kills == 1
    assert "no response to interrupt in 0.05 s; kernel killed" in job.log_path.read_text()


def test_a_job_past_its_timeout_is_interrupted_and_timed_out(mgr: JobManager) -> None:
    kernel = FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.hang()])
    job = submit(mgr, kernel, timeout=0.05).wait(WAIT)
    assert job.state == "timed_out"
    assert job.reason == "ran past its timeout of 0.05 s"
    assert kernel.interrupts == 1 and not kernel.killed
    assert isinstance(job.exception(), bj.JobTimeoutError)


def test_a_timed_out_job_that_ignores_the_interrupt_is_killed(mgr: JobManager) -> None:
    bj.configure(cancel_grace=0.05)
    kernel = FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.hang(honour=False)])
    job = submit(mgr, kernel, timeout=0.05).wait(WAIT)
    assert job.state == "timed_out" and kernel.kills == 1
    assert job.reason == "ran past its timeout of 0.05 s"


def test_results_arrive_as_a_stream_of_chunks(mgr: JobManager) -> None:
    bj.configure(transport="stream")
    big = bytes(range(256)) * (9 << 12)  # 9 MiB: three chunks of 4 MiB
    kernel = FakeKernel(
        [fake.plan(1), fake.stmt(0, 1), fake.end(done=1, values={"x": 41, "big": big})]
    )
    job = submit(mgr, kernel, results="object").wait(WAIT)
    assert job.state == "succeeded", job.reason
    assert job.results is not None and job.results.x == 41 and job.results.big == big
    assert kernel.spec is not None and kernel.spec["results"]["transport"] == "stream"
    # Fetched a few chunks at a time, then let go in the kernel.
    fetches = [c for c in kernel.executed if ".send_out(" in c]
    asked = [s for c in fetches for s in ast.literal_eval("[" + c.split("[", 1)[1][:-1])]
    assert sorted(asked) == [0, 1, 2]  # each chunk asked for once
    assert any(".drop_out(" in c for c in kernel.executed)


def test_results_arrive_in_a_snapshot_file(mgr: JobManager) -> None:
    bj.configure(transport="file")
    kernel = FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.end(done=1, values={"y": [1, 2]})])
    job = submit(mgr, kernel, results="object").wait(WAIT)
    assert job.state == "succeeded" and job.results is not None and job.results.y == [1, 2]


def test_results_that_do_not_load_are_named_and_the_job_still_ends(mgr: JobManager) -> None:
    bj.configure(transport="stream")
    info = {"names": ["lost"], "transport": "stream", "sha256": "0" * 64, "nbytes": 5}
    kernel = FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.end(done=1, results=info)])
    job = submit(mgr, kernel).wait(WAIT)
    assert job.state == "succeeded"
    (skipped,) = [s for s in job.skipped if s["direction"] == "out"]
    assert skipped["name"] == "lost" and "could not be loaded here" in skipped["reason"]
    assert any("resend" in code for code in kernel.executed)


def test_an_end_without_results_succeeds_with_none(mgr: JobManager) -> None:
    job = submit(mgr, FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.end(done=1)]))
    job.wait(WAIT)
    assert job.state == "succeeded" and vars(job.results) == {}


def test_a_run_call_that_reports_no_end_fails(mgr: JobManager) -> None:
    job = submit(mgr, FakeKernel([fake.plan(1), fake.stmt(0, 1)])).wait(WAIT)
    assert job.state == "failed"
    assert job.reason == "the job's kernel returned without reporting an outcome"


def test_the_seed_travels_in_chunks_before_the_run_call(mgr: JobManager) -> None:
    bj.configure(transport="stream")
    kernel = FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.end(done=1)])
    job = submit(mgr, kernel, ns={"a": 1}, env="auto", code="b = a + 1").wait(WAIT)
    assert job.state == "succeeded" and job.shipped == ["a"]
    entries = [r.code.split(").", 1)[1].split("(")[0] for r in kernel.requests]
    assert entries == ["receive", "run"]
    seed = kernel.requests[0].metadata["bgjobs_seed"]
    (chunk,) = kernel.received
    assert seed["seq"] == 0 and seed["nbytes"] == len(chunk)
    assert decode(chunk, run_of(job).token) == {"a": 1}  # binary, not text
    assert kernel.spec is not None and kernel.spec["seed"]["transport"] == "stream"
    assert kernel.spec["seed"]["sha256"] == hashlib.sha256(chunk).hexdigest()


def test_a_kernel_that_cannot_start_fails_the_job_saying_why(mgr: JobManager) -> None:
    class Broken:
        def acquire(self, kernel_name: str | None = None) -> FakeKernel:
            raise KernelStartError("kernel 'python3' failed to start: no room")

    broken = Broken()
    mgr.pool = lambda: broken  # type: ignore[assignment, method-assign, return-value]
    job = mgr.submit(spec()).wait(WAIT)
    assert job.state == "failed" and job.reason == "kernel 'python3' failed to start: no room"


def cancelled_while_pending(mgr: JobManager) -> Job:
    """A job cancelled while it waited for the one slot another job holds."""
    bj.configure(max_concurrent=1)
    first = FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.hang()])
    blocker = submit(mgr, first)
    assert first.hung.wait(WAIT)
    pending = submit(mgr, FakeKernel())
    pending.cancel()
    pending.wait(WAIT)
    blocker.cancel()
    blocker.wait(WAIT)
    return pending


def test_cancel_before_the_kernel_is_taken(mgr: JobManager) -> None:
    pending = cancelled_while_pending(mgr)
    assert pending.state == "cancelled"
    assert pending.reason == "cancelled while pending"


def test_a_driver_takes_its_kernel_from_the_source_it_is_given(mgr: JobManager) -> None:
    # The seam itself: a Driver run in this thread, its kernel from the source passed in.
    run = Run(spec(name="seam"), mgr)
    job = run.job
    kernel = FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.end(done=1)])
    pool = FakePool(kernel)
    run.provider = provider_for(run.job.spec, mgr, kernels=pool)
    runner_spec = {"token": run.token, "context": {}, "results": None}
    Driver(run, mgr, runner_spec).drive()
    assert job.state == "succeeded" and pool.asked == [None]
    assert kernel.spec == runner_spec


def story(job: Job) -> list[tuple[str, str]]:
    return [(e["event"], e["state"]) for e in job.history]


def test_every_transition_is_told_in_the_jobs_history(mgr: JobManager) -> None:
    from jupyter_bgjobs._store import read_json

    begun = [("submit", "pending"), ("start", "starting"), ("run", "running")]
    done = submit(mgr, FakeKernel(two_sections())).wait(WAIT)
    assert story(done) == [*begun, ("succeed", "succeeded")]
    err = {"ename": "KeyError", "evalue": "'k'", "traceback": []}
    failed = submit(
        mgr, FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.end("error", done=0, error=err)])
    ).wait(WAIT)
    assert story(failed) == [*begun, ("fail", "failed")]
    died = submit(mgr, FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.die(exit_code=3)]))
    assert story(died.wait(WAIT)) == [*begun, ("die", "died")]
    late = submit(mgr, FakeKernel([fake.plan(1), fake.stmt(0, 1), fake.hang()]), timeout=0.05)
    assert story(late.wait(WAIT)) == [*begun, ("time_out", "timed_out")]
    # The end's reason is in the story; the times run forward.
    assert died.history[-1]["reason"] == "its kernel exited with code 3"
    assert late.history[-1]["reason"] == "ran past its timeout of 0.05 s"
    stamps = [e["at"] for e in late.history]
    assert stamps == sorted(stamps)
    # Ended before it started: the story is as short as the job's life.
    waiting = cancelled_while_pending(mgr)
    assert story(waiting) == [("submit", "pending"), ("cancel", "cancelled")]
    # The record tells the same story to every reader.
    mgr.join_worker(late, WAIT)
    assert read_json(late.folder / "state.json")["history"] == late.history


def test_a_transition_no_table_entry_allows_is_refused(mgr: JobManager) -> None:
    from jupyter_bgjobs._states import TRANSITIONS, TransitionError, event_of, transition

    job = submit(mgr, FakeKernel(two_sections())).wait(WAIT)
    run = run_of(job)
    told = list(job.history)
    # An ended run moves no more: not back to running, not into another end.
    for move in (run.start, run.running, lambda: run.end("failed"), lambda: run.end("died")):
        with pytest.raises(TransitionError, match="no transition from 'succeeded'"):
            move()
    with pytest.raises(TransitionError, match="'running' is not an end"):
        run.end("running")
    assert job.state == "succeeded" and job.history == told
    # A fresh run cannot skip starting, and no caller sets a field the run does not have.
    fresh = Run(spec(name="fresh"), mgr)
    with pytest.raises(TransitionError, match="no transition from 'pending' to 'running'"):
        fresh.running()
    with pytest.raises(TypeError, match="moves by its transitions only"):
        fresh.tell(state="succeeded")
    with pytest.raises(TypeError, match="no fact"):
        fresh.advance(3, colour="red")
    assert fresh.job.state == "pending" and story(fresh.job) == [("submit", "pending")]
    # Every entry of the table, from each state it names and from no other.
    states = {s for sources, target in TRANSITIONS.values() for s in (*sources, target)}
    for name, (sources, target) in TRANSITIONS.items():
        for state in states:
            if state in sources:
                assert transition(state, target) == target and event_of(target) == name
            else:
                with pytest.raises(TransitionError):
                    transition(state, target)


def test_every_thing_that_runs_moves_by_one_helper() -> None:
    """Queue tasks, queue workers and progress rows move by the same helper as jobs, each
    with its own table; a move no table allows is refused, naming what refused it."""
    from jupyter_bgjobs._queue.tasks import Task
    from jupyter_bgjobs._states import (
        PROGRESS_MOVES,
        TASK_MOVES,
        WORKER_MOVES,
        TransitionError,
    )

    task = Task("t1", print, (), {})
    with pytest.raises(TransitionError, match="'created' to 'running' of a queue task"):
        task.move("running")
    for step in ("waiting", "assigned", "running"):
        task.move(step)
    task.requeue()  # its worker was lost: it waits again
    assert task.state == "waiting"
    task.finish(0, "done")
    with pytest.raises(TransitionError, match="of a queue task"):
        task.move("assigned")
    assert WORKER_MOVES.move("starting", "spare") == "spare"
    with pytest.raises(TransitionError, match="'finished' to 'idle' of a queue worker"):
        WORKER_MOVES.move("finished", "idle")
    # A progress row is its owner's to set, in any order; only the words are checked.
    assert PROGRESS_MOVES.move("succeeded", "running") == "running"
    with pytest.raises(TransitionError):
        PROGRESS_MOVES.move("idle", "timed_out")
    assert TASK_MOVES.event_of("done") == "finish" and WORKER_MOVES.states >= {"busy", "spare"}


def test_where_a_job_runs_is_chosen_once_and_says_what_it_can_do(mgr: JobManager) -> None:
    from jupyter_bgjobs._backends.providers import provider_for

    local = provider_for(spec())
    remote = provider_for(spec(gateway="http://127.0.0.1:9"))
    assert (local.name, local.shares_files) == ("local", True)
    assert (remote.name, remote.shares_files) == ("gateway", False)
    # A fake source stands in for the local pool, with a local kernel's abilities.
    kernel = FakeKernel(two_sections())
    job = submit(mgr, kernel).wait(WAIT)
    assert job.state == "succeeded"
    assert kernel.spec is not None
    assert kernel.spec["results"]["transport"] == "file"  # it shares our files
